"""IndexWriter: the one committer of an index run, with commits sized by rows and time.

A commit adds fragments and a version to each table, and a commit's cost grows with the
fragments it must list, so committing every few images slows a long run down as 1/n (measured:
576 -> 59 images/s within 20k images). The writer buffers and commits when the buffer holds
`commit_rows` region rows or `commit_images` images, or `commit_seconds` have passed since the
last commit (so a killed run loses at most that much work). Duplicates are caught against an
in-memory DigestSet of stored ids instead of a query per commit.

The regions arrive already written, as Lance fragments by the workers (storage/region_fragments.py):
it buffers images rows and fragment metadata, and counts region rows from what the workers
report, so no region embedding passes through it.

Upkeep keeps the fragment count, and with it commit cost and search latency, flat while a run goes
on. It runs on two background threads beside the commits (Lance rebases an append onto whatever
committed meanwhile), because its two parts differ in cost by orders of magnitude:
- tidy (IndexUpkeep.tidy, storage/index_upkeep.py), every `compact_every` commits, `upkeep_rows` region rows or
  `merge_fragments` worker writes: merge small fragments, fold new rows into the indexes (which
  bounds the rows a search scans flat), drop old versions. Seconds.
- training (IndexUpkeep.train_vector_index), when the table reaches MIN_ROWS and each time it
  outgrows `retrain_growth` times what the index was trained on, with at most `run_partitions`
  partitions so that folds stay cheap. Minutes at millions of rows.
A training reads a snapshot; a merge that rewrote one of its fragments, or rows folded into the old
index meanwhile, would make its commit fail (Lance: "preempted by concurrent transaction Rewrite /
CreateIndex"), so while it runs, tidy leaves the snapshot's fragments (frozen) alone, merges only
those committed since, and folds no rows until it has committed; rows committed during a training
are searched flat until then. One lock orders the snapshot against a tidy in flight.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from maskdex.storage.digests import DigestSet, image_key
from maskdex.storage.index_store import IndexStore
from maskdex.storage.vector_index import MAX_UNINDEXED_ROWS, RUN_PARTITIONS
from maskdex.storage.region_fragments import RegionFragments
from maskdex.storage.tables import KEEP_VERSIONS_FOR


@dataclass(frozen=True)
class CommitPolicy:
    commit_images: int = 4096
    commit_rows: int = 65_536  # region rows per commit (about 200 MB of 768-d embeddings)
    commit_seconds: float = 10.0
    compact_every: int = 32  # commits between tidies
    # Region rows committed between tidies, whatever the commit count: the rows a search scans flat
    # beside the vector index stay about this many, unless a training runs or the ingest outpaces
    # the folds (about a core-second per 7,000 rows of 768-d).
    upkeep_rows: int = MAX_UNINDEXED_ROWS
    # Worker writes (one regions fragment each) between tidies: searches and commits slow down with
    # the fragment count, and a job writes one fragment per model batch.
    merge_fragments: int = 256
    # Growth of the table since the last training that retrains the vector index during a run. Rows
    # committed while a training runs are searched flat until it commits: on 2 cores, trainings at
    # each doubling (what run_index's closing upkeep uses, vector_index.RETRAIN_GROWTH) ran for 291 s
    # of a 200k-image run's 306; at 8x, two took 70 s. Between trainings new rows are folded into the
    # partitions the index has, so their lists grow and a query's probes scan more of them.
    retrain_growth: float = 8.0
    # Partitions of a training during the run (None: sqrt(rows), as after it): fewer make every fold
    # cheaper (vector_index.RUN_PARTITIONS says by how much), and the closing upkeep retrains.
    run_partitions: int | None = RUN_PARTITIONS
    background_upkeep: bool = True  # False: upkeep blocks the commit that triggered it (deterministic, for tests)

    def __post_init__(self):
        for name in ("commit_images", "commit_rows", "compact_every", "upkeep_rows", "merge_fragments"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.run_partitions is not None and self.run_partitions < 1:
            raise ValueError(f"run_partitions must be >= 1 (or None: sqrt(rows)), got {self.run_partitions}")
        if not self.retrain_growth > 1:
            raise ValueError(f"retrain_growth must be > 1, got {self.retrain_growth}")
        if not self.commit_seconds > 0:
            raise ValueError(f"commit_seconds must be > 0, got {self.commit_seconds}")


class IndexWriter:
    def __init__(self, store: IndexStore, policy: CommitPolicy = CommitPolicy(), *, clock=time.monotonic):
        self.store = store
        self.policy = policy
        self.known = store.known_ids()
        self.commits = 0
        self.tidies = 0
        self.index_reports: list[dict] = []  # one per vector index training
        self.tidy_seconds = 0.0
        self.training_seconds = 0.0
        self.committed_images = 0
        self._clock = clock
        self._images: dict[str, dict] = {}
        self._writes: list[RegionFragments] = []
        self._rows = 0
        self._taken_writes = DigestSet(16)  # writes whose fragments are committed or buffered
        self._since_tidy = 0
        self._rows_since_tidy = 0
        self._fragments_since_tidy = 0
        self._last_commit = clock()
        self._frozen: frozenset[int] = frozenset()  # the fragments a training in flight reads
        self._snapshot_lock = threading.Lock()
        self._tidy = _Lane("maskdex-tidy", policy.background_upkeep)
        self._training = _Lane("maskdex-train", policy.background_upkeep)

    def add(self, images: list[dict], written: RegionFragments) -> list[bool]:
        """Buffer one worker write: its images rows (each with its n_regions) and the fragments
        holding their regions; commits when the buffer is due. Returns, per image, whether it was
        taken: an image already stored or buffered (a duplicate) is not.

        The run's claims (pipelines/index/claims.py) give every image one owner, so a write's images
        are new or, when Ray delivers a retried batch's output twice, all seen before: then its
        fragments are dropped, never committed. A write that mixes both would store regions twice,
        and is refused with ValueError."""
        if len(images) != written.images:
            raise ValueError(f"a write of {written.images} images arrived with {len(images)}: its rows were "
                             f"split from its fragments, and committing part of them would orphan regions")
        seen: set[str] = set()
        taken = []
        for row in images:
            image_id = row["image_id"]
            taken.append(image_id not in seen and image_id not in self._images
                         and image_key(image_id) not in self.known)
            seen.add(image_id)
        if written.fragments:
            bearing = [took for row, took in zip(images, taken) if row["n_regions"]]
            if written.key in self._taken_writes or not any(bearing):
                return [False] * len(images)  # delivered before: its regions are taken already
            if not all(bearing):
                repeated = next(row["image_id"] for row, took in zip(images, taken) if row["n_regions"] and not took)
                raise ValueError(f"a write holds regions of image {repeated}, which this run has already taken, "
                                 f"beside new ones: committing it would store that image's regions twice")
            self._taken_writes.add(written.key)
            self._writes.append(written)
            self._rows += written.rows
        for row, took in zip(images, taken):
            if took:
                self._images[row["image_id"]] = row
        if self._due():
            self.flush()
        return taken

    @property
    def pending_images(self) -> int:
        return len(self._images)

    def flush(self) -> int:
        """Commit what is buffered (the regions' fragments, then their images rows); tidy when due."""
        self._last_commit = self._clock()
        if not self._images:
            return 0
        images, written = list(self._images.values()), RegionFragments.merged(self._writes)
        self._images, self._writes, self._rows = {}, [], 0
        committed = self.store.commit_written(images, written, known=self.known)
        self.commits += 1
        self.committed_images += committed
        self._since_tidy += 1
        self._rows_since_tidy += written.rows
        self._fragments_since_tidy += len(written.fragments)
        policy = self.policy
        if (self._since_tidy >= policy.compact_every or self._rows_since_tidy >= policy.upkeep_rows
                or self._fragments_since_tidy >= policy.merge_fragments):
            self.compact()
        return committed

    def compact(self) -> None:
        """Upkeep now: a tidy, then a training if one is due (each skipped while its previous one
        still runs; the tidy is due again at the next commit)."""
        if self._tidy.start(self._run_tidy):
            self._since_tidy = self._rows_since_tidy = self._fragments_since_tidy = 0
        if not self._tidy.background:
            self._training.start(self._run_training)

    def close(self) -> None:
        """Commit what is buffered and wait for upkeep in flight."""
        try:
            self.flush()
        finally:
            self._tidy.close()
            self._training.close()

    def _run_tidy(self) -> None:
        started = time.monotonic()
        with self._snapshot_lock:
            self.store.upkeep.tidy(frozen=self._frozen, keep_versions_for=KEEP_VERSIONS_FOR)
        self.tidy_seconds += time.monotonic() - started
        self.tidies += 1
        if self._tidy.background:
            # Chained from here, not from flush, so the commit thread never waits on the check.
            self._training.start(self._run_training)

    def _run_training(self) -> None:
        with self._snapshot_lock:
            snapshot = self.store.upkeep.regions_snapshot()
            if not self.store.upkeep.vector_index_due(snapshot, growth=self.policy.retrain_growth,
                                               max_partitions=self.policy.run_partitions):
                return
            self._frozen = frozenset(fragment.fragment_id for fragment in snapshot.get_fragments())
        started = time.monotonic()
        try:
            report = self.store.upkeep.train_vector_index(snapshot, max_partitions=self.policy.run_partitions)
            self.index_reports.append(report)
        finally:
            with self._snapshot_lock:
                self._frozen = frozenset()
            self.training_seconds += time.monotonic() - started

    def _due(self) -> bool:
        policy = self.policy
        return (len(self._images) >= policy.commit_images or self._rows >= policy.commit_rows
                or self._clock() - self._last_commit >= policy.commit_seconds)


class _Lane:
    """One background thread running one job at a time (or, not background, the caller's thread)."""

    def __init__(self, name: str, background: bool):
        self.background = background
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) if background else None
        self._job: Future | None = None

    def start(self, job) -> bool:
        """Run job unless the previous one still runs; False when skipped. A failure of the
        previous job surfaces here, never silently."""
        if self._job is not None:
            if not self._job.done():
                return False
            previous, self._job = self._job, None
            previous.result()
        if self._executor is None:
            job()
        else:
            self._job = self._executor.submit(job)
        return True

    def close(self) -> None:
        try:
            if self._job is not None:
                job, self._job = self._job, None
                job.result()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)

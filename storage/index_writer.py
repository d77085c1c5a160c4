"""IndexWriter: the one committer of an index run, with commits sized by rows and time.

A commit adds fragments and a version to each table, and a commit's cost grows with the
fragments it must list, so committing every few images slows a long run down as 1/n (measured:
576 -> 59 images/s within 20k images). The writer buffers and commits when the buffer holds
`commit_rows` region rows or `commit_images` images, or `commit_seconds` have passed since the
last commit (so a killed run loses at most that much work). Every `compact_every` commits, or
`upkeep_rows` region rows, it compacts and keeps the vector index up (built once the table is large
enough, refreshed, retrained as it outgrows its training set: IndexStore.maybe_build_index), so the
fragment count, and with it commit cost and search latency, stay flat. Duplicates are caught
against an in-memory DigestSet of stored ids instead of a query per commit.

The regions arrive already written, as Lance fragments by the workers (storage/region_fragments.py):
it buffers images rows and fragment metadata, and counts region rows from what the workers
report, so no region embedding passes through it.

Upkeep runs on a background thread (one at a time) while commits go on: Lance lets an append
commit beside a compaction or an index build, and a vector index (re)build on a large table takes
minutes that would otherwise stall the whole pipeline behind the writer.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from maskdex.storage.digests import DigestSet, image_key
from maskdex.storage.index_store import IndexStore
from maskdex.storage.region_fragments import RegionFragments

# Versions a compaction during a run keeps: a reader that opened one of them a moment ago can
# finish its query; older ones (one per commit) would only pile up manifests.
KEEP_VERSIONS_FOR = timedelta(minutes=5)


@dataclass(frozen=True)
class CommitPolicy:
    commit_images: int = 4096
    commit_rows: int = 65_536  # region rows per commit (about 200 MB of 768-d embeddings)
    commit_seconds: float = 10.0
    compact_every: int = 32  # commits between compactions
    upkeep_rows: int = 100_000  # region rows between compactions and index upkeep, whatever the commit count
    # Worker writes (one regions fragment each) between merges of the small fragments: searches and
    # commits slow down with the fragment count, and a job writes one fragment per model batch.
    merge_fragments: int = 256
    background_upkeep: bool = True  # False: upkeep blocks the commit that triggered it (deterministic, for tests)

    def __post_init__(self):
        for name in ("commit_images", "commit_rows", "compact_every", "upkeep_rows", "merge_fragments"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.commit_seconds > 0:
            raise ValueError(f"commit_seconds must be > 0, got {self.commit_seconds}")


class IndexWriter:
    def __init__(self, store: IndexStore, policy: CommitPolicy = CommitPolicy(), *, clock=time.monotonic):
        self.store = store
        self.policy = policy
        self.known = store.known_ids()
        self.commits = 0
        self.compactions = 0
        self.merges = 0
        self.index_reports: list[dict] = []  # what each compaction did to the vector index
        self.compaction_seconds = 0.0
        self.committed_images = 0
        self._clock = clock
        self._images: dict[str, dict] = {}
        self._writes: list[RegionFragments] = []
        self._rows = 0
        self._taken_writes = DigestSet(16)  # writes whose fragments are committed or buffered
        self._since_compaction = 0
        self._rows_since_compaction = 0
        self._fragments_since_merge = 0
        self._last_commit = clock()
        self._upkeep: Future | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskdex-upkeep") \
            if policy.background_upkeep else None

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
        """Commit what is buffered (the regions' fragments, then their images rows); compact when due."""
        self._last_commit = self._clock()
        if not self._images:
            return 0
        images, written = list(self._images.values()), RegionFragments.merged(self._writes)
        self._images, self._writes, self._rows = {}, [], 0
        committed = self.store.commit_written(images, written, known=self.known)
        self.commits += 1
        self.committed_images += committed
        self._since_compaction += 1
        self._rows_since_compaction += written.rows
        self._fragments_since_merge += len(written.fragments)
        if (self._since_compaction >= self.policy.compact_every
                or self._rows_since_compaction >= self.policy.upkeep_rows):
            self.compact()
        elif self._fragments_since_merge >= self.policy.merge_fragments:
            self._start_upkeep(self._run_merge, compaction=False)
        return committed

    def compact(self) -> None:
        """Compaction and index upkeep now (in the background when the policy says so; skipped
        while the previous one still runs, and due again at the next commit)."""
        self._start_upkeep(self._run_upkeep, compaction=True)

    def _start_upkeep(self, upkeep, *, compaction: bool) -> None:
        if self._upkeep is not None:
            if not self._upkeep.done():
                return
            self._upkeep.result()  # an upkeep failure surfaces here, never silently
            self._upkeep = None
        self._fragments_since_merge = 0  # a compaction merges them too
        if compaction:
            self._since_compaction = self._rows_since_compaction = 0
        if self._executor is None:
            upkeep()
        else:
            self._upkeep = self._executor.submit(upkeep)

    def close(self) -> None:
        """Commit what is buffered and wait for upkeep in flight."""
        try:
            self.flush()
        finally:
            if self._upkeep is not None:
                upkeep, self._upkeep = self._upkeep, None
                upkeep.result()
            if self._executor is not None:
                self._executor.shutdown(wait=True)

    def _run_upkeep(self) -> None:
        started = time.monotonic()
        report = self.store.maybe_build_index(keep_versions_for=KEEP_VERSIONS_FOR)
        self.compaction_seconds += time.monotonic() - started
        if report is not None:
            self.index_reports.append(report)
        self.compactions += 1

    def _run_merge(self) -> None:
        self.store.merge_small_fragments()
        self.merges += 1

    def _due(self) -> bool:
        policy = self.policy
        return (len(self._images) >= policy.commit_images or self._rows >= policy.commit_rows
                or self._clock() - self._last_commit >= policy.commit_seconds)

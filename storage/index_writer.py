"""IndexWriter: the one committer of an index run, with commits sized by rows and time.

A commit adds one fragment and one version to each table, and a commit's cost grows with the
fragments it must list, so committing every few images slows a long run down as 1/n (measured:
576 -> 59 images/s within 20k images). The writer buffers rows and commits when the buffer holds
`commit_rows` region rows or `commit_images` images, or `commit_seconds` have passed since the
last commit (so a killed run loses at most that much work). Every `compact_every` commits, or
`upkeep_rows` region rows, it compacts and keeps the vector index up (built once the table is large
enough, refreshed, retrained as it outgrows its training set: IndexStore.maybe_build_index), so the
fragment count, and with it commit cost and search latency, stay flat. Duplicates are caught
against an in-memory DigestSet of stored ids instead of a query per commit.

Upkeep runs on a background thread (one at a time) while commits go on: Lance lets an append
commit beside a compaction or an index build, and a vector index (re)build on a large table takes
minutes that would otherwise stall the whole pipeline behind the writer.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from maskdex.storage.digests import image_key
from maskdex.storage.index_store import IndexStore

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
    background_upkeep: bool = True  # False: upkeep blocks the commit that triggered it (deterministic, for tests)

    def __post_init__(self):
        for name in ("commit_images", "commit_rows", "compact_every", "upkeep_rows"):
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
        self.index_reports: list[dict] = []  # what each compaction did to the vector index
        self.compaction_seconds = 0.0
        self.committed_images = 0
        self._clock = clock
        self._images: dict[str, dict] = {}
        self._regions: list[dict] = []
        self._since_compaction = 0
        self._rows_since_compaction = 0
        self._last_commit = clock()
        self._upkeep: Future | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskdex-upkeep") \
            if policy.background_upkeep else None

    def add(self, image_row: dict, region_rows: list[dict]) -> bool:
        """Buffer one image's rows, committing when the buffer is due. False, buffering nothing,
        for an image that is already stored or already buffered (a duplicate)."""
        image_id = image_row["image_id"]
        if image_id in self._images or image_key(image_id) in self.known:
            return False
        self._images[image_id] = image_row
        self._regions.extend(region_rows)
        if self._due():
            self.flush()
        return True

    @property
    def pending_images(self) -> int:
        return len(self._images)

    def flush(self) -> int:
        """Commit what is buffered (regions, then their images rows); compact when due."""
        self._last_commit = self._clock()
        if not self._images:
            return 0
        images, regions = list(self._images.values()), self._regions
        self._images, self._regions = {}, []
        written = self.store.commit(images, regions, known=self.known)
        self.commits += 1
        self.committed_images += written
        self._since_compaction += 1
        self._rows_since_compaction += len(regions)
        if (self._since_compaction >= self.policy.compact_every
                or self._rows_since_compaction >= self.policy.upkeep_rows):
            self.compact()
        return written

    def compact(self) -> None:
        """Compaction and index upkeep now (in the background when the policy says so; skipped
        while the previous one still runs, and due again at the next commit)."""
        if self._upkeep is not None:
            if not self._upkeep.done():
                return
            self._upkeep.result()  # an upkeep failure surfaces here, never silently
            self._upkeep = None
        self._since_compaction = self._rows_since_compaction = 0
        if self._executor is None:
            self._run_upkeep()
        else:
            self._upkeep = self._executor.submit(self._run_upkeep)

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

    def _due(self) -> bool:
        policy = self.policy
        return (len(self._images) >= policy.commit_images or len(self._regions) >= policy.commit_rows
                or self._clock() - self._last_commit >= policy.commit_seconds)

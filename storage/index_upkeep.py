"""The upkeep of an index's tables, apart from committing and reading them (storage/index_store.py).

Two kinds, matching the index writer's two upkeep threads (storage/index_writer.py): tidy, the short
one (merge small fragments, fold new rows into the indexes, drop old versions), and the vector index's
training (due?, on a snapshot). build_index and maybe_build_index do both at the end of a run or on
request, and the search settings of the vector index in place are read here too, since they follow
from how it was trained (storage/vector_index.py).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import TYPE_CHECKING

import lance

from maskdex.storage import vector_index
from maskdex.storage.schemas import IMAGES, REGIONS

if TYPE_CHECKING:
    from maskdex.storage.index_store import IndexStore

# Rows a merge of small region fragments aims at: the size below which a fragment is merged again,
# so each row is rewritten about once by merges, whatever the run's length.
MERGED_ROWS = 65_536


class IndexUpkeep:
    """The upkeep of one open IndexStore's tables (IndexStore.upkeep); writes need a writable store."""

    def __init__(self, store: IndexStore):
        self._store = store
        self._images, self._regions = store.images_table, store.regions_table
        # Per regions-table version: the vector index's search settings (None: no index).
        self._search_state: tuple[int, vector_index.SearchSettings | None] | None = None

    # During a run: storage/index_writer.py runs tidy and train_vector_index on two threads.

    def tidy(self, *, frozen: Collection[int] = (), keep_versions_for: timedelta | None = None) -> int:
        """The short upkeep, cheap enough after every few commits: merge the regions table's small
        fragments (one per worker write) into fragments of up to MERGED_ROWS rows, leaving larger ones
        without deleted rows alone (compact rewrites up to a million rows), compact the images table,
        drop versions older than keep_versions_for (None: Lance's default, days) and, with nothing
        frozen, fold new rows into the indexes, which bounds the unindexed rows every search scans flat.

        Every fragment with deleted rows (a removal's, a sync's) is rewritten without them, however few:
        while any fragment the vector index covers has a deletion file, Lance's ANN search filters every
        probed partition's rows through the deletion mask, a slow path (Lance issue #1246) that made
        search p50 2.5x slower after removing 1% of a 200k-image index (benchmarks/removal.py). The
        rewrite costs the fragments a removal touched, once; searches pay nothing afterwards.

        frozen: the fragment ids a vector index training in flight reads. Rewriting one, or folding
        rows into the index meanwhile, would make its commit fail (Lance: "preempted by concurrent
        transaction Rewrite / CreateIndex"); dropping old versions does not. Returns the regions
        fragments removed."""
        self._store.require_writable("tidy")
        dataset = self.regions_snapshot()
        options = {"target_rows_per_fragment": MERGED_ROWS, "materialize_deletions_threshold": 0.0}
        if frozen:
            options["excluded_fragment_ids"] = sorted(frozen)
        stats = dataset.optimize.compact_files(**options)
        dataset = self.regions_snapshot()
        if not frozen:
            _fold_new_rows(dataset)
        dataset.cleanup_old_versions(older_than=keep_versions_for)
        # The images table too: every search looks its hits' images up there, and `stats` should
        # count no removed row once a removal is tidied.
        self._images.to_lance().optimize.compact_files(materialize_deletions_threshold=0.0)
        self._images.optimize(cleanup_older_than=keep_versions_for)
        return stats.fragments_removed - stats.fragments_added

    def regions_snapshot(self):
        """The regions table's Lance dataset pinned at its latest version: what a training reads."""
        return lance.dataset(self._store.regions_dataset_uri)

    def vector_index_due(self, snapshot=None, *, growth: float = vector_index.RETRAIN_GROWTH,
                         max_partitions: int | None = None) -> bool:
        """Whether a vector index should be trained: none yet and MIN_ROWS regions, or the table
        has outgrown the index by `growth` (VectorIndexParams.outgrown); max_partitions caps what a
        training now would get (a run's trainings), None leaves it sqrt(rows)."""
        rows = (snapshot if snapshot is not None else self.regions_snapshot()).count_rows()
        if vector_index.find_vector_index(self._regions) is None:
            return rows >= vector_index.MIN_ROWS
        return self.vector_params().outgrown(rows, self._store.embed_dim, growth, max_partitions)

    def train_vector_index(self, snapshot, *, max_partitions: int | None = None) -> dict:
        """Train (or retrain) the vector index on a snapshot without compacting first, so commits
        and tidy (off the snapshot's fragments) go on meanwhile; with at most max_partitions
        partitions (a run's trainings: vector_index.RUN_PARTITIONS). Returns build_index's report."""
        self._store.require_writable("train_vector_index")
        rows = snapshot.count_rows()  # before: the commit moves the snapshot to the new version
        dim = self._store.embed_dim
        params = vector_index.VectorIndexParams.for_table(rows, dim, max_partitions=max_partitions)
        vector_index.build_vector_index(self._regions, dim, params=params, snapshot=snapshot)
        return {"regions": rows, "vector_index": "built", **params.describe()}

    # At the end of a run, or on request

    def build_index(self, *, force: bool = False, keep_versions_for: timedelta | None = None) -> dict:
        """Scalar indexes, and the IVF_PQ index on regions.embedding once there are
        vector_index.MIN_ROWS regions (any number from 256 with force). An existing vector index
        is refreshed with optimize(), or retrained when the table has outgrown it (vector_index_due:
        after a run whose trainings were capped, or one killed before its closing upkeep) or with
        force. Returns what was done."""
        self._store.require_writable("build_index")
        # Compaction first, so the vector index trains on few large fragments.
        self.tidy(keep_versions_for=keep_versions_for)
        report = {"regions": self._regions.count_rows(),
                  "scalar_indexes": (vector_index.ensure_scalar_indexes(self._images, IMAGES)
                                     + vector_index.ensure_scalar_indexes(self._regions, REGIONS))}
        indexed = vector_index.find_vector_index(self._regions) is not None
        if indexed and not (force or self.vector_index_due()):
            return {**report, "vector_index": "refreshed", **self.vector_params().describe()}
        if not indexed and report["regions"] < vector_index.MIN_ROWS and not force:
            return {**report, "vector_index": "skipped",
                    "reason": f"{report['regions']} regions is below {vector_index.MIN_ROWS}, where exact search is "
                              f"fast; force=True builds one anyway"}
        params = vector_index.build_vector_index(self._regions, self._store.embed_dim)
        return {**report, "vector_index": "built", **params.describe()}

    def maybe_build_index(self, *, keep_versions_for: timedelta | None = None) -> dict | None:
        """During and after an index run: build the vector index once the table is large enough,
        retrain it when the table has outgrown what it was trained on, refresh it otherwise.
        Compacts the tables in any case; returns build_index's report, or None when no vector
        index is due."""
        self._store.require_writable("maybe_build_index")
        if vector_index.find_vector_index(self._regions) is None and self._regions.count_rows() < vector_index.MIN_ROWS:
            self.tidy(keep_versions_for=keep_versions_for)
            return None
        return self.build_index(keep_versions_for=keep_versions_for)

    # What searches use

    def search_settings(self, version: int) -> vector_index.SearchSettings | None:
        """The vector index's search settings at this regions-table version (None: no vector index)."""
        # Listing the indexes and reading the recorded parameters are two round trips; the table
        # version is one, and they change only with it.
        state = self._search_state
        if state is None or state[0] != version:
            index = vector_index.find_vector_index(self._regions)
            state = (version, None if index is None else self.vector_params(index).search_settings())
            self._search_state = state
        return state[1]

    def vector_params(self, index=None) -> vector_index.VectorIndexParams:
        """The parameters the vector index was trained with."""
        # An index built by hand (or before its record was written) gets the parameters that
        # build_index would have chosen for the rows it covers.
        recorded = vector_index.VectorIndexParams.recorded(self._regions)
        if recorded is not None:
            return recorded
        index = index or vector_index.find_vector_index(self._regions)
        return vector_index.VectorIndexParams.for_table(index.num_indexed_rows or 0, self._store.embed_dim)


def _fold_new_rows(dataset) -> None:
    """Index the regions no index covers yet. New rows go into a new segment of the vector index
    (Lance's default merges them into the previous segment, rewriting it: 24 s against 2 s for 32k new
    rows beside 500k indexed, on 2 cores); once there are MAX_INDEX_SEGMENTS, the segments since the
    training merge into one, so queries never search more than that many."""
    for index in dataset.describe_indices():
        if index.name == vector_index.VECTOR_INDEX_NAME:
            count = len(index.segments)
            merge = count - 1 if count >= vector_index.MAX_INDEX_SEGMENTS else 0
            dataset.optimize.optimize_indices(index_names=[index.name], num_indices_to_merge=merge)
        else:
            dataset.optimize.optimize_indices(index_names=[index.name])

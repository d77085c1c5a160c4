"""The ANN index on regions.embedding, its search settings, and the scalar indexes beside it.

IVF_PQ with the cosine metric. Region embeddings are unit length, so cosine ranks exactly as the
inner product the search promises; Lance trains IVF partitions on "dot" worse than on "cosine"
(recall@10 0.93 against 0.96 at the same probes on clustered unit vectors). IVF_PQ rather than
IVF_HNSW_SQ because it trains 5x faster (70 s against 360 s at 1M x 768 on 2 cores), which an index
run's retraining needs, and searches faster at the recall aim (17-21 against 27-32 ms at 1M); its
coarse PQ distances are made exact again by re-scoring the candidates on the stored vectors
(refine_factor). float32 rather than float16 vectors: float16 searched no faster and trained 7.6x
slower on a CPU without float16 arithmetic. benchmarks/search_latency.py compares them (and the search
settings below) at 100k and 1M regions; the README has its table.

The parameters an index was trained with are recorded in the metadata of the regions.embedding
field, because Lance does not report them and search needs the partition count to choose nprobes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from lancedb.index import BTree

from maskdex.storage.schemas import IMAGES, REGIONS

METRIC = "cosine"
VECTOR_COLUMN = "embedding"
VECTOR_INDEX_NAME = "embedding_idx"  # Lance's name for an index on VECTOR_COLUMN
# Segments of the vector index (the trained one, then one per fold of new rows) that a query may
# have to search before the folds merge theirs (IndexUpkeep.tidy).
MAX_INDEX_SEGMENTS = 8
INDEX_TYPES = ("IVF_PQ", "IVF_HNSW_SQ")
INDEX_TYPE = "IVF_PQ"
_PARAMS_KEY = b"maskdex.ivf_pq"

# Below this a flat scan is cheap and exact. Above it, the rows an index does not cover yet (added
# since its last build or optimize) are scanned flat beside it, at 3 to 6 us per 768-d row on one
# shared core (benchmarks/search_latency.py prints it): the indexer keeps them under
# MAX_UNINDEXED_ROWS, about 15 to 30 ms, so they never make a query slower than twice an indexed one.
MIN_ROWS = 10_000
MAX_UNINDEXED_ROWS = 5_000
# 8-bit PQ learns 256 centroids per sub-vector and needs at least that many training vectors.
MIN_TRAINING_ROWS = 256
# Retrain (rather than optimize) once the table has outgrown the rows the partitions were
# trained on by this factor: optimize() only files new rows into the old partitions.
RETRAIN_GROWTH = 2.0
# The most partitions a training during an index run gets (storage/index_writer.py). A fold files
# every new row under its nearest partition, so its cost grows with the partition count: 37, 55, 64
# and 100 us of CPU per 768-d row at 64, 256, 512 and 1024 partitions (pylance 14, 2 cores, 32k new
# rows), which at sqrt(rows) partitions past 1M rows is a core at full ingest. The retraining after
# the run gives the table its sqrt(rows) partitions (VectorIndexParams.outgrown).
RUN_PARTITIONS = 256

# Search settings, from benchmarks/search_latency.py at 1M x 768 (1000 partitions, README table):
# 20 probes reach recall@10 0.974 in 17 ms (p50), 32 probes 0.978 in 19 ms, 100 probes 1.000 for 2.4x
# the latency; re-scoring 2 x limit PQ candidates on the stored vectors is as exact as 5 x and half
# the reads, and without it recall falls to 0.92. Recall depends on how many partitions the query's
# neighbours spread over, not on the table size, so the probes are a small fraction of the
# sqrt(rows) partitions with a floor that holds recall at 100k (316 partitions: 0.994 at 20 probes).
NPROBES_FRACTION = 0.02
MIN_NPROBES = 20
REFINE_FACTOR = 2
# IVF_HNSW_SQ: few large partitions, each a graph searched with this beam width.
HNSW_PARTITION_ROWS = 100_000
HNSW_EF = 100

# Scalar indexes: image_id for dedup lookups, recovery and filters; area for the area filters.
SCALAR_COLUMNS = {IMAGES: ("image_id",), REGIONS: ("image_id", "area")}


# k-means training of the IVF partitions: vectors sampled per partition, and iterations. Lance's
# defaults (256, 50) made a training over 2.4M x 768 take minutes on 2 cores, during which an index
# run folds no new rows into the index (storage/index_writer.py); 64 and 20 (faiss trains IVF with
# at most 256 points per centroid and 20-25 iterations) trained 7x faster in one measurement
# (benchmarks/search_latency.py shows the recall at 1M).
SAMPLE_RATE = 64
MAX_ITERS = 20
# What an index recorded before these were settings was trained with: Lance's defaults.
_LANCE_DEFAULT_TRAINING = {"sample_rate": 256, "max_iters": 50}


@dataclass(frozen=True)
class VectorIndexParams:
    num_partitions: int
    num_sub_vectors: int
    trained_rows: int
    index_type: str = INDEX_TYPE
    sample_rate: int = SAMPLE_RATE
    max_iters: int = MAX_ITERS

    @classmethod
    def for_table(cls, rows: int, dim: int, index_type: str = INDEX_TYPE, *,
                  max_partitions: int | None = None) -> VectorIndexParams:
        if index_type not in INDEX_TYPES:
            raise ValueError(f"unknown vector index type {index_type!r}; known: {list(INDEX_TYPES)}")
        if index_type == "IVF_HNSW_SQ":
            partitions = max(1, round(rows / HNSW_PARTITION_ROWS))
        else:
            # sqrt(rows) partitions balances the centroid scan against the partition scan; Lance
            # trains at most rows / 256 of them (and warns), so ask for no more.
            partitions = max(1, min(round(math.sqrt(rows)), rows // MIN_TRAINING_ROWS))
        if max_partitions is not None:
            partitions = min(partitions, max_partitions)
        return cls(num_partitions=partitions, num_sub_vectors=sub_vectors(dim), trained_rows=rows,
                   index_type=index_type)

    def outgrown(self, rows: int, dim: int, growth: float, max_partitions: int | None = None) -> bool:
        """Whether an index trained with these parameters should be retrained now that the table
        holds rows: it has grown `growth` times since, or a training now (with at most max_partitions)
        would give it more than `growth` times its partitions, as after a run trained at RUN_PARTITIONS."""
        wanted = VectorIndexParams.for_table(rows, dim, self.index_type, max_partitions=max_partitions)
        return rows > growth * self.trained_rows or growth * self.num_partitions < wanted.num_partitions

    @classmethod
    def recorded(cls, table) -> VectorIndexParams | None:
        return cls.from_schema(table.schema)

    @classmethod
    def from_schema(cls, schema) -> VectorIndexParams | None:
        metadata = schema.field(VECTOR_COLUMN).metadata or {}
        if _PARAMS_KEY not in metadata:
            return None
        return cls(**{**_LANCE_DEFAULT_TRAINING, **json.loads(metadata[_PARAMS_KEY])})

    def record(self, table) -> None:
        table.update_field_metadata({"path": VECTOR_COLUMN, "metadata": {_PARAMS_KEY.decode(): json.dumps(asdict(self))}})

    def create_arguments(self) -> dict:
        """LanceDataset.create_index's arguments for this index."""
        arguments = {"index_type": self.index_type, "metric": METRIC, "num_partitions": self.num_partitions,
                     "sample_rate": self.sample_rate, "max_iters": self.max_iters}
        if self.index_type == "IVF_PQ":
            arguments["num_sub_vectors"] = self.num_sub_vectors
        return arguments

    def nprobes(self) -> int:
        if self.index_type == "IVF_HNSW_SQ":
            return self.num_partitions
        return min(self.num_partitions, max(MIN_NPROBES, math.ceil(NPROBES_FRACTION * self.num_partitions)))

    def search_settings(self) -> SearchSettings:
        ef = HNSW_EF if self.index_type == "IVF_HNSW_SQ" else None
        return SearchSettings(nprobes=self.nprobes(), refine_factor=REFINE_FACTOR, ef=ef)

    def describe(self) -> dict:
        return {"index_type": self.index_type, "metric": METRIC, **asdict(self),
                **asdict(self.search_settings())}


# The name this class had while IVF_PQ was the only kind.
IvfPqParams = VectorIndexParams


@dataclass(frozen=True)
class SearchSettings:
    """How a query uses the vector index: partitions probed, the candidates re-scored exactly
    (refine_factor x limit; None: none), and the HNSW beam width (None: Lance's default)."""

    nprobes: int
    refine_factor: int | None = REFINE_FACTOR
    ef: int | None = None


def sub_vectors(dim: int) -> int:
    """A PQ sub-vector count dividing dim: 8 dimensions per code where possible (Lance's SIMD
    kernels favour 8 or 16 and 8 keeps more accuracy), else the widest of 4, 2, 1 that divides."""
    for width in (8, 4, 2):
        if dim % width == 0:
            return dim // width
    return dim


def find_vector_index(table):
    """The IndexConfig of the table's index on the embedding column, or None."""
    return next((index for index in table.list_indices() if index.columns == [VECTOR_COLUMN]), None)


def build_vector_index(table, dim: int, *, index_type: str = INDEX_TYPE,
                       params: VectorIndexParams | None = None, snapshot=None) -> VectorIndexParams:
    """Train the vector index (replacing any) and record its parameters on the table. snapshot: the
    table's Lance dataset pinned at the version to train on (default: the latest). A training takes
    minutes at millions of rows; appends, and rewrites of fragments the snapshot does not hold, may
    commit meanwhile (Lance rebases the index onto them), but a rewrite of one it holds makes the
    index's commit fail (storage/index_writer.py keeps its merges off them)."""
    dataset = snapshot if snapshot is not None else table.to_lance()
    rows = dataset.count_rows()
    if rows < MIN_TRAINING_ROWS:
        raise ValueError(f"a vector index needs at least {MIN_TRAINING_ROWS} regions to train; there are {rows}")
    params = params or VectorIndexParams.for_table(rows, dim, index_type)
    dataset.create_index(VECTOR_COLUMN, name=VECTOR_INDEX_NAME, replace=True, **params.create_arguments())
    params.record(table)
    return params


def ensure_scalar_indexes(table, table_name: str) -> list[str]:
    """Create the missing BTREE indexes of SCALAR_COLUMNS; returns 'table.column' for each."""
    indexed = {tuple(index.columns) for index in table.list_indices()}
    for column in SCALAR_COLUMNS[table_name]:
        if (column,) not in indexed:
            table.create_index(column, config=BTree(), replace=False)
    return [f"{table_name}.{column}" for column in SCALAR_COLUMNS[table_name]]

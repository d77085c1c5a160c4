"""What every maskdex store does to its LanceDB tables the same way: connect, read, quote, check.

One place, so that the index store and the support store cannot drift apart on how fresh a read is,
how a value is quoted into SQL, what counts as a unit vector, or what a table without maskdex's
build record is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import timedelta

import lancedb
import numpy as np

from maskdex.storage import schemas

# Every read first checks for a newer table version (a fraction of a millisecond on a local disk):
# several processes may share one database, and a long-lived reader must see their commits.
READ_CONSISTENCY = timedelta(0)
# Embeddings and prototypes are compared by inner product; a vector this far from unit length was
# not normalised (or was cast badly), and would skew scores stored next to the others.
UNIT_NORM_TOLERANCE = 1e-2


class ModelMismatchError(ValueError):
    """The database was built by another model (or with another embedding dimension)."""


# A reader (a search service) checks at most this often, which spares each query the version round
# trips and still shows a new commit within a second.
READER_CONSISTENCY = timedelta(milliseconds=500)
# Versions an upkeep during a write keeps: a reader that opened one of them a moment ago can finish
# its query (readers look for a newer one every 0.5 s). Older ones pin the files that merges
# replaced: at 60 MB/s of regions, every minute kept is 3.6 GB of disk (a 200k-image run peaked at
# 3x its table size with 5 minutes kept and no cleanup while a training ran).
KEEP_VERSIONS_FOR = timedelta(minutes=1)


def connect(uri: str, *, reader: bool = False):
    return lancedb.connect(uri, read_consistency_interval=READER_CONSISTENCY if reader else READ_CONSISTENCY)


def build_record(uri: str, name: str, table) -> tuple[str, int]:
    """(model, embed_dim) recorded in a table's schema; ValueError for a table maskdex did not create."""
    recorded = schemas.recorded_build(table.schema)
    if recorded is None:
        raise ValueError(f"table {name} at {uri} was not created by maskdex (its schema has no build record)")
    return recorded


def select(table, where: str | None = None, columns: list[str] | None = None):
    """Every row matching where (all rows for None), as one Arrow table."""
    query = table.search()
    if where:
        query = query.where(where)
    if columns:
        query = query.select(columns)
    return query.limit(None).to_arrow()


def batches(table, columns: list[str], where: str | None = None):
    """The same rows as record batches, streamed: a scan of a 10M-row table never holds it whole."""
    query = table.search()
    if where:
        query = query.where(where)
    return query.select(columns).limit(None).to_batches()


def deleted_rows(table) -> int:
    """Rows deleted from the table whose bytes are still in its data files: Lance hides them at once
    (deletion files) and drops them when a compaction rewrites their fragment."""
    return sum(fragment.metadata.deletion_file.num_deleted_rows for fragment in table.to_lance().get_fragments()
               if fragment.metadata.deletion_file is not None)


def read_note(table, key: str) -> dict | None:
    """A JSON note kept in the table's Lance config (say, the last sync), or None."""
    text = table.to_lance().config().get(key)
    return None if text is None else json.loads(text)


def write_note(table, key: str, note: dict) -> None:
    """Keep a JSON note in the table's Lance config: one small commit, kept through compactions."""
    table.to_lance().update_config({key: json.dumps(note, default=str)})


def sql_string(value: str) -> str:
    """A SQL string literal, quotes escaped."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_strings(values: Iterable[str]) -> str:
    """A SQL list literal of strings, for `IN`."""
    return "(" + ", ".join(sql_string(value) for value in values) + ")"


def off_unit_norm(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: whether it is non-finite or not L2-normalised, and its norm."""
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    return ~np.isfinite(matrix).all(axis=1) | (np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE), norms


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]

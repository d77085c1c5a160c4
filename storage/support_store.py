"""SupportStore: the `supports` table, the RNS memory of labelled examples, grouped in named sets.

One row per (support image, class present in it): the class's prototype in that image. Class-level
features are derived from these rows when a set is loaded, never stored. A set exists while it
has rows. The table records which dense model made its prototypes, and refuses any other.

Writing an image's rows replaces whatever its set held for that image (same image_id): adding an
example again with corrected labels corrects it, and a re-run never duplicates a row. Every `add`
is one commit, so an image's rows are all there or none are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from maskdex.storage import schemas, tables
from maskdex.storage.schemas import SUPPORTS
from maskdex.storage.tables import ModelMismatchError, sql_string, sql_strings
ROW_FIELDS = ("set_name", "class_name", "image_id", "prototype", "n_pixels")
_KEY = ["set_name", "image_id", "class_name"]


@dataclass(frozen=True)
class SupportArrays:
    """A set's memory as arrays, in the class order asked for: row r is prototypes[r], of class
    classes[class_ids[r]], from support image image_ids[r] (0..n_images-1 within this load)."""

    classes: tuple[str, ...]
    prototypes: np.ndarray  # (N, D) float32, L2-normalised
    class_ids: np.ndarray  # (N,) int64
    image_ids: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.class_ids)

    @property
    def images_per_class(self) -> dict[str, int]:
        counts = np.bincount(self.class_ids, minlength=len(self.classes))
        return {name: int(count) for name, count in zip(self.classes, counts)}


class SupportStore:
    """Open with `SupportStore.open`."""

    def __init__(self, uri: str, table, dense_model: str, embed_dim: int):
        self.uri = uri
        self.dense_model = dense_model
        self.embed_dim = embed_dim
        self._table = table

    @classmethod
    def open(cls, uri: str, *, dense_model: str | None, embed_dim: int | None, create: bool = True) -> SupportStore:
        """The supports table of the database at uri (beside an index, or alone), created on first use.

        dense_model (the name of the dense CLIP that makes prototypes) and embed_dim must match what
        the table was built with (ModelMismatchError names both); None accepts whatever it holds.
        Creating needs both.
        """
        if not create and "://" not in uri and not os.path.isdir(uri):
            # Checked before connecting, which would create the folder.
            raise FileNotFoundError(f"no support sets at {uri}: there is no such folder")
        # A long-lived segmenter sees examples added by other processes at its next call.
        db = tables.connect(uri)
        if SUPPORTS in db:
            table = db.open_table(SUPPORTS)
            recorded = tables.build_record(uri, SUPPORTS, table)
        else:
            if not create:
                raise FileNotFoundError(f"no support sets at {uri} (it has no {SUPPORTS} table)")
            if not dense_model or embed_dim is None or embed_dim < 1:
                raise ValueError(f"creating the {SUPPORTS} table at {uri} needs a dense model name and a positive "
                                 f"embed_dim (got {dense_model!r}, {embed_dim!r})")
            table = db.create_table(SUPPORTS, schema=schemas.supports_schema(embed_dim, dense_model), exist_ok=True)
            recorded = tables.build_record(uri, SUPPORTS, table)  # another process may have created it first
        _check_same_model(uri, recorded, dense_model, embed_dim)
        return cls(uri, table, *recorded)

    @property
    def version(self) -> int:
        """The table's latest version: it changes with every write, from any process."""
        return self._table.version

    # Writing

    def add(self, rows: list[dict]) -> int:
        """Write rows {set_name, class_name, image_id, prototype, n_pixels, uri (optional)}, in one commit.

        Every (set, image) in the batch replaces the rows stored for it. Raises ValueError, writing
        nothing, on a bad row. Returns the number of rows written.
        """
        if isinstance(rows, Mapping) or not all(isinstance(row, Mapping) for row in rows):
            raise ValueError("rows must be a list of row dicts")
        if not rows:
            return 0
        table = self._arrow(rows)
        stored = " OR ".join(
            f"(set_name = {sql_string(set_name)} AND image_id IN {sql_strings(sorted(set(ids)))})"
            for set_name, ids in _group(table, "set_name", "image_id").items())
        (self._table.merge_insert(_KEY)
         .when_matched_update_all()
         .when_not_matched_insert_all()
         .when_not_matched_by_source_delete(stored)
         .execute(table))
        return table.num_rows

    def remove_set(self, set_name: str) -> int:
        """Delete a whole set; returns the rows deleted."""
        self._require_set(set_name)
        return self._table.delete(f"set_name = {sql_string(set_name)}").num_deleted_rows

    def remove_class(self, set_name: str, class_name: str) -> int:
        """Delete one class of a set (the set goes when its last class does); returns the rows deleted."""
        classes = self._require_set(set_name)
        if class_name not in classes:
            raise ValueError(f"support set {set_name!r} has no class {class_name!r}; it has "
                             f"{', '.join(map(repr, sorted(classes)))}")
        where = f"set_name = {sql_string(set_name)} AND class_name = {sql_string(class_name)}"
        return self._table.delete(where).num_deleted_rows

    def optimize(self) -> None:
        """Compact the small fragments that many adds leave, so loads stay fast."""
        self._table.optimize()

    # Reading

    def list_sets(self) -> dict[str, dict[str, int]]:
        """{set: {class: number of support images}}, sorted by name."""
        counts = self._select(None, ["set_name", "class_name"]).group_by(["set_name", "class_name"]).aggregate(
            [([], "count_all")])
        sets: dict[str, dict[str, int]] = {}
        for row in sorted(counts.to_pylist(), key=lambda r: (r["set_name"], r["class_name"])):
            sets.setdefault(row["set_name"], {})[row["class_name"]] = row["count_all"]
        return sets

    def load(self, set_name: str, classes: list[str] | None = None) -> SupportArrays:
        """The set's prototypes for the given classes, in that order (default: all its classes, sorted).

        A class the set has no example of is allowed: it simply has no row (RNS then relies on text).
        """
        if classes is not None:
            classes = list(classes)
            if not classes:
                raise ValueError("classes is empty: name at least one class, or pass None for all of the set's")
            repeated = sorted({name for name in classes if classes.count(name) > 1})
            if repeated:
                raise ValueError(f"classes named more than once: {', '.join(map(repr, repeated))}")
        table = self._select(f"set_name = {sql_string(set_name)}", ["class_name", "image_id", "prototype"])
        if not table.num_rows:
            self._require_set(set_name)
        order = classes if classes is not None else sorted(pc.unique(table["class_name"]).to_pylist())
        position = {name: index for index, name in enumerate(order)}
        table = table.filter(pc.is_in(table["class_name"], value_set=pa.array(order, pa.string())))
        class_ids = np.array([position[name] for name in table["class_name"].to_pylist()], dtype=np.int64)
        _, image_ids = np.unique(np.asarray(table["image_id"].to_pylist(), dtype=str), return_inverse=True)
        # Scan order depends on the table's fragments: sort, so a load is the same whatever wrote it.
        rows = np.lexsort((image_ids, class_ids))
        prototypes = _matrix(table["prototype"], self.embed_dim)
        return SupportArrays(tuple(order), prototypes[rows], class_ids[rows], image_ids.astype(np.int64)[rows])

    # Internals

    def _require_set(self, set_name: str) -> list[str]:
        """The set's classes; a ValueError naming the known sets when it has none."""
        classes = self._select(f"set_name = {sql_string(set_name)}", ["class_name"])["class_name"]
        if len(classes):
            return pc.unique(classes).to_pylist()
        known = sorted(pc.unique(self._select(None, ["set_name"])["set_name"]).to_pylist())
        raise ValueError(f"no support set {set_name!r} at {self.uri}; "
                         + (f"it has {', '.join(map(repr, known))}" if known else "it has no support sets yet"))

    def _select(self, where: str | None, columns: list[str]) -> pa.Table:
        return tables.select(self._table, where, columns)

    def _arrow(self, rows: list[dict]) -> pa.Table:
        seen: dict[tuple, int] = {}
        for index, row in enumerate(rows):
            where = f"rows[{index}]"
            missing = [name for name in ROW_FIELDS if row.get(name) is None]
            if missing:
                raise ValueError(f"{where}: missing {', '.join(missing)}")
            for name in ("set_name", "class_name", "image_id"):
                if not isinstance(row[name], str) or not row[name].strip():
                    raise ValueError(f"{where}: {name} must be a non-blank string, got {row[name]!r}")
            where = f"{where} (set {row['set_name']!r}, image {row['image_id'][:12]}, class {row['class_name']!r})"
            if int(row["n_pixels"]) < 1:
                raise ValueError(f"{where}: n_pixels must be >= 1, got {row['n_pixels']}")
            key = (row["set_name"], row["image_id"], row["class_name"])
            if key in seen:
                raise ValueError(f"{where}: the same (set, image, class) as rows[{seen[key]}]")
            seen[key] = index
            shape = tuple(np.shape(row["prototype"]))
            if shape != (self.embed_dim,):
                raise ValueError(f"{where}: prototype has shape {shape}, the support sets at {self.uri} hold "
                                 f"({self.embed_dim},) (dense model {self.dense_model!r})")
        matrix = np.stack([np.asarray(row["prototype"], dtype=np.float32) for row in rows])
        bad, norms = tables.off_unit_norm(matrix)
        if bad.any():
            first = int(np.argmax(bad))
            raise ValueError(f"rows[{first}]: prototype is not a finite L2-normalised vector (norm {norms[first]:.4f})")
        added_at = datetime.now(timezone.utc)
        schema = schemas.supports_schema(self.embed_dim, self.dense_model)
        columns = {
            "support_id": [f"{r['set_name']}/{r['image_id']}/{r['class_name']}" for r in rows],
            "set_name": [r["set_name"] for r in rows],
            "class_name": [r["class_name"] for r in rows],
            "image_id": [r["image_id"] for r in rows],
            "prototype": pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), self.embed_dim),
            "n_pixels": [int(r["n_pixels"]) for r in rows],
            "uri": [None if r.get("uri") is None else str(r["uri"]) for r in rows],
            "added_at": [added_at] * len(rows),
        }
        return pa.table(columns, schema=schema)


def _check_same_model(uri: str, recorded: tuple[str, int], dense_model: str | None, embed_dim: int | None) -> None:
    recorded_model, recorded_dim = recorded
    if dense_model is not None and dense_model != recorded_model:
        raise ModelMismatchError(f"the support sets at {uri} were made with dense model {recorded_model!r}, not "
                                 f"{dense_model!r}; use a preset with that dense model (see `maskdex presets`), "
                                 f"or another database")
    if embed_dim is not None and embed_dim != recorded_dim:
        raise ModelMismatchError(f"the support sets at {uri} hold {recorded_dim}-dimensional prototypes, not "
                                 f"{embed_dim} (dense model {recorded_model!r})")


def _group(table: pa.Table, key: str, value: str) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for k, v in zip(table[key].to_pylist(), table[value].to_pylist()):
        groups.setdefault(k, []).append(v)
    return groups


def _matrix(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    if not column.num_chunks:
        return np.zeros((0, dim), dtype=np.float32)
    flat = pa.concat_arrays([chunk.flatten() for chunk in column.chunks])
    return flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)

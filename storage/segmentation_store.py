"""SegmentationStore: the `segmentations` table, few-shot segmentations of indexed images.

A row is keyed by its image and the run that made it (SegmentationKey: support set, classes, mode,
shots-only, seed, models), so segmentations of one image with other sets or settings live side by
side, and a re-run of the same key finds its finished images and skips them. A failed image has a
row too (status 'failed', error naming the cause), so a resumed run does not retry it unless asked.

One writer per key at a time (a job's driver): commit skips rows whose key is already stored and
collapses repeats inside a batch, and every commit is one Lance commit, so a killed writer leaves
whole batches or nothing.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
from lancedb.index import BTree

from maskdex.storage.schemas import FAILED, SEGMENTATIONS, STATUSES, TABLE_KEY, segmentations_schema
from maskdex.storage.tables import KEEP_VERSIONS_FOR, chunks, connect, select, sql_string, sql_strings

log = logging.getLogger(__name__)
_ID_CHUNK = 1000
# Commits between tidies. A commit's duplicate check reads every fragment written since the last one
# (the image_id index covers the rest), so without them a job slows as it goes: 11 ms a commit at
# the first, 160 ms at the 800th, measured on this machine with 16 rows a commit.
_TIDY_EVERY = 64
# The size up to which a tidy merges small fragments; larger ones are left alone, so a row is
# rewritten a few times at most however long the job (Lance's default target is a million rows).
_MERGED_ROWS = 4096
_RESULT_FIELDS = ("width", "height", "labels_png", "pixel_fractions")


@dataclass(frozen=True)
class SegmentationKey:
    """Everything besides the image that decides a segmentation."""

    set_name: str
    classes: tuple[str, ...]  # the label ids' classes, in order (resolved: never "all of the set")
    mode: str
    fingerprint: str  # of the models (ModelPreset.fingerprint), the table's `models` column
    shots_only: bool = False
    seed: int = 0

    def __post_init__(self):
        if not self.classes:
            raise ValueError("a segmentation key needs its classes")

    @property
    def class_key(self) -> str:
        return json.dumps(list(self.classes), ensure_ascii=False)

    def where(self) -> str:
        return " AND ".join([f"set_name = {sql_string(self.set_name)}", f"class_key = {sql_string(self.class_key)}",
                             f"mode = {sql_string(self.mode)}", f"models = {sql_string(self.fingerprint)}",
                             f"shots_only = {'true' if self.shots_only else 'false'}", f"seed = {int(self.seed)}"])

    def columns(self) -> dict:
        return {"set_name": self.set_name, "classes": list(self.classes), "class_key": self.class_key,
                "mode": self.mode, "models": self.fingerprint, "shots_only": bool(self.shots_only), "seed": int(self.seed)}


class SegmentationStore:
    """Open with `SegmentationStore.open`."""

    def __init__(self, uri: str, table):
        self.uri = uri
        self._table = table
        self._commits = 0

    @classmethod
    def open(cls, uri: str, *, create: bool = True) -> SegmentationStore:
        """The segmentations table of the database at uri, created on first use (create=True).
        Without create, a database without one is a FileNotFoundError."""
        if not create and "://" not in uri and not os.path.isdir(uri):
            raise FileNotFoundError(f"no segmentations at {uri}: there is no such folder")
        db = connect(uri)
        if SEGMENTATIONS in db:
            table = db.open_table(SEGMENTATIONS)
            if (table.schema.metadata or {}).get(TABLE_KEY) != SEGMENTATIONS.encode():
                raise ValueError(f"table {SEGMENTATIONS} at {uri} was not created by maskdex")
        elif not create:
            raise FileNotFoundError(f"no segmentations at {uri}: run `maskdex segment-index` first")
        else:
            table = db.create_table(SEGMENTATIONS, schema=segmentations_schema(), exist_ok=True)
            if not any(tuple(index.columns) == ("image_id",) for index in table.list_indices()):
                table.create_index("image_id", config=BTree(), replace=False)
        return cls(uri, table)

    # Writing

    def done_image_ids(self, key: SegmentationKey) -> set[str]:
        """The images that have a row for this key (ok or failed)."""
        return set(select(self._table, key.where(), ["image_id"])["image_id"].to_pylist())

    def commit(self, key: SegmentationKey, rows: list[dict]) -> int:
        """Write a batch of rows of one key: each {image_id, uri, status, and error when failed, or
        width, height, labels_png, pixel_fractions (one per class), visual_support, text_support,
        used_fallback, regions when ok}. Images already stored for the key, and repeats in the batch
        (first wins), are skipped. Raises ValueError, writing nothing, on a bad row. Returns rows written."""
        kept: dict[str, dict] = {}
        for index, row in enumerate(rows):
            _check_row(index, row, key)
            kept.setdefault(row["image_id"], row)
        for chunk in chunks(list(kept), _ID_CHUNK):
            stored = select(self._table, f"{key.where()} AND image_id IN {sql_strings(chunk)}", ["image_id"])
            for image_id in stored["image_id"].to_pylist():
                kept.pop(image_id, None)
        if not kept:
            return 0
        now = datetime.now(timezone.utc)
        schema = segmentations_schema()
        full = [{**{name: None for name in schema.names}, **row, **key.columns(), "segmented_at": now}
                for row in kept.values()]
        try:
            table = pa.Table.from_pylist(full, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as error:
            raise ValueError(f"segmentations batch does not fit the table: {error}") from error
        self._table.add(table)
        self._commits += 1
        if self._commits % _TIDY_EVERY == 0:
            try:
                self.tidy()
            except (OSError, RuntimeError) as error:  # e.g. another job's tidy of the table won the commit
                log.warning("could not tidy the segmentations table (the next tidy will): %s", error)
        return table.num_rows

    def forget_failed(self, key: SegmentationKey) -> int:
        """Delete the key's failed rows, so that a re-run retries those images."""
        return self._table.delete(f"{key.where()} AND status = 'failed'").num_deleted_rows

    def delete_images(self, image_ids: list[str]) -> int:
        """Delete every row of these images (all keys), in one commit; returns the rows deleted."""
        return self._table.delete(f"image_id IN {sql_strings(image_ids)}").num_deleted_rows if image_ids else 0

    def tidy(self) -> None:
        """Merge the small fragments that per-batch commits leave (up to _MERGED_ROWS rows each) and
        add their rows to the image_id index, then drop versions older than KEEP_VERSIONS_FOR, which
        pin the files the merges replaced. Run every _TIDY_EVERY commits and at a job's end."""
        dataset = self._table.to_lance()
        dataset.optimize.compact_files(target_rows_per_fragment=_MERGED_ROWS)
        dataset = dataset.checkout_version(dataset.latest_version)
        dataset.optimize.optimize_indices()
        dataset.cleanup_old_versions(older_than=KEEP_VERSIONS_FOR)

    # Reading

    def rows(self, key: SegmentationKey) -> list[dict]:
        return select(self._table, key.where()).to_pylist()

    def find(self, image_id: str, *, set_name: str | None = None, classes: list[str] | None = None,
             mode: str | None = None, models: str | None = None) -> list[dict]:
        """An image's segmentations that match the given fields, newest first."""
        clauses = [f"image_id = {sql_string(image_id)}"]
        if set_name is not None:
            clauses.append(f"set_name = {sql_string(set_name)}")
        if classes is not None:
            clauses.append(f"class_key = {sql_string(json.dumps(list(classes), ensure_ascii=False))}")
        if mode is not None:
            clauses.append(f"mode = {sql_string(mode)}")
        if models is not None:
            clauses.append(f"models = {sql_string(models)}")
        found = select(self._table, " AND ".join(clauses)).to_pylist()
        return sorted(found, key=lambda row: row["segmented_at"], reverse=True)

    def count(self, key: SegmentationKey | None = None) -> int:
        return self._table.count_rows(key.where() if key else None)

    def count_images(self, image_ids: list[str]) -> int:
        """Rows of these images, all keys."""
        return self._table.count_rows(f"image_id IN {sql_strings(image_ids)}") if image_ids else 0

    def image_ids(self) -> set[str]:
        """Every image that has a row (any key)."""
        found: set[str] = set()
        for batch in self._table.search().select(["image_id"]).limit(None).to_batches():
            found.update(batch.column("image_id").to_pylist())
        return found


def _check_row(index: int, row: dict, key: SegmentationKey) -> None:
    where = f"segmentations[{index}] ({row.get('image_id', '?')})"
    missing = [name for name in ("image_id", "uri", "status") if not row.get(name)]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    if row["status"] not in STATUSES:
        raise ValueError(f"{where}: status must be one of {STATUSES}, got {row['status']!r}")
    if row["status"] == FAILED:
        if not row.get("error"):
            raise ValueError(f"{where}: status 'failed' needs an error message")
        if row.get("labels_png") is not None:
            raise ValueError(f"{where}: status 'failed' with a result")
        return
    missing = [name for name in _RESULT_FIELDS if row.get(name) is None]
    if missing:
        raise ValueError(f"{where}: status 'ok' but no {', '.join(missing)}")
    if row.get("error") is not None:
        raise ValueError(f"{where}: status 'ok' with an error ({row['error']!r})")
    if len(row["pixel_fractions"]) != len(key.classes):
        raise ValueError(f"{where}: {len(row['pixel_fractions'])} pixel fractions for {len(key.classes)} classes")

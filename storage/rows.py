"""Checks the row dicts given to `IndexStore.commit` and turns them into Arrow tables.

The whole batch is checked before anything is written, and every error names the row and the
field, because a bad batch usually comes from a bug upstream that the message should point at.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from maskdex.storage import schemas, tables

IMAGE_FIELDS = ("image_id", "uri", "status")
OK_IMAGE_FIELDS = ("width", "height", "embedding")
REGION_FIELDS = ("region_id", "image_id", "rle", "bbox", "area", "predicted_iou", "stability_score", "embedding")



@dataclass(frozen=True)
class Batch:
    """A checked batch: one row per image_id and per region_id (first wins), each region with its image."""

    images: list[dict]
    regions: list[dict]

    @property
    def image_ids(self) -> list[str]:
        return [row["image_id"] for row in self.images]

    def without(self, image_ids: set[str]) -> Batch:
        return replace(self, images=[r for r in self.images if r["image_id"] not in image_ids],
                       regions=[r for r in self.regions if r["image_id"] not in image_ids])

    def images_table(self, dim: int, models: str) -> pa.Table:
        schema = schemas.images_schema(dim, models)
        columns = {name: _column(self.images, "images", name, schema.field(name).type)
                   for name in schema.names if name != "embedding"}
        columns["embedding"] = _embedding_column(self.images, dim)
        return pa.table(columns, schema=schema)

    def regions_table(self, dim: int, models: str) -> pa.Table:
        schema = schemas.regions_schema(dim, models)
        columns = {name: _column(self.regions, "regions", name, schema.field(name).type)
                   for name in schema.names if name != "embedding"}
        columns["embedding"] = _embedding_column(self.regions, dim)
        return pa.table(columns, schema=schema)


def prepare_batch(images: list[dict], regions: list[dict], *, dim: int, models: str) -> Batch:
    """Check a commit's rows and fill in n_regions, models and indexed_at; raises ValueError."""
    for name, given in (("images", images), ("regions", regions)):
        if isinstance(given, Mapping) or not all(isinstance(row, Mapping) for row in given):
            raise ValueError(f"{name} must be a list of row dicts")
    kept_images: dict[str, dict] = {}
    for index, row in enumerate(images):
        _check_image(index, row, models)
        kept_images.setdefault(row["image_id"], row)

    kept_regions: dict[str, dict] = {}
    for index, row in enumerate(regions):
        _check_region(index, row, kept_images)
        kept_regions.setdefault(row["region_id"], row)
    region_rows = list(kept_regions.values())

    _check_embeddings([r for r in kept_images.values() if r.get("embedding") is not None], "images", dim,
                      unit_norm=False)
    _check_embeddings(region_rows, "regions", dim, unit_norm=True)

    counts = Counter(row["image_id"] for row in region_rows)
    for image_id, row in kept_images.items():
        if row.get("n_regions") is not None and row["n_regions"] != counts[image_id]:
            raise ValueError(f"image {image_id} says n_regions={row['n_regions']} but the batch has "
                             f"{counts[image_id]} regions for it")
    return Batch(images=_finish_images(kept_images, counts, models), regions=region_rows)


def prepare_images(images: list[dict], *, dim: int, models: str) -> Batch:
    """Check images rows whose regions were written apart (as Lance fragments, by the workers):
    each must state its n_regions, which the commit checks against the fragments' row count."""
    if isinstance(images, Mapping) or not all(isinstance(row, Mapping) for row in images):
        raise ValueError("images must be a list of row dicts")
    kept_images: dict[str, dict] = {}
    for index, row in enumerate(images):
        _check_image(index, row, models)
        n_regions = row.get("n_regions")
        if isinstance(n_regions, bool) or not isinstance(n_regions, (int, np.integer)) or n_regions < 0:
            raise ValueError(f"images[{index}] ({row['image_id']}): n_regions must be a count of regions "
                             f"written as fragments, got {n_regions!r}")
        kept_images.setdefault(row["image_id"], row)
    _check_embeddings([r for r in kept_images.values() if r.get("embedding") is not None], "images", dim,
                      unit_norm=False)
    counts = {image_id: int(row["n_regions"]) for image_id, row in kept_images.items()}
    return Batch(images=_finish_images(kept_images, counts, models), regions=[])


def _finish_images(kept_images: dict[str, dict], counts: Mapping[str, int], models: str) -> list[dict]:
    indexed_at = datetime.now(timezone.utc)
    image_rows = []
    for image_id, row in kept_images.items():
        n_regions = counts.get(image_id, 0)
        if row["status"] == schemas.FAILED and n_regions:
            raise ValueError(f"image {image_id} has status 'failed' but {n_regions} regions")
        image_rows.append({**row, "n_regions": n_regions, "models": models,
                           "indexed_at": row.get("indexed_at") or indexed_at})
    return image_rows


def _check_image(index: int, row: dict, models: str) -> None:
    where = f"images[{index}] ({row.get('image_id', '?')})"
    _require(row, IMAGE_FIELDS, where)
    status = row["status"]
    if status not in schemas.STATUSES:
        raise ValueError(f"{where}: status must be one of {schemas.STATUSES}, got {status!r}")
    if status == schemas.OK:
        _require(row, OK_IMAGE_FIELDS, where)
        if row.get("error") is not None:
            raise ValueError(f"{where}: status 'ok' with an error ({row['error']!r})")
    elif not row.get("error"):
        raise ValueError(f"{where}: status 'failed' needs an error message")
    if row.get("models") is not None and row["models"] != models:
        raise ValueError(f"{where}: made by models {row['models']!r} but this store holds {models!r}")


def _check_region(index: int, row: dict, images: dict[str, dict]) -> None:
    where = f"regions[{index}] ({row.get('region_id', '?')})"
    _require(row, REGION_FIELDS, where)
    image_id = row["image_id"]
    if image_id not in images:
        raise ValueError(f"{where}: image_id {image_id} is not among this batch's images")
    prefix, _, number = str(row["region_id"]).rpartition(":")
    if prefix != image_id or not number.isdigit():
        raise ValueError(f"{where}: region_id must be '<image_id>:<n>' for image_id {image_id}")
    rle = row["rle"]
    if not (isinstance(rle, dict) and isinstance(rle.get("counts"), str) and len(rle.get("size") or ()) == 2):
        raise ValueError(f"{where}: rle must be {{'size': [h, w], 'counts': str}} (compressed COCO RLE)")


def _require(row: dict, fields: tuple[str, ...], where: str) -> None:
    missing = [name for name in fields if row.get(name) is None]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")


def _check_embeddings(rows: list[dict], table: str, dim: int, *, unit_norm: bool) -> None:
    for row in rows:
        if tuple(np.shape(row["embedding"])) != (dim,):
            raise ValueError(f"{table} row {_row_name(row)}: embedding has shape {tuple(np.shape(row['embedding']))}, "
                             f"this store holds ({dim},)")
    if not rows:
        return
    matrix = np.stack([np.asarray(row["embedding"], dtype=np.float32) for row in rows])
    not_finite = ~np.isfinite(matrix).all(axis=1)
    if not_finite.any():
        raise ValueError(f"{table} row {_row_name(rows[int(np.argmax(not_finite))])}: embedding contains NaN or infinity")
    if unit_norm:
        off, norms = tables.off_unit_norm(matrix)  # non-finite rows were refused above
        if off.any():
            first = int(np.argmax(off))
            raise ValueError(f"{table} row {_row_name(rows[first])}: embedding is not L2-normalised "
                             f"(norm {norms[first]:.4f})")


def _column(rows: list[dict], table: str, name: str, type_: pa.DataType) -> pa.Array:
    values = [row.get(name) for row in rows]
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as error:
        # Convert row by row only now, to name the culprit.
        for row, value in zip(rows, values):
            try:
                pa.array([value], type=type_)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
                raise ValueError(f"{table} row {_row_name(row)}: {name}={value!r} is not {type_}") from error
        raise ValueError(f"{table}.{name}: {error}") from error


def _embedding_column(rows: list[dict], dim: int) -> pa.Array:
    present = np.array([row.get("embedding") is not None for row in rows], dtype=bool)
    matrix = np.zeros((len(rows), dim), dtype=np.float32)
    if present.any():
        matrix[present] = np.stack([np.asarray(row["embedding"], dtype=np.float32)
                                    for row, has in zip(rows, present) if has])
    mask = None if present.all() else pa.array(~present)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), dim, mask=mask)


def _row_name(row: dict) -> str:
    return str(row.get("region_id") or row.get("image_id") or "?")

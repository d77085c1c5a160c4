"""Arrow schemas of the maskdex tables (design.md section 2) and the build record kept in them.

The model that made the vectors (the preset fingerprint for the index tables, the dense CLIP's
name for `supports`) and the vector dimension live in the Arrow schema metadata of every table.
Lance writes that metadata in the same commit that creates the table and keeps it through appends,
deletes and compaction, so a table can never exist without its record, and any table read alone
(by Ray Data, say) still says which model produced its vectors.
"""

from __future__ import annotations

import pyarrow as pa

IMAGES = "images"
REGIONS = "regions"
SUPPORTS = "supports"
SEGMENTATIONS = "segmentations"
SHARDS = "shards"
# An input inside a container (a tar shard's sample, a parquet row) has the uri CONTAINER#KEY.
MEMBER_SEPARATOR = "#"

MODELS_KEY = b"maskdex.models"
EMBED_DIM_KEY = b"maskdex.embed_dim"

RLE_TYPE = pa.struct([pa.field("size", pa.list_(pa.int32())), pa.field("counts", pa.string())])
BBOX_TYPE = pa.list_(pa.int32(), 4)
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")

# What an image row, a segmentation row or a job's unit of work ended as; the one spelling of each.
OK, FAILED = "ok", "failed"
STATUSES = (OK, FAILED)


def embedding_type(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim)


def images_schema(dim: int, models: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            # A file that failed to decode has no size.
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            pa.field("n_regions", pa.int32(), nullable=False),
            pa.field("embedding", embedding_type(dim)),
            pa.field("models", pa.string(), nullable=False),
            pa.field("indexed_at", TIMESTAMP_TYPE, nullable=False),
            # The input's identity when it was read (size and modification time, in ns), so that a
            # resume can skip it from a listing without reading its bytes. Null for inputs without
            # one (rows of a parquet file, a path that did not exist).
            pa.field("source_size", pa.int64()),
            pa.field("source_mtime_ns", pa.int64()),
            # What came with the image: a tar shard sample's caption and json, as one JSON object
            # ({"txt": ..., "json": ...}); null for inputs without any.
            pa.field("metadata", pa.string()),
        ],
        metadata=_build_record(dim, models),
    )


# Columns added to the images table after its first release, with the SQL that fills them in
# on an older table (see IndexStore.open).
IMAGES_ADDED_COLUMNS = {"source_size": "CAST(NULL AS BIGINT)", "source_mtime_ns": "CAST(NULL AS BIGINT)",
                        "metadata": "CAST(NULL AS STRING)"}


def shards_schema() -> pa.Schema:
    """One row per tar shard whose every sample has its images row: a resume skips the shard, by
    its identity, without opening it (pipelines/common/shards.py)."""
    return pa.schema(
        [
            pa.field("uri", pa.string(), nullable=False),
            pa.field("source_size", pa.int64(), nullable=False),
            pa.field("source_mtime_ns", pa.int64(), nullable=False),
            pa.field("samples", pa.int64(), nullable=False),
            pa.field("finished_at", TIMESTAMP_TYPE, nullable=False),
        ],
        metadata={TABLE_KEY: SHARDS.encode()},
    )


def regions_schema(dim: int, models: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field("region_id", pa.string(), nullable=False),
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("rle", RLE_TYPE, nullable=False),
            pa.field("bbox", BBOX_TYPE, nullable=False),
            pa.field("area", pa.int64(), nullable=False),
            pa.field("predicted_iou", pa.float32(), nullable=False),
            pa.field("stability_score", pa.float32(), nullable=False),
            pa.field("embedding", embedding_type(dim), nullable=False),
        ],
        metadata=_build_record(dim, models),
    )


def supports_schema(dim: int, dense_model: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field("support_id", pa.string(), nullable=False),
            pa.field("set_name", pa.string(), nullable=False),
            pa.field("class_name", pa.string(), nullable=False),
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("prototype", embedding_type(dim), nullable=False),
            pa.field("n_pixels", pa.int64(), nullable=False),
            # Examples handed over as pixels (not files) have no source.
            pa.field("uri", pa.string()),
            pa.field("added_at", TIMESTAMP_TYPE, nullable=False),
        ],
        metadata=_build_record(dim, dense_model),
    )


# The segmentations table holds no vectors, so it records which maskdex table it is instead of a build.
TABLE_KEY = b"maskdex.table"


def segmentations_schema() -> pa.Schema:
    """One row per (image_id, set_name, class_key, mode, shots_only, seed, models): a corpus segmentation
    (design.md section 2, `segmentations`). labels_png holds class indices into `classes`;
    pixel_fractions[i] is the share of the image's pixels labelled classes[i]."""
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("set_name", pa.string(), nullable=False),
            pa.field("classes", pa.list_(pa.string()), nullable=False),
            pa.field("class_key", pa.string(), nullable=False),  # the classes as JSON: one string to key on
            pa.field("mode", pa.string(), nullable=False),
            pa.field("shots_only", pa.bool_(), nullable=False),
            pa.field("seed", pa.int64(), nullable=False),
            pa.field("models", pa.string(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            # A failed image has no result.
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("labels_png", pa.binary()),
            pa.field("pixel_fractions", pa.list_(pa.float32())),
            pa.field("visual_support", pa.list_(pa.string())),
            pa.field("text_support", pa.list_(pa.string())),
            pa.field("used_fallback", pa.bool_()),
            pa.field("regions", pa.string()),  # region mode: "index" or "sam2"
            pa.field("segmented_at", TIMESTAMP_TYPE, nullable=False),
        ],
        metadata={TABLE_KEY: SEGMENTATIONS.encode()},
    )


def recorded_build(schema: pa.Schema) -> tuple[str, int] | None:
    """(models, embed_dim) recorded in a table's schema, or None for a table maskdex did not create."""
    metadata = schema.metadata or {}
    if MODELS_KEY not in metadata or EMBED_DIM_KEY not in metadata:
        return None
    return metadata[MODELS_KEY].decode(), int(metadata[EMBED_DIM_KEY])


def _build_record(dim: int, models: str) -> dict[bytes, bytes]:
    return {MODELS_KEY: models.encode(), EMBED_DIM_KEY: str(dim).encode()}

"""The stages of the index job. Every input row leaves every stage, carrying its status:
"pending" (still being indexed), "ok", "failed" (with the error) or "skipped" (already indexed),
so the job can account for every input at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import ray
import torch
from PIL import Image

from maskdex.operators.common import rle as rle_codec
from maskdex.pipelines.common.decode import DecodeError, decode_image, resize_longest_side
from maskdex.pipelines.common.sources import read_bytes
from maskdex.storage.digests import DigestSet, image_key

PENDING, OK, FAILED, SKIPPED = "pending", "ok", "failed", "skipped"
NO_IDENTITY = -1  # source_size / source_mtime_ns of an input that has none (a parquet row)
_NO_PIXELS = np.zeros((0, 0, 3), dtype=np.uint8)
log = logging.getLogger(__name__)


def _row(uri, image_id="", status=PENDING, error="", width=0, height=0, image=_NO_PIXELS,
         identity=(NO_IDENTITY, NO_IDENTITY)) -> dict:
    return {"uri": uri, "image_id": image_id, "status": status, "error": error,
            "width": width, "height": height, "image": image,
            "source_size": identity[0], "source_mtime_ns": identity[1]}


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    columns = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        if key in ("image", "region_embeddings", "image_embedding"):
            column = np.empty(len(values), dtype=object)
            column[:] = values
            columns[key] = column
        else:
            columns[key] = np.asarray(values)
    return columns


def _prepare(uri: str, data: bytes | None, read_error: str | None, known: DigestSet,
             max_pixels: int, max_side: int, identity=(NO_IDENTITY, NO_IDENTITY)) -> dict:
    # Without bytes there is no content hash: an unreadable input is keyed by its path instead.
    image_id = hashlib.sha256(data).hexdigest() if read_error is None else f"unreadable-{hashlib.sha256(uri.encode()).hexdigest()}"
    if image_key(image_id) in known:
        return _row(uri, image_id, SKIPPED, identity=identity)
    if read_error is not None:
        return _row(uri, image_id, FAILED, read_error, identity=identity)
    try:
        rgb = decode_image(data, max_pixels)
    except DecodeError as error:
        return _row(uri, image_id, FAILED, str(error), identity=identity)
    height, width = rgb.shape[:2]
    return _row(uri, image_id, PENDING, "", width, height, resize_longest_side(rgb, max_side), identity)


def _known(known) -> DigestSet:
    return ray.get(known) if isinstance(known, ray.ObjectRef) else known


def read_files(batch: dict[str, np.ndarray], *, known, max_pixels: int, max_side: int) -> dict[str, np.ndarray]:
    """Read, hash, skip-if-indexed, decode and resize a batch of image files (a CPU task)."""
    known = _known(known)
    sizes = batch.get("source_size", [NO_IDENTITY] * len(batch["uri"]))
    mtimes = batch.get("source_mtime_ns", [NO_IDENTITY] * len(batch["uri"]))
    rows = []
    for uri, size, mtime in zip(batch["uri"], sizes, mtimes):
        uri = str(uri)
        try:
            data, read_error = read_bytes(uri), None
        except OSError as error:
            data, read_error = None, f"cannot read file: {type(error).__name__}: {error.strerror or error}"
        rows.append(_prepare(uri, data, read_error, known, max_pixels, max_side, (int(size), int(mtime))))
    return _columns(rows)


def read_parquet_rows(batch: dict[str, np.ndarray], *, known, bytes_column: str, key_column: str | None,
                      max_pixels: int, max_side: int) -> dict[str, np.ndarray]:
    """The same as read_files, for image bytes stored in a parquet column (img2dataset's layout)."""
    known = _known(known)
    rows = []
    for index, data in enumerate(batch[bytes_column]):
        key = batch[key_column][index] if key_column else None
        data = bytes(data) if data is not None else b""
        uri = f"{batch['path'][index]}#{key if key is not None else hashlib.sha256(data).hexdigest()[:16]}"
        rows.append(_prepare(uri, data, None, known, max_pixels, max_side))
    return _columns(rows)


def _run_with_retry(fn, what: str):
    """One retry (after freeing cached GPU memory), then the error as a message instead of a crash."""
    for attempt in (1, 2):
        try:
            return fn(), None
        except Exception as error:  # any model failure must mark the image failed, never kill the job
            if attempt == 2:
                return None, f"{what} failed: {type(error).__name__}: {error}"
            log.warning("%s failed (%s), retrying once", what, error)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


class MaskStage:
    """SAM 2 on an actor: regions (as JSON, at the working resolution) for every pending image."""

    def __init__(self, preset: str, weights: str | None, device: str, dtype: str | None, settings: dict,
                 threads: int):
        import torch

        from maskdex.operators.registry.presets import mask_generator

        torch.set_num_threads(max(1, threads))
        self.node = ray.get_runtime_context().get_node_id()
        self.generator = mask_generator(preset, weights=weights, device=device, dtype=dtype, **settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = _writable_status(batch)
        regions_json = []
        for index, status in enumerate(batch["status"]):
            if status != PENDING:
                regions_json.append("[]")
                continue
            regions, error = _run_with_retry(lambda: self.generator.generate(batch["image"][index]), "SAM 2")
            if error is not None:
                batch["status"][index], batch["error"][index] = FAILED, error
                regions_json.append("[]")
                continue
            regions_json.append(json.dumps([
                {"rle": r.rle, "bbox": list(r.bbox), "area": r.area,
                 "predicted_iou": r.predicted_iou, "stability_score": r.stability_score} for r in regions
            ]))
        batch["regions"] = np.asarray(regions_json, dtype=object)
        batch["node"] = np.asarray([self.node] * len(regions_json), dtype=object)
        return batch


class EmbedStage:
    """Alpha-CLIP on an actor: every region and the whole image; regions leave at the original resolution."""

    def __init__(self, preset: str, weights: str | None, device: str, dtype: str | None, context: float | None,
                 batch_size: int, threads: int):
        import torch

        from maskdex.operators.registry.presets import alpha_clip_encoder

        torch.set_num_threads(max(1, threads))
        self.encoder = alpha_clip_encoder(preset, weights=weights, device=device, dtype=dtype, context=context,
                                          batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = _writable_status(batch)
        nothing = ("[]", np.zeros((0, self.encoder.embed_dim), np.float32), np.zeros((0,), np.float32))
        outputs = []
        for index, status in enumerate(batch["status"]):
            if status != PENDING:
                outputs.append(nothing)
                continue
            image = batch["image"][index]
            regions = json.loads(batch["regions"][index])

            def embed():
                return (self.encoder.embed_regions(image, [r["rle"] for r in regions], [r["bbox"] for r in regions]),
                        self.encoder.embed_image(image))

            result, error = _run_with_retry(embed, "Alpha-CLIP")
            if error is not None:
                batch["status"][index], batch["error"][index] = FAILED, error
                outputs.append(nothing)
                continue
            full_size = (int(batch["height"][index]), int(batch["width"][index]))
            outputs.append((json.dumps([to_original_size(r, full_size) for r in regions]),
                            result[0].numpy().astype(np.float32), result[1].numpy().astype(np.float32)))
            batch["status"][index] = OK
        del batch["image"]  # pixels never travel further than they must
        batch["regions"] = np.asarray([out[0] for out in outputs], dtype=object)
        batch["region_embeddings"] = _object_column([out[1] for out in outputs])
        batch["image_embedding"] = _object_column([out[2] for out in outputs])
        return batch


def _writable_status(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Batches arrive as read-only views of Arrow data; the status and error columns are updated in place."""
    batch = dict(batch)
    batch["status"] = np.array(batch["status"], dtype=object)
    batch["error"] = np.array(batch["error"], dtype=object)
    return batch


def _object_column(values: list) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def to_original_size(region: dict, size: tuple[int, int]) -> dict:
    """A region found on the downscaled working image, re-expressed in the original image's pixels."""
    if list(region["rle"]["size"]) == list(size):
        return region
    mask = rle_codec.decode(region["rle"])
    upscaled = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.Resampling.NEAREST))
    rle = rle_codec.encode(upscaled)
    return {**region, "rle": rle, "bbox": rle_codec.bbox(rle), "area": rle_codec.area(rle)}

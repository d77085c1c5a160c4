"""The stages of the index job. Every input row leaves every stage, carrying its status:
"pending" (still being indexed), "ok", "failed" (with the error), "skipped" (already indexed) or
"duplicate" (another input of this run holds the same bytes), so the job can account for every
input at the end. The last stage writes the regions itself (as Lance fragments); what leaves it
for the driver is the images rows' fields and the fragments' metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import ray

from maskdex.pipelines.common.decode import DecodeError, decode_image, resize_longest_side, to_original_size
from maskdex.pipelines.common.shards import member_uri, metadata_json, read_samples
from maskdex.pipelines.common.sources import read_bytes
from maskdex.pipelines.index.claims import batch_key
from maskdex.storage.digests import DigestSet, image_key, source_key
from maskdex.storage.region_fragments import RegionFragmentWriter
from maskdex.storage.schemas import FAILED, MEMBER_SEPARATOR, OK

# torch is imported by the model actors only: every read task's worker imports this module too, and
# torch would cost each of them seconds of CPU for nothing.

# An input's way through the job: PENDING, then OK or FAILED (the row written), or SKIPPED or DUPLICATE (none written).
PENDING, SKIPPED, DUPLICATE = "pending", "skipped", "duplicate"
NO_IDENTITY = -1  # source_size / source_mtime_ns of an input that has none (a parquet row)
_NO_PIXELS = np.zeros((0, 0, 3), dtype=np.uint8)
log = logging.getLogger(__name__)


def _row(uri, image_id="", status=PENDING, error="", width=0, height=0, image=_NO_PIXELS,
         identity=(NO_IDENTITY, NO_IDENTITY)) -> dict:
    # Every reader gives every column (Ray Data merges blocks of different readers into one batch):
    # metadata is "" for none; shard / shard_samples name a tar shard sample's shard, and on the
    # shard's last rows how many samples it held ("" / -1 otherwise; see pipelines/index/job.py).
    return {"uri": uri, "image_id": image_id, "status": status, "error": error,
            "width": width, "height": height, "image": image,
            "source_size": identity[0], "source_mtime_ns": identity[1],
            "metadata": "", "shard": "", "shard_samples": -1}


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    columns = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        if key in ("image", "image_embedding"):
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
        uri = f"{batch['path'][index]}{MEMBER_SEPARATOR}{key if key is not None else hashlib.sha256(data).hexdigest()[:16]}"
        rows.append(_prepare(uri, data, None, known, max_pixels, max_side))
    return _columns(rows)


def read_shards(batch: dict[str, np.ndarray], *, known, sources, max_pixels: int, max_side: int,
                batch_size: int):
    """read_files for tar shards (pipelines/common/shards.py): each sample of each shard is an input
    SHARD#KEY with the shard's identity, streamed out in batches of batch_size. A sample whose
    (shard identity, key) is recorded (sources: IndexStore.known_sources) is skipped unread; the
    shard's last batch says how many samples it held, so the driver knows when it is finished."""
    known, sources = _known(known), _known(sources)
    for shard, size, mtime in zip(batch["uri"], batch["source_size"], batch["source_mtime_ns"]):
        shard, identity = str(shard), (int(size), int(mtime))

        def done(key):
            return identity[0] != NO_IDENTITY and source_key(member_uri(shard, key), *identity) in sources

        pending, samples = [], 0
        for sample in read_samples(shard, wanted=lambda key: not done(key)):
            samples += 1
            uri = member_uri(shard, sample.key)
            if sample.skipped:
                row = _row(uri, status=SKIPPED, identity=identity)
            else:
                row = _prepare(uri, sample.image, sample.error, known, max_pixels, max_side, identity)
                row["metadata"] = metadata_json(sample)
            row["shard"] = shard
            pending.append(row)
            if len(pending) > batch_size:
                yield _columns(pending[:batch_size])
                pending = pending[batch_size:]
        if not samples:
            pending.append({**_prepare(member_uri(shard, "<empty>"), None, "tar shard holds no samples", known,
                                       max_pixels, max_side, identity), "shard": shard})
            samples = 1
        for row in pending:
            row["shard_samples"] = samples
        yield _columns(pending)


def _run_with_retry(fn, what: str):
    """One retry (after freeing cached GPU memory), then the error as a message instead of a crash."""
    for attempt in (1, 2):
        try:
            return fn(), None
        except Exception as error:  # any model failure must mark the image failed, never kill the job
            if attempt == 2:
                return None, f"{what} failed: {type(error).__name__}: {error}"
            log.warning("%s failed (%s), retrying once", what, error)
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


class MaskStage:
    """SAM 2 on an actor: regions (as JSON, at the working resolution) for every pending image; the
    batch's pending images go to the generator in one call (one encoder batch for the fast one)."""

    def __init__(self, preset: str, weights: str | None, device: str, dtype: str | None, settings: dict,
                 threads: int, amg: str = "fast"):
        import torch

        from maskdex.operators.registry.presets import mask_generator

        torch.set_num_threads(max(1, threads))
        self.node = ray.get_runtime_context().get_node_id()
        self.generator = mask_generator(preset, weights=weights, device=device, dtype=dtype, amg=amg, **settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = _writable_status(batch)
        pending = [index for index, status in enumerate(batch["status"]) if status == PENDING]
        images = [batch["image"][index] for index in pending]
        results, error = _run_with_retry(lambda: self.generator.generate_batch(images), "SAM 2")
        if error is not None and len(pending) > 1:
            # One bad image must not fail the others: each on its own, with its own retry.
            results = []
            for index in pending:
                regions, error = _run_with_retry(lambda: self.generator.generate(batch["image"][index]), "SAM 2")
                results.append(error if regions is None else regions)
        elif error is not None:
            results = [error]
        regions_json = ["[]"] * len(batch["status"])
        for index, regions in zip(pending, results):
            if isinstance(regions, str):
                batch["status"][index], batch["error"][index] = FAILED, regions
                continue
            regions_json[index] = json.dumps([
                {"rle": r.rle, "bbox": list(r.bbox), "area": r.area,
                 "predicted_iou": r.predicted_iou, "stability_score": r.stability_score} for r in regions
            ])
        batch["regions"] = np.asarray(regions_json, dtype=object)
        batch["node"] = np.asarray([self.node] * len(regions_json), dtype=object)
        return batch


class EmbedStage:
    """Alpha-CLIP on an actor: every region and the whole image; then the regions, at the original
    resolution, are written as fragments into the regions dataset at regions_uri. Only images this
    batch owns are embedded and written (claims: a run's ImageClaims actor); the others leave as
    duplicates. Out go the images rows' fields, n_regions, and the write (RegionFragments JSON, the
    same on every row of the batch): no region embedding travels to the driver."""

    def __init__(self, preset: str, weights: str | None, device: str, dtype: str | None, context: float | None,
                 batch_size: int, threads: int, *, regions_uri: str, fingerprint: str, claims):
        import torch

        from maskdex.operators.registry.presets import alpha_clip_encoder

        torch.set_num_threads(max(1, threads))
        self.encoder = alpha_clip_encoder(preset, weights=weights, device=device, dtype=dtype, context=context,
                                          batch_size=batch_size)
        self.fingerprint = fingerprint  # of the index's models, written on every images row
        self.claims = claims
        self.writer = RegionFragmentWriter(regions_uri, dim=self.encoder.embed_dim, models=fingerprint)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = _writable_status(batch)
        self._claim(batch)
        images, regions = [], []
        # Empty, not None, for images without one: Ray Data cannot merge a block whose tensor
        # column is all nulls with one that has tensors.
        no_embedding = np.zeros((0,), np.float32)
        image_embeddings = []
        for index, status in enumerate(batch["status"]):
            if status != PENDING:
                image_embeddings.append(no_embedding)
                if status == FAILED:
                    images.append(image_row(_at(batch, index), self.fingerprint, n_regions=0))
                continue
            image = batch["image"][index]
            found = json.loads(batch["regions"][index])

            def embed():
                return (self.encoder.embed_regions(image, [r["rle"] for r in found], [r["bbox"] for r in found]),
                        self.encoder.embed_image(image))

            result, error = _run_with_retry(embed, "Alpha-CLIP")
            if error is not None:
                batch["status"][index], batch["error"][index] = FAILED, error
                image_embeddings.append(no_embedding)
                images.append(image_row(_at(batch, index), self.fingerprint, n_regions=0))
                continue
            batch["status"][index] = OK
            image_embeddings.append(result[1].numpy().astype(np.float32))
            full_size = (int(batch["height"][index]), int(batch["width"][index]))
            image_id = str(batch["image_id"][index])
            regions += region_rows(image_id, [to_original_size(r, full_size) for r in found],
                                   result[0].numpy().astype(np.float32))
            images.append(image_row({**_at(batch, index), "image_embedding": image_embeddings[-1]}, self.fingerprint,
                                    n_regions=len(found)))
        image_rows, written = self.writer.write(images, regions)
        counts = {row["image_id"]: row["n_regions"] for row in image_rows}
        for name in ("image", "regions"):  # pixels and masks never travel further than they must
            del batch[name]
        batch["image_embedding"] = _object_column(image_embeddings)
        batch["n_regions"] = np.asarray([counts.get(str(i), 0) for i in batch["image_id"]], dtype=np.int64)
        batch["fragments"] = np.asarray([written.to_json()] * len(batch["uri"]), dtype=object)
        return batch

    def _claim(self, batch: dict[str, np.ndarray]) -> None:
        wanted = [index for index, status in enumerate(batch["status"]) if status != SKIPPED]
        if not wanted:
            return
        won = ray.get(self.claims.claim.remote([str(batch["image_id"][i]) for i in wanted],
                                               [str(batch["uri"][i]) for i in wanted], batch_key(batch["uri"])))
        for index, owned in zip(wanted, won):
            if not owned:
                batch["status"][index], batch["error"][index] = DUPLICATE, ""


def image_row(row: dict, fingerprint: str, *, n_regions: int | None = None) -> dict:
    """The images row of one input, from the stages' fields (and its n_regions, when known); fingerprint:
    the index's models (its `models` column)."""
    ok = row["status"] == OK
    return {
        "image_id": str(row["image_id"]), "uri": str(row["uri"]), "width": int(row["width"]),
        "height": int(row["height"]), "status": OK if ok else FAILED, "error": None if ok else str(row["error"]),
        "n_regions": int(row["n_regions"] if n_regions is None else n_regions),
        "embedding": np.asarray(row["image_embedding"], dtype=np.float32) if ok else None,
        "models": fingerprint,
        **{name: (int(row[name]) if name in row and int(row[name]) != NO_IDENTITY else None)
           for name in ("source_size", "source_mtime_ns")},
        "metadata": str(row.get("metadata") or "") or None,
    }


def region_rows(image_id: str, regions: list[dict], embeddings: np.ndarray) -> list[dict]:
    """The regions rows of one image: its regions (at the original resolution) with their embeddings."""
    return [
        {"region_id": f"{image_id}:{n}", "image_id": image_id, "rle": region["rle"],
         "bbox": [int(v) for v in region["bbox"]], "area": int(region["area"]),
         "predicted_iou": float(region["predicted_iou"]), "stability_score": float(region["stability_score"]),
         "embedding": np.asarray(embeddings[n], dtype=np.float32)}
        for n, region in enumerate(regions)
    ]


def _at(batch: dict[str, np.ndarray], index: int) -> dict:
    return {key: values[index] for key, values in batch.items()}


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

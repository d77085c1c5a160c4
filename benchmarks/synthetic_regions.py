"""Synthetic index rows for the storage tests and the search benchmark.

Region embeddings are unit vectors drawn around random cluster centres, so that near neighbours
are crowded together as with real CLIP embeddings; uniformly random vectors would make an ANN
index look better than it is (every neighbour is about as far as any other).
"""

from __future__ import annotations

import hashlib

import numpy as np

_CHUNK = 100_000  # rows generated at a time, to bound float temporaries at 1M x 768


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def clustered_embeddings(n: int, dim: int, *, seed: int = 0, cluster_size: int = 100,
                         spread: float = 1.0) -> np.ndarray:
    """n unit vectors in about n / cluster_size clusters; spread 1.0 puts a point at cosine
    about 0.7 from its centre, and two points of one cluster at about 0.5."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((max(1, n // cluster_size), dim), dtype=np.float32))
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        out[start:stop] = unit(centres[rng.integers(0, len(centres), stop - start)] + noise)
    return out


def queries_near(embeddings: np.ndarray, n: int, *, seed: int = 1, spread: float = 0.5) -> np.ndarray:
    """n unit queries, each a perturbed copy of a random stored embedding."""
    rng = np.random.default_rng(seed)
    picked = embeddings[rng.integers(0, len(embeddings), n)]
    return unit(picked + rng.standard_normal(picked.shape, dtype=np.float32) * (spread / np.sqrt(embeddings.shape[1])))


def image_id(number: int) -> str:
    return hashlib.sha256(f"synthetic image {number}".encode()).hexdigest()


def image_row(number: int, embedding: np.ndarray | None = None, *, status: str = "ok") -> dict:
    row = {"image_id": image_id(number), "uri": f"file:///synthetic/{number:08d}.jpg", "status": status}
    if status == "ok":
        row.update(width=640, height=480, embedding=embedding)
    else:
        row["error"] = "cannot identify image file"
    return row


def region_row(image: str, n: int, embedding: np.ndarray, *, area: int = 1000) -> dict:
    return {"region_id": f"{image}:{n}", "image_id": image,
            "rle": {"size": [480, 640], "counts": "PPa03Rf0"}, "bbox": [10 * n, 20, 30, 40], "area": area,
            "predicted_iou": 0.9, "stability_score": 0.97, "embedding": embedding}


def index_rows(embeddings: np.ndarray, regions_per_image: int, *, first_image: int = 0,
               seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Commit rows for consecutive images of regions_per_image regions each (areas random)."""
    areas = np.random.default_rng(seed).integers(64, 100_000, len(embeddings))
    images, regions = [], []
    for start in range(0, len(embeddings), regions_per_image):
        block = embeddings[start:start + regions_per_image]
        number = first_image + start // regions_per_image
        images.append(image_row(number, unit(block.mean(axis=0))))
        regions.extend(region_row(images[-1]["image_id"], n, vector, area=int(areas[start + n]))
                       for n, vector in enumerate(block))
    return images, regions

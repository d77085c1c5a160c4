"""The RNS support memory: per-(image, class) prototypes pooled from patch features, and k-NN retrieval.

A prototype is v_c^i = normalise(sum_j P_jc x_j), where P_jc is the fraction of class c's labelled
pixels of image i that fall in patch j. The same pooling turns a region map into region features.
Only (image, class) pairs that occur are ever produced, so the memory never holds placeholder rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from maskdex.operators.common.labels import IGNORE_INDEX


def patch_index_map(image_size: tuple[int, int], grid: tuple[int, int],
                    covered: tuple[float, float] | None = None) -> torch.Tensor:
    """(H, W) index (row * gw + column) of the patch each pixel centre falls in.

    The image spans `covered` = (rows, columns) of patches from the grid's top-left corner (default:
    the whole grid, whatever the image's own size): pixel row y lies in patch row
    floor((y + 0.5) * covered_rows / H). A padded input covers fewer rows than the grid has.
    """
    (height, width), (gh, gw) = image_size, grid
    if min(height, width, gh, gw) < 1:
        raise ValueError(f"image size {image_size} and grid {grid} must be positive")
    ch, cw = (gh, gw) if covered is None else covered
    if not (0 < ch <= gh and 0 < cw <= gw):
        raise ValueError(f"the image must cover part of the grid {grid}, got {covered}")
    rows = ((torch.arange(height, dtype=torch.float64) + 0.5) * ch / height).long().clamp_(max=gh - 1)
    cols = ((torch.arange(width, dtype=torch.float64) + 0.5) * cw / width).long().clamp_(max=gw - 1)
    return rows[:, None] * gw + cols[None, :]


def pool_patches(features: torch.Tensor, label_map: torch.Tensor, *, ignore_index: int | None = IGNORE_INDEX,
                 covered: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels present in label_map and, per label, normalise(sum_j P_j x_j).

    features: (h, w, D) patch features; label_map: (H, W) integer labels at image resolution, or
    at the input's (h * p, w * p), where every pixel lies in exactly one patch; covered: see
    patch_index_map.
    P_j is the fraction of the label's pixels (ignore_index left out) that fall in patch j.
    Returns (labels (m,) int64 ascending, pooled (m, D)).
    """
    if features.ndim != 3:
        raise ValueError(f"expected (h, w, D) patch features, got shape {tuple(features.shape)}")
    if label_map.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {tuple(label_map.shape)}")
    if label_map.dtype.is_floating_point or label_map.dtype == torch.bool:
        raise ValueError(f"label map must hold integers, got {label_map.dtype}")
    gh, gw, dim = features.shape
    patches = patch_index_map(tuple(label_map.shape), (gh, gw), covered).flatten()
    labels = label_map.flatten().long().cpu()
    keep = labels != ignore_index if ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
    present, inverse = torch.unique(labels[keep], return_inverse=True)
    counts = torch.bincount(inverse * (gh * gw) + patches[keep], minlength=len(present) * gh * gw)
    counts = counts.view(len(present), gh * gw).to(features.device, features.dtype)
    pooled = (counts / counts.sum(dim=1, keepdim=True)) @ features.reshape(gh * gw, dim)
    return present, F.normalize(pooled, dim=-1)


@dataclass(frozen=True)
class SupportMemory:
    """Searchable prototypes: row r is prototypes[r], of class class_ids[r], from support image image_ids[r]."""

    prototypes: torch.Tensor
    class_ids: torch.Tensor
    image_ids: torch.Tensor

    def __post_init__(self):
        n = self.prototypes.shape[0]
        if self.prototypes.ndim != 2:
            raise ValueError(f"prototypes must be (N, D), got shape {tuple(self.prototypes.shape)}")
        for name in ("class_ids", "image_ids"):
            ids = getattr(self, name)
            if ids.shape != (n,) or ids.dtype.is_floating_point:
                raise ValueError(f"{name} must be ({n},) integers, got {tuple(ids.shape)} {ids.dtype}")
        if n and int(self.class_ids.min()) < 0:
            raise ValueError("class ids must be >= 0")

    def __len__(self) -> int:
        return int(self.prototypes.shape[0])


def build_support_memory(supports: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                         ignore_index: int = IGNORE_INDEX) -> SupportMemory:
    """One prototype per (support image, class present in it); supports are (features (h, w, D), label map)."""
    prototypes, class_ids, image_ids = [], [], []
    for index, (features, label_map) in enumerate(supports):
        classes, pooled = pool_patches(features, label_map, ignore_index=ignore_index)
        prototypes.append(pooled)
        class_ids.append(classes)
        image_ids.append(torch.full_like(classes, index))
    if not prototypes:
        raise ValueError("build_support_memory needs at least one support image")
    return SupportMemory(torch.cat(prototypes), torch.cat(class_ids), torch.cat(image_ids))


def class_features(memory: SupportMemory, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """v_c = normalise(mean of class c's prototypes), and which classes have any prototype.

    Returns ((n_classes, D) features, zero for classes without support, and (n_classes,) bool).
    """
    if len(memory) and int(memory.class_ids.max()) >= n_classes:
        raise ValueError(f"memory holds class {int(memory.class_ids.max())} but there are {n_classes} classes")
    dim = memory.prototypes.shape[1]
    sums = memory.prototypes.new_zeros(n_classes, dim).index_add_(0, memory.class_ids.to(memory.prototypes.device),
                                                                  memory.prototypes)
    counts = torch.bincount(memory.class_ids.cpu(), minlength=n_classes)
    # Every image holds each class once, so the mean over rows is the mean over images.
    return F.normalize(sums, dim=-1), (counts > 0).to(memory.prototypes.device)


def retrieve(queries: torch.Tensor, prototypes: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending, each once) of the union of every query's k nearest prototypes by inner product."""
    if queries.ndim != 2 or prototypes.ndim != 2 or queries.shape[1] != prototypes.shape[1]:
        raise ValueError(f"expected (n, D) queries and (N, D) prototypes, got {tuple(queries.shape)} "
                         f"and {tuple(prototypes.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not len(prototypes) or not len(queries):
        return torch.empty(0, dtype=torch.long, device=prototypes.device)
    nearest = (queries @ prototypes.T).topk(min(k, len(prototypes)), dim=1).indices
    return torch.unique(nearest)

"""What RNS classifies in a test image, patches or SAM regions, and how their scores become a label map."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from maskdex.operators.dense.features import DenseFeatures
from maskdex.operators.rns.memory import pool_patches


@dataclass(frozen=True)
class TestUnits:
    """The n units of one test image: their features (n, D), L2-normalised, and how to paint them.

    Patch mode: grid is the (h, w) patch grid and region_map is None; scores are upsampled
    bilinearly to image_size before the argmax. When the grid covers a padded input (input_size,
    whose top-left resized_size pixels are the image), scores are upsampled to input_size, cropped to
    resized_size and upsampled again to image_size, as the authors' code does. Region mode:
    region_map (H, W) gives each pixel's unit, and each region's argmax is painted onto its pixels.
    """

    features: torch.Tensor
    image_size: tuple[int, int]
    grid: tuple[int, int] | None = None
    region_map: torch.Tensor | None = None
    input_size: tuple[int, int] | None = None
    resized_size: tuple[int, int] | None = None

    __test__ = False  # not a pytest test class, despite the name

    def __post_init__(self):
        if self.features.ndim != 2:
            raise ValueError(f"unit features must be (n, D), got shape {tuple(self.features.shape)}")
        if (self.grid is None) == (self.region_map is None):
            raise ValueError("TestUnits needs exactly one of grid (patch mode) and region_map (region mode)")
        if (self.input_size is None) != (self.resized_size is None):
            raise ValueError("input_size and resized_size go together")
        if self.input_size is not None and any(r > i for r, i in zip(self.resized_size, self.input_size)):
            raise ValueError(f"resized size {self.resized_size} exceeds the input size {self.input_size}")

    def labels(self, scores: torch.Tensor) -> torch.Tensor:
        """(H, W) int64 argmax labels from (n, C) per-unit scores."""
        if scores.ndim != 2 or scores.shape[0] != self.features.shape[0]:
            raise ValueError(f"expected ({self.features.shape[0]}, C) scores, got {tuple(scores.shape)}")
        if self.region_map is not None:
            return scores.argmax(dim=1).cpu()[self.region_map]
        via = None if self.input_size is None else (self.input_size, self.resized_size)
        return upsample_argmax(scores.reshape(*self.grid, -1), self.image_size, via=via)


def patch_units(features: torch.Tensor, image_size: tuple[int, int], *, input_size: tuple[int, int] | None = None,
                resized_size: tuple[int, int] | None = None) -> TestUnits:
    """Every patch of an (h, w, D) grid is a unit. input_size and resized_size: see TestUnits."""
    if features.ndim != 3:
        raise ValueError(f"expected (h, w, D) patch features, got shape {tuple(features.shape)}")
    h, w, dim = features.shape
    return TestUnits(F.normalize(features.reshape(h * w, dim), dim=-1), tuple(image_size), grid=(h, w),
                     input_size=None if input_size is None else tuple(input_size),
                     resized_size=None if resized_size is None else tuple(resized_size))


def dense_patch_units(dense: DenseFeatures, device: torch.device | str | None = None) -> TestUnits:
    """The patch units of an image's dense features, predictions cropped back from the padded input."""
    features = dense.features if device is None else dense.features.to(device)
    return patch_units(features, dense.image_size, input_size=dense.input_size, resized_size=dense.resized_size)


def region_units(features: torch.Tensor, masks: torch.Tensor, *,
                 covered: tuple[float, float] | None = None) -> TestUnits:
    """Every painted region (see paint_regions) is a unit; its feature pools the patches it covers.

    covered: how many patch rows and columns the image spans when the grid covers a padded input
    (resized size / patch size); None when the image spans the whole grid.
    """
    region_map = paint_regions(masks)
    # regions are 0..R-1, in order
    _, pooled = pool_patches(features, region_map, ignore_index=None, covered=covered)
    return TestUnits(pooled, tuple(region_map.shape), region_map=region_map)


def dense_region_units(dense: DenseFeatures, masks: torch.Tensor,
                       device: torch.device | str | None = None) -> TestUnits:
    """The region units of an image's dense features; masks are (N, H, W) at the image's own size."""
    features = dense.features if device is None else dense.features.to(device)
    p = dense.patch_size
    return region_units(features, masks, covered=(dense.resized_size[0] / p, dense.resized_size[1] / p))


def paint_regions(masks: torch.Tensor) -> torch.Tensor:
    """(H, W) int64 region map from (N, H, W) boolean masks, regions numbered 0..R-1.

    Masks are painted smallest first, so larger masks overwrite smaller ones (as the authors'
    code does); pixels no mask covers form one more region. Masks left with no pixel vanish.
    """
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {tuple(masks.shape)}")
    masks = masks.bool().cpu()
    uncovered = len(masks)
    region_map = torch.full(masks.shape[1:], uncovered, dtype=torch.long)
    areas = masks.flatten(1).sum(dim=1)
    for index in torch.argsort(areas, stable=True).tolist():
        region_map[masks[index]] = index
    _, compact = torch.unique(region_map, return_inverse=True)
    return compact


def upsample_argmax(scores: torch.Tensor, size: tuple[int, int], chunk: int = 32, *,
                    via: tuple[tuple[int, int], tuple[int, int]] | None = None) -> torch.Tensor:
    """(H, W) argmax over classes of (h, w, C) scores upsampled bilinearly to size.

    via = (input_size, resized_size): the scores are first upsampled bilinearly to the padded
    input_size, cropped to its top-left resized_size (the image without the padding), then upsampled
    to size. Bilinear upsampling is linear and per class, so only the classes that can win somewhere
    (possible_winners) are upsampled, a chunk at a time: the full (C, H, W) stack is never held.
    """
    if scores.ndim != 3:
        raise ValueError(f"expected (h, w, C) scores, got shape {tuple(scores.shape)}")
    scores = scores.float()
    # Upsampling the padded input by the patch size first keeps a pixel's cells in one 3 x 3 block.
    blocks_hold_pixels = via is None or all(i >= g for i, g in zip(via[0], scores.shape[:2]))
    winners = possible_winners(scores) if blocks_hold_pixels else torch.arange(scores.shape[2])
    if len(winners) == 1:
        return torch.full(tuple(size), int(winners[0]), dtype=torch.long)
    planes = scores.permute(2, 0, 1)[None].index_select(1, winners)
    best = labels = None
    for start in range(0, planes.shape[1], chunk):
        up = planes[:, start : start + chunk]
        if via is not None:
            (input_h, input_w), (resized_h, resized_w) = via
            up = F.interpolate(up, size=(input_h, input_w), mode="bilinear", align_corners=False)
            up = up[..., :resized_h, :resized_w]
        up = F.interpolate(up, size=tuple(size), mode="bilinear", align_corners=False)[0]
        value, index = up.max(dim=0)
        if best is None:
            best, labels = value, index + start
        else:
            better = value > best
            best = torch.where(better, value, best)
            labels = torch.where(better, index + start, labels)
    return winners[labels].cpu()


def possible_winners(scores: torch.Tensor) -> torch.Tensor:
    """The classes (ascending) that can be the argmax anywhere in a bilinear upsampling of (h, w, C) scores.

    Every upsampled pixel is a convex combination of the scores of cells within one 3 x 3 block of
    the grid (two bilinear taps per axis, or three when a second bilinear step follows an upsampling
    by the patch size, as with TestUnits' padded inputs). In a block, a class d that scores at least
    as high as class c on all nine cells scores at least as high in every such combination (rounding
    is monotonic), so c cannot win there; the classes that some block's cell leaders (argmax classes)
    do not dominate are the possible winners. A pixel's label only differs from the full argmax's when
    an excluded class ties its winner exactly, to the last bit.
    """
    h, w, n_classes = scores.shape
    padded = F.pad(scores.permute(2, 0, 1)[None], (1, 1, 1, 1), mode="replicate")
    blocks = F.unfold(padded, 3).view(n_classes, 9, h * w).permute(2, 1, 0)  # (block, cell, class)
    leaders = blocks.argmax(dim=2)  # (block, 9): each cell's own argmax
    # leader_scores[b, j, k]: the score at cell j of the class that leads cell k
    leader_scores = blocks.gather(2, leaders[:, None, :].expand(-1, 9, -1))
    # First the cheap test: a class whose best score in the block is at most some leader's worst is dominated.
    floor = leader_scores.amin(dim=1).amax(dim=1)  # (block,)
    survivors = torch.nonzero((blocks.amax(dim=1) > floor[:, None]).any(dim=0)).flatten()
    # Then the full test, on the few classes the cheap one kept.
    kept = blocks.index_select(2, survivors)
    dominated = torch.zeros(h * w, len(survivors), dtype=torch.bool, device=scores.device)
    for k in range(9):  # one leader at a time keeps the comparison at (block, 9, classes)
        dominated |= (leader_scores[:, :, k, None] >= kept).all(dim=1)
    possible = torch.zeros(n_classes, dtype=torch.bool, device=scores.device)
    possible[survivors[(~dominated).any(dim=0)]] = True
    possible[leaders.flatten()] = True
    return torch.nonzero(possible).flatten()

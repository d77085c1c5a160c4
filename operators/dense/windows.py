"""How RNS turns an image into the model's input and covers it with windows: the one policy.

Every RNS path (`maskdex segment`, `supports add`, the service, `maskdex eval`) gets its windows from
`rns_windows`, so they cannot disagree. The rules are those of the RNS authors' released code
(Retrieve-and-Segment: configs/clip.yaml, main_eval.py, mmseg_utils/apis/test.py), checked there:

- scale (2048, 448), keep_ratio: the image is scaled by min(2048 / long side, 448 / short side), each
  side rounded half up (mmcv's rescale_size), and resized by OpenCV itself (cv2.INTER_LINEAR on the
  8-bit pixels, as mmcv's imrescale; label maps cv2.INTER_NEAREST, as mmseg). configs/clip.yaml sets this scale for test and
  support images alike; it overrides the dataset configs' own test scale (512, 512).
- the resized image is zero-padded on the right and bottom to a multiple of the patch size (pixel
  value 0 before CLIP's mean/std normalisation; label maps are padded with 255, "ignore").
- test images: windows of 448 every 224. Support images: windows of 448 and of 224, every 112.
  Windows are clipped to the image where a side is shorter than the window.
- each window's patch features are L2-normalised; per window size, the patches average the windows
  that cover them; the sizes are then averaged, and each patch is L2-normalised again.

These numbers are for ViT-B/16, whose own input is 224 pixels. Another model gets the same scheme
scaled by its own input size / 224 (or by short_side / 448 when a short side is asked for), so a
small model is not run on windows many times its training size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

IGNORE_LABEL = 255

# configs/clip.yaml of the authors' code, for ViT-B/16.
PAPER_NATIVE_INPUT = 224
PAPER_SCALE = (2048, 448)  # (longest allowed long side, short side)
PAPER_TEST_WINDOWS = ((448,), 224)  # (window sizes, stride)
PAPER_SUPPORT_WINDOWS = ((448, 224), 112)


@dataclass(frozen=True)
class WindowSpec:
    """Resize to `short_side` (the long side at most `long_side`), then square windows of each size in
    `windows`, every `stride` pixels. long_side defaults to the paper's ratio, short_side * 2048 / 448."""

    short_side: int
    windows: tuple[int, ...]
    stride: int
    long_side: int | None = None

    def __post_init__(self):
        if not self.windows:
            raise ValueError("WindowSpec needs at least one window size")
        if self.short_side < 1 or self.stride < 1 or any(w < 1 for w in self.windows):
            raise ValueError(f"short side, window sizes and stride must be >= 1, got {self.short_side}, "
                             f"{self.windows} and {self.stride}")
        if max(self.windows) > self.short_side:
            raise ValueError(f"window {max(self.windows)} does not fit in short side {self.short_side}")
        if self.long_side is None:
            object.__setattr__(self, "long_side", int(round(self.short_side * PAPER_SCALE[0] / PAPER_SCALE[1])))
        if self.long_side < self.short_side:
            raise ValueError(f"long side {self.long_side} is shorter than short side {self.short_side}")


def rns_windows(native_input: int, patch_size: int, short_side: int | None = None) -> tuple[WindowSpec, WindowSpec]:
    """(test, support) windows for a model whose own input is `native_input` pixels.

    Exactly the paper's for ViT-B/16 (native 224). short_side, when given, sets the scale instead
    (the paper: 448); every size must come out a whole number of patches.
    """
    if native_input < 1 or patch_size < 1:
        raise ValueError(f"native input and patch size must be >= 1, got {native_input} and {patch_size}")
    scale = (short_side if short_side is not None else native_input * PAPER_SCALE[1] / PAPER_NATIVE_INPUT)
    factor = scale / PAPER_SCALE[1]

    def px(value: int) -> int:
        return int(round(value * factor))

    short, long = px(PAPER_SCALE[1]), px(PAPER_SCALE[0])
    specs = tuple(WindowSpec(short, tuple(px(w) for w in windows), px(stride), long)
                  for windows, stride in (PAPER_TEST_WINDOWS, PAPER_SUPPORT_WINDOWS))
    sizes = sorted({short, *(s for spec in specs for s in (spec.stride, *spec.windows))})
    if any(size % patch_size for size in sizes) or min(sizes) < patch_size:
        raise ValueError(f"short side {short} gives window sizes and strides {sizes}, which must all be whole "
                         f"numbers of {patch_size}-pixel patches (use a multiple of {4 * patch_size})")
    return specs


def rescaled_size(height: int, width: int, spec: WindowSpec) -> tuple[int, int]:
    """mmcv's keep-ratio rescale to (long_side, short_side): scale = min(long / long side, short / short
    side), each side multiplied and rounded half up."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    scale = min(spec.long_side / max(height, width), spec.short_side / min(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def padded_size(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """The size after padding right and bottom to a multiple of the patch size."""
    return -(-height // patch_size) * patch_size, -(-width // patch_size) * patch_size


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(3, h, w) uint8 pixels of an (H, W, 3) uint8 image resized to size = (h, w).

    OpenCV's own INTER_LINEAR, as mmcv's imrescale calls it: its fixed-point arithmetic differs from
    bilinear in float by a grey level on about one pixel in eight, enough to move the features by 3e-3.
    """
    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.dtype} of shape {rgb.shape}")
    if tuple(size) != rgb.shape[:2]:
        rgb = cv2.resize(rgb, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def resize_labels(labels: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An (H, W) label map resized to size = (h, w) by OpenCV's INTER_NEAREST, as mmseg resizes labels."""
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {tuple(labels.shape)}")
    if tuple(size) == labels.shape:
        return torch.from_numpy(labels.copy())
    # Nearest neighbour only copies whole pixels, so any dtype (cv2 has no int64 or bool) goes through
    # as that many bytes per pixel.
    as_bytes = np.ascontiguousarray(labels).view(np.uint8).reshape(*labels.shape, labels.dtype.itemsize)
    resized = cv2.resize(as_bytes, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST)
    resized = resized.reshape(int(size[0]), int(size[1]), labels.dtype.itemsize)
    return torch.from_numpy(np.ascontiguousarray(resized).view(labels.dtype)[..., 0])


def pad_bottom_right(tensor: torch.Tensor, size: tuple[int, int], value: float) -> torch.Tensor:
    """A (..., h, w) tensor padded with `value` on the bottom and right to size = (H, W)."""
    h, w = tensor.shape[-2:]
    if size[0] < h or size[1] < w:
        raise ValueError(f"cannot pad {h}x{w} to the smaller {size[0]}x{size[1]}")
    return F.pad(tensor, (0, size[1] - w, 0, size[0] - h), value=value)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Starts of windows covering [0, length): every `stride`, the last one flush with the end; a side
    shorter than the window gets one window, clipped to the side (its length is min(window, length))."""
    if length < 1 or window < 1 or stride < 1:
        raise ValueError(f"length, window and stride must be >= 1, got {length}, {window} and {stride}")
    count = max(length - window + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride + window, length) - window, 0) for i in range(count)})


def average_windows(grid: tuple[int, int],
                    per_size: Sequence[Sequence[tuple[tuple[int, int], torch.Tensor]]]) -> torch.Tensor:
    """(gh, gw, D) patch features from window features, as the authors' sliding window computes them.

    per_size: for each window size, its windows as ((row, column) of the window's first patch, its
    (wh, ww, D) features). Each window's features are L2-normalised; the windows of one size are
    averaged where they overlap; those per-size means are averaged over the sizes, and every patch
    is L2-normalised.
    """
    if not per_size or not all(per_size):
        raise ValueError("average_windows needs at least one window of each size")
    dim = per_size[0][0][1].shape[-1]
    means = [_mean_of_windows(grid, windows, dim) for windows in per_size]
    return F.normalize(torch.stack(means).mean(dim=0), dim=-1)


def _mean_of_windows(grid: tuple[int, int], windows: list, dim: int) -> torch.Tensor:
    total = windows[0][1].new_zeros(grid[0], grid[1], dim, dtype=torch.float32)
    count = total.new_zeros(grid[0], grid[1], 1)
    for (row, col), features in windows:
        if features.ndim != 3 or features.shape[-1] != dim:
            raise ValueError(f"expected (wh, ww, {dim}) window features, got {tuple(features.shape)}")
        wh, ww = features.shape[:2]
        if row < 0 or col < 0 or row + wh > grid[0] or col + ww > grid[1]:
            raise ValueError(f"window at {(row, col)} of size {(wh, ww)} leaves the grid {grid}")
        total[row : row + wh, col : col + ww] += F.normalize(features.float(), dim=-1)
        count[row : row + wh, col : col + ww] += 1
    if (count == 0).any():
        raise ValueError("some patches are covered by no window")
    return total / count

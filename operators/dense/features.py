"""MaskCLIP dense patch features from an open_clip ViT, the variant RNS uses (design.md section 3).

The visual transformer runs as usual up to its last block. In the last block only the value path
of the attention is kept (v = out_proj(value part of in_proj(ln_1(x)))), so each token's output
depends on that token alone and stays aligned with its patch; the MLP, ln_post and the projection
then map every patch token into the joint image-text space. The class token is dropped.

How an image is resized, padded and covered with windows, and how the windows' features are
averaged, is the policy in windows.py (the RNS authors' procedure).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from maskdex.operators.common.clip_models import CLIP_MEAN, CLIP_STD
from maskdex.operators.common.device import autocast, resolve_device
from maskdex.operators.common.image_input import as_rgb_uint8
from maskdex.operators.common.prompts import IMAGENET_TEMPLATES
from maskdex.operators.common.text_features import embed_texts
from maskdex.operators.dense.windows import (
    IGNORE_LABEL,
    PAPER_NATIVE_INPUT,
    WindowSpec,
    average_windows,
    pad_bottom_right,
    padded_size,
    rescaled_size,
    resize_labels,
    resize_rgb,
    rns_windows,
    window_starts,
)


# The paper's windows for ViT-B/16: one size for test images, two for support images.
TEST_WINDOWS, SUPPORT_WINDOWS = rns_windows(PAPER_NATIVE_INPUT, 16)


@dataclass(frozen=True)
class DenseFeatures:
    """An image's patch features and the geometry that maps its pixels to patches.

    features: (h, w, D) float32, each patch L2-normalised. The image (image_size, original pixels)
    was resized to resized_size, then padded on the bottom and right to input_size = (h * patch_size,
    w * patch_size); patch (i, j) covers input pixels [i * p, (i + 1) * p) x [j * p, (j + 1) * p).
    """

    features: torch.Tensor
    image_size: tuple[int, int]
    input_size: tuple[int, int]
    patch_size: int
    resized_size: tuple[int, int] | None = None  # None: the image filled input_size (no padding)

    def __post_init__(self):
        if self.resized_size is None:
            object.__setattr__(self, "resized_size", tuple(self.input_size))

    def label_grid(self, label_map, fill: int = IGNORE_LABEL) -> torch.Tensor:
        """An (H, W) label map of the original image brought onto the input: resized by nearest
        neighbour to resized_size and padded with `fill` (255, ignore) to input_size."""
        labels = torch.as_tensor(np.asarray(label_map)) if not isinstance(label_map, torch.Tensor) else label_map
        if tuple(labels.shape) != tuple(self.image_size):
            raise ValueError(f"label map is {tuple(labels.shape)}, the image {tuple(self.image_size)}")
        return pad_bottom_right(resize_labels(labels, self.resized_size), self.input_size, fill)

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.features.shape[0]), int(self.features.shape[1])


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """(1 + gh * gw, C) positional embeddings resampled bicubically to (1 + new_gh * new_gw, C).

    The class token's embedding is kept as is; the patch embeddings are treated as a (gh, gw) image.
    """
    gh, gw = grid
    if pos_embed.ndim != 2 or pos_embed.shape[0] != 1 + gh * gw:
        raise ValueError(f"expected ({1 + gh * gw}, C) positional embeddings for grid {grid}, "
                         f"got {tuple(pos_embed.shape)}")
    cls, patches = pos_embed[:1], pos_embed[1:]
    patches = patches.float().reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=new_grid, mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1)
    return torch.cat([cls.float(), patches]).to(pos_embed.dtype)


def value_path_block(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The last block with its attention reduced to the value path; x is (N, L, width), any layout.

    The value path acts on every token independently, so whether the block's attention module is
    batch-first does not matter here. LayerScale (absent, i.e. identity, in CLIP's ViTs) is applied
    as the block itself would.
    """
    attn = block.attn
    width = attn.embed_dim
    value_weight = attn.in_proj_weight[2 * width :]
    value_bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    v = attn.out_proj(F.linear(block.ln_1(x), value_weight, value_bias))
    x = x + block.ls_1(v)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def check_dense_compatible(visual: nn.Module) -> None:
    """A clear error for visual towers whose last block this module cannot reduce to its value path."""
    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"dense features need an open_clip VisionTransformer, got {type(visual).__name__}")
    if visual.attn_pool is not None or visual.proj is None:
        raise ValueError("dense features need a ViT with a projection and no attentional pooler")
    blocks = visual.transformer.resblocks
    if not all(isinstance(b, ResidualAttentionBlock) and getattr(b.attn, "_qkv_same_embed_dim", False)
               for b in blocks):
        raise ValueError("dense features need standard ResidualAttentionBlocks with a packed in_proj_weight")


def patch_tokens(visual: VisionTransformer, pixels: torch.Tensor) -> torch.Tensor:
    """(N, h, w, D) MaskCLIP features (not normalised) of (N, 3, H, W) CLIP-normalised pixels.

    H and W must be multiples of the patch size; other sizes than the model's own use
    interpolated positional embeddings.
    """
    ph, pw = visual.patch_size
    n, _, height, width = pixels.shape
    if height % ph or width % pw:
        raise ValueError(f"input {height}x{width} is not a multiple of the patch size {ph}x{pw}")
    grid = (height // ph, width // pw)
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(n, 1, -1)
    pos = interpolate_pos_embed(visual.positional_embedding, visual.grid_size, grid)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + pos.to(x.dtype))
    transformer = visual.transformer
    if not transformer.batch_first:
        x = x.transpose(0, 1)
    for block in transformer.resblocks[:-1]:
        x = block(x)
    if not transformer.batch_first:
        x = x.transpose(0, 1)
    x = value_path_block(transformer.resblocks[-1], x)
    x = visual.ln_post(x[:, 1:]) @ visual.proj
    return x.reshape(n, grid[0], grid[1], -1)


def fill_unnamed(named_features: torch.Tensor, named: Sequence[bool]) -> torch.Tensor:
    """(C, D) text features where each unnamed class gets the normalised mean of the named ones."""
    named = torch.as_tensor(list(named), dtype=torch.bool)
    if int(named.sum()) != named_features.shape[0]:
        raise ValueError(f"{int(named.sum())} named classes but {named_features.shape[0]} text features")
    if not named.any():
        raise ValueError("at least one class needs a name to build text features")
    out = named_features.new_empty(len(named), named_features.shape[1])
    out[named] = named_features
    out[~named] = F.normalize(named_features.mean(dim=0), dim=-1)
    return out


class DenseCLIPFeatures:
    """Dense patch features of test and support images, and class text features, from one CLIP.

    Every output is float32 on the CPU.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer,
        *,
        device: str | torch.device = "auto",
        dtype: str | None = "bfloat16",
        test_windows: WindowSpec = TEST_WINDOWS,
        support_windows: WindowSpec = SUPPORT_WINDOWS,
        batch_size: int = 16,
    ):
        check_dense_compatible(clip_model.visual)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.model = clip_model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.batch_size = batch_size
        ph, pw = self.model.visual.patch_size
        if ph != pw:
            raise ValueError(f"dense features need square patches, got {ph}x{pw}")
        self.patch_size = ph
        for name, spec in (("test_windows", test_windows), ("support_windows", support_windows)):
            sizes = (spec.short_side, spec.stride, *spec.windows)
            if any(size % ph for size in sizes):
                raise ValueError(f"{name} sizes {sizes} must all be multiples of the patch size {ph}")
        self.test_windows = test_windows
        self.support_windows = support_windows

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)

    def test_features(self, image) -> DenseFeatures:
        return self.features(image, self.test_windows)

    def support_features(self, image) -> DenseFeatures:
        return self.features(image, self.support_windows)

    def features(self, image, spec: WindowSpec) -> DenseFeatures:
        """The authors' procedure (see windows.py): keep-ratio bilinear resize to 8-bit pixels, zero
        padding to whole patches, CLIP normalisation, windows of each size, per-window normalised means."""
        rgb = as_rgb_uint8(image)
        height, width = rgb.shape[:2]
        p = self.patch_size
        resized = rescaled_size(height, width, spec)
        input_size = padded_size(*resized, p)
        pixels = pad_bottom_right(resize_rgb(rgb, resized)[None].float() / 255.0, input_size, 0.0)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        pixels = ((pixels - mean) / std).to(self.device)
        per_size = []
        for window in spec.windows:
            rows, cols = (window_starts(side, window, spec.stride) for side in input_size)
            wh, ww = min(window, input_size[0]), min(window, input_size[1])
            starts = [(r, c) for r in rows for c in cols]
            crops = torch.cat([pixels[..., r : r + wh, c : c + ww] for r, c in starts])
            per_size.append([((r // p, c // p), f) for (r, c), f in zip(starts, self._encode(crops))])
        features = average_windows((input_size[0] // p, input_size[1] // p), per_size)
        return DenseFeatures(features, (int(height), int(width)), input_size, p, resized)

    def class_text_features(self, names: Sequence[str | None]) -> torch.Tensor:
        """(C, D) text features, 80 templates each; a class named None or "" gets the others' mean."""
        names = list(names)
        named = [name is not None and bool(str(name).strip()) for name in names]
        with autocast(self.device, self.dtype):
            features = embed_texts(self.model.encode_text, self.tokenizer, [n for n, k in zip(names, named) if k],
                                   IMAGENET_TEMPLATES, device=self.device)
        return fill_unnamed(features, named)

    def _encode(self, crops: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.inference_mode(), autocast(self.device, self.dtype):
            for start in range(0, len(crops), self.batch_size):
                out.append(patch_tokens(self.model.visual, crops[start : start + self.batch_size]).float().cpu())
        return torch.cat(out)


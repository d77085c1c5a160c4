"""Alpha-CLIP: CLIP's ViT with one extra patch embedding for an alpha (mask) channel.

`conv1_alpha` (Conv2d(1, width, patch, patch, bias=False)) is added to `conv1`'s output before the
class token and positional embedding; everything after is plain CLIP. The extra layer lives on the
open_clip VisionTransformer itself, so the visual tower's state dict has the released checkpoints'
key names (after the `attn.in_proj` rename, see alpha_clip_checkpoint.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import nn


class AlphaCLIP(nn.Module):
    def __init__(self, clip: CLIP, *, alpha_init: str = "zeros", seed: int = 0):
        super().__init__()
        visual = clip.visual
        visual.conv1_alpha = nn.Conv2d(
            1, visual.conv1.out_channels, kernel_size=visual.patch_size, stride=visual.patch_size, bias=False
        )
        if alpha_init == "zeros":
            # The released models start from zero, so an untrained alpha branch is plain CLIP.
            nn.init.zeros_(visual.conv1_alpha.weight)
        elif alpha_init == "random":
            # Random-weight presets: a random alpha branch makes embeddings depend on the mask.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                nn.init.normal_(visual.conv1_alpha.weight, std=visual.conv1.weight.std().item())
        else:
            raise ValueError(f"alpha_init must be 'zeros' or 'random', got {alpha_init!r}")
        self.clip = clip.eval()

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def input_size(self) -> int:
        return int(self.clip.visual.image_size[0])

    @property
    def embed_dim(self) -> int:
        return int(self.clip.visual.output_dim)

    def encode_image(self, pixels: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """pixels: (N, 3, S, S) CLIP-normalised; alpha: (N, 1, S, S) normalised with (0.5, 0.26).

        Returns L2-normalised embeddings (N, D).
        """
        visual = self.clip.visual
        x = visual.conv1(pixels) + visual.conv1_alpha(alpha.to(pixels.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)
        x = visual.ln_pre(x)
        x = visual.transformer(x)
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return F.normalize(pooled.float(), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens).float(), dim=-1)

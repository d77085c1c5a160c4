"""The released Alpha-CLIP checkpoints: the visual tower's state dict in OpenAI-CLIP layout.

They differ from open_clip's names in one place: attention input projections are stored as
`attn.in_proj.weight` / `attn.in_proj.bias` (open_clip: `attn.in_proj_weight` / `attn.in_proj_bias`),
and a checkpoint saved from DataParallel carries a `module.` prefix on every key.
"""

from __future__ import annotations

import os

import torch

from maskdex.operators.alpha_clip.model import AlphaCLIP
from maskdex.operators.registry.weights import BadCheckpointError, check_state_dict, read_state_dict

_RENAMES = ((".attn.in_proj.weight", ".attn.in_proj_weight"), (".attn.in_proj.bias", ".attn.in_proj_bias"))


def official_to_open_clip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        for old, new in _RENAMES:
            if key.endswith(old):
                key = key[: -len(old)] + new
        converted[key] = value
    return converted


def load_alpha_clip_visual(model: AlphaCLIP, checkpoint: str | os.PathLike | dict) -> None:
    """Load a released Alpha-CLIP visual checkpoint (a path or an already-read dict) onto `model`.

    Anything that does not fit (missing, unexpected or wrongly-shaped keys) is one error listing it all;
    nothing is loaded in that case.
    """
    source = "<state dict>" if isinstance(checkpoint, dict) else str(checkpoint)
    raw = checkpoint if isinstance(checkpoint, dict) else read_state_dict(checkpoint)
    for wrapper in ("state_dict", "model"):
        if wrapper in raw and isinstance(raw[wrapper], dict):
            raw = raw[wrapper]
    if not all(isinstance(value, torch.Tensor) for value in raw.values()):
        raise BadCheckpointError(f"checkpoint {source} is not a flat dict of tensors")
    state_dict = official_to_open_clip(raw)
    check_state_dict(model.visual.state_dict(), state_dict, source)
    model.visual.load_state_dict(state_dict, strict=True)

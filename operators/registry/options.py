"""The model options every job takes: which preset, where its weights are, which device and GPU dtype."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelOptions:
    """Settings of every job that builds models derive from this, so the four options mean one thing everywhere."""

    models: str = "tiny"  # a preset name (see presets.PRESETS) or 'SAM2+ALPHACLIP'
    weights: str | None = None  # the weights directory; None: $MASKDEX_WEIGHTS or ~/.cache/maskdex/weights
    device: str = "auto"  # auto, cpu or cuda[:n]
    dtype: str | None = "bfloat16"  # autocast dtype on CUDA; None: float32

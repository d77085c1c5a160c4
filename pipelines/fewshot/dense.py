"""The dense CLIP of a preset as the RNS pipelines use it, and the support memory that matches it."""

from __future__ import annotations

import open_clip

from maskdex.operators.dense.features import DenseCLIPFeatures, WindowSpec
from maskdex.operators.registry.presets import CLIPSpec, dense_feature_extractor, embedding_dim, get_preset
from maskdex.storage.support_store import SupportStore

# The paper's windows for ViT-B/16, whose own input is 224 pixels: short side 448; test windows of
# 448 every 224; support windows of 448 and 224 every 112.
_PAPER_INPUT = 224


def windows_for(spec: CLIPSpec) -> tuple[WindowSpec, WindowSpec]:
    """(test, support) windows: the paper's, scaled to the model's own input size (exactly the paper's
    for ViT-B/16), so that a small model is not run on windows many times its training size."""
    config = spec.arch if isinstance(spec.arch, dict) else open_clip.get_model_config(spec.arch)
    size = config["vision_cfg"]["image_size"]
    native = size if isinstance(size, int) else size[0]
    scale = native / _PAPER_INPUT

    def px(value: int) -> int:
        return int(round(value * scale))

    return (WindowSpec(px(448), (px(448),), px(224)), WindowSpec(px(448), (px(448), px(224)), px(112)))


def build_extractor(models: str, *, weights: str | None = None, device: str = "auto",
                    dtype: str | None = "bfloat16") -> DenseCLIPFeatures:
    spec = get_preset(models).dense_clip
    test_windows, support_windows = windows_for(spec)
    return dense_feature_extractor(models, weights=weights, device=device, dtype=dtype, test_windows=test_windows,
                                   support_windows=support_windows)


def open_support_store(db: str, models: str, *, create: bool = True) -> SupportStore:
    """The support sets of a database, checked against (or created for) the preset's dense CLIP.

    Prototypes depend only on the dense CLIP, so every preset that shares it shares the sets.
    """
    spec = get_preset(models).dense_clip
    return SupportStore.open(db, dense_model=spec.name, embed_dim=embedding_dim(spec), create=create)

"""The dense CLIP of a preset as the RNS pipelines use it, and the support memory that matches it."""

from __future__ import annotations

from maskdex.operators.dense.features import DenseCLIPFeatures
from maskdex.operators.registry.presets import dense_feature_extractor, embedding_dim, get_preset
from maskdex.storage.support_store import SupportStore


def build_extractor(models: str, *, weights: str | None = None, device: str = "auto",
                    dtype: str | None = "bfloat16") -> DenseCLIPFeatures:
    """The preset's dense CLIP with its windows (presets.dense_windows: the paper's for ViT-B/16,
    scaled to the model's own input size otherwise), as `maskdex eval` uses by default."""
    return dense_feature_extractor(models, weights=weights, device=device, dtype=dtype)


def open_support_store(db: str, models: str, *, create: bool = True) -> SupportStore:
    """The support sets of a database, checked against (or created for) the preset's dense CLIP.

    Prototypes depend only on the dense CLIP, so every preset that shares it shares the sets.
    """
    spec = get_preset(models).dense_clip
    return SupportStore.open(db, dense_model=spec.name, embed_dim=embedding_dim(spec), create=create)

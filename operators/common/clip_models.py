"""Building open_clip CLIP models from a named architecture or from a small config, and their tokenizer."""

from __future__ import annotations

import open_clip
import torch
from open_clip.model import CLIP

# A 2-layer CLIP small enough for tests and offline demos on a CPU. The tokenizer and the
# vocabulary are the real ones, so text handling is exercised exactly as with real weights.
TINY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_clip(arch: str | dict, *, quick_gelu: bool, seed: int = 0) -> CLIP:
    """An open_clip CLIP with random weights: `arch` is an open_clip model name or a config dict.

    Random initialisation is seeded so that every process builds the same model; pipelines rely on
    this for the random-weight presets (index-time and query-time embeddings must agree).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(arch, dict):
            model = CLIP(**arch, quick_gelu=quick_gelu)
        else:
            model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu)
    return model.eval()


def clip_tokenizer(arch: str | dict):
    """open_clip's tokenizer for an architecture; config-built models use the standard CLIP BPE."""
    if isinstance(arch, dict):
        return open_clip.tokenizer.SimpleTokenizer(context_length=arch["text_cfg"]["context_length"])
    return open_clip.get_tokenizer(arch)

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from maskdex.operators.registry.alpha_clip_checkpoint import load_alpha_clip_visual
from maskdex.operators.alpha_clip.model import AlphaCLIP
from maskdex.operators.common.clip_models import TINY_CLIP_CONFIG, build_clip, clip_tokenizer
from maskdex.operators.registry.presets import ALPHA_CLIP_PRESETS, alpha_clip_encoder, build_alpha_clip, get_preset
from maskdex.operators.common.prompts import IMAGENET_TEMPLATES
from maskdex.operators.registry.weights import BadCheckpointError, MissingWeightsError


def _official_layout(visual_state: dict, prefix: str = "") -> dict:
    """Write a visual state dict the way the released Alpha-CLIP files name their keys."""
    out = {}
    for key, value in visual_state.items():
        key = key.replace("attn.in_proj_weight", "attn.in_proj.weight").replace("attn.in_proj_bias", "attn.in_proj.bias")
        out[prefix + key] = value.clone()
    return out


def _inputs(size: int, n: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, size, size, generator=generator)
    alpha = torch.where(torch.rand(n, 1, size, size, generator=generator) > 0.5, 1.92, -1.92)
    return pixels, alpha


@pytest.mark.parametrize("arch", [TINY_CLIP_CONFIG, "ViT-B-16"], ids=["tiny", "ViT-B-16"])
def test_zero_alpha_branch_is_plain_open_clip(arch):
    clip = build_clip(arch, quick_gelu=True, seed=3)
    reference = copy.deepcopy(clip)
    model = AlphaCLIP(clip, alpha_init="zeros")
    size = model.input_size
    pixels, alpha = _inputs(size, n=2)
    with torch.no_grad():
        ours = model.encode_image(pixels, alpha)
        theirs = F.normalize(reference.encode_image(pixels), dim=-1)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_alpha_changes_the_embedding_when_the_branch_is_trained():
    model = AlphaCLIP(build_clip(TINY_CLIP_CONFIG, quick_gelu=True), alpha_init="random")
    pixels, alpha = _inputs(model.input_size, n=1)
    with torch.no_grad():
        a = model.encode_image(pixels, alpha)
        b = model.encode_image(pixels, -alpha)
    assert (a - b).abs().max() > 1e-3
    assert torch.allclose(a.norm(dim=-1), torch.ones(1), atol=1e-5)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_checkpoint_round_trip(tmp_path, prefix):
    source = AlphaCLIP(build_clip(TINY_CLIP_CONFIG, quick_gelu=True, seed=1), alpha_init="random", seed=5)
    path = tmp_path / "alpha.pth"
    torch.save(_official_layout(source.visual.state_dict(), prefix), path)

    target = AlphaCLIP(build_clip(TINY_CLIP_CONFIG, quick_gelu=True, seed=2), alpha_init="zeros")
    pixels, alpha = _inputs(source.input_size)
    with torch.no_grad():
        assert not torch.allclose(source.encode_image(pixels, alpha), target.encode_image(pixels, alpha))
        load_alpha_clip_visual(target, path)
        assert torch.allclose(source.encode_image(pixels, alpha), target.encode_image(pixels, alpha), atol=1e-6)


def test_wrong_checkpoint_lists_what_does_not_fit(tmp_path):
    model = AlphaCLIP(build_clip(TINY_CLIP_CONFIG, quick_gelu=True), alpha_init="zeros")
    state = _official_layout(model.visual.state_dict())
    state["conv1_alpha.weight"] = torch.zeros(32, 1, 8, 8)
    del state["ln_post.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    before = copy.deepcopy(model.visual.state_dict())
    with pytest.raises(BadCheckpointError) as error:
        load_alpha_clip_visual(model, path)
    message = str(error.value)
    assert str(path) in message
    assert "missing keys: ln_post.weight" in message
    assert "unexpected keys: extra.weight" in message
    assert "conv1_alpha.weight: checkpoint (32, 1, 8, 8) vs model (64, 1, 8, 8)" in message
    assert all(torch.equal(before[k], v) for k, v in model.visual.state_dict().items()), "nothing may be loaded"


def test_unreadable_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint")
    model = AlphaCLIP(build_clip(TINY_CLIP_CONFIG, quick_gelu=True), alpha_init="zeros")
    with pytest.raises(BadCheckpointError, match="cannot read checkpoint .*garbage.pth"):
        load_alpha_clip_visual(model, path)


def test_missing_weight_file_says_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.delenv("MASKDEX_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(MissingWeightsError) as error:
        alpha_clip_encoder("fast", weights=tmp_path, device="cpu")
    assert "open_clip_ViT-B-16_openai.safetensors" in str(error.value)
    assert str(tmp_path) in str(error.value)


@pytest.mark.slow
def test_real_preset_loads_released_layout_from_weights_dir(tmp_path):
    """alpha-clip-b16 from a weights directory: open_clip CLIP weights plus the official visual checkpoint."""
    spec = ALPHA_CLIP_PRESETS["alpha-clip-b16"]
    source = AlphaCLIP(build_clip("ViT-B-16", quick_gelu=True, seed=11), alpha_init="random", seed=12)
    clip_state = {k: v for k, v in source.clip.state_dict().items() if not k.startswith("visual.conv1_alpha")}
    save_file({k: v.contiguous() for k, v in clip_state.items()}, str(tmp_path / spec.clip_weights))
    torch.save(_official_layout(source.visual.state_dict(), "module."), tmp_path / spec.alpha_checkpoint)

    loaded = build_alpha_clip(spec, weights=tmp_path)
    pixels, alpha = _inputs(224, n=2)
    tokens = clip_tokenizer("ViT-B-16")(["a red square", "a dog"])
    with torch.no_grad():
        assert torch.allclose(source.encode_image(pixels, alpha), loaded.encode_image(pixels, alpha), atol=1e-5)
        assert torch.allclose(source.encode_text(tokens), loaded.encode_text(tokens), atol=1e-5)


def test_text_templates_average_normalised_prompt_embeddings():
    encoder = alpha_clip_encoder("tiny", device="cpu", dtype=None)
    templates = IMAGENET_TEMPLATES[:3]
    ensembled = encoder.embed_texts(["cat"], templates)[0]
    singles = encoder.embed_texts([t.format("cat") for t in templates])
    assert torch.allclose(ensembled, F.normalize(singles.mean(0), dim=0), atol=1e-6)
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    with pytest.raises(ValueError, match="non-empty"):
        encoder.embed_texts([""])


def test_region_embeddings_depend_on_the_mask(photos):
    encoder = alpha_clip_encoder("tiny", device="cpu")
    image = photos["chelsea"]
    h, w = image.shape[:2]
    left = np.zeros((h, w), bool)
    left[:, : w // 2] = True
    embeddings = encoder.embed_regions(image, [left, ~left])
    assert embeddings.shape == (2, encoder.embed_dim) and embeddings.dtype == torch.float32
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2), atol=1e-5)
    assert (embeddings[0] - embeddings[1]).abs().max() > 1e-3
    whole = encoder.embed_image(image)
    assert whole.shape == (encoder.embed_dim,)
    with pytest.raises(ValueError, match="mask 0 has shape"):
        encoder.embed_regions(image, [np.ones((5, 5), bool)])


def test_presets_are_named_in_one_place():
    assert get_preset("tiny").alpha_clip.name == "tiny"
    pair = get_preset("sam2.1-hiera-s+alpha-clip-l14")
    assert (pair.sam2.name, pair.alpha_clip.name) == ("sam2.1-hiera-s", "alpha-clip-l14")
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        get_preset("huge")

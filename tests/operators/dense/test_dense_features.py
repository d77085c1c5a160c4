import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskdex.operators.common.clip_models import CLIP_MEAN, CLIP_STD
from maskdex.operators.dense.features import (
    DenseCLIPFeatures,
    WindowSpec,
    interpolate_pos_embed,
    patch_tokens,
)
from maskdex.operators.registry.presets import dense_feature_extractor
from maskdex.operators.common.prompts import IMAGENET_TEMPLATES
from maskdex.operators.common.text_features import embed_texts

SMALL_TEST = WindowSpec(short_side=64, windows=(64,), stride=32)
SMALL_SUPPORT = WindowSpec(short_side=64, windows=(64, 32), stride=16)


@pytest.fixture(scope="module")
def extractor():
    return dense_feature_extractor("tiny", device="cpu", test_windows=SMALL_TEST, support_windows=SMALL_SUPPORT)


def _layer_norm(x, ln):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def test_last_block_is_the_value_path_written_out_by_hand(extractor):
    visual = extractor.model.visual
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # open_clip's own forward gives the tokens entering the last block (patch tokens only).
        before_last = visual.forward_intermediates(pixels, indices=[len(visual.transformer.resblocks) - 2],
                                                   intermediates_only=True, output_fmt="NLC")
        x = before_last["image_intermediates"][0]
        block = visual.transformer.resblocks[-1]
        width = x.shape[-1]
        w_v = block.attn.in_proj_weight[2 * width :]
        b_v = block.attn.in_proj_bias[2 * width :]
        v = _layer_norm(x, block.ln_1) @ w_v.T + b_v
        v = v @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
        x = x + v
        hidden = _layer_norm(x, block.ln_2) @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
        hidden = hidden * torch.sigmoid(1.702 * hidden)  # the tiny preset's QuickGELU
        x = x + hidden @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias
        expected = _layer_norm(x, visual.ln_post) @ visual.proj

        got = patch_tokens(visual, pixels)
        assert got.shape == (2, 8, 8, visual.output_dim)
        torch.testing.assert_close(got.reshape(2, 64, -1), expected, atol=1e-5, rtol=1e-5)

        # and it is not the ordinary block: attention really is gone
        full = visual.transformer.resblocks[-1](before_last["image_intermediates"][0])
        assert not torch.allclose(_layer_norm(full, visual.ln_post) @ visual.proj, expected, atol=1e-3)


def test_sequence_first_transformers_give_the_same_features(extractor):
    visual = extractor.model.visual
    sequence_first = copy.deepcopy(visual)
    sequence_first.transformer.batch_first = False
    for block in sequence_first.transformer.resblocks:
        block.attn.batch_first = False
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(patch_tokens(sequence_first, pixels), patch_tokens(visual, pixels))


def test_positional_embedding_interpolation_keeps_the_native_grid(extractor):
    pos = extractor.model.visual.positional_embedding.detach()
    torch.testing.assert_close(interpolate_pos_embed(pos, (8, 8), (8, 8)), pos, atol=1e-6, rtol=0)
    resized = interpolate_pos_embed(pos, (8, 8), (4, 6))
    assert resized.shape == (1 + 24, pos.shape[1])
    torch.testing.assert_close(resized[0], pos[0])
    # A constant embedding stays constant at any size.
    constant = torch.ones(65, 3)
    torch.testing.assert_close(interpolate_pos_embed(constant, (8, 8), (5, 7)), torch.ones(36, 3))
    with pytest.raises(ValueError, match="positional embeddings"):
        interpolate_pos_embed(pos, (7, 7), (8, 8))


def test_other_input_sizes_run_with_interpolated_positions(extractor):
    visual = extractor.model.visual
    with torch.no_grad():
        assert patch_tokens(visual, torch.zeros(1, 3, 32, 48)).shape == (1, 4, 6, visual.output_dim)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patch_tokens(visual, torch.zeros(1, 3, 30, 48))


def _normalised_pixels(image: np.ndarray) -> torch.Tensor:
    rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (rgb - mean) / std


def test_test_features_average_two_overlapping_windows(extractor):
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)  # already short side 64
    dense = extractor.test_features(image)
    assert dense.grid == (8, 12) and dense.image_size == (64, 96) and dense.input_size == (64, 96)
    assert dense.patch_size == 8
    pixels = _normalised_pixels(image)
    with torch.no_grad():
        left = patch_tokens(extractor.model.visual, pixels[..., :64])[0]
        right = patch_tokens(extractor.model.visual, pixels[..., 32:])[0]
    # each window is normalised before the windows are averaged (the authors' rule)
    left, right = F.normalize(left, dim=-1), F.normalize(right, dim=-1)
    expected = torch.zeros(8, 12, left.shape[-1])
    expected[:, :4] = left[:, :4]
    expected[:, 4:8] = (left[:, 4:] + right[:, :4]) / 2
    expected[:, 8:] = right[:, 4:]
    torch.testing.assert_close(dense.features, F.normalize(expected, dim=-1), atol=1e-5, rtol=1e-5)


def test_support_features_cover_the_grid_and_are_normalised(extractor):
    image = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    dense = extractor.support_features(image)
    # 40x50 -> 64x80 (no padding needed), grid 8x10
    assert dense.resized_size == (64, 80) and dense.input_size == (64, 80) and dense.grid == (8, 10)
    assert dense.image_size == (40, 50)
    torch.testing.assert_close(dense.features.norm(dim=-1), torch.ones(8, 10))
    # two window sizes differ from one
    assert not torch.allclose(dense.features, extractor.test_features(image).features, atol=1e-3)


def test_class_text_features_use_the_templates_and_fill_unnamed_classes(extractor):
    text = extractor.class_text_features(["cat", None, "dog", ""])
    assert text.shape == (4, extractor.embed_dim)
    named = embed_texts(extractor.model.encode_text, extractor.tokenizer, ["cat", "dog"], IMAGENET_TEMPLATES)
    torch.testing.assert_close(text[[0, 2]], named)
    mean = F.normalize(named.mean(dim=0), dim=-1)
    torch.testing.assert_close(text[1], mean)
    torch.testing.assert_close(text[3], mean)
    with pytest.raises(ValueError, match="at least one class needs a name"):
        extractor.class_text_features([None, ""])


def test_bad_window_sizes_are_clear_errors(extractor):
    with pytest.raises(ValueError, match="multiples of the patch size"):
        DenseCLIPFeatures(extractor.model, extractor.tokenizer, device="cpu",
                          test_windows=WindowSpec(60, (60,), 30))
    with pytest.raises(ValueError, match="does not fit"):
        WindowSpec(64, (128,), 32)
    with pytest.raises(ValueError, match="at least one window"):
        WindowSpec(64, (), 32)
    with pytest.raises(ValueError, match="shorter than short side"):
        WindowSpec(64, (64,), 32, long_side=32)

"""Loading a Qwen2.5-VL re-ranker from the weights directory: a checkpoint written in the released key layout
(model.layers.*, visual.*, lm_head.*; safetensors) with the released file set, built from the tiny config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from maskdex.operators.registry.rerankers import RerankSettings, build_reranker, load_qwen25_vl
from maskdex.operators.registry.weights import BadCheckpointError, MissingWeightsError
from maskdex.operators.rerank.tiny import tiny_model_and_processor

pytestmark = pytest.mark.slow


def _released_layout(state_dict: dict) -> dict:
    """transformers 5 nests the text model and the vision tower under model.*; released files do not."""
    return {key.replace("model.language_model.", "model.").replace("model.visual.", "visual."): value.contiguous()
            for key, value in state_dict.items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, processor = tiny_model_and_processor(seed=3)
    weights = tmp_path_factory.mktemp("weights")
    folder = weights / "Qwen2.5-VL-3B-Instruct"
    processor.save_pretrained(folder)
    model.config.save_pretrained(folder)
    save_file(_released_layout(model.state_dict()), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return weights, folder, model


def test_a_released_layout_checkpoint_loads_exactly_and_answers_like_the_original(checkpoint):
    weights, folder, original = checkpoint
    loaded, _ = load_qwen25_vl("qwen2.5-vl-3b", weights)
    expected = original.state_dict()
    assert set(loaded.state_dict()) == set(expected)
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())

    images = [np.random.default_rng(i).integers(0, 255, (90 + 20 * i, 120, 3), dtype=np.uint8) for i in range(2)]
    by_preset = build_reranker(RerankSettings(model="qwen2.5-vl-3b", device="cpu", max_new_tokens=8), weights=weights)
    by_path = build_reranker(RerankSettings(model=str(folder), device="cpu", max_new_tokens=8, batch_size=1))
    replies = by_preset.replies("a cat", images)
    assert [r.text for r in replies] == [r.text for r in by_path.replies("a cat", images)]
    assert all(r.error is None and r.frame.kind == "pixels" and r.frame.width % 28 == 0 for r in replies)


def test_a_partial_checkpoint_is_refused_not_filled_with_random_weights(checkpoint, tmp_path):
    _, folder, original = checkpoint
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in folder.iterdir():
        if item.suffix != ".safetensors":
            (broken / item.name).write_bytes(item.read_bytes())
    weights = _released_layout(original.state_dict())
    weights.pop("lm_head.weight")
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(BadCheckpointError, match="missing keys: lm_head.weight"):
        load_qwen25_vl(str(broken))


def test_no_safetensors_means_missing_weights(checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("MASKDEX_ALLOW_DOWNLOAD", raising=False)
    _, folder, _ = checkpoint
    pickled = tmp_path / "Qwen2.5-VL-7B-Instruct"
    pickled.mkdir()
    (pickled / "config.json").write_bytes((folder / "config.json").read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(MissingWeightsError, match=r"\*\.safetensors"):
        load_qwen25_vl("qwen2.5-vl-7b", tmp_path)

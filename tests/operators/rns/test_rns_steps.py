import math

import pytest
import torch
import torch.nn.functional as F

from maskdex.operators.rns.method import (
    RNSSettings,
    fused_features,
    prepare_training,
    pseudo_features,
    relevance_weights,
    rns_segment,
    zero_shot_labels,
)
from maskdex.operators.rns.memory import SupportMemory
from maskdex.operators.rns.units import patch_units

TEXT = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def _unit(*values):
    return F.normalize(torch.tensor(values, dtype=torch.float32), dim=-1)


def test_relevance_weights_softmax_the_image_text_similarity():
    features = torch.stack([_unit(1, 0, 0), _unit(0, 1, 0)])
    # mean (0.5, 0.5, 0) normalises to (1, 1, 0)/sqrt(2): similarities s, s, 0 with s = 1/sqrt(2)
    s = 10 / math.sqrt(2)
    expected = torch.tensor([math.exp(s), math.exp(s), 1.0]) / (2 * math.exp(s) + 1)
    torch.testing.assert_close(relevance_weights(features, TEXT), expected)
    flat = relevance_weights(features, TEXT, temperature=0.0)
    torch.testing.assert_close(flat, torch.full((3,), 1 / 3))


def test_zero_shot_labels_take_the_most_similar_allowed_class():
    features = torch.stack([_unit(0.9, 0.1, 0), _unit(0.1, 0.2, 0.9), _unit(0.2, 0.3, 0.1)])
    assert zero_shot_labels(features, TEXT).tolist() == [0, 2, 1]
    assert zero_shot_labels(features, TEXT, torch.tensor([True, True, False])).tolist() == [0, 1, 1]


def test_fused_features_mix_visual_and_text_per_lambda():
    visual = torch.stack([_unit(1, 1, 0), torch.zeros(3), _unit(0, 1, 1)])  # class 1 has no support
    fused, labels = fused_features(visual, TEXT, torch.tensor([0, 2]), lambdas=(1.0, 0.5, 0.0))
    assert labels.tolist() == [0, 0, 0, 2, 2, 2]
    torch.testing.assert_close(fused[0], visual[0])
    torch.testing.assert_close(fused[1], F.normalize(0.5 * visual[0] + 0.5 * TEXT[0], dim=0))
    torch.testing.assert_close(fused[2], TEXT[0])
    torch.testing.assert_close(fused[4], F.normalize(0.5 * visual[2] + 0.5 * TEXT[2], dim=0))
    without_text, labels = fused_features(visual, None, torch.tensor([2]), lambdas=(0.9, 0.1))
    torch.testing.assert_close(without_text, visual[[2]])
    assert labels.tolist() == [2]


def test_pseudo_features_pool_zero_shot_units_and_soften_with_text():
    features = torch.stack([_unit(0.2, 0.1, 1), _unit(0.1, 0.2, 1), _unit(1, 0, 0)])
    zero_shot = zero_shot_labels(features, TEXT)
    assert zero_shot.tolist() == [2, 2, 0]
    rows, targets = pseudo_features(features, zero_shot, torch.tensor([2]), TEXT, lambdas=(1.0, 0.5))
    u = F.normalize(features[0] + features[1], dim=0)
    g = torch.stack([u, F.normalize(0.5 * u + 0.5 * TEXT[2], dim=0)])
    torch.testing.assert_close(rows, g)
    torch.testing.assert_close(targets, torch.softmax(100 * g @ TEXT.T, dim=1))
    with pytest.raises(ValueError, match="predicted by the zero-shot step"):
        pseudo_features(features, zero_shot, torch.tensor([1]), TEXT, lambdas=(1.0,))


# Memory: two prototypes of class 0 (images 0 and 1) and one of class 1; class 2 has no support.
MEMORY = SupportMemory(torch.stack([_unit(1, 0.1, 0), _unit(1, -0.1, 0), _unit(0.1, 1, 0)]),
                       torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]))
# Test patches: two near class 0, one near class 2 (zero-shot), none near class 1.
TEST = torch.stack([_unit(1, 0.05, 0.1), _unit(1, -0.05, 0.1), _unit(0.1, 0.2, 1)])


def test_training_rows_are_retrieved_fused_and_pseudo_features():
    settings = RNSSettings(k=1, lambdas=(0.5, 0.0))
    training = prepare_training(TEST, MEMORY, TEXT, settings)
    # 1-NN: patch 0 -> row 0, patch 1 -> row 1, patch 2 -> row 2.
    assert training.n_retrieved == 3 and training.retrieved_classes == (0, 1)
    assert training.visual_classes == (0, 1) and training.text_classes == (0, 1, 2)
    assert training.pseudo_classes == (2,)
    rows = training.training_set
    n_fused = 2 * len(training.retrieved_classes)
    assert rows.features.shape[0] == training.n_retrieved + n_fused + 2
    retrieved = rows.features[: training.n_retrieved]
    assert len({tuple(r.tolist()) for r in retrieved}) == training.n_retrieved  # no prototype twice
    for row in retrieved:  # every retrieved row is a real memory row, never a placeholder
        assert any(torch.equal(row, proto) for proto in MEMORY.prototypes)

    relevance = relevance_weights(TEST, TEXT)
    labels = rows.targets.argmax(dim=1)
    factors = torch.tensor([1.0] * training.n_retrieved + [1.5] * n_fused + [0.2] * 2)
    expected = factors * relevance[labels] / relevance[labels].sum()
    torch.testing.assert_close(rows.weights, expected)
    assert rows.targets[-1, 2] > 0.99  # the pseudo rows' soft targets point at their class


def test_without_relevance_or_text_the_weights_are_uniform_and_there_are_no_pseudo_rows():
    uniform = prepare_training(TEST, MEMORY, TEXT, RNSSettings(k=1, use_relevance=False))
    labels = uniform.training_set.targets.argmax(dim=1)
    n = len(labels)
    assert uniform.training_set.weights[0] == pytest.approx(1 / n)
    no_text = prepare_training(TEST, MEMORY, TEXT, RNSSettings(k=1, use_text=False), n_classes=3)
    assert no_text.pseudo_classes == () and no_text.text_classes == ()
    # without text each retrieved class adds its class feature once, with factor 1.5
    assert no_text.training_set.features.shape[0] == no_text.n_retrieved + len(no_text.retrieved_classes)
    with pytest.raises(ValueError, match="n_classes is required"):
        prepare_training(TEST, MEMORY, None, RNSSettings())


def test_unnamed_classes_get_no_zero_shot_or_pseudo_rows():
    training = prepare_training(TEST, MEMORY, TEXT, RNSSettings(k=1), named=[True, True, False])
    assert training.text_classes == (0, 1) and training.pseudo_classes == ()
    with pytest.raises(ValueError, match="one entry per class"):
        prepare_training(TEST, MEMORY, TEXT, RNSSettings(), named=[True])


def test_without_visual_support_the_result_is_the_zero_shot_prediction():
    empty = SupportMemory(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    units = patch_units(TEST.reshape(1, 3, 3), (1, 3))
    result = rns_segment(units, empty, TEXT)
    assert result.used_fallback and result.visual_classes == () and result.n_rows == 0
    assert result.labels.tolist() == [zero_shot_labels(TEST, TEXT).tolist()]
    with pytest.raises(ValueError, match="nothing to predict with"):
        rns_segment(units, empty, None, n_classes=3)


def test_rns_segment_trains_on_the_supports():
    units = patch_units(TEST.reshape(1, 3, 3), (1, 3))
    result = rns_segment(units, MEMORY, TEXT, RNSSettings(steps=100, lr=0.05), seed=1)
    assert not result.used_fallback and result.pseudo_classes == (2,)
    assert result.labels.tolist() == [[0, 0, 2]]
    assert result.n_rows > result.n_retrieved


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="k must be"):
        RNSSettings(k=0)
    with pytest.raises(ValueError, match="lambdas"):
        RNSSettings(lambdas=(1.5,))
    with pytest.raises(ValueError, match="betas"):
        RNSSettings(betas=(0.9,))
    assert RNSSettings().replace(steps=10).steps == 10

import math

import numpy as np
import pytest
import torch
from torch import nn

from maskdex.operators.rns.memory import SupportMemory
from maskdex.operators.rns.method import RNSSettings, prepare_training
from maskdex.operators.rns.train import (
    TrainingSet,
    head_probabilities,
    init_heads,
    reference_train_heads,
    rns_loss,
    row_weights,
    stack_training_sets,
    train_heads,
)
from maskdex.operators.rns.train import _OneDnnProducts

RELEVANCE = torch.tensor([0.25, 0.75])
# One retrieved row (class 0), one fused row (class 1, factor 1.5), one pseudo row (soft target, factor 0.2).
ROWS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2**-0.5, 2**-0.5]])
TARGETS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7]])
LABELS = torch.tensor([0, 1, 1])  # the pseudo row's label is its target's argmax
FACTORS = torch.tensor([1.0, 1.5, 0.2])


def test_row_weights_normalise_relevance_over_all_rows():
    # w[label] = 0.25, 0.75, 0.75; their sum is 1.75
    expected = torch.tensor([1.0 * 0.25 / 1.75, 1.5 * 0.75 / 1.75, 0.2 * 0.75 / 1.75])
    torch.testing.assert_close(row_weights(LABELS, FACTORS, RELEVANCE), expected)
    with pytest.raises(ValueError, match="labels and factors"):
        row_weights(LABELS, FACTORS[:2], RELEVANCE)


def test_loss_for_a_fixed_head_matches_the_hand_computation():
    weight = torch.eye(2)
    bias = torch.tensor([0.0, 0.5])
    logits = ROWS @ weight.T + bias  # (1, 0.5), (0, 1.5), (0.707, 1.207)
    ce_retrieved = math.log(1 + math.exp(-0.5))
    ce_fused = math.log(1 + math.exp(-1.5))
    q0, q1 = 1 / (1 + math.exp(0.5)), 1 / (1 + math.exp(-0.5))
    kl_pseudo = 0.3 * math.log(0.3 / q0) + 0.7 * math.log(0.7 / q1)
    w = [0.25 / 1.75, 0.75 / 1.75, 0.75 / 1.75]
    expected = (w[0] * ce_retrieved + 1.5 * w[1] * ce_fused + 0.2 * w[2] * kl_pseudo) / 3

    batch = stack_training_sets([TrainingSet(ROWS, TARGETS, row_weights(LABELS, FACTORS, RELEVANCE))])
    assert rns_loss(logits[None], batch).item() == pytest.approx(expected, rel=1e-6)


def test_padding_rows_do_not_change_an_images_loss():
    short = TrainingSet(ROWS[:2], TARGETS[:2], torch.tensor([0.4, 0.6]))
    long = TrainingSet(ROWS, TARGETS, torch.tensor([0.2, 0.3, 0.5]))
    batch = stack_training_sets([short, long])
    assert batch.features.shape == (2, 3, 2) and batch.n_rows.tolist() == [2, 3]
    assert batch.weights[0, 2] == 0
    logits = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(0))
    alone = [rns_loss(logits[i : i + 1, : s.features.shape[0]], stack_training_sets([s]))
             for i, s in enumerate((short, long))]
    torch.testing.assert_close(rns_loss(logits, batch), alone[0] + alone[1])


def test_heads_start_as_the_authors_linear_layer_does():
    # kaiming_uniform_(mode="fan_in", nonlinearity="relu"): U(-sqrt(6 / D), sqrt(6 / D)); the bias starts at zero.
    weight, bias = init_heads(2, 150, 512, seeds=[3, 4])
    bound = math.sqrt(6 / 512)
    assert bound == pytest.approx(0.108, abs=5e-4)
    assert weight.abs().max() <= bound and weight.abs().amax(dim=(1, 2)).min() > 0.999 * bound
    assert torch.equal(bias, torch.zeros(2, 150))
    # Uniform: a quarter of the draws lie beyond half the bound on each side.
    assert (weight > bound / 2).float().mean().item() == pytest.approx(0.25, abs=0.01)
    expected = torch.empty(150, 512)
    nn.init.kaiming_uniform_(expected, mode="fan_in", nonlinearity="relu", generator=torch.Generator().manual_seed(4))
    assert torch.equal(weight[1], expected)
    assert not torch.equal(weight[0], weight[1])
    assert torch.equal(init_heads(1, 150, 512, seeds=[4])[0][0], weight[1])  # alone or in a batch


def test_the_torch_linear_setting_keeps_nn_linears_start():
    weight, bias = init_heads(1, 5, 7, seeds=[3], init="torch-linear")
    torch.manual_seed(3)
    linear = nn.Linear(7, 5)
    torch.testing.assert_close(weight[0], linear.weight.detach())
    torch.testing.assert_close(bias[0], linear.bias.detach())
    with pytest.raises(ValueError, match="unknown head init 'xavier'"):
        init_heads(1, 5, 7, seeds=[3], init="xavier")


def _adamw_by_hand(weight, bias, rows, targets, weights, steps, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8):
    """AdamW on rns_loss written out in float64: dL/dz_i = weights_i / N * (softmax(z_i) - target_i)."""
    params = np.concatenate([weight, bias[:, None]], axis=1).astype(np.float64)  # (C, D + 1)
    inputs = np.concatenate([rows, np.ones((len(rows), 1))], axis=1).astype(np.float64)
    first, second = np.zeros_like(params), np.zeros_like(params)
    for step in range(1, steps + 1):
        logits = inputs @ params.T
        q = np.exp(logits - logits.max(axis=1, keepdims=True))
        q /= q.sum(axis=1, keepdims=True)
        grad = ((weights / len(rows))[:, None] * (q - targets)).T @ inputs
        params *= 1 - lr * weight_decay
        first = betas[0] * first + (1 - betas[0]) * grad
        second = betas[1] * second + (1 - betas[1]) * grad**2
        denominator = np.sqrt(second / (1 - betas[1] ** step)) + eps
        params -= lr / (1 - betas[0] ** step) * first / denominator
    return params[:, :-1], params[:, -1]


def test_training_from_a_given_head_matches_adamw_by_hand():
    weights = row_weights(LABELS, FACTORS, RELEVANCE)
    batch = stack_training_sets([TrainingSet(ROWS, TARGETS, weights)])
    start = (torch.tensor([[[0.3, -0.2], [0.1, 0.4]]]), torch.tensor([[0.05, -0.1]]))
    kept = (start[0].clone(), start[1].clone())
    for steps in (1, 2, 5):
        weight, bias = train_heads(batch, steps=steps, lr=0.1, weight_decay=0.01, initial=start)
        expected = _adamw_by_hand(start[0][0].numpy(), start[1][0].numpy(), ROWS.numpy(), TARGETS.numpy(),
                                  weights.numpy(), steps, lr=0.1, weight_decay=0.01)
        np.testing.assert_allclose(weight[0].numpy(), expected[0], atol=1e-6)
        np.testing.assert_allclose(bias[0].numpy(), expected[1], atol=1e-6)
    # The first step moves every parameter by about lr (Adam's first step is sign-like), less the decay.
    first = train_heads(batch, steps=1, lr=0.1, weight_decay=0.01, initial=start)
    moved = (first[0] - start[0] * (1 - 0.1 * 0.01)).abs()
    torch.testing.assert_close(moved, torch.full_like(moved, 0.1), atol=1e-5, rtol=0)
    assert torch.equal(start[0], kept[0]) and torch.equal(start[1], kept[1])  # the caller's head is not modified
    with pytest.raises(ValueError, match="do not fit"):
        train_heads(batch, steps=1, lr=0.1, weight_decay=0.0, initial=(start[0][0], start[1][0]))


def _toy_set(seed: int, rows: int) -> TrainingSet:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (rows,), generator=generator)
    centres = torch.eye(3, 8) * 3
    features = torch.nn.functional.normalize(centres[labels] + torch.randn(rows, 8, generator=generator), dim=-1)
    targets = torch.nn.functional.one_hot(labels, 3).float()
    return TrainingSet(features, targets, row_weights(labels, torch.ones(rows), torch.ones(3) / 3))


def test_training_is_deterministic_and_fits_separable_rows():
    batch = stack_training_sets([_toy_set(0, 30)])
    first = train_heads(batch, steps=150, lr=0.05, weight_decay=5e-4, seeds=7)
    second = train_heads(batch, steps=150, lr=0.05, weight_decay=5e-4, seeds=7)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    other = train_heads(batch, steps=150, lr=0.05, weight_decay=5e-4, seeds=8)
    assert not torch.equal(first[0], other[0])

    start = init_heads(1, 3, 8, [7])
    logits_before = torch.baddbmm(start[1][:, None], batch.features, start[0].transpose(1, 2))
    logits_after = torch.baddbmm(first[1][:, None], batch.features, first[0].transpose(1, 2))
    assert rns_loss(logits_after, batch) < rns_loss(logits_before, batch) / 5
    predicted = head_probabilities(first[0][0], first[1][0], batch.features[0]).argmax(dim=1)
    assert torch.equal(predicted, batch.targets[0].argmax(dim=1))


def test_a_batch_trains_exactly_as_its_images_alone():
    sets = [_toy_set(1, 12), _toy_set(2, 20)]
    together = train_heads(stack_training_sets(sets), steps=40, lr=0.01, weight_decay=5e-4, seeds=[4, 5])
    for index, (training_set, seed) in enumerate(zip(sets, (4, 5))):
        alone = train_heads(stack_training_sets([training_set]), steps=40, lr=0.01, weight_decay=5e-4, seeds=seed)
        torch.testing.assert_close(together[0][index], alone[0][0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(together[1][index], alone[1][0], atol=1e-6, rtol=1e-5)


def test_zero_steps_return_the_initial_head_and_probabilities_sum_to_one():
    batch = stack_training_sets([_toy_set(0, 5)])
    weight, bias = train_heads(batch, steps=0, lr=0.01, weight_decay=0.0, seeds=2)
    start = init_heads(1, 3, 8, [2])
    assert torch.equal(weight, start[0]) and torch.equal(bias, start[1])
    probabilities = head_probabilities(weight[0], bias[0], batch.features[0])
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(5))


def test_bad_training_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="at least one row"):
        TrainingSet(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0))
    with pytest.raises(ValueError, match="one N"):
        TrainingSet(ROWS, TARGETS[:2], torch.ones(3))
    with pytest.raises(ValueError, match="disagree"):
        stack_training_sets([TrainingSet(ROWS, TARGETS, torch.ones(3)),
                             TrainingSet(ROWS, torch.ones(3, 4) / 4, torch.ones(3))])
    with pytest.raises(ValueError, match="seeds"):
        train_heads(stack_training_sets([_toy_set(0, 5)]), steps=1, lr=0.01, weight_decay=0.0, seeds=[1, 2])
    with pytest.raises(ValueError, match="does not fit"):
        head_probabilities(torch.zeros(3, 8), torch.zeros(3), torch.zeros(4, 7))


def _rns_problem(seed: int, n_classes: int = 12, dim: int = 64):
    """Patch features of six classes, a memory of four prototypes for eight classes, text for all."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=generator) + 1.0, dim=-1)

    def noisy(rows, scale):
        return torch.nn.functional.normalize(rows + scale * torch.randn(rows.shape, generator=generator) / dim**0.5,
                                             dim=-1)

    class_ids = torch.arange(8).repeat_interleave(4)
    memory = SupportMemory(noisy(centres[class_ids], 0.8), class_ids, torch.arange(len(class_ids)))
    patches = noisy(centres[torch.randint(0, 6, (300,), generator=generator) * 2 % n_classes], 1.2)
    return patches, memory, noisy(centres, 0.5)


def test_fast_training_equals_the_reference_implementation():
    settings = RNSSettings()  # the paper's 700 steps
    problems = [_rns_problem(seed) for seed in (0, 1)]
    trainings = [prepare_training(patches, memory, text, settings) for patches, memory, text in problems]
    assert all(t.pseudo_classes for t in trainings)  # retrieved, fused and pseudo rows all take part
    batch = stack_training_sets([t.training_set for t in trainings])
    assert batch.n_rows[0] != batch.n_rows[1]  # and padding
    kwargs = dict(steps=settings.steps, lr=settings.lr, weight_decay=settings.weight_decay, seeds=[3, 4])
    fast, reference = train_heads(batch, **kwargs), reference_train_heads(batch, **kwargs)
    for index, (patches, _, _) in enumerate(problems):
        new = head_probabilities(fast[0][index], fast[1][index], patches)
        old = head_probabilities(reference[0][index], reference[1][index], patches)
        torch.testing.assert_close(new, old, atol=1e-6, rtol=0)
        assert torch.equal(new.argmax(dim=1), old.argmax(dim=1))
    # The two order their sums differently, so 700 Adam steps drift apart by float rounding, by how much
    # depends on the CPU's BLAS kernels (up to 2.3e-6 on an AVX2 EPYC); the predictions above agree to 1e-6.
    torch.testing.assert_close(fast[0], reference[0], atol=1e-5, rtol=0)
    assert (fast[0] - init_heads(2, 12, 64, [3, 4])[0]).abs().max() > 0.1  # it did train


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_one_large_image_trains_through_onednn_as_the_reference_does():
    generator = torch.Generator().manual_seed(5)
    rows, classes, dim = 200, 60, 32  # rows x classes from MIN_LOGITS: the products go through oneDNN
    assert rows * classes >= _OneDnnProducts.MIN_LOGITS
    labels = torch.randint(0, classes, (rows,), generator=generator)
    features = torch.nn.functional.normalize(torch.randn(classes, dim, generator=generator)[labels]
                                             + 0.5 * torch.randn(rows, dim, generator=generator), dim=-1)
    training = TrainingSet(features, torch.nn.functional.one_hot(labels, classes).float(),
                           row_weights(labels, torch.ones(rows), torch.ones(classes) / classes))
    kwargs = dict(steps=100, lr=1e-3, weight_decay=1e-4)
    alone = train_heads(stack_training_sets([training]), seeds=9, **kwargs)
    reference = reference_train_heads(stack_training_sets([training]), seeds=9, **kwargs)
    stacked = train_heads(stack_training_sets([training, training]), seeds=[9, 9], **kwargs)  # MKL's bmm
    for other in (reference, (stacked[0][:1], stacked[1][:1])):
        torch.testing.assert_close(alone[0], other[0], atol=2e-6, rtol=0)
        torch.testing.assert_close(alone[1], other[1], atol=2e-6, rtol=0)
    assert (alone[0] - init_heads(1, classes, dim, [9])[0]).abs().max() > 0.05  # it did train

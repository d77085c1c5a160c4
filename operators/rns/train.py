"""RNS test-time classifier: the weighted loss and the full-batch training of linear heads.

Every row is a feature with a target distribution: one-hot for cross-entropy rows (retrieved and
fused features), soft for pseudo rows. KL(p || q) = sum p log p - sum p log q equals cross-entropy
when p is one-hot, so one formula covers all rows. Heads of many images train together along a
leading batch dimension: each image's loss only reaches its own head, and AdamW is elementwise,
so a batch trains exactly as its images would one by one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def row_weights(labels: torch.Tensor, factors: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """factor_i * w'_i, where w'_i = relevance[label_i] / sum over all rows of relevance[label_r]."""
    if labels.shape != factors.shape or labels.ndim != 1:
        raise ValueError(f"labels and factors must be (N,), got {tuple(labels.shape)} and {tuple(factors.shape)}")
    per_row = relevance[labels]
    return factors * per_row / per_row.sum()


@dataclass(frozen=True)
class TrainingSet:
    """One image's training rows: features (N, D), targets (N, C) (each a distribution), weights (N,).

    weights already hold factor_i * w'_i; the loss averages weights_i * KL(target_i || softmax(z_i)).
    """

    features: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor

    def __post_init__(self):
        n = self.features.shape[0]
        if self.features.ndim != 2 or self.targets.ndim != 2 or self.weights.shape != (n,) \
                or self.targets.shape[0] != n:
            raise ValueError(f"expected (N, D) features, (N, C) targets and (N,) weights with one N, got "
                             f"{tuple(self.features.shape)}, {tuple(self.targets.shape)}, {tuple(self.weights.shape)}")
        if n == 0:
            raise ValueError("a training set needs at least one row")


@dataclass(frozen=True)
class TrainingBatch:
    """B training sets padded to one row count; padding rows have weight 0 and do not count in the mean."""

    features: torch.Tensor  # (B, N, D)
    targets: torch.Tensor  # (B, N, C)
    weights: torch.Tensor  # (B, N)
    n_rows: torch.Tensor  # (B,)


def stack_training_sets(sets: Sequence[TrainingSet]) -> TrainingBatch:
    if not sets:
        raise ValueError("stack_training_sets needs at least one training set")
    dims = {(s.features.shape[1], s.targets.shape[1]) for s in sets}
    if len(dims) != 1:
        raise ValueError(f"training sets disagree on (feature dim, classes): {sorted(dims)}")
    rows = max(s.features.shape[0] for s in sets)

    def pad(tensor: torch.Tensor) -> torch.Tensor:
        return F.pad(tensor, (0, 0) * (tensor.ndim - 1) + (0, rows - tensor.shape[0]))

    return TrainingBatch(
        features=torch.stack([pad(s.features) for s in sets]),
        targets=torch.stack([pad(s.targets) for s in sets]),
        weights=torch.stack([pad(s.weights) for s in sets]),
        n_rows=torch.tensor([s.features.shape[0] for s in sets], device=sets[0].features.device),
    )


def rns_loss(logits: torch.Tensor, batch: TrainingBatch) -> torch.Tensor:
    """Sum over images of the mean over that image's rows of weight_i * KL(target_i || softmax(logits_i))."""
    log_q = F.log_softmax(logits, dim=-1)
    per_row = (torch.xlogy(batch.targets, batch.targets) - batch.targets * log_q).sum(dim=-1)
    return ((batch.weights * per_row).sum(dim=1) / batch.n_rows).sum()


def init_heads(n_images: int, n_classes: int, dim: int, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, D) weights and (B, C) biases, initialised as torch's nn.Linear does (Kaiming-uniform).

    Each image draws from its own seeded generator on the CPU, so a head starts the same whether it
    trains alone or in a batch, and on any device.
    """
    if len(seeds) != n_images:
        raise ValueError(f"{n_images} images but {len(seeds)} seeds")
    weights, biases = torch.empty(n_images, n_classes, dim), torch.empty(n_images, n_classes)
    bound = 1.0 / math.sqrt(dim)
    for index, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(int(seed))
        torch.nn.init.kaiming_uniform_(weights[index], a=math.sqrt(5), generator=generator)
        torch.nn.init.uniform_(biases[index], -bound, bound, generator=generator)
    return weights, biases


def train_heads(batch: TrainingBatch, *, steps: int, lr: float, weight_decay: float,
                betas: tuple[float, float] = (0.9, 0.999), seeds: Sequence[int] | int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch AdamW on rns_loss; returns the trained (B, C, D) weights and (B, C) biases.

    `seeds` is one seed for every image or one per image. The result is deterministic for given seeds.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    n_images, _, dim = batch.features.shape
    n_classes = batch.targets.shape[2]
    seeds = [seeds] * n_images if isinstance(seeds, int) else list(seeds)
    weight, bias = init_heads(n_images, n_classes, dim, seeds)
    device, dtype = batch.features.device, batch.features.dtype
    weight = weight.to(device, dtype).requires_grad_()
    bias = bias.to(device, dtype).requires_grad_()
    optimizer = torch.optim.AdamW([weight, bias], lr=lr, betas=betas, weight_decay=weight_decay)
    features = batch.features.detach()
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            logits = torch.baddbmm(bias[:, None, :], features, weight.transpose(1, 2))
            rns_loss(logits, batch).backward()
            optimizer.step()
    return weight.detach(), bias.detach()


def head_probabilities(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(n, C) softmax(W x + b) for (n, D) features and one head's (C, D) weight and (C,) bias."""
    if weight.ndim != 2 or bias.shape != weight.shape[:1] or features.shape[-1] != weight.shape[1]:
        raise ValueError(f"head ({tuple(weight.shape)}, {tuple(bias.shape)}) does not fit features "
                         f"{tuple(features.shape)}")
    return torch.softmax(features @ weight.T + bias, dim=-1)

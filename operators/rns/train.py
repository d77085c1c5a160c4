"""RNS test-time classifier: the weighted loss and the full-batch training of linear heads.

Every row is a feature with a target distribution: one-hot for cross-entropy rows (retrieved and
fused features), soft for pseudo rows. KL(p || q) = sum p log p - sum p log q equals cross-entropy
when p is one-hot, so one formula covers all rows. Heads of many images train together along a
leading batch dimension: each image's loss only reaches its own head, and AdamW is elementwise,
so a batch trains exactly as its images would one by one.
"""

from __future__ import annotations

import contextlib
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


HEAD_INITS = ("official", "torch-linear")


def init_heads(n_images: int, n_classes: int, dim: int, seeds: Sequence[int], init: str = "official"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, D) weights and (B, C) biases of the heads before training.

    "official" starts each head as the authors' `linear_layer` does: the weight from
    kaiming_uniform_(mode="fan_in", nonlinearity="relu"), i.e. U(-sqrt(6 / D), sqrt(6 / D)), and a zero
    bias. Training only moves a head within the span of its few hundred training rows, so the initial
    weight decides the rest of every test feature's score. "torch-linear" keeps nn.Linear's default
    (weight bound 1 / sqrt(D), bias U(-1 / sqrt(D), 1 / sqrt(D))). Each image draws from its own seeded
    generator on the CPU, so a head starts the same whether it trains alone or in a batch, and on any device.
    """
    if len(seeds) != n_images:
        raise ValueError(f"{n_images} images but {len(seeds)} seeds")
    if init not in HEAD_INITS:
        raise ValueError(f"unknown head init {init!r}; expected one of {', '.join(HEAD_INITS)}")
    weights, biases = torch.empty(n_images, n_classes, dim), torch.zeros(n_images, n_classes)
    bound = 1.0 / math.sqrt(dim)
    for index, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(int(seed))
        if init == "official":
            torch.nn.init.kaiming_uniform_(weights[index], mode="fan_in", nonlinearity="relu", generator=generator)
        else:
            torch.nn.init.kaiming_uniform_(weights[index], a=math.sqrt(5), generator=generator)
            torch.nn.init.uniform_(biases[index], -bound, bound, generator=generator)
    return weights, biases


def train_heads(batch: TrainingBatch, *, steps: int, lr: float, weight_decay: float,
                betas: tuple[float, float] = (0.9, 0.999), seeds: Sequence[int] | int = 0, init: str = "official",
                initial: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch AdamW on rns_loss; returns the trained (B, C, D) weights and (B, C) biases.

    `seeds` is one seed for every image or one per image; `init` picks the initial heads (see init_heads);
    `initial` gives the (B, C, D) weights and (B, C) biases to start from instead. The result is
    deterministic for given seeds and equals reference_train_heads (torch.optim.AdamW on autograd's
    gradient) up to float rounding.

    The problem is tiny (a few hundred rows, C x (D + 1) parameters per image), so with few classes a
    step's cost is per-operation overhead: the gradient is written out instead of taken by autograd
    (dL/dz_i = w_i / N * (softmax(z_i) * sum(target_i) - target_i)), weight and bias are one flat
    parameter against inputs with a column of ones, the AdamW step is PyTorch's fused kernel over
    preallocated buffers, and tiny gradients are flushed to zero instead of going through slow
    denormal arithmetic. With many classes the two matrix products are most of a step; for one image
    on the CPU they go through oneDNN (_OneDnnProducts).
    """
    weight, bias = _initial_heads(batch, steps, seeds, init, initial)
    features, device, dtype = batch.features, batch.features.device, batch.features.dtype
    n_images, n_rows, dim = features.shape
    n_classes = weight.shape[1]
    beta1, beta2 = betas
    with torch.no_grad(), _flushing_denormals(device):
        # One parameter [W | b] per image against inputs [x | 1], so one product gives logits and one both gradients.
        inputs = features.new_ones(n_images, n_rows, dim + 1)
        inputs[..., :dim] = features
        params = features.new_empty(n_images, n_classes, dim + 1)
        params[..., :dim] = weight.to(device, dtype)
        params[..., dim] = bias.to(device, dtype)
        scale = (batch.weights / batch.n_rows.to(dtype)[:, None])[..., None]  # (B, N, 1): w_i / N of the image
        negative_targets = -batch.targets * scale
        mass = batch.targets.sum(dim=-1, keepdim=True) * scale
        logits = features.new_empty(n_images, n_rows, n_classes)
        grad_logits = torch.empty_like(logits)
        grad = torch.empty_like(params)
        exp_avg, exp_avg_sq = torch.zeros_like(params), torch.zeros_like(params)
        step = torch.zeros((), dtype=torch.float32, device=device)
        products = (_OneDnnProducts if _OneDnnProducts.suits(logits) else _BatchedProducts)(
            inputs, params, logits, grad_logits, grad)
        for _ in range(steps):
            products.logits()
            torch.softmax(logits, dim=-1, out=grad_logits)
            torch.addcmul(negative_targets, grad_logits, mass, out=grad_logits)
            products.gradient()
            # The kernel behind torch.optim.AdamW(fused=True): one pass over the parameters instead
            # of the eight operations of the single-tensor step, without the optimizer's bookkeeping.
            step.add_(1.0)
            torch._fused_adamw_([params], [grad], [exp_avg], [exp_avg_sq], [], [step], lr=lr, beta1=beta1,
                                beta2=beta2, weight_decay=weight_decay, eps=_EPS, amsgrad=False, maximize=False)
    return params[..., :dim].contiguous(), params[..., dim].contiguous()


class _BatchedProducts:
    """The step's two matrix products for a stack of images: logits = [x | 1] [W | b]^T into `logits`,
    and the parameters' gradient = dL/dz^T [x | 1] into `grad`."""

    def __init__(self, inputs, params, logits, grad_logits, grad):
        self._inputs, self._logits, self._grad = inputs, logits, grad
        self._params_t, self._grad_logits_t = params.transpose(1, 2), grad_logits.transpose(1, 2)

    def logits(self) -> None:
        torch.bmm(self._inputs, self._params_t, out=self._logits)

    def gradient(self) -> None:
        torch.bmm(self._grad_logits_t, self._inputs, out=self._grad)


class _OneDnnProducts:
    """The same products for one image on the CPU, through oneDNN instead of MKL's sgemm.

    The products are nearly all of a step, and on the AMD EPYC CPU measured, MKL's sgemm reaches
    about 60% of oneDNN's speed at these shapes once they are large enough to outweigh oneDNN's cost
    per call (both products, conversions included, 2 threads: 156 rows x 150 classes 272 against
    223 us, 620 x 150 1082 against 637 us, but 156 x 21 68 against 98 us; on one thread 523 against
    334 us at 156 x 150). Only a single image: oneDNN's linear takes one weight, and a Python loop
    over a stack's images costs what it saves.
    """

    MIN_LOGITS = 10_000  # rows x classes from which oneDNN was faster, with 1 or 2 threads

    @staticmethod
    def suits(logits: torch.Tensor) -> bool:
        images, rows, classes = logits.shape
        return (images == 1 and rows * classes >= _OneDnnProducts.MIN_LOGITS and logits.device.type == "cpu"
                and logits.dtype == torch.float32 and torch.backends.mkldnn.is_available())

    def __init__(self, inputs, params, logits, grad_logits, grad):
        self._inputs = inputs[0].to_mkldnn()
        self._inputs_t = inputs[0].t().contiguous().to_mkldnn()
        self._params, self._logits, self._grad_logits, self._grad = params[0], logits[0], grad_logits[0], grad[0]

    def logits(self) -> None:
        self._logits.copy_(torch._C._nn.mkldnn_linear(self._inputs, self._params.to_mkldnn(), None).to_dense())

    def gradient(self) -> None:
        grad_logits_t = self._grad_logits.t().contiguous().to_mkldnn()
        self._grad.copy_(torch._C._nn.mkldnn_linear(grad_logits_t, self._inputs_t, None).to_dense())


def reference_train_heads(batch: TrainingBatch, *, steps: int, lr: float, weight_decay: float,
                          betas: tuple[float, float] = (0.9, 0.999), seeds: Sequence[int] | int = 0,
                          init: str = "official", initial: tuple[torch.Tensor, torch.Tensor] | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """train_heads written plainly: autograd on rns_loss and torch.optim.AdamW. Slower; kept as the
    reference that train_heads is checked against (tests, benchmarks/rns_adaptation.py)."""
    weight, bias = _initial_heads(batch, steps, seeds, init, initial)
    device, dtype = batch.features.device, batch.features.dtype
    weight = weight.to(device, dtype, copy=True).requires_grad_()
    bias = bias.to(device, dtype, copy=True).requires_grad_()
    optimizer = torch.optim.AdamW([weight, bias], lr=lr, betas=betas, weight_decay=weight_decay, eps=_EPS)
    features = batch.features.detach()
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            logits = torch.baddbmm(bias[:, None, :], features, weight.transpose(1, 2))
            rns_loss(logits, batch).backward()
            optimizer.step()
    return weight.detach(), bias.detach()


_EPS = 1e-8  # AdamW's default epsilon, as the authors' code uses


def _initial_heads(batch: TrainingBatch, steps: int, seeds: Sequence[int] | int, init: str,
                   initial: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    n_images, _, dim = batch.features.shape
    n_classes = batch.targets.shape[2]
    if initial is None:
        seeds = [seeds] * n_images if isinstance(seeds, int) else list(seeds)
        return init_heads(n_images, n_classes, dim, seeds, init)
    weight, bias = initial
    if weight.shape != (n_images, n_classes, dim) or bias.shape != (n_images, n_classes):
        raise ValueError(f"initial heads ({tuple(weight.shape)}, {tuple(bias.shape)}) do not fit "
                         f"{n_images} images, {n_classes} classes and dimension {dim}")
    return weight, bias


@contextlib.contextmanager
def _flushing_denormals(device: torch.device):
    """Flush denormal floats to zero on this thread's CPU while training, as GPUs do by default.

    Late in training the gradients of classes that no row belongs to fall below 1e-19, their squares
    into the denormal range, where x86 arithmetic is many times slower. Such an Adam update is
    lr * m / (sqrt(v) + 1e-8) with m < 1e-19: flushing changes the heads by less than 1e-12. A process
    that flushes already is left as it is.
    """
    if device.type != "cpu" or _flushes_denormals() or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _flushes_denormals() -> bool:
    return torch.tensor(1e-40, dtype=torch.float32).mul(1.0).item() == 0.0


def head_probabilities(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(n, C) softmax(W x + b) for (n, D) features and one head's (C, D) weight and (C,) bias."""
    if weight.ndim != 2 or bias.shape != weight.shape[:1] or features.shape[-1] != weight.shape[1]:
        raise ValueError(f"head ({tuple(weight.shape)}, {tuple(bias.shape)}) does not fit features "
                         f"{tuple(features.shape)}")
    return torch.softmax(features @ weight.T + bias, dim=-1)

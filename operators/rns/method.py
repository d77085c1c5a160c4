"""Retrieve and Segment (RNS): a linear classifier trained per test image on retrieved supports and text.

The steps follow design.md section 3 ("RNS"), each a function of tensors:
1. relevance_weights, 2. zero_shot_labels, 3. retrieval (memory.retrieve), 4. fused_features,
5. pseudo_features, 6. the weighted loss and training (train.py), 7. prediction (rns_segment).
prepare_training gathers steps 1-5 for one image; rns_segment runs them all; rns_segment_batch runs
them for many images against one memory, training their heads together in one call of train_heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from maskdex.operators.rns.memory import SupportMemory, class_features, retrieve
from maskdex.operators.rns.train import (
    HEAD_INITS,
    TrainingSet,
    head_probabilities,
    row_weights,
    stack_training_sets,
    train_heads,
)
from maskdex.operators.rns.units import TestUnits

# Cosine scores are >= -1, so a class scored this low never wins an argmax, even after bilinear mixing.
_NEVER = -2.0


@dataclass(frozen=True)
class RNSSettings:
    """Every number of the method; the defaults are the paper's."""

    k: int = 4
    lambdas: tuple[float, ...] = (0.9, 0.8, 0.6, 0.4, 0.2, 0.0)
    steps: int = 700
    lr: float = 0.002
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    fused_factor: float = 1.5
    pseudo_factor: float = 0.2
    relevance_temperature: float = 10.0
    pseudo_temperature: float = 100.0
    use_text: bool = True
    use_relevance: bool = True
    # The authors' linear_layer initialisation; "torch-linear" keeps nn.Linear's default (see init_heads).
    head_init: str = "official"

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not self.lambdas or any(not 0.0 <= lam <= 1.0 for lam in self.lambdas):
            raise ValueError(f"lambdas must be a non-empty tuple of values in [0, 1], got {self.lambdas}")
        if self.steps < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"need steps >= 0, lr > 0, weight_decay >= 0; got {self.steps}, {self.lr}, "
                             f"{self.weight_decay}")
        if len(self.betas) != 2 or any(not 0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas}")
        if self.fused_factor < 0 or self.pseudo_factor < 0:
            raise ValueError("fused_factor and pseudo_factor must be >= 0")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}")

    def replace(self, **changes) -> RNSSettings:
        return replace(self, **changes)


def relevance_weights(features: torch.Tensor, text: torch.Tensor, temperature: float = 10.0) -> torch.Tensor:
    """w = softmax_c(temperature * <normalise(mean_j x_j), t_c>), shape (C,)."""
    _check_pair(features, text)
    image = F.normalize(features.mean(dim=0), dim=-1)
    return torch.softmax(temperature * (text @ image), dim=0)


def zero_shot_labels(features: torch.Tensor, text: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """y^_j = argmax_c <x_j, t_c> over the allowed classes (all by default), shape (n,)."""
    return zero_shot_scores(features, text, allowed).argmax(dim=1)


def zero_shot_scores(features: torch.Tensor, text: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    _check_pair(features, text)
    scores = features @ text.T
    if allowed is not None:
        scores = scores.masked_fill(~allowed.to(scores.device), _NEVER)
    return scores


def fused_features(class_feats: torch.Tensor, text: torch.Tensor | None, classes: torch.Tensor,
                   lambdas: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """f = normalise(lambda * v_c + (1 - lambda) * t_c) for each class and lambda, class-major.

    Without text, each class gives its visual feature v_c once. Returns (features, labels).
    """
    visual = class_feats[classes]
    if text is None:
        return visual, classes
    lam = torch.as_tensor(lambdas, dtype=visual.dtype, device=visual.device)[None, :, None]
    fused = F.normalize(lam * visual[:, None] + (1.0 - lam) * text[classes][:, None], dim=-1)
    return fused.reshape(-1, visual.shape[1]), classes.repeat_interleave(len(lambdas))


def pseudo_features(features: torch.Tensor, zero_shot: torch.Tensor, classes: torch.Tensor, text: torch.Tensor,
                    lambdas: Sequence[float], temperature: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows for classes without visual support, from the test units the zero-shot step gave them.

    u_c = normalise(mean of x_j with y^_j = c); g = normalise(lambda * u_c + (1 - lambda) * t_c);
    soft target p = softmax(temperature * <g, t_.>). Every class must be predicted at least once.
    Returns (features (m * L, D), targets (m * L, C)), class-major.
    """
    _check_pair(features, text)
    onehot = F.one_hot(zero_shot, text.shape[0]).to(features.dtype)[:, classes]  # (n, m)
    if (onehot.sum(dim=0) == 0).any():
        raise ValueError("pseudo features need every class to be predicted by the zero-shot step")
    unit_means = F.normalize(onehot.T @ features, dim=-1)
    lam = torch.as_tensor(lambdas, dtype=features.dtype, device=features.device)[None, :, None]
    g = F.normalize(lam * unit_means[:, None] + (1.0 - lam) * text[classes][:, None], dim=-1)
    g = g.reshape(-1, features.shape[1])
    return g, torch.softmax(temperature * (g @ text.T), dim=1)


@dataclass(frozen=True)
class RNSTraining:
    """Steps 1-5 for one test image: its training rows and what supported each class.

    training_set is None when no requested class has visual support (RNS falls back to zero-shot).
    """

    training_set: TrainingSet | None
    visual_classes: tuple[int, ...]  # classes with prototypes in the memory
    text_classes: tuple[int, ...]  # classes with a name, when text is used
    retrieved_classes: tuple[int, ...]  # C_r
    pseudo_classes: tuple[int, ...]
    n_retrieved: int  # |V_r|


def prepare_training(features: torch.Tensor, memory: SupportMemory, text: torch.Tensor | None,
                     settings: RNSSettings = RNSSettings(), *, named: Sequence[bool] | None = None,
                     n_classes: int | None = None) -> RNSTraining:
    """The training rows of one test image with (n, D) normalised unit features.

    text is (C, D) class text features (unnamed classes already hold the others' mean, see
    DenseCLIPFeatures.class_text_features) and named says which classes had a name (all, by
    default). Without text (or with settings.use_text off) n_classes must be given; relevance is
    then uniform and there are no pseudo features. Features, memory prototypes and text share a device.
    """
    text = text if settings.use_text else None
    n_classes = _class_count(text, n_classes)
    named = _named_mask(named, n_classes, features.device) if text is not None else None
    class_feats, has_visual = class_features(memory, n_classes)
    visual_classes = tuple(torch.nonzero(has_visual).flatten().tolist())
    text_classes = tuple(torch.nonzero(named).flatten().tolist()) if named is not None else ()
    if not visual_classes:
        return RNSTraining(None, (), text_classes, (), (), 0)
    if text is not None and settings.use_relevance:
        relevance = relevance_weights(features, text, settings.relevance_temperature)
    else:
        relevance = features.new_full((n_classes,), 1.0 / n_classes)

    retrieved = retrieve(features, memory.prototypes, settings.k)
    rows = [memory.prototypes[retrieved]]
    labels = [memory.class_ids.to(retrieved.device)[retrieved]]
    targets = [F.one_hot(labels[0], n_classes).to(features.dtype)]
    factors = [features.new_ones(len(retrieved))]

    retrieved_classes = torch.unique(labels[0])
    fused, fused_labels = fused_features(class_feats, text, retrieved_classes, settings.lambdas)
    rows.append(fused)
    labels.append(fused_labels)
    targets.append(F.one_hot(fused_labels, n_classes).to(features.dtype))
    factors.append(features.new_full((len(fused),), settings.fused_factor))

    pseudo_classes = torch.empty(0, dtype=torch.long, device=features.device)
    if text is not None:
        predicted = torch.zeros(n_classes, dtype=torch.bool, device=features.device)
        zero_shot = zero_shot_labels(features, text, named)
        predicted[zero_shot] = True
        pseudo_classes = torch.nonzero(predicted & ~has_visual.to(features.device)).flatten()
        if len(pseudo_classes):
            pseudo, soft = pseudo_features(features, zero_shot, pseudo_classes, text, settings.lambdas,
                                           settings.pseudo_temperature)
            rows.append(pseudo)
            labels.append(soft.argmax(dim=1))
            targets.append(soft)
            factors.append(features.new_full((len(pseudo),), settings.pseudo_factor))

    labels = torch.cat(labels)
    training_set = TrainingSet(torch.cat(rows), torch.cat(targets),
                               row_weights(labels, torch.cat(factors), relevance))
    return RNSTraining(training_set, visual_classes, text_classes, tuple(retrieved_classes.tolist()),
                       tuple(pseudo_classes.tolist()), len(retrieved))


@dataclass(frozen=True)
class RNSResult:
    """labels: (H, W) int64 class per pixel. used_fallback: no requested class had visual support, so
    labels are the zero-shot prediction. The class tuples say what supported each class."""

    labels: torch.Tensor
    used_fallback: bool
    visual_classes: tuple[int, ...]
    text_classes: tuple[int, ...]
    retrieved_classes: tuple[int, ...]
    pseudo_classes: tuple[int, ...]
    n_retrieved: int
    n_rows: int


def rns_segment(units: TestUnits, memory: SupportMemory, text: torch.Tensor | None,
                settings: RNSSettings = RNSSettings(), *, named: Sequence[bool] | None = None,
                n_classes: int | None = None, seed: int = 0) -> RNSResult:
    """RNS for one test image (patch or region units); see prepare_training for the arguments."""
    return rns_segment_batch([units], memory, text, settings, named=named, n_classes=n_classes, seeds=[seed])[0]


def rns_segment_batch(units: Sequence[TestUnits], memory: SupportMemory, text: torch.Tensor | None,
                      settings: RNSSettings = RNSSettings(), *, named: Sequence[bool] | None = None,
                      n_classes: int | None = None, seeds: Sequence[int] | int = 0) -> list[RNSResult]:
    """RNS for several test images with one memory and one class list, their heads trained together.

    One batched optimisation instead of one per image; each result is rns_segment of that image with
    its seed (one seed for all, or one per image): a head's loss and AdamW step only see its own image.
    """
    seeds = [seeds] * len(units) if isinstance(seeds, int) else list(seeds)
    if len(seeds) != len(units):
        raise ValueError(f"{len(units)} images but {len(seeds)} seeds")
    trainings = [prepare_training(u.features, memory, text, settings, named=named, n_classes=n_classes)
                 for u in units]
    trained = [index for index, training in enumerate(trainings) if training.training_set is not None]
    heads = {}
    if trained:
        weight, bias = train_heads(stack_training_sets([trainings[i].training_set for i in trained]),
                                   steps=settings.steps, lr=settings.lr, weight_decay=settings.weight_decay,
                                   betas=settings.betas, seeds=[seeds[i] for i in trained], init=settings.head_init)
        heads = {index: (weight[row], bias[row]) for row, index in enumerate(trained)}
    results = []
    for index, (image_units, training) in enumerate(zip(units, trainings)):
        support = dict(visual_classes=training.visual_classes, text_classes=training.text_classes,
                       retrieved_classes=training.retrieved_classes, pseudo_classes=training.pseudo_classes,
                       n_retrieved=training.n_retrieved)
        if training.training_set is None:
            if not settings.use_text or text is None:
                raise ValueError("no requested class has visual support and text is not used: nothing to predict with")
            named_mask = _named_mask(named, text.shape[0], image_units.features.device)
            labels = image_units.labels(zero_shot_scores(image_units.features, text, named_mask))
            results.append(RNSResult(labels, used_fallback=True, n_rows=0, **support))
            continue
        probabilities = head_probabilities(*heads[index], image_units.features)
        results.append(RNSResult(image_units.labels(probabilities), used_fallback=False,
                                 n_rows=int(training.training_set.features.shape[0]), **support))
    return results


def _check_pair(features: torch.Tensor, text: torch.Tensor) -> None:
    if features.ndim != 2 or text.ndim != 2 or features.shape[1] != text.shape[1]:
        raise ValueError(f"expected (n, D) features and (C, D) text features, got {tuple(features.shape)} "
                         f"and {tuple(text.shape)}")


def _class_count(text: torch.Tensor | None, n_classes: int | None) -> int:
    if text is None:
        if n_classes is None:
            raise ValueError("n_classes is required when text features are not used")
        count = n_classes
    else:
        if n_classes is not None and n_classes != text.shape[0]:
            raise ValueError(f"n_classes={n_classes} but there are {text.shape[0]} text features")
        count = text.shape[0]
    if count < 1:
        raise ValueError(f"need at least one class, got {count}")
    return count


def _named_mask(named: Sequence[bool] | None, n_classes: int, device: torch.device) -> torch.Tensor:
    if named is None:
        return torch.ones(n_classes, dtype=torch.bool, device=device)
    mask = torch.as_tensor(list(named), dtype=torch.bool, device=device)
    if mask.shape != (n_classes,):
        raise ValueError(f"named must have one entry per class ({n_classes}), got {len(mask)}")
    if not mask.any():
        raise ValueError("named says no class has a name, so text features cannot be used")
    return mask

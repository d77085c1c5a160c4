"""Baselines for evaluating RNS (our re-implementations): zero-shot, kNN vote and FreeDA-style fusion.

Each maps one test image's units (patches or regions) to an (H, W) label map, exactly as RNS does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskdex.operators.rns.method import zero_shot_scores
from maskdex.operators.rns.memory import SupportMemory, class_features
from maskdex.operators.rns.units import TestUnits


def zero_shot_segment(units: TestUnits, text: torch.Tensor) -> torch.Tensor:
    """argmax_c <x_j, t_c> (RNS step 2), with scores upsampled (patches) or painted (regions)."""
    return units.labels(zero_shot_scores(units.features, text))


def knn_vote_segment(units: TestUnits, memory: SupportMemory, n_classes: int, k: int = 4) -> torch.Tensor:
    """Each unit takes the majority class of its k nearest prototypes; text plays no part.

    Ties go to the class whose tied neighbours are more similar in sum: the similarity term is
    scaled below one vote, so it never overturns a majority.
    """
    if not len(memory):
        raise ValueError("kNN vote needs a non-empty support memory")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if int(memory.class_ids.max()) >= n_classes:
        raise ValueError(f"memory holds class {int(memory.class_ids.max())} but there are {n_classes} classes")
    k = min(k, len(memory))
    similarity, nearest = (units.features @ memory.prototypes.T).topk(k, dim=1)
    votes = F.one_hot(memory.class_ids.to(nearest.device)[nearest], n_classes).to(similarity.dtype)  # (n, k, C)
    scores = votes.sum(dim=1) + (votes * similarity[..., None]).sum(dim=1) / (k + 1)
    return units.labels(scores)


def freeda_segment(units: TestUnits, memory: SupportMemory, text: torch.Tensor, *, local_weight: float = 0.8,
                   global_weight: float = 0.2) -> torch.Tensor:
    """local_weight * <x_j, v_c> + global_weight * <normalise(mean_j x_j), t_c>, per unit.

    v_c is the class feature from the (ground-truth) supports; every class needs one. The global
    image embedding is the normalised mean of the unit features, as in RNS's relevance step.
    """
    class_feats, has_visual = class_features(memory, text.shape[0])
    if not has_visual.all():
        missing = torch.nonzero(~has_visual).flatten().tolist()
        raise ValueError(f"FreeDA-style fusion needs a prototype for every class; classes {missing} have none")
    image = F.normalize(units.features.mean(dim=0), dim=-1)
    scores = local_weight * units.features @ class_feats.T + global_weight * (text @ image)[None, :]
    return units.labels(scores)

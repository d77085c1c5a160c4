"""Segmenting several images at once with one Segmenter: each image's steps 1-5 of RNS alone, then every
head trained in one train_heads call over the stack (design.md section 3).

Each image gets what Segmenter.segment gives it for the same seed: the heads of a stack train as
they would one by one (operators/rns/train.py), and everything else is the same per-image code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from maskdex.operators.rns.memory import SupportMemory
from maskdex.operators.rns.method import RNSTraining, prepare_training, rns_segment
from maskdex.operators.rns.train import head_probabilities, stack_training_sets, train_heads
from maskdex.operators.rns.units import TestUnits, patch_units
from maskdex.pipelines.fewshot.labels import has_text_name
from maskdex.pipelines.fewshot.segmenter import MODES, SegmentResult, Segmenter, uses_text


@dataclass(frozen=True)
class BatchImage:
    """One image of a batch: RGB pixels, and the index's image_id (region mode looks its regions up by it)."""

    rgb: np.ndarray
    image_id: str | None = None


@dataclass
class _Prepared:
    units: TestUnits
    training: RNSTraining
    regions: str | None


def segment_batch(segmenter: Segmenter, images: list[BatchImage], set_name: str, classes: list[str] | None = None,
                  *, mode: str = "patch", shots_only: bool = False, seed: int = 0
                  ) -> list[SegmentResult | Exception]:
    """Segmenter.segment for every image, the heads trained together. An image that fails gets its
    exception in its place; the others go on. What would fail them all (no such set, classes that
    cannot be predicted, a bad mode) raises; the class names are those check_request accepted."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    supports = segmenter._supports(set_name, classes)
    names = supports.classes
    named = [has_text_name(name) for name in names]
    use_text = uses_text(supports, set_name, shots_only)
    visual = tuple(name for name, count in supports.images_per_class.items() if count)
    device = segmenter.extractor.device
    memory = SupportMemory(*(torch.from_numpy(array).to(device) for array in
                             (supports.prototypes, supports.class_ids, supports.image_ids)))
    text = segmenter._text_features(names).to(device) if use_text else None
    rns = segmenter.settings.rns.replace(use_text=use_text)
    named_arg = named if use_text else None

    outcomes: list[_Prepared | Exception] = []
    for image in images:
        try:
            dense = segmenter.extractor.test_features(image.rgb)
            features = dense.features.to(device)
            if mode == "region":
                units, regions = segmenter._region_units(features, image.rgb, image.image_id)
            else:
                units, regions = patch_units(features, dense.image_size), None
            training = prepare_training(units.features, memory, text, rns, named=named_arg, n_classes=len(names))
            outcomes.append(_Prepared(units, training, regions))
        except Exception as error:  # noqa: BLE001 - one bad image must not stop the batch
            outcomes.append(error)

    trained = [index for index, outcome in enumerate(outcomes)
               if isinstance(outcome, _Prepared) and outcome.training.training_set is not None]
    heads = {}
    if trained:
        weight, bias = train_heads(stack_training_sets([outcomes[index].training.training_set for index in trained]),
                                   steps=rns.steps, lr=rns.lr, weight_decay=rns.weight_decay, betas=rns.betas,
                                   seeds=[seed] * len(trained))
        heads = {index: (weight[row], bias[row]) for row, index in enumerate(trained)}

    results: list[SegmentResult | Exception] = []
    for index, (outcome, image) in enumerate(zip(outcomes, images)):
        if isinstance(outcome, Exception):
            results.append(outcome)
            continue
        try:
            if index in heads:
                label_tensor = outcome.units.labels(head_probabilities(*heads[index], outcome.units.features))
                fallback = False
            else:  # no class has examples: rns_segment's zero-shot prediction, no training
                result = rns_segment(outcome.units, memory, text, rns, named=named_arg, n_classes=len(names), seed=seed)
                label_tensor, fallback = result.labels, result.used_fallback
            labels = label_tensor.numpy().astype(np.uint8 if len(names) <= 256 else np.uint16)
            shares = np.bincount(labels.ravel(), minlength=len(names)) / labels.size
            results.append(SegmentResult(
                labels=labels, class_names=names, visual_support=visual,
                text_support=tuple(name for name, has in zip(names, named) if has and use_text),
                support_images=supports.images_per_class, used_fallback=fallback,
                pixel_fractions={name: round(float(share), 6) for name, share in zip(names, shares)},
                mode=mode, regions=outcome.regions, image_id=image.image_id))
        except Exception as error:  # noqa: BLE001
            results.append(error)
    return results

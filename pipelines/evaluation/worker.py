"""The worker of a segmentation evaluation: the methods it compares, run on a shard of images.

A SegmentationWorker holds one process's models (the dense CLIP extractor, and SAM 2 when region
mode is asked for). It computes the support prototypes of support images, and for a shard of
validation images one confusion matrix per (method, shots, seed). The same worker runs inside a
Ray actor or alone in one process, so both give identical numbers for the same shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from maskdex.operators.registry.options import ModelOptions
from maskdex.operators.common import rle as rle_codec
from maskdex.operators.metrics.segmentation import confusion_matrix
from maskdex.operators.registry.presets import dense_feature_extractor, mask_generator
from maskdex.operators.rns.method import RNSSettings, prepare_training, rns_segment
from maskdex.operators.rns.baselines import freeda_segment, knn_vote_segment, zero_shot_segment
from maskdex.operators.rns.memory import SupportMemory, pool_patches
from maskdex.operators.rns.train import head_probabilities, stack_training_sets, train_heads
from maskdex.operators.rns.units import TestUnits, dense_patch_units, dense_region_units
from maskdex.pipelines.evaluation.datasets import LabelFormat, Sample, read_sample

_RNS_VARIANTS = {"rns": {}, "rns-region": {}, "rns-no-text": {"use_text": False},
                 "rns-no-relevance": {"use_relevance": False}}


@dataclass(frozen=True, kw_only=True)
class WorkerSpec(ModelOptions):
    """Everything a worker needs to build its models and evaluate; small enough to ship to every actor."""

    short_side: int | None  # rescales the preset's RNS windows (presets.dense_windows); None: as they are
    classes: tuple[str, ...]
    labels: LabelFormat
    methods: tuple[str, ...]
    rns_steps: int


@dataclass(frozen=True)
class ShardInputs:
    patches: list[TestUnits]
    regions: list[TestUnits] | None  # only when region mode is evaluated
    text: torch.Tensor
    n_classes: int


class SegmentationWorker:
    """One process's models, built from a WorkerSpec, and the two things an evaluation asks of them."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        # The same windows as `maskdex segment` and `supports add` (one policy), unless short_side rescales them.
        self.extractor = dense_feature_extractor(spec.models, weights=spec.weights, device=spec.device,
                                                 dtype=spec.dtype, short_side=spec.short_side)
        self.device = self.extractor.device
        self.text = self.extractor.class_text_features(spec.classes).to(self.device)
        self.masks = None
        if "rns-region" in spec.methods:
            self.masks = mask_generator(spec.models, weights=spec.weights, device=spec.device, dtype=spec.dtype)
        self.settings = RNSSettings(steps=spec.rns_steps)

    def prototypes(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """The classes a support image shows and their prototypes ((m,) int64, (m, D) float32)."""
        rgb, labels = read_sample(sample, self.spec.labels)
        dense = self.extractor.support_features(rgb)
        classes, pooled = pool_patches(dense.features, dense.label_grid(labels))
        return classes.numpy(), pooled.float().cpu().numpy()

    def confusions(self, samples: Sequence[Sample], memories: dict[tuple[int, int], SupportMemory]
                   ) -> dict[tuple[str, int, int], np.ndarray]:
        """{(method, shots, seed): (C, C) confusion summed over the samples} for every memory (shots, seed)."""
        pairs = [read_sample(sample, self.spec.labels) for sample in samples]
        dense = [self.extractor.test_features(rgb) for rgb, _ in pairs]
        patches = [dense_patch_units(d, self.device) for d in dense]
        regions = None
        if self.masks is not None:
            regions = [dense_region_units(d, self._masks(rgb), self.device) for d, (rgb, _) in zip(dense, pairs)]
        inputs = ShardInputs(patches, regions, self.text, len(self.spec.classes))
        truth = [labels for _, labels in pairs]
        out: dict[tuple[str, int, int], np.ndarray] = {}
        zero_shot = None
        for (shots, seed), memory in memories.items():
            memory = SupportMemory(memory.prototypes.to(self.device), memory.class_ids.to(self.device),
                                   memory.image_ids.to(self.device))
            for method in self.spec.methods:
                if method == "zero-shot":  # uses no support: the same for every (shots, seed)
                    if zero_shot is None:
                        zero_shot = self._confusion(predict(method, inputs, memory, self.settings, seed), truth)
                    out[(method, shots, seed)] = zero_shot
                else:
                    out[(method, shots, seed)] = self._confusion(
                        predict(method, inputs, memory, self.settings, seed), truth)
        return out

    def _masks(self, rgb: np.ndarray) -> torch.Tensor:
        regions = self.masks.generate(rgb)
        if not regions:
            return torch.zeros((0, *rgb.shape[:2]), dtype=torch.bool)
        return torch.from_numpy(np.stack([rle_codec.decode(region.rle) for region in regions]))

    def _confusion(self, predictions: list[torch.Tensor], truth: list[np.ndarray]) -> np.ndarray:
        n = len(self.spec.classes)
        return sum((confusion_matrix(p, t, n) for p, t in zip(predictions, truth)), np.zeros((n, n), np.int64))


def predict(method: str, inputs: ShardInputs, memory: SupportMemory, settings: RNSSettings,
            seed: int) -> list[torch.Tensor]:
    """(H, W) label maps of the shard's images by one method."""
    if method == "zero-shot":
        return [zero_shot_segment(units, inputs.text) for units in inputs.patches]
    if method == "knn":
        return [knn_vote_segment(units, memory, inputs.n_classes, k=settings.k) for units in inputs.patches]
    if method == "freeda":
        return [_freeda(units, memory, inputs.text) for units in inputs.patches]
    if method not in _RNS_VARIANTS:
        raise ValueError(f"unknown method {method!r}")
    units = inputs.regions if method == "rns-region" else inputs.patches
    if units is None:
        raise ValueError("region mode needs the shard's SAM 2 regions")
    return rns_batch(units, memory, inputs.text, settings.replace(**_RNS_VARIANTS[method]), inputs.n_classes, seed)


def rns_batch(units: Sequence[TestUnits], memory: SupportMemory, text: torch.Tensor, settings: RNSSettings,
              n_classes: int, seed: int) -> list[torch.Tensor]:
    """RNS for several images, their heads trained together (one batched optimisation, as fast as one
    image on a GPU); every head starts from `seed`, exactly as rns_segment(..., seed=seed) would."""
    trainings = [prepare_training(u.features, memory, text, settings, n_classes=n_classes) for u in units]
    sets = [t.training_set for t in trainings if t.training_set is not None]
    heads = iter(())
    if sets:
        weight, bias = train_heads(stack_training_sets(sets), steps=settings.steps, lr=settings.lr,
                                   weight_decay=settings.weight_decay, betas=settings.betas, seeds=seed,
                                   init=settings.head_init)
        heads = zip(weight, bias)
    labels = []
    for image_units, training in zip(units, trainings):
        if training.training_set is None:  # no class has visual support: rns_segment's zero-shot fallback
            labels.append(rns_segment(image_units, memory, text, settings, n_classes=n_classes, seed=seed).labels)
        else:
            weight, bias = next(heads)
            labels.append(image_units.labels(head_probabilities(weight, bias, image_units.features)))
    return labels


def _freeda(units: TestUnits, memory: SupportMemory, text: torch.Tensor) -> torch.Tensor:
    """FreeDA-style fusion over the classes that have supports; the others can never be predicted
    (FreeDA needs a prototype per class, and rare classes may have no support image)."""
    present = torch.unique(memory.class_ids)
    remap = torch.full((text.shape[0],), -1, dtype=torch.long, device=present.device)
    remap[present] = torch.arange(len(present), device=present.device)
    local = SupportMemory(memory.prototypes, remap[memory.class_ids], memory.image_ids)
    return present.cpu()[freeda_segment(units, local, text[present])]


def memory_from_prototypes(per_image: Sequence[tuple[np.ndarray, np.ndarray]]) -> SupportMemory:
    """The searchable memory of support images, given each image's (classes, prototypes)."""
    if not per_image:
        raise ValueError("a support memory needs at least one support image")
    classes = [torch.from_numpy(np.array(c, dtype=np.int64)) for c, _ in per_image]
    return SupportMemory(torch.cat([torch.from_numpy(np.array(p, dtype=np.float32)) for _, p in per_image]),
                         torch.cat(classes),
                         torch.cat([torch.full_like(c, index) for index, c in enumerate(classes)]))

"""Choosing the support images of a B-shot evaluation, the way the RNS paper does.

From a seeded random subset of the train split (a pool), visit the classes in a seeded random
order; for each class, add pool images that contain it (in the pool's random order) until B of
the chosen images contain it. An image chosen for one class also counts for every other class it
shows, so later classes often need fewer new images. A class with fewer than B images in the pool
keeps what it has (the report lists such classes).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from maskdex.pipelines.evaluation.datasets import IGNORE, LabelFormat, Sample


@dataclass(frozen=True)
class SupportSet:
    shots: int
    seed: int
    image_ids: tuple[str, ...]  # in the order they were chosen
    images_per_class: tuple[int, ...]  # how many chosen images show each class

    def short_classes(self) -> tuple[int, ...]:
        """Classes with fewer than `shots` support images (the pool had no more)."""
        return tuple(c for c, n in enumerate(self.images_per_class) if n < self.shots)


def sample_supports(image_ids: Sequence[str], classes_of: Callable[[str], Collection[int]], n_classes: int,
                    shots: int, seed: int, pool_size: int | None = None) -> SupportSet:
    """The support set for (shots, seed); classes_of(image_id) gives the classes an image shows.

    classes_of is called lazily, in pool order, only until each class is served, so a large train
    split costs only the label files actually looked at.
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if pool_size is not None and pool_size < 1:
        raise ValueError(f"pool_size must be >= 1, got {pool_size}")
    if not image_ids:
        raise ValueError("the train split has no image to sample supports from")
    rng = np.random.default_rng(seed)
    pool = [image_ids[i] for i in rng.permutation(len(image_ids))[:pool_size]]
    class_order = rng.permutation(n_classes)
    counts = np.zeros(n_classes, dtype=np.int64)
    chosen: list[str] = []
    taken: set[str] = set()
    for cls in class_order.tolist():
        for image_id in pool:
            if counts[cls] >= shots:
                break
            if image_id in taken:
                continue
            shown = classes_of(image_id)
            if cls in shown:
                chosen.append(image_id)
                taken.add(image_id)
                counts[list(shown)] += 1
    return SupportSet(shots, seed, tuple(chosen), tuple(int(n) for n in counts))


class ClassPresence:
    """classes_of for sample_supports: the classes in a sample's label file, read once and remembered."""

    def __init__(self, samples: Sequence[Sample], labels: LabelFormat):
        self._samples = {sample.id: sample for sample in samples}
        self._labels = labels
        self._seen: dict[str, frozenset[int]] = {}

    def __call__(self, image_id: str) -> frozenset[int]:
        if image_id not in self._seen:
            values = np.unique(self._labels.read(self._samples[image_id].labels))
            self._seen[image_id] = frozenset(int(v) for v in values if v != IGNORE)
        return self._seen[image_id]

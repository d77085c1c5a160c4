"""Synthetic labelled scenes whose classes differ in colour and texture, as arrays, as labelled
folders and as examples in a support set.

With the tiny preset (random weights) text means nothing, so whatever a method gets right on these
scenes it learnt from the labelled examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from maskdex.operators.rns.method import RNSSettings
from maskdex.pipelines.fewshot.segmenter import SegmentSettings

NAMES = ("sky", "grass", "brick", "sand")
IGNORE = 255
# Fewer RNS steps than the paper's 700: on these scenes the picture is the same, and tests run on CPUs.
SEGMENT_SETTINGS = SegmentSettings(device="cpu", rns=RNSSettings(steps=200))


def texture(cls: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    if cls == 0:  # blue, smooth vertical gradient
        base, pattern = (70, 120, 220), (rows / height)[..., None] * 40
    elif cls == 1:  # green, thin vertical stripes
        base, pattern = (40, 160, 50), ((cols // 2) % 2)[..., None] * 60
    elif cls == 2:  # red, coarse checkerboard
        base, pattern = (180, 60, 40), (((rows // 4) + (cols // 4)) % 2)[..., None] * 70
    else:  # yellow, random speckles
        base, pattern = (220, 200, 110), (rng.random((height, width)) > 0.7)[..., None] * 50
    tint = rng.normal(0, 10, 3)  # every instance has its own shade
    return np.asarray(base) + pattern + tint + rng.normal(0, 8, (height, width, 3))


def scene(rng: np.random.Generator, must: int | None = None, size=(64, 64), n_classes: int = len(NAMES)):
    """A background class with one or two rectangles of other classes; `must` is sure to appear.

    Returns (RGB uint8 image, (H, W) int64 labels, rectangles as (y, x, h, w)).
    """
    height, width = size
    background = must if must is not None and rng.random() < 0.5 else int(rng.integers(n_classes))
    image = texture(background, height, width, rng)
    labels = np.full(size, background, dtype=np.int64)
    others = [c for c in range(n_classes) if c != background]
    objects = list(rng.choice(others, size=int(rng.integers(1, 3)), replace=False))
    if must is not None and must != background and must not in objects:
        objects[0] = must
    boxes = []
    for cls in objects:
        h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        image[y : y + h, x : x + w] = texture(cls, h, w, rng)
        labels[y : y + h, x : x + w] = cls
        boxes.append((y, x, h, w))
    return np.clip(image, 0, 255).astype(np.uint8), labels, boxes


@dataclass(frozen=True)
class LabelledFolder:
    images: Path
    labels: Path
    classes: Path
    label_maps: dict[str, np.ndarray]  # file stem -> labels


def write_labelled_folder(root: Path, n_images: int, *, seed: int = 0, names=NAMES) -> LabelledFolder:
    """images/scene_N.png, labels/scene_N.png (class indices) and classes.txt; every class appears."""
    rng = np.random.default_rng(seed)
    folder = LabelledFolder(root / "images", root / "labels", root / "classes.txt", {})
    folder.images.mkdir(parents=True)
    folder.labels.mkdir(parents=True)
    folder.classes.write_text("".join(f"{name}\n" for name in names))
    for number in range(n_images):
        image, labels, _ = scene(rng, must=number % len(names), n_classes=len(names))
        Image.fromarray(image).save(folder.images / f"scene_{number}.png")
        Image.fromarray(labels.astype(np.uint8)).save(folder.labels / f"scene_{number}.png")
        folder.label_maps[f"scene_{number}"] = labels
    return folder


def example(labels: np.ndarray, names=NAMES) -> tuple[np.ndarray, list[str]]:
    """A scene's labels renumbered over the classes it shows, and their names: what add_example takes,
    since every class named for an example must label some of its pixels."""
    present = [int(value) for value in np.unique(labels) if value != IGNORE]
    renumber = np.full(IGNORE + 1, IGNORE, dtype=np.int64)
    renumber[present] = np.arange(len(present))
    return renumber[labels], [names[index] for index in present]


def add_scenes(segmenter, set_name: str, per_class: int, seed: int) -> None:
    """per_class scenes showing each class, added to a set through a Segmenter."""
    rng = np.random.default_rng(seed)
    for cls in range(len(NAMES)):
        for _ in range(per_class):
            image, labels, _ = scene(rng, must=cls)
            segmenter.add_example(set_name, image, *example(labels))

"""Tiny generated segmentation data sets, one writer per supported layout.

Scenes are a background class with one or two rectangles of other classes, each class with its own
colour and texture (so that even the random-weight tiny CLIP can tell them apart from supports),
and a one-pixel ignored border around every rectangle, as VOC marks object boundaries.
Each writer stores class indices in the layout's own convention and returns, per sample id, the
class-index map (255 = ignored) a reader must give back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from maskdex.pipelines.evaluation import classes as known

IGNORE = 255
COLOURS = [(70, 120, 220), (40, 160, 50), (180, 60, 40), (220, 200, 110), (150, 60, 170), (60, 200, 200)]


def scene(rng: np.random.Generator, n_classes: int, size: tuple[int, int], must: int | None = None):
    """(H, W, 3) uint8 image and (H, W) uint8 class indices; `must` is sure to appear."""
    height, width = size
    background = must if must is not None and rng.random() < 0.5 else int(rng.integers(n_classes))
    labels = np.full(size, background, dtype=np.uint8)
    others = [c for c in range(n_classes) if c != background]
    objects = list(rng.choice(others, size=min(len(others), int(rng.integers(1, 3))), replace=False))
    if must is not None and must != background and must not in objects:
        objects[0] = must
    for cls in objects:
        h, w = int(rng.integers(height // 3, height // 2 + 1)), int(rng.integers(width // 3, width // 2 + 1))
        y, x = int(rng.integers(1, height - h)), int(rng.integers(1, width - w))
        labels[y - 1 : y + h + 1, x - 1 : x + w + 1] = IGNORE
        labels[y : y + h, x : x + w] = cls
    return _paint(labels, rng), labels


def _paint(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.mgrid[0 : labels.shape[0], 0 : labels.shape[1]]
    image = np.zeros((*labels.shape, 3))
    patterns = [rows[..., None] * 0.6, ((cols // 2) % 2)[..., None] * 60.0,
                (((rows // 4) + (cols // 4)) % 2)[..., None] * 70.0, (rng.random(labels.shape) > 0.7)[..., None] * 50.0]
    for cls in np.unique(labels):
        where = labels == cls
        colour = np.asarray(COLOURS[int(cls) % len(COLOURS)] if cls != IGNORE else (128, 128, 128), dtype=float)
        pattern = patterns[int(cls) % len(patterns)] if cls != IGNORE else 0.0
        image[where] = (colour + pattern + rng.normal(0, 8, (*labels.shape, 3)))[where]
    return np.clip(image, 0, 255).astype(np.uint8)


def _scenes(n: int, n_classes: int, seed: int, size=(64, 80), used: int | None = None):
    """n scenes over the first `used` classes (all by default); every used class appears in some scene."""
    rng = np.random.default_rng(seed)
    used = used or n_classes
    return [scene(rng, used, size, must=index % used) for index in range(n)]


def _save(array: np.ndarray, path: Path, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette:  # VOC labels are palette PNGs: pixel values are indices into a colour table
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    image.save(path)


def write_folder(root: Path, n_train: int = 6, n_val: int = 4, classes=("sky", "grass", "brick", "sand"),
                 size=(64, 80), seed: int = 0) -> dict[str, np.ndarray]:
    expected = {}
    (root / "splits").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for split, n, offset in (("train", n_train, 0), ("val", n_val, 1000)):
        stems = []
        for index, (image, labels) in enumerate(_scenes(n, len(classes), seed + offset, size)):
            stem = f"{split}_{index:03d}"
            _save(image, root / "images" / f"{stem}.png")
            _save(labels, root / "labels" / f"{stem}.png")
            expected[stem] = labels.astype(np.int64)
            stems.append(stem)
        (root / "splits" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return expected


def write_voc(root: Path) -> dict[str, np.ndarray]:
    base = root / "VOCdevkit" / "VOC2012"
    expected = {}
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split, seed in (("train", 0), ("val", 1)):
        ids = []
        for index, (image, labels) in enumerate(_scenes(3, len(known.VOC), seed, used=5)):
            sample_id = f"2007_{seed}{index:05d}"
            _save(image, base / "JPEGImages" / f"{sample_id}.jpg")
            _save(labels, base / "SegmentationClass" / f"{sample_id}.png", palette=True)
            expected[sample_id] = labels.astype(np.int64)
            ids.append(sample_id)
        (lists / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return expected


def write_context(root: Path, with_background: bool) -> dict[str, np.ndarray]:
    """mmsegmentation's converted PASCAL Context: raw 0 = background, 1..59 the classes."""
    base = root / "VOC2010"
    expected = {}
    lists = base / "ImageSets" / "SegmentationContext"
    lists.mkdir(parents=True)
    for split, seed in (("train", 0), ("val", 1)):
        ids = []
        for index, (image, labels) in enumerate(_scenes(3, 60, seed, used=5)):
            raw = np.where(labels == IGNORE, 0, labels).astype(np.uint8)  # the converter has no ignore value
            sample_id = f"2008_{seed}{index:05d}"
            _save(image, base / "JPEGImages" / f"{sample_id}.jpg")
            _save(raw, base / "SegmentationClassContext" / f"{sample_id}.png")
            classes = raw.astype(np.int64)
            expected[sample_id] = classes if with_background else np.where(classes == 0, IGNORE, classes - 1)
            ids.append(sample_id)
        (lists / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return expected


def write_coco_stuff(root: Path, train_ids: bool) -> dict[str, np.ndarray]:
    """train_ids: mmsegmentation's *_labelTrainIds.png; else the released stuffthingmaps (category id - 1)."""
    expected = {}
    raw_of_class = np.asarray([i - 1 for i in known.COCO_STUFF_CATEGORY_IDS])
    for split, seed in (("train", 0), ("val", 1)):
        for index, (image, labels) in enumerate(_scenes(3, len(known.COCO_STUFF), seed, used=5)):
            # Use classes whose raw value differs from their index (things after the id gaps, and stuff).
            classes = np.where(labels == IGNORE, IGNORE, labels.astype(np.int64) * 37 % 171)
            stem = f"0000000{seed}{index:05d}"
            _save(image, root / "images" / f"{split}2017" / f"{stem}.jpg")
            if train_ids:
                _save(classes.astype(np.uint8), root / "annotations" / f"{split}2017" / f"{stem}_labelTrainIds.png")
            else:
                raw = np.where(classes == IGNORE, IGNORE, raw_of_class[np.minimum(classes, 170)])
                _save(raw.astype(np.uint8), root / "annotations" / f"{split}2017" / f"{stem}.png")
            expected[stem] = classes
    return expected


def write_cityscapes(root: Path, train_ids: bool) -> dict[str, np.ndarray]:
    expected = {}
    label_ids = np.asarray(known.CITYSCAPES_LABEL_IDS)
    for split, seed, city in (("train", 0, "aachen"), ("val", 1, "lindau")):
        for index, (image, labels) in enumerate(_scenes(3, 19, seed, used=5)):
            name = f"{city}_{index:06d}_000019"
            _save(image, root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
            classes = labels.astype(np.int64)
            if train_ids:
                _save(labels, root / "gtFine" / split / city / f"{name}_gtFine_labelTrainIds.png")
            else:  # labelIds: 0 is "unlabeled", ignored like every id that is not evaluated
                raw = np.where(classes == IGNORE, 0, label_ids[np.minimum(classes, 18)])
                _save(raw.astype(np.uint8), root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png")
            expected[f"{city}/{name}"] = classes
    return expected


def write_ade(root: Path) -> dict[str, np.ndarray]:
    base = root / "ADEChallengeData2016"
    expected = {}
    for folder, seed, prefix in (("training", 0, "ADE_train"), ("validation", 1, "ADE_val")):
        for index, (image, labels) in enumerate(_scenes(3, 150, seed, used=5)):
            raw = np.where(labels == IGNORE, 0, labels.astype(np.int64) + 1)  # 0 = "other", class k stored as k+1
            stem = f"{prefix}_{index:08d}"
            _save(image, base / "images" / folder / f"{stem}.jpg")
            _save(raw.astype(np.uint8), base / "annotations" / folder / f"{stem}.png")
            expected[stem] = labels.astype(np.int64)
    return expected

"""Readers of semantic segmentation data sets: a generic folder layout and the layouts of five benchmarks.

Every reader gives the same thing: a class list, the train and val splits as samples (an image file
and its label PNG), and a LabelFormat that reads a label PNG as (H, W) class indices with 255 for
ignored pixels, whatever the data set's own convention. Layouts (ROOT is the --data directory):

folder       ROOT/images/STEM.{jpg,png,...}, ROOT/labels/STEM.png (class indices, 255 = ignore),
             ROOT/classes.txt (one name per line, line k = class k), ROOT/splits/{train,val}.txt (stems)
voc          VOC2012: JPEGImages/ID.jpg, SegmentationClass/ID.png (palette PNG, 255 = boundary),
             ImageSets/Segmentation/{train,val}.txt; 21 classes with background
context      VOC2010 as mmsegmentation's converter leaves it: JPEGImages/ID.jpg,
             SegmentationClassContext/ID.png (0 = background, 1..59 the classes),
             ImageSets/SegmentationContext/{train,val}.txt; 59 classes, background ignored
context60    the same files, 60 classes: background is class 0
coco-stuff   COCO-Stuff 164k: images/{train,val}2017/STEM.jpg and annotations/{train,val}2017/ with either
             STEM_labelTrainIds.png (mmsegmentation's converter: 0..170) or the released stuffthingmaps
             STEM.png (COCO category id - 1, mapped to the 171 classes here); 255 = unlabelled
cityscapes   leftImg8bit/{train,val}/CITY/NAME_leftImg8bit.png and gtFine/{train,val}/CITY/ with either
             NAME_gtFine_labelTrainIds.png (cityscapesscripts' trainIds) or NAME_gtFine_labelIds.png
             (mapped to the 19 train ids here); 19 classes, 255 = ignore
ade          ADEChallengeData2016: images/{training,validation}/NAME.jpg, annotations/{training,validation}/
             NAME.png; 150 classes, 0 ("other") ignored and class k stored as k + 1

For voc, context and ade, ROOT may also be the folder above (VOCdevkit, or the one holding
ADEChallengeData2016). Images and labels are read from local (or shared) file paths.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from maskdex.pipelines.evaluation import classes as known
from maskdex.operators.common.labels import IGNORE_INDEX
from maskdex.pipelines.common.class_names import read_classes_file
from maskdex.pipelines.common.sources import IMAGE_EXTENSIONS

SPLITS = ("train", "val")
DATASETS = ("folder", "voc", "context", "context60", "coco-stuff", "cityscapes", "ade")
IGNORE = IGNORE_INDEX


class DatasetLayoutError(FileNotFoundError):
    """A data set directory lacks something its layout needs."""


class DatasetError(ValueError):
    """A data set's files break its layout's rules (labels out of range, sizes that disagree)."""


@dataclass(frozen=True)
class Sample:
    id: str
    image: str
    labels: str


@dataclass(frozen=True)
class LabelFormat:
    """How a label PNG becomes class indices: raw value v -> lut[v], then 0..n_classes-1 or 255."""

    n_classes: int
    lut: np.ndarray

    def read(self, path: str) -> np.ndarray:
        """(H, W) int64 class indices, 255 for ignored pixels."""
        with Image.open(path) as image:
            if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                raise DatasetError(f"label file {path} is a {image.mode} colour image, not a map of class indices "
                                   f"(a palette or grayscale PNG)")
            raw = np.asarray(image)
        if raw.ndim != 2:
            raise DatasetError(f"label file {path} has shape {raw.shape}, expected (H, W)")
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise DatasetError(f"label file {path} holds values outside 0..255 ({raw.min()}..{raw.max()})")
        labels = self.lut[raw.astype(np.uint8)].astype(np.int64)
        bad = (labels >= self.n_classes) & (labels != IGNORE)
        if bad.any():
            values = sorted(int(v) for v in np.unique(raw[bad]))[:10]
            raise DatasetError(f"label file {path} holds raw value(s) {values} that are neither one of the "
                               f"{self.n_classes} classes nor ignored (255)")
        return labels


@dataclass(frozen=True)
class SegmentationDataset:
    name: str
    root: str
    classes: tuple[str, ...]
    splits: dict[str, tuple[Sample, ...]]
    labels: LabelFormat

    def split(self, name: str) -> tuple[Sample, ...]:
        if name not in self.splits:
            raise ValueError(f"data set {self.name} has no split {name!r} (it has {', '.join(self.splits)})")
        return self.splits[name]


def read_sample(sample: Sample, labels: LabelFormat) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB and (H, W) int64 labels. No EXIF rotation: label maps align with the stored pixels."""
    try:
        with Image.open(sample.image) as image:
            rgb = np.array(image.convert("RGB"))
    except OSError as error:
        raise DatasetError(f"cannot read image {sample.image}: {error}") from error
    try:
        label_map = labels.read(sample.labels)
    except OSError as error:
        raise DatasetError(f"cannot read label file {sample.labels}: {error}") from error
    if rgb.shape[:2] != label_map.shape:
        raise DatasetError(f"image {sample.image} is {rgb.shape[1]}x{rgb.shape[0]} but its labels {sample.labels} "
                           f"are {label_map.shape[1]}x{label_map.shape[0]}")
    return rgb, label_map


def open_dataset(name: str, root: str | os.PathLike) -> SegmentationDataset:
    """The data set `name` (one of DATASETS) stored at root; a missing piece is a DatasetLayoutError naming it."""
    openers = {"folder": _folder, "voc": _voc, "context": _context, "context60": _context,
               "coco-stuff": _coco_stuff, "cityscapes": _cityscapes, "ade": _ade}
    if name not in openers:
        raise ValueError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"data set directory {root} does not exist")
    return openers[name](name, root)


# Layouts


def _folder(name: str, root: Path) -> SegmentationDataset:
    _require(root, ("images", "labels", "classes.txt", "splits/train.txt", "splits/val.txt"),
             "the folder layout: images/, labels/, classes.txt, splits/train.txt, splits/val.txt")
    try:
        classes = tuple(read_classes_file(root / "classes.txt"))
    except ValueError as error:
        raise DatasetError(str(error)) from error
    images = {path.stem: path for path in (root / "images").iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS}
    splits = {}
    for split in SPLITS:
        stems = _read_list(root / "splits" / f"{split}.txt")
        missing = [stem for stem in stems if stem not in images]
        if missing:
            raise DatasetLayoutError(_missing_message(f"images named in splits/{split}.txt", root / "images",
                                                      [f"{stem}.*" for stem in missing]))
        splits[split] = _checked(root, [Sample(stem, str(images[stem]), str(root / "labels" / f"{stem}.png"))
                                        for stem in stems], f"splits/{split}.txt")
    return SegmentationDataset(name, str(root), classes, splits, LabelFormat(len(classes), known.identity_lut()))


def _voc(name: str, root: Path) -> SegmentationDataset:
    root = _descend(root, "VOC2012", "JPEGImages")
    lists = root / "ImageSets" / "Segmentation"
    _require(root, ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation/train.txt",
                    "ImageSets/Segmentation/val.txt"), "PASCAL VOC 2012 (VOCdevkit/VOC2012)")
    splits = {split: _checked(root, [Sample(i, str(root / "JPEGImages" / f"{i}.jpg"),
                                            str(root / "SegmentationClass" / f"{i}.png"))
                                     for i in _read_list(lists / f"{split}.txt")], f"{split}.txt")
              for split in SPLITS}
    return SegmentationDataset(name, str(root), known.VOC, splits, LabelFormat(len(known.VOC), known.identity_lut()))


def _context(name: str, root: Path) -> SegmentationDataset:
    root = _descend(root, "VOC2010", "JPEGImages")
    lists = root / "ImageSets" / "SegmentationContext"
    _require(root, ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext/train.txt",
                    "ImageSets/SegmentationContext/val.txt"),
             "PASCAL Context as mmsegmentation's converter writes it into VOCdevkit/VOC2010")
    splits = {split: _checked(root, [Sample(i, str(root / "JPEGImages" / f"{i}.jpg"),
                                            str(root / "SegmentationClassContext" / f"{i}.png"))
                                     for i in _read_list(lists / f"{split}.txt")], f"{split}.txt")
              for split in SPLITS}
    if name == "context60":
        return SegmentationDataset(name, str(root), known.CONTEXT_60, splits,
                                   LabelFormat(len(known.CONTEXT_60), known.identity_lut()))
    return SegmentationDataset(name, str(root), known.CONTEXT_59, splits,
                               LabelFormat(len(known.CONTEXT_59), known.reduce_zero_label_lut()))


def _coco_stuff(name: str, root: Path) -> SegmentationDataset:
    folders = [f"{kind}/{split}2017" for kind in ("images", "annotations") for split in SPLITS]
    _require(root, folders, "COCO-Stuff 164k: images/{train,val}2017 and annotations/{train,val}2017")
    train_ids = any((root / "annotations" / "val2017").glob("*_labelTrainIds.png"))
    suffix = "_labelTrainIds.png" if train_ids else ".png"
    splits = {}
    for split in SPLITS:
        images = sorted(p for p in (root / "images" / f"{split}2017").iterdir() if p.suffix.lower() == ".jpg")
        splits[split] = _checked(root, [Sample(p.stem, str(p), str(root / "annotations" / f"{split}2017" /
                                                                    f"{p.stem}{suffix}")) for p in images],
                                 f"images/{split}2017")
    lut = known.identity_lut() if train_ids else known.mapping_lut(tuple(i - 1 for i in known.COCO_STUFF_CATEGORY_IDS))
    return SegmentationDataset(name, str(root), known.COCO_STUFF, splits, LabelFormat(len(known.COCO_STUFF), lut))


def _cityscapes(name: str, root: Path) -> SegmentationDataset:
    folders = [f"{kind}/{split}" for kind in ("leftImg8bit", "gtFine") for split in SPLITS]
    _require(root, folders, "Cityscapes: leftImg8bit/{train,val}/CITY and gtFine/{train,val}/CITY")
    train_ids = any((root / "gtFine" / "val").glob("*/*_gtFine_labelTrainIds.png"))
    suffix = "_gtFine_labelTrainIds.png" if train_ids else "_gtFine_labelIds.png"
    splits = {}
    for split in SPLITS:
        images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        samples = []
        for path in images:
            city, base = path.parent.name, path.name.removesuffix("_leftImg8bit.png")
            samples.append(Sample(f"{city}/{base}", str(path), str(root / "gtFine" / split / city / f"{base}{suffix}")))
        splits[split] = _checked(root, samples, f"leftImg8bit/{split}")
    lut = known.identity_lut() if train_ids else known.mapping_lut(known.CITYSCAPES_LABEL_IDS)
    return SegmentationDataset(name, str(root), known.CITYSCAPES, splits, LabelFormat(len(known.CITYSCAPES), lut))


def _ade(name: str, root: Path) -> SegmentationDataset:
    root = _descend(root, "ADEChallengeData2016", "images")
    folders = {"train": "training", "val": "validation"}
    _require(root, [f"{kind}/{folder}" for kind in ("images", "annotations") for folder in folders.values()],
             "ADE20K: ADEChallengeData2016/images/{training,validation} and annotations/{training,validation}")
    splits = {}
    for split, folder in folders.items():
        images = sorted(p for p in (root / "images" / folder).iterdir() if p.suffix.lower() == ".jpg")
        splits[split] = _checked(root, [Sample(p.stem, str(p), str(root / "annotations" / folder / f"{p.stem}.png"))
                                        for p in images], f"images/{folder}")
    return SegmentationDataset(name, str(root), known.ADE20K, splits,
                               LabelFormat(len(known.ADE20K), known.reduce_zero_label_lut()))


# Checks


def _descend(root: Path, child: str, marker: str) -> Path:
    """root itself when it holds `marker`, else root/child when that exists (VOCdevkit -> VOC2012)."""
    if not (root / marker).exists() and (root / child).is_dir():
        return root / child
    return root


def _require(root: Path, entries: Sequence[str], layout: str) -> None:
    missing = [entry for entry in entries if not (root / entry).exists()]
    if missing:
        raise DatasetLayoutError(f"{root} is not in the layout of {layout}: missing {', '.join(missing)}")


def _read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _checked(root: Path, samples: list[Sample], listed_by: str) -> tuple[Sample, ...]:
    """The samples, once every image and label file they name exists; a split with none is an error too."""
    if not samples:
        raise DatasetLayoutError(f"{root}: {listed_by} lists no image")
    for kind in ("image", "labels"):
        missing = [getattr(s, kind) for s in samples if not os.path.exists(getattr(s, kind))]
        if missing:
            what = "images" if kind == "image" else "label files"
            raise DatasetLayoutError(_missing_message(f"{what} of {listed_by}", root, missing))
    return tuple(samples)


def _missing_message(what: str, where: Path, missing: list[str]) -> str:
    shown = ", ".join(str(m) for m in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f"{len(missing)} {what} missing under {where}: {shown}{more}"

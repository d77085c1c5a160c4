"""Class lists and label conventions of the standard segmentation benchmarks.

Names are written as text prompts should read ("potted plant", not "pottedplant"); the order is
the benchmarks' class index order. Label conventions are lookup tables from the PNG's raw values
to class indices, 255 meaning "ignored".
"""

from __future__ import annotations

import numpy as np

from maskdex.operators.common.labels import IGNORE_INDEX as IGNORE

VOC = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor",
)

# PASCAL Context in the layout of mmsegmentation's converter: index 0 is background, 1..59 the classes.
CONTEXT_60 = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain",
    "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light",
    "motorbike", "mountain", "mouse", "person", "plate", "platform", "potted plant", "road", "rock", "sheep",
    "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tv monitor",
    "wall", "water", "window", "wood",
)
CONTEXT_59 = CONTEXT_60[1:]

CITYSCAPES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# labelIds (gtFine_labelIds.png) of the 19 evaluated classes, in train-id order.
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

ADE20K = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# COCO-Stuff 164k: the 80 COCO thing classes and 91 stuff classes that are labelled (171 of the 182 ids).
# Stuff names drop the official "-other" / "-stuff" suffixes ("building-other" is "building") and put
# materials first ("floor-wood" is "wood floor"), so that each reads as a prompt.
COCO_STUFF = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush", "banner", "blanket", "branch", "bridge", "building", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling", "ceiling tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk",
    "dirt", "door", "fence", "marble floor", "floor", "stone floor", "tile floor", "wood floor", "flower", "fog",
    "food", "fruit", "furniture", "grass", "gravel", "ground", "hill", "house", "leaves", "light", "mat", "metal",
    "mirror", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant", "plastic",
    "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand",
    "sea", "shelf", "sky", "skyscraper", "snow", "solid", "stairs", "stone", "straw", "structural", "table", "tent",
    "textile", "towel", "tree", "vegetable", "brick wall", "concrete wall", "wall", "panel wall", "stone wall",
    "tile wall", "wood wall", "water", "waterdrops", "window blind", "window", "wood",
)
# The COCO category id of each COCO-Stuff class, in class order; stuffthingmaps PNGs store id - 1.
_COCO_THING_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
COCO_STUFF_CATEGORY_IDS = _COCO_THING_IDS + tuple(range(92, 183))


def identity_lut() -> np.ndarray:
    """Raw values are the class indices already; values that are not stay as they are (and fail the check)."""
    return np.arange(256, dtype=np.uint8)


def reduce_zero_label_lut() -> np.ndarray:
    """0 (background / "other") is ignored and class k is stored as k + 1 (ADE20K, PASCAL Context 59)."""
    lut = np.arange(256, dtype=np.int64) - 1
    lut[0] = IGNORE
    lut[IGNORE] = IGNORE
    return lut.astype(np.uint8)


def mapping_lut(raw_values: tuple[int, ...]) -> np.ndarray:
    """raw_values[k] is stored for class k; every other raw value is ignored."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[list(raw_values)] = np.arange(len(raw_values), dtype=np.uint8)
    return lut

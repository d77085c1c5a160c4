"""A labelled folder of support examples, checked as a whole before anything is computed or written.

Layout: images/NAME.EXT (any image format) and labels/NAME.png (class indices, 255 = ignore) with
the same stem, and a classes file with one class per line. Every pair is checked up front where it
is cheap: label maps are read in full, images only as far as their header (size and orientation).
One bad pair refuses the whole add, and the error names every bad file, so that a set is never
left holding part of a folder.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from maskdex.pipelines.common.decode import DEFAULT_MAX_PIXELS
from maskdex.pipelines.common.sources import IMAGE_EXTENSIONS
from maskdex.pipelines.common.class_names import read_classes_file
from maskdex.pipelines.fewshot.labels import label_problems, read_label_map

# EXIF orientations that turn the image by 90 degrees: width and height swap once it is decoded.
_TRANSPOSED = {5, 6, 7, 8}
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class LabelledPair:
    image: str  # path of the image file
    labels: str  # path of its label map
    image_id: str  # sha256 of the image file's bytes


@dataclass(frozen=True)
class LabelledFolder:
    classes: list[str]
    pairs: list[LabelledPair]


def read_labelled_folder(images_dir: str | os.PathLike, labels_dir: str | os.PathLike,
                         classes_file: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LabelledFolder:
    """The folder's pairs, in name order; a ValueError that names every bad file if any is bad."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for what, path in (("images folder", images_dir), ("labels folder", labels_dir)):
        if not path.is_dir():
            raise FileNotFoundError(f"{what} {path} does not exist or is not a folder")
    if not Path(classes_file).is_file():
        raise FileNotFoundError(f"classes file {classes_file} does not exist")
    classes = read_classes_file(classes_file)

    images = {path.stem: path for path in sorted(images_dir.iterdir())
              if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS}
    labels = {path.stem: path for path in sorted(labels_dir.iterdir())
              if path.is_file() and path.suffix.lower() == ".png"}
    if not images:
        raise ValueError(f"no image files in {images_dir} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    problems: list[str] = []
    repeated_stems = _repeated_stems(images_dir)
    problems += [f"{images_dir.name}/{name}: more than one image has the stem {stem!r}"
                 for stem, names in repeated_stems.items() for name in names]
    problems += [f"{labels_dir.name}/{path.name}: no image {images_dir.name}/{stem}.* for it"
                 for stem, path in labels.items() if stem not in images]

    pairs, seen = [], {}
    for stem, image_path in images.items():
        where = f"{images_dir.name}/{image_path.name}"
        if stem in repeated_stems:
            continue
        if stem not in labels:
            problems.append(f"{where}: no label map {labels_dir.name}/{stem}.png")
            continue
        try:
            data = image_path.read_bytes()
            size = _header_size(data)
            if size[0] * size[1] > max_pixels:
                raise ValueError(f"image is {size[1]}x{size[0]} pixels, over the limit of {max_pixels}")
            found = label_problems(read_label_map(labels[stem].read_bytes()), size, len(classes))
        except (OSError, ValueError) as error:
            found = [str(error)]
        if found:
            problems += [f"{where}: {problem}" for problem in found]
            continue
        image_id = hashlib.sha256(data).hexdigest()
        if image_id in seen:
            problems.append(f"{where}: the same image (identical bytes) as {images_dir.name}/{seen[image_id]}")
            continue
        seen[image_id] = image_path.name
        pairs.append(LabelledPair(str(image_path), str(labels[stem]), image_id))
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in the labelled folder; nothing was added:\n  "
                         + "\n  ".join(problems))
    return LabelledFolder(classes, pairs)


def _header_size(data: bytes) -> tuple[int, int]:
    """(height, width) as the image will decode, read from its header without decoding the pixels."""
    if not data:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            orientation = image.getexif().get(_ORIENTATION_TAG)
    except Image.UnidentifiedImageError:
        raise ValueError("not an image file (unrecognised format)") from None
    except (OSError, SyntaxError) as error:
        raise ValueError(f"unreadable image header: {error}") from error
    return (width, height) if orientation in _TRANSPOSED else (height, width)


def _repeated_stems(images_dir: Path) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for path in sorted(images_dir.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            names.setdefault(path.stem, []).append(path.name)
    return {stem: found for stem, found in names.items() if len(found) > 1}

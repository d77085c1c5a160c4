"""What a segmentation leaves on disk: NAME.labels.png, NAME.overlay.png and NAME.json.

The labels PNG holds class indices (into the JSON's "classes"), as a palette PNG that also shows
the classes in the overlay's colours; beyond 256 classes it is a 16-bit grayscale PNG.
"""

from __future__ import annotations

import colorsys
import json
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from maskdex.pipelines.fewshot.segmenter import SegmentResult

# Twenty colours far apart from each other; classes beyond them get spread hues.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)
OVERLAY_ALPHA = 0.5
_SWATCH = 12
_PAD = 4


def class_colour(index: int) -> tuple[int, int, int]:
    if index < len(PALETTE):
        return PALETTE[index]
    # Golden-ratio steps around the hue circle never repeat and stay far apart.
    r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.7, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def colours(n_classes: int) -> np.ndarray:
    return np.array([class_colour(index) for index in range(n_classes)], dtype=np.uint8).reshape(-1, 3)


def labels_image(labels: np.ndarray, n_classes: int) -> Image.Image:
    # An 8-bit image with a palette attached becomes a palette image with the same indices.
    if labels.dtype == np.uint8:
        image = Image.fromarray(labels)
        image.putpalette(colours(n_classes).ravel().tolist())
        return image
    return Image.fromarray(labels.astype(np.uint16))


def overlay_image(rgb: np.ndarray, result: SegmentResult) -> Image.Image:
    """The image with each class's colour blended in, above a legend of the classes found."""
    painted = colours(len(result.class_names))[result.labels]
    blended = (rgb.astype(np.float32) * (1 - OVERLAY_ALPHA) + painted * OVERLAY_ALPHA).round().astype(np.uint8)
    font = ImageFont.load_default()
    entries = []
    for name in result.found:
        marks = [word for word, has in (("examples", name in result.visual_support),
                                        ("text", name in result.text_support)) if has]
        entries.append((result.class_names.index(name),
                        f"{name}  {100 * result.pixel_fractions[name]:.1f}%  ({', '.join(marks) or 'no support'})"))
    if result.used_fallback:
        entries.append((None, "zero-shot: no class had examples"))
    line = max(_SWATCH, _text_size(font, "Ag")[1]) + _PAD
    legend_width = max((_SWATCH + 2 * _PAD + _text_size(font, text)[0] for _, text in entries), default=0) + _PAD
    height, width = result.labels.shape
    canvas = Image.new("RGB", (max(width, legend_width), height + _PAD + line * len(entries)), (255, 255, 255))
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, (index, text) in enumerate(entries):
        top = height + _PAD + row * line
        if index is not None:
            draw.rectangle([_PAD, top, _PAD + _SWATCH, top + _SWATCH], fill=class_colour(index), outline=(0, 0, 0))
        draw.text((_SWATCH + 2 * _PAD, top), text, fill=(0, 0, 0), font=font)
    return canvas


def write_outputs(result: SegmentResult, rgb: np.ndarray, out_dir: str, name: str, *, image: str | None) -> dict:
    """Write the three files; returns the JSON summary (with their paths)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: os.path.join(out_dir, f"{name}.{kind}.png") for kind in ("labels", "overlay")}
    labels_image(result.labels, len(result.class_names)).save(paths["labels"])
    overlay_image(rgb, result).save(paths["overlay"])
    summary = {"image": image, **result.summary(), "outputs": {**paths, "json": os.path.join(out_dir, f"{name}.json")}}
    with open(summary["outputs"]["json"], "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    return summary


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top

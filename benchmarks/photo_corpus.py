"""A corpus of distinct photos for the benchmarks that index or segment files (index_throughput, reembed,
segment_index): the sample photos turned, mirrored and trimmed, so that no two files share bytes and
an index keeps every one (it deduplicates by content)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from maskdex.jobs.commands.samples import write_samples


def photo_variants(directory: Path, count: int, *, max_side: int | None = None) -> list[str]:
    """`count` distinct PNG files in directory, sorted; max_side shrinks each to fit (None: as they are)."""
    photos = write_samples(directory / "base")
    for index in range(count):
        variant = index // len(photos)
        image = Image.open(photos[index % len(photos)]).rotate(90 * (variant % 4), expand=True)
        if variant // 4 % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        trim = variant // 8  # past the 8 turns and mirrors, trimming keeps every image distinct
        image = image.crop((trim, trim, image.width - trim, image.height - trim))
        if max_side is not None:
            image.thumbnail((max_side, max_side))
        image.convert("RGB").save(directory / f"{index:04d}.png")
    return [str(path) for path in sorted(directory.glob("*.png"))]

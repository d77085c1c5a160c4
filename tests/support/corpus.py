"""A test corpus: real photos, copies under other names, and every kind of bad file the index must survive."""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from maskdex.pipelines.index.job import IndexSettings

GOOD_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def index_settings(**changes) -> IndexSettings:
    """Index settings for the tests' shared Ray instance, two SAM 2 actors and one Alpha-CLIP actor.

    That instance claims 4 logical CPUs on a 2-core machine; the default plan (as many actors as
    fit) would start 7 model actors there, most of whom would only contend for the two cores.
    """
    defaults = IndexSettings(models="tiny")
    return replace(defaults, sam=replace(defaults.sam, max_actors=2), clip=replace(defaults.clip, max_actors=1),
                   **changes)


@dataclass
class Corpus:
    root: Path
    ok: list[Path] = field(default_factory=list)  # each indexes as its own image
    duplicates: list[Path] = field(default_factory=list)  # same bytes as a file in `ok`
    bad: dict[Path, str] = field(default_factory=dict)  # path -> a word the error must contain

    @property
    def inputs(self) -> int:
        return len(self.ok) + len(self.duplicates) + len(self.bad)


def _save(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def build_corpus(root: Path, *, photos=GOOD_PHOTOS, with_bad: bool = True, large_side: int = 2600) -> Corpus:
    corpus = Corpus(root)
    for index, name in enumerate(photos):
        image = Image.fromarray(getattr(data, name)())
        suffix = ".png" if index % 2 else ".jpg"
        corpus.ok.append(_save(image.convert("RGB") if suffix == ".jpg" else image, root / f"{name}{suffix}"))
    copy = root / "nested" / "again" / f"copy_of_{corpus.ok[0].name}"
    copy.parent.mkdir(parents=True)
    shutil.copyfile(corpus.ok[0], copy)
    corpus.duplicates.append(copy)
    renamed = corpus.ok[-1]
    shutil.copyfile(renamed, root / f"renamed{renamed.suffix}")
    corpus.duplicates.append(root / f"renamed{renamed.suffix}")
    if not with_bad:
        return corpus

    coffee = Image.fromarray(data.coffee())
    # Odd but valid images: they must index.
    deep = (np.asarray(Image.fromarray(data.camera()), dtype=np.uint16) * 257)
    corpus.ok.append(_save(Image.fromarray(deep), root / "odd" / "sixteen_bit.png"))
    corpus.ok.append(_save(coffee.convert("CMYK"), root / "odd" / "cmyk.jpg"))
    rgba = coffee.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(coffee.size))
    corpus.ok.append(_save(rgba, root / "odd" / "rgba.png"))
    corpus.ok.append(_save(coffee.convert("P", palette=Image.Palette.ADAPTIVE), root / "odd" / "palette.png"))
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise on display
    Image.fromarray(data.chelsea()).save(rotated, format="JPEG", exif=exif)
    (root / "odd" / "exif_rotated.jpg").write_bytes(rotated.getvalue())
    corpus.ok.append(root / "odd" / "exif_rotated.jpg")

    # Bad files: each must become a 'failed' row whose error names the cause.
    jpeg = io.BytesIO()
    coffee.save(jpeg, format="JPEG")
    (root / "bad").mkdir()
    (root / "bad" / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    corpus.bad[root / "bad" / "truncated.jpg"] = "truncated"
    (root / "bad" / "empty.jpg").write_bytes(b"")
    corpus.bad[root / "bad" / "empty.jpg"] = "empty"
    (root / "bad" / "notes.jpg").write_text("this is a text file with a .jpg name\n")
    corpus.bad[root / "bad" / "notes.jpg"] = "not an image"
    _save(Image.new("L", (large_side, large_side), 128), root / "bad" / "huge.png")
    corpus.bad[root / "bad" / "huge.png"] = "over the limit"
    return corpus


def index_thumbnails(tmp_path_factory, label: str, photos) -> tuple[str, dict[str, Path]]:
    """The named sample photos as 160 px JPEG thumbnails, indexed with the tiny preset: (db, name -> path).
    Needs a running Ray (the ray_local fixture)."""
    from maskdex.pipelines.index.job import run_index

    root = tmp_path_factory.mktemp(f"{label}_corpus")
    paths = {}
    for name in photos:
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        image.thumbnail((160, 160))
        paths[name] = root / f"{name}.jpg"
        image.save(paths[name], quality=90)
    db = str(tmp_path_factory.mktemp(f"{label}_db") / "db")
    run_index([str(path) for path in paths.values()], db, index_settings(commit_every=4))
    return db, paths

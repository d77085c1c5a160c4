"""`maskdex samples DIR`: write scikit-image's sample photos as files, a corpus for trying maskdex."""

from __future__ import annotations

from pathlib import Path

SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field",
                 "immunohistochemistry", "retina", "coins", "page")


def add_parser(commands) -> None:
    parser = commands.add_parser("samples", help="write scikit-image's sample photos into a folder")
    parser.add_argument("directory", metavar="DIR")
    parser.set_defaults(run=run)


def write_samples(directory: str | Path, names=SAMPLE_PHOTOS) -> list[Path]:
    from PIL import Image
    from skimage import data

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        image = loader()
        if isinstance(image, tuple):  # stereo pairs come as (left, right)
            image = image[0]
        path = out / f"{name}.jpg"
        Image.fromarray(image).convert("RGB").save(path, quality=92)
        written.append(path)
    return written


def run(args) -> int:
    written = write_samples(args.directory)
    print(f"wrote {len(written)} photos to {args.directory}")
    return 0

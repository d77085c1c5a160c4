"""`maskdex demo`: masks and region embeddings for one photo, ranked against a few phrases."""

from __future__ import annotations

import time

from maskdex.jobs.arguments import add_model_options


def add_parser(commands) -> None:
    parser = commands.add_parser("demo", help="propose masks on a sample photo and match them to phrases")
    add_model_options(parser)
    parser.add_argument("--photo", default="astronaut", help="a scikit-image sample photo name or an image path")
    parser.add_argument("--text", action="append", default=None, help="a phrase to match (repeatable)")
    parser.set_defaults(run=run)


def run(args) -> int:
    import torch
    from PIL import Image

    from maskdex.operators.registry.presets import alpha_clip_encoder, mask_generator, require_weights

    require_weights(args.models, args.weights_dir, ("sam2", "alpha_clip"))
    image = _load_photo(args.photo)
    texts = args.text or ["a person", "a flag", "the sky"]
    started = time.perf_counter()
    masks = mask_generator(args.models, weights=args.weights_dir, device=args.device)
    encoder = alpha_clip_encoder(args.models, weights=args.weights_dir, device=args.device)
    regions = masks.generate(image)
    embeddings = encoder.embed_regions(image, [r.rle for r in regions], [r.bbox for r in regions])
    scores = embeddings @ encoder.embed_texts(texts).T if len(regions) else torch.empty(0, len(texts))
    print(f"{args.photo}: {Image.fromarray(image).size[0]}x{image.shape[0]} pixels, {len(regions)} regions "
          f"({args.models} preset, {time.perf_counter() - started:.1f}s)")
    print(f"{'region':>6} {'box (x, y, w, h)':>22} {'area':>8} {'quality':>8}  " + "  ".join(f"{t[:14]:>14}" for t in texts))
    for index, region in enumerate(regions):
        cells = "  ".join(f"{scores[index, j].item():14.3f}" for j in range(len(texts)))
        print(f"{index:6d} {str(region.bbox):>22} {region.area:8d} {region.quality:8.3f}  {cells}")
    return 0


def _load_photo(name: str):
    import numpy as np
    from PIL import Image, ImageOps
    from skimage import data

    if hasattr(data, name) and not name.startswith("_"):
        return np.asarray(getattr(data, name)())
    with Image.open(name) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))

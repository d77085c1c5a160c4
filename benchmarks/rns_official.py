"""RNS end to end per test image: maskdex's rns_segment against the authors' released RNS_Inference.

Both run in this process, interleaved, on the same synthetic problems (benchmarks/rns_adaptation.py's:
D = 512, a 32 x 32 patch grid, 20 prototypes per class, six classes shown per image) with the paper's
settings (k 4, six lambdas, 700 AdamW steps). The authors' side is their RNS_Inference followed by
their post-processing (mmseg_utils/apis/test.py: reshape to the grid, bilinear to the input, crop,
bilinear to the image, softmax, argmax; timed with and without it); the class-level fused rows (their `vlm.mixed`) are built once
per support set, outside the timed call, as their model does at set-up. maskdex's side is rns_segment
with the same crop-and-upsample path, everything included.

Their code is not part of maskdex: fetch it (github.com/TilemahosAravanis/Retrieve-and-Segment) and give
the folder that holds core/rns.py. It searches with faiss on a GPU; on a machine without CUDA this
script stands in a minimal exact inner-product index (torch topk, what IndexFlatIP computes) and lets
`.cuda()` return the tensor itself. Both heads start from the same seed, so their label maps can be
compared: the last column counts the pixels where they differ (ties to float rounding may flip).

    python -m benchmarks.rns_official --official /path/to/Retrieve-and-Segment [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.rns_adaptation import GRID, IMAGE_SIZE, synthetic_problem
from maskdex.operators.rns.memory import class_features
from maskdex.operators.rns.method import RNSSettings, rns_segment
from maskdex.operators.rns.units import patch_units

PATCH = 16


class _FlatInnerProduct:
    """Exact inner-product search, as faiss's (Gpu)IndexFlatIP computes it."""

    def __init__(self, _resources, dim: int):
        self._rows = torch.empty(0, dim)

    def add(self, rows: torch.Tensor) -> None:
        self._rows = torch.cat([self._rows.to(rows), rows])

    def search(self, queries: torch.Tensor, k: int):
        return (queries @ self._rows.T).topk(k, dim=1)


def _faiss_stand_in() -> None:
    """A `faiss` module with the two names RNS_Inference uses, unless the real one is importable."""
    try:
        import faiss  # noqa: F401
        import faiss.contrib.torch_utils  # noqa: F401
        if torch.cuda.is_available():
            return
    except ImportError:
        pass
    faiss = types.ModuleType("faiss")
    faiss.StandardGpuResources = lambda: None
    faiss.GpuIndexFlatIP = _FlatInnerProduct
    contrib = types.ModuleType("faiss.contrib")
    torch_utils = types.ModuleType("faiss.contrib.torch_utils")
    faiss.contrib, contrib.torch_utils = contrib, torch_utils
    sys.modules.update({"faiss": faiss, "faiss.contrib": contrib, "faiss.contrib.torch_utils": torch_utils})


@contextlib.contextmanager
def _cuda_is_here(device: torch.device):
    """Their code moves the retrieved rows with .cuda(); on the CPU that must leave them where they are."""
    if device.type == "cuda":
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def load_official(folder: Path):
    _faiss_stand_in()
    sys.path.insert(0, str(folder))
    from core.rns import RNS_Inference  # the authors' module, from the given folder

    return RNS_Inference


def official_model(memory, text: torch.Tensor, n_classes: int, shots: int, settings: RNSSettings,
                   device: torch.device) -> types.SimpleNamespace:
    """The attributes RNS_Inference reads, laid out as their model holds them.

    Their support bank has one row per (support image, class), class = row % C; every synthetic support
    "image" holds each class once, so row s * C + c is prototype s of class c and no row is a placeholder.
    Their `mixed` rows are lambda-major: row l * C + c is normalise(lambda_l v_c + (1 - lambda_l) t_c).
    """
    bank = memory.prototypes.reshape(n_classes, shots, -1).transpose(0, 1).reshape(n_classes * shots, -1)
    visual, _ = class_features(memory, n_classes)
    lambdas = torch.tensor(settings.lambdas, dtype=visual.dtype, device=device)[:, None, None]
    mixed = F.normalize(lambdas * visual[None] + (1 - lambdas) * text[None], dim=-1).reshape(-1, visual.shape[1])
    return types.SimpleNamespace(
        mask_proposal="None", use_text=True, drop_text_fraction=0.0, num_classes=n_classes,
        textual_embeddings=text, class_score_Temp=settings.relevance_temperature, support_vlm_feats=bank.contiguous(),
        k=settings.k, drop_classes=torch.empty(0, dtype=torch.long, device=device), mixed=mixed,
        mixed_labels=torch.arange(n_classes, device=device), beta_mixed=settings.fused_factor,
        beta_pseudo=settings.pseudo_factor, lr=settings.lr, epochs=settings.steps, device=device,
        vit_patch_size=PATCH)


def official_labels(rns_inference, model, features: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, float]:
    """RNS_Inference on (h * w, D) features and their post-processing to an (H, W) label map.

    Returns the labels and the seconds RNS_Inference itself took (the post-processing excluded).
    """
    hf, wf = GRID
    grid = features.T.reshape(1, -1, hf, wf)
    start = time.perf_counter()
    with _cuda_is_here(device):
        output = rns_inference(model, grid)
    _synchronise(device)
    inference = time.perf_counter() - start
    output = output.unsqueeze(0).permute(0, 2, 1).reshape(1, model.num_classes, hf, wf)
    output = F.interpolate(output, size=(hf * PATCH, wf * PATCH), mode="bilinear", align_corners=False)
    output = F.interpolate(output, size=IMAGE_SIZE, mode="bilinear", align_corners=False)
    return F.softmax(output, dim=1).argmax(dim=1)[0].cpu(), inference


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(rns_inference, n_classes: int, shots: int, repeats: int, device: torch.device,
            settings: RNSSettings) -> dict:
    times = {"official": [], "inference": [], "maskdex": []}
    differing = 0
    for repeat in range(repeats):
        units, memory, text = synthetic_problem(n_classes, shots, repeat, device)
        input_size = (GRID[0] * PATCH, GRID[1] * PATCH)
        units = patch_units(units.features.reshape(*GRID, -1), IMAGE_SIZE, input_size=input_size,
                            resized_size=input_size)
        model = official_model(memory, text, n_classes, shots, settings, device)
        labels = {}
        for name in ("official", "maskdex")[:: 1 if repeat % 2 else -1]:
            _synchronise(device)
            start = time.perf_counter()
            if name == "official":
                torch.manual_seed(repeat)  # their linear_layer draws from the global generator
                labels[name], inference = official_labels(rns_inference, model, units.features, device)
                times["inference"].append(inference)
            else:
                labels[name] = rns_segment(units, memory, text, settings, seed=repeat).labels
            _synchronise(device)
            times[name].append(time.perf_counter() - start)
        differing += int((labels["official"] != labels["maskdex"]).sum())
    row = {name: 1000 * statistics.median(values) for name, values in times.items()}
    row.update(differing=differing, pixels=repeats * IMAGE_SIZE[0] * IMAGE_SIZE[1])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="folder of the authors' code (holds core/rns.py)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shots", type=int, default=20)
    parser.add_argument("--steps", type=int, default=RNSSettings().steps)
    parser.add_argument("--classes", type=int, nargs="+", default=[21, 60, 150])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = RNSSettings(steps=args.steps)
    rns_inference = load_official(args.official)
    measure(rns_inference, 21, 2, 2, device, settings.replace(steps=5))  # warm-up: lazy initialisation
    print(f"RNS end to end per image, {settings.steps} steps, grid {GRID[0]}x{GRID[1]}, image {IMAGE_SIZE}, "
          f"{args.shots} shots, device {device}, {torch.get_num_threads()} threads; median of {args.repeats} (ms)")
    print("official = RNS_Inference and their post-processing; inference = RNS_Inference alone; "
          "ratios are maskdex's time over each")
    print(f"{'classes':>7} {'official':>9} {'inference':>9} {'maskdex':>9} {'ratio':>6} {'ratio inf':>9} "
          f"{'px differ':>15}")
    for n_classes in args.classes:
        row = measure(rns_inference, n_classes, args.shots, args.repeats, device, settings)
        print(f"{n_classes:>7} {row['official']:>9.1f} {row['inference']:>9.1f} {row['maskdex']:>9.1f} "
              f"{row['maskdex'] / row['official']:>6.2f} {row['maskdex'] / row['inference']:>9.2f} "
              f"{row['differing']:>7}/{row['pixels']:<7}", flush=True)


if __name__ == "__main__":
    main()

"""Milliseconds per test image for RNS's test-time adaptation at the paper's sizes.

Synthetic features with the paper's shapes: D = 512, a 32 x 32 patch grid per test image (a 512 px
short side at patch 16), 21 / 60 / 150 classes, 20 or 100 memory prototypes per class. Each class
has a random direction; a support prototype or a test patch is that direction plus noise, and a
test image shows six classes. The retrieved set's size |V_r| and the training rows are printed.
The time splits into retrieval (k-NN search plus building the fused and pseudo rows), training
(700 full-batch AdamW steps) and prediction (softmax per patch, bilinear upsampling, argmax); "total" is
their sum and "end to end" times one whole rns_segment call on the same image (what a caller pays).
Training is timed twice on the same rows, interleaved: the plain reference (autograd and
torch.optim.AdamW, maskdex's implementation before the fast path) and train_heads, with their ratio,
the time per step, how far apart their probabilities are, and how many pixels of the repeats' label maps
differ (a patch whose two best classes tie to float rounding can flip). The last column trains a
stack of images at once (ms per image). Prints a table of medians over repeats; asserts nothing.

    python -m benchmarks.rns_adaptation [--repeats 3] [--device cpu] [--shots 20 100] [--threads N] [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from maskdex.operators.rns.method import RNSSettings, prepare_training, rns_segment
from maskdex.operators.rns.memory import SupportMemory
from maskdex.operators.rns.train import head_probabilities, reference_train_heads, stack_training_sets, train_heads
from maskdex.operators.rns.units import patch_units

DIM = 512
GRID = (32, 32)
IMAGE_SIZE = (512, 683)
CLASSES_PER_IMAGE = 6
# Noise norms relative to a class direction: prototypes sit at cosine ~0.7 from their class
# direction, test patches (noisier, single patches) at ~0.55.
PROTOTYPE_NOISE = 1.0
PATCH_NOISE = 1.5


def _noisy(directions: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    noise = F.normalize(torch.randn(directions.shape, generator=generator), dim=-1)
    return F.normalize(directions + scale * noise, dim=-1)


def synthetic_problem(n_classes: int, shots: int, seed: int, device: torch.device):
    """One test image's patch units, a memory of `shots` prototypes per class, and text features."""
    generator = torch.Generator().manual_seed(seed)
    # A shared component makes classes alike, as CLIP features are (cosine ~0.5 between classes).
    common = torch.randn(DIM, generator=generator)
    centres = F.normalize(common + torch.randn(n_classes, DIM, generator=generator), dim=-1)
    class_ids = torch.arange(n_classes).repeat_interleave(shots)
    memory = SupportMemory(_noisy(centres[class_ids], PROTOTYPE_NOISE, generator).to(device), class_ids.to(device),
                           torch.arange(len(class_ids)).to(device))
    present = torch.randperm(n_classes, generator=generator)[:CLASSES_PER_IMAGE]
    patch_classes = present[torch.randint(0, len(present), GRID, generator=generator)]
    patches = _noisy(centres[patch_classes], PATCH_NOISE, generator)
    text = _noisy(centres, PROTOTYPE_NOISE, generator)
    return patch_units(patches.to(device), IMAGE_SIZE), memory, text.to(device)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train(train, batch, settings: RNSSettings, seeds):
    return train(batch, steps=settings.steps, lr=settings.lr, weight_decay=settings.weight_decay,
                 betas=settings.betas, seeds=seeds, init=settings.head_init)


def measure(n_classes: int, shots: int, repeats: int, device: torch.device, batch: int,
            settings: RNSSettings) -> dict:
    """Medians over repeats; the reference (old) and the fast (new) training run interleaved on the same rows."""
    times = {"retrieval": [], "old": [], "new": [], "prediction": [], "end to end": [], "batched": []}
    worst, differing = 0.0, 0
    for repeat in range(repeats):
        units, memory, text = synthetic_problem(n_classes, shots, repeat, device)
        _synchronise(device)
        start = time.perf_counter()
        training = prepare_training(units.features, memory, text, settings)
        _synchronise(device)
        times["retrieval"].append(time.perf_counter() - start)
        stacked = stack_training_sets([training.training_set])
        heads = {}
        for name, train in (("old", reference_train_heads), ("new", train_heads))[:: 1 if repeat % 2 else -1]:
            start = time.perf_counter()
            heads[name] = _train(train, stacked, settings, repeat)
            _synchronise(device)
            times[name].append(time.perf_counter() - start)
        start = time.perf_counter()
        probabilities = head_probabilities(heads["new"][0][0], heads["new"][1][0], units.features)
        units.labels(probabilities)
        _synchronise(device)
        times["prediction"].append(time.perf_counter() - start)
        start = time.perf_counter()
        rns_segment(units, memory, text, settings, seed=repeat)
        _synchronise(device)
        times["end to end"].append(time.perf_counter() - start)
        old = head_probabilities(heads["old"][0][0], heads["old"][1][0], units.features)
        worst = max(worst, (old - probabilities).abs().max().item())
        differing += int((units.labels(old) != units.labels(probabilities)).sum())
        if batch > 1:
            many = stack_training_sets([training.training_set] * batch)
            start = time.perf_counter()
            _train(train_heads, many, settings, list(range(batch)))
            _synchronise(device)
            times["batched"].append((time.perf_counter() - start) / batch)
    row = {name: 1000 * statistics.median(values) for name, values in times.items() if values}
    row.update(classes=n_classes, memory=len(memory), retrieved=training.n_retrieved,
               rows=int(training.training_set.features.shape[0]), worst=worst, differing=differing)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8,
                        help="also time training this many images together (ms per image); 0 or 1 skips it")
    parser.add_argument("--steps", type=int, default=RNSSettings().steps)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 avoids oversubscription on a busy machine")
    parser.add_argument("--shots", type=int, nargs="+", default=[20, 100], help="memory prototypes per class")
    parser.add_argument("--classes", type=int, nargs="+", default=[21, 60, 150])
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = RNSSettings(steps=args.steps)
    measure(21, 1, 2, device, 2, settings.replace(steps=5))  # warm-up: first calls pay for lazy initialisation
    print(f"RNS adaptation, {settings.steps} steps, D={DIM}, grid {GRID[0]}x{GRID[1]}, image {IMAGE_SIZE}, "
          f"device {device}, {torch.get_num_threads()} threads; median of {args.repeats} (ms per image).\n"
          f"old = reference_train_heads (autograd + torch.optim.AdamW), new = train_heads, interleaved; "
          f"max |dp| = largest difference of their per-patch probabilities")
    header = f"{'classes':>7} {'shots':>5} {'memory':>6} {'|V_r|':>6} {'rows':>5} {'retrieval':>9} " \
             f"{'train old':>9} {'train new':>9} {'new/old':>7} {'us/step':>7} {'prediction':>10} {'total':>7} {'end to end':>10} " \
             f"{'max |dp|':>8} {'px differ':>9}"
    if args.batch > 1:
        header += f" {'train new, batch of ' + str(args.batch):>23}"
    print(header)
    for n_classes, shots in [(c, s) for c in args.classes for s in args.shots]:
        row = measure(n_classes, shots, args.repeats, device, args.batch, settings)
        total = row["retrieval"] + row["new"] + row["prediction"]
        per_step = 1000 * row["new"] / max(settings.steps, 1)
        line = (f"{row['classes']:>7} {shots:>5} {row['memory']:>6} {row['retrieved']:>6} {row['rows']:>5} "
                f"{row['retrieval']:>9.1f} {row['old']:>9.1f} {row['new']:>9.1f} {row['new'] / row['old']:>7.2f} "
                f"{per_step:>7.0f} {row['prediction']:>10.1f} {total:>7.1f} {row['end to end']:>10.1f} {row['worst']:>8.1e} "
                f"{row['differing']:>9}")
        if args.batch > 1:
            line += f" {row['batched']:>23.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()

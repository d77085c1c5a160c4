"""Milliseconds per test image for RNS's test-time adaptation at the paper's sizes.

Synthetic features with the paper's shapes: D = 512, a 32 x 32 patch grid per test image (a 512 px
short side at patch 16), 21 / 60 / 150 classes, 20 or 100 memory prototypes per class. Each class
has a random direction; a support prototype or a test patch is that direction plus noise, and a
test image shows six classes. The retrieved set's size |V_r| and the training rows are printed.
The time splits into retrieval (k-NN search plus building the fused and pseudo rows), training
(700 full-batch AdamW steps) and prediction (softmax per patch, bilinear upsampling, argmax).
Prints a table of medians over repeats; asserts nothing.

    python benchmarks/rns_adaptation.py [--repeats 3] [--device cpu] [--shots 20 100] [--threads N] [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from maskdex.operators.rns.method import RNSSettings, prepare_training
from maskdex.operators.rns.memory import SupportMemory
from maskdex.operators.rns.train import head_probabilities, stack_training_sets, train_heads
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


def measure(n_classes: int, shots: int, repeats: int, device: torch.device, batch: int,
            settings: RNSSettings) -> dict:
    times = {"retrieval": [], "training": [], "prediction": [], "batched": []}
    for repeat in range(repeats):
        units, memory, text = synthetic_problem(n_classes, shots, repeat, device)
        _synchronise(device)
        start = time.perf_counter()
        training = prepare_training(units.features, memory, text, settings)
        _synchronise(device)
        retrieved = time.perf_counter()
        weight, bias = train_heads(stack_training_sets([training.training_set]), steps=settings.steps, lr=settings.lr,
                                   weight_decay=settings.weight_decay, betas=settings.betas, seeds=repeat)
        _synchronise(device)
        trained = time.perf_counter()
        units.labels(head_probabilities(weight[0], bias[0], units.features))
        _synchronise(device)
        predicted = time.perf_counter()
        times["retrieval"].append(retrieved - start)
        times["training"].append(trained - retrieved)
        times["prediction"].append(predicted - trained)
        if batch > 1:
            stacked = stack_training_sets([training.training_set] * batch)
            start = time.perf_counter()
            train_heads(stacked, steps=settings.steps, lr=settings.lr, weight_decay=settings.weight_decay,
                        betas=settings.betas, seeds=list(range(batch)))
            _synchronise(device)
            times["batched"].append((time.perf_counter() - start) / batch)
    row = {name: 1000 * statistics.median(values) for name, values in times.items() if values}
    row.update(classes=n_classes, memory=len(memory), retrieved=training.n_retrieved,
               rows=int(training.training_set.features.shape[0]))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=0, help="also time training this many images together")
    parser.add_argument("--steps", type=int, default=RNSSettings().steps)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 avoids oversubscription on a busy machine")
    parser.add_argument("--shots", type=int, nargs="+", default=[20, 100], help="memory prototypes per class")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = RNSSettings(steps=args.steps)
    measure(21, 1, 1, device, 0, settings.replace(steps=5))  # warm-up: first calls pay for lazy initialisation
    print(f"RNS adaptation, {settings.steps} steps, D={DIM}, grid {GRID[0]}x{GRID[1]}, image {IMAGE_SIZE}, "
          f"device {device}, {torch.get_num_threads()} threads; median of {args.repeats} (ms per image)")
    header = f"{'classes':>7} {'shots':>5} {'memory':>6} {'|V_r|':>6} {'rows':>5} {'retrieval':>9} {'training':>9} " \
             f"{'prediction':>10} {'total':>8}"
    if args.batch > 1:
        header += f" {'training, batch of ' + str(args.batch):>22}"
    print(header)
    for n_classes, shots in [(c, s) for c in (21, 60, 150) for s in args.shots]:
        row = measure(n_classes, shots, args.repeats, device, args.batch, settings)
        total = row["retrieval"] + row["training"] + row["prediction"]
        line = (f"{row['classes']:>7} {shots:>5} {row['memory']:>6} {row['retrieved']:>6} {row['rows']:>5} "
                f"{row['retrieval']:>9.1f} {row['training']:>9.1f} {row['prediction']:>10.1f} {total:>8.1f}")
        if args.batch > 1:
            line += f" {row['batched']:>22.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()

"""POST /segment under 1, 4 and 16 concurrent clients, with the segmenter batching concurrent requests
(heads trained together) and without (max_batch_size 1), in one run.

    python -m benchmarks.serve_segment [--clients 1 4 16] [--seconds 10] [--repeats 1] [--rns-steps 700]

The service runs on a local Ray with the tiny preset and one Segmenter replica, on loopback; every
request segments a small photo with a two-class support set (the same set, classes and mode, so that
concurrent requests can share a batch), each with its own seed. Each row: median over repeats of
requests/s and p50/p99 latency, and total errors. The two services run one after the other in the
same process. Prints a table; never asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from benchmarks.serve_load import _drive, _free_port, _png
from tests.support.service import wait_until_healthy


def _segment(url: str, images: list[bytes]):
    sessions = threading.local()

    def call(n: int) -> bool:
        session = getattr(sessions, "session", None) or requests.Session()
        sessions.session = session
        try:
            return session.post(url + "/segment", files={"image": ("s.png", images[n % len(images)], "image/png")},
                                data={"set": "bench", "classes": "left,right", "seed": str(n)},
                                timeout=600).status_code == 200
        except requests.RequestException:
            return False
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rns-steps", type=int, default=700)
    parser.add_argument("--max-batch", type=int, default=16, help="the batched service's segment_batching.max_batch_size")
    args = parser.parse_args()

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray import serve

    from maskdex.jobs.commands.samples import write_samples
    from maskdex.jobs.serve.app import start
    from maskdex.jobs.serve.config import parse_config
    from maskdex.pipelines.index.job import IndexSettings, run_index

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        photos = write_samples(Path(scratch) / "photos")
        db = str(Path(scratch) / "db")
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        run_index([str(photo) for photo in photos], db, IndexSettings(models="tiny"))  # the service needs an index
        images = [_png(np.asarray(Image.open(photo).convert("RGB").resize((128, 96)))) for photo in photos]
        rng = np.random.default_rng(0)
        scene = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        labels = np.zeros((64, 64), np.uint8)
        labels[:, 32:] = 1
        for name, batch in (("batched", args.max_batch), ("unbatched", 1)):
            config = parse_config({"maskdex": {
                "db": db, "preset": "tiny", "device": "cpu", "rns_steps": args.rns_steps,
                "segment_batching": {"max_batch_size": batch, "batch_wait_timeout_s": 0.02}}})
            url = start(config, host="127.0.0.1", port=_free_port())
            wait_until_healthy(url, 300)
            if name == "batched":
                requests.post(url + "/supports", files={"image": ("i.png", _png(scene)), "labels": ("l.png", _png(labels))},
                              data={"set": "bench", "classes": "left,right"}, timeout=300).raise_for_status()
            _drive(_segment(url, images), 2, 1.0)  # warm up: models, support memory, text features
            for clients in args.clients:
                runs = [_drive(_segment(url, images), clients, args.seconds) for _ in range(args.repeats)]
                rows.append((f"{name} (max batch {batch}), {clients} clients",
                             *(statistics.median(run[key] for run in runs) for key in ("rps", "p50", "p99")),
                             sum(run["errors"] for run in runs)))
                print(*rows[-1], flush=True)
            serve.shutdown()
        ray.shutdown()

    print(f"\nPOST /segment, tiny preset, {args.rns_steps} RNS steps, 128x96 images, {args.seconds:g} s per run, "
          f"median of {args.repeats} runs, {os.cpu_count()} CPU cores")
    print(f"{'service':40s} {'req/s':>8s} {'p50 ms':>9s} {'p99 ms':>9s} {'errors':>7s}")
    for name, rps, p50, p99, errors in rows:
        print(f"{name:40s} {rps:8.2f} {p50:9.0f} {p99:9.0f} {errors:7d}")


if __name__ == "__main__":
    main()

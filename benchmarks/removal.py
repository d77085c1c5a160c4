"""Removing images from an index at scale (storage/removal.py), and what it does to search.

    python -m benchmarks.removal [--images 200000] [--fractions 0.01,0.1] [--queries 50] [--repeats 3]
                               [--recall-queries 10]

Builds an index of --images synthetic images of 20 regions x 768-d (benchmarks/store_scale.py's rows,
committed by the IndexWriter, then the job's closing upkeep: an IVF_PQ index over sqrt(rows)
partitions), once, into a cache under /tmp. For each fraction, on a fresh copy of it (hard-linked
data files): search p50 (through the vector index, the default settings) and recall@10 against an
exact search, then the removal of that fraction of the images, chosen uniformly at random (seconds:
the deletes, then the tidy), then search p50 and recall again, and the deleted rows the tidy left in
the data files. Recall is measured on the first --recall-queries queries (an exact search scans
every region: seconds each at 200k images) and counted by score (a result counts when it scores at
least the exact search's 10th), because store_scale's rows share 8,192 distinct embeddings and ties
make id overlap meaningless.

Prints a table, never asserts. Timings on a shared machine are noisy: compare before and after
within one row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from benchmarks.store_scale import MODELS, POOL, _driver_writes
from benchmarks.synthetic_regions import clustered_embeddings, image_id, queries_near
from maskdex.storage import removal, tables
from maskdex.storage.index_store import IndexStore
from maskdex.storage.index_writer import CommitPolicy, IndexWriter

REGIONS = 20
DIM = 768
K = 10


def _fractions(text: str) -> list[float]:
    try:
        values = [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"fractions are numbers between 0 and 1, got {text!r}")
    return values


def _build(uri: str, images: int, pool: np.ndarray) -> float:
    started = time.perf_counter()
    store = IndexStore.open(uri, fingerprint=MODELS, embed_dim=DIM)
    writer = IndexWriter(store, CommitPolicy(background_upkeep=False))
    for rows, written in _driver_writes(store, images, REGIONS, pool):
        writer.add(rows, written)
    writer.close()
    store.upkeep.maybe_build_index()
    return time.perf_counter() - started


def _copy(cached: str, uri: str) -> None:
    """A copy of the cached index to remove from. Lance never rewrites a data file in place (a delete
    writes a deletion file, a compaction new data files), so the data files are hard links: the copy
    is instant and the page cache holds one copy of the 12 GB of a 200k index, not two."""
    def link_data(source, target):
        if f"{os.sep}data{os.sep}" in source:
            os.link(source, target)
        else:
            shutil.copy2(source, target)
    shutil.copytree(cached, uri, copy_function=link_data)


def _search(store: IndexStore, queries: np.ndarray, repeats: int, recall_queries: int) -> tuple[float, float]:
    """Search p50 in ms (the median over repeats of each round's median) and recall@10 by score over
    the first recall_queries queries (each an exact search: a scan of every region)."""
    for query in queries[:5]:  # warm-up: the index's first reads come from disk
        store.search(query, k=K)
    rounds = []
    for _ in range(repeats):
        timings = []
        for query in queries:
            started = time.perf_counter()
            store.search(query, k=K)
            timings.append(time.perf_counter() - started)
        rounds.append(statistics.median(timings))
    recall = []
    for query in queries[:recall_queries]:
        exact = [hit["score"] for hit in store.search(query, k=K, exact=True)]
        found = [hit["score"] for hit in store.search(query, k=K)]
        recall.append(sum(score >= exact[-1] - 1e-5 for score in found) / len(exact))
    return 1000 * statistics.median(rounds), statistics.mean(recall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--fractions", type=_fractions, default=[0.01, 0.1])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recall-queries", type=int, default=10,
                        help="queries whose recall is measured (exact searches, seconds each at 200k images)")
    parser.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "maskdex-removal-bench"))
    args = parser.parse_args()
    if args.recall_queries < 1 or args.recall_queries > args.queries:
        parser.error(f"--recall-queries must be between 1 and --queries ({args.queries}), got {args.recall_queries}")
    if args.images < 1000:
        parser.error(f"--images {args.images} is too few for a vector index; use at least 1000")

    pool = clustered_embeddings(POOL, DIM, cluster_size=30)
    queries = queries_near(pool, args.queries)
    cached = os.path.join(args.scratch, f"index-{args.images}")
    if not os.path.isdir(os.path.join(cached, "images.lance")):
        shutil.rmtree(cached, ignore_errors=True)
        print(f"building the index of {args.images} images ({args.images * REGIONS} regions) in {cached} ...")
        print(f"  built in {_build(cached, args.images, pool):.0f} s")
    rng = np.random.default_rng(0)
    rows = []
    for fraction in args.fractions:
        uri = os.path.join(args.scratch, "copy")
        shutil.rmtree(uri, ignore_errors=True)
        _copy(cached, uri)
        store = IndexStore.open(uri, fingerprint=None, embed_dim=None)
        before_p50, before_recall = _search(store, queries, args.repeats, args.recall_queries)
        chosen = rng.choice(args.images, size=round(fraction * args.images), replace=False)
        ids = [image_id(int(number)) for number in chosen]
        started = time.perf_counter()
        report = removal.remove_images(store, ids, tidy=False)
        deletes = time.perf_counter() - started
        started = time.perf_counter()
        store.upkeep.tidy(keep_versions_for=tables.KEEP_VERSIONS_FOR)
        tidy = time.perf_counter() - started
        after_p50, after_recall = _search(store, queries, args.repeats, args.recall_queries)
        stats = store.stats()
        rows.append((fraction, report.images, report.regions, deletes, tidy, before_p50, after_p50, before_recall,
                     after_recall, stats["deleted_rows"]["regions"], stats["regions_fragments"]))
        shutil.rmtree(uri, ignore_errors=True)

    print(f"\nremoval from {args.images} images x {REGIONS} regions x {DIM}-d; search p50 over {args.queries} "
          f"queries, median of {args.repeats}")
    print("| removed | images | regions | deletes s | tidy s | search p50 ms before | after | ratio "
          "| recall@10 before | after | deleted rows left | regions fragments |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (fraction, images, regions, deletes, tidy, p50_before, p50_after, recall_before, recall_after, left,
         fragments) in rows:
        print(f"| {fraction:.0%} | {images} | {regions} | {deletes:.1f} | {tidy:.1f} | {p50_before:.1f} | "
              f"{p50_after:.1f} | {p50_after / p50_before:.2f} | {recall_before:.3f} | {recall_after:.3f} | "
              f"{left} | {fragments} |")


if __name__ == "__main__":
    main()

"""Search latency and recall@10 at scale: exact (flat) search, IVF_PQ and IVF_HNSW_SQ indexes over
float32 or float16 vectors, across probes / refine / ef settings, and rows not yet indexed.

    python -m benchmarks.search_latency [--rows 1000000] [--dim 768] [--queries 50] [--repeats 3]
        [--index IVF_PQ --index IVF_HNSW_SQ] [--nprobes 20,50,100] [--refine 0,2,5] [--ef 50,100]
        [--float16] [--tail 10000] [--cache /tmp/maskdex-search-bench]

Builds a table of --rows clustered synthetic regions (10 per image) once into --cache and reuses it
(a 1M x 768 build takes many minutes on a few cores); each vector index is trained once and kept in
that table until another kind is asked for. Every query goes through the search path the store uses
(storage/search.py: nearest regions, group by image, image uris). A query's latency is the median
of its --repeats runs; each row gives p50 / p99 over the queries and recall@10 of the top-10 images
against exact search over the same table in the same run. --tail N appends N unindexed rows after
the index and times the default settings again (then restores the table). Prints, never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.synthetic_regions import clustered_embeddings, index_rows, queries_near
from maskdex.storage import IndexStore, search as region_search, vector_index
from maskdex.storage.schemas import IMAGES, REGIONS

REGIONS_PER_IMAGE = 10
COMMIT_ROWS = 50_000
_COMPLETE = "COMPLETE"


def _ints(text: str) -> list[int]:
    return [int(value) for value in text.split(",") if value.strip()]


def build_table(uri: str, rows: int, dim: int, cluster_size: int, *, models: str = "benchmark") -> float:
    """The cached table at uri (built when missing); returns the build seconds (0 when cached)."""
    if (Path(uri) / _COMPLETE).exists():
        return 0.0
    shutil.rmtree(uri, ignore_errors=True)
    started = time.perf_counter()
    store = IndexStore.open(uri, fingerprint=models, embed_dim=dim)
    embeddings = clustered_embeddings(rows, dim, cluster_size=cluster_size)
    for start in range(0, rows, COMMIT_ROWS):
        store.commit(*index_rows(embeddings[start:start + COMMIT_ROWS], REGIONS_PER_IMAGE,
                                 first_image=start // REGIONS_PER_IMAGE))
    store.upkeep.build_index(force=False)  # compacts; at these sizes builds the default index too
    (Path(uri) / _COMPLETE).write_text(f"{rows} {dim} {cluster_size}\n")
    return time.perf_counter() - started


def float16_copy(uri: str, target: str) -> None:
    """The regions and images tables again with float16 region embeddings (half the bytes)."""
    if (Path(target) / _COMPLETE).exists():
        return
    shutil.rmtree(target, ignore_errors=True)
    source, db = lancedb.connect(uri), lancedb.connect(target)
    regions = source.open_table(REGIONS)
    dim = regions.schema.field("embedding").type.list_size
    half = pa.list_(pa.float16(), dim)
    schema = regions.schema.set(regions.schema.get_field_index("embedding"), pa.field("embedding", half, nullable=False))
    out = db.create_table(REGIONS, schema=schema)
    for batch in regions.search().limit(None).to_batches(200_000):
        column = batch.column("embedding")
        values = pc.cast(column.flatten(), pa.float16())
        batch = batch.set_column(batch.schema.get_field_index("embedding"), "embedding",
                                 pa.FixedSizeListArray.from_arrays(values, dim))
        out.add(pa.Table.from_batches([batch]).cast(schema))
    db.create_table(IMAGES, source.open_table(IMAGES).to_arrow())
    out.optimize()
    (Path(target) / _COMPLETE).write_text("float16\n")


def sample_queries(table, n: int, seed: int = 1) -> np.ndarray:
    rows = table.count_rows()
    offsets = sorted(np.random.default_rng(seed).choice(rows, n, replace=False).tolist())
    picked = table.take_offsets(offsets).select(["embedding"]).to_arrow()["embedding"]
    embeddings = np.asarray(picked.combine_chunks().flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(n, -1)
    return queries_near(embeddings, n, seed=seed)


def ensure_index(table, params: vector_index.VectorIndexParams) -> float:
    """Train params' index unless the table already holds it; returns the seconds spent."""
    if (vector_index.find_vector_index(table) is not None
            and vector_index.VectorIndexParams.recorded(table) == params):
        return 0.0
    started = time.perf_counter()
    dim = table.schema.field("embedding").type.list_size
    vector_index.build_vector_index(table, dim, params=params)
    return time.perf_counter() - started


def time_queries(regions, images, queries: np.ndarray, settings, repeats: int) -> tuple[list[float], list]:
    """Per-query median seconds over repeats, and each query's top-10 image ids."""
    uris = region_search.UriCache()

    def search(query):
        return region_search.search_images(regions, images, query, k=10, oversample=10, where=None,
                                           settings=settings, uris=uris)

    search(queries[0])  # warm-up: opens files and loads the index
    timings, results = [], []
    for query in queries:
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            found = search(query)
            runs.append(time.perf_counter() - started)
        timings.append(statistics.median(runs))
        results.append([r["image_id"] for r in found])
    return timings, results


def recall(approximate: list, exact: list) -> float:
    return float(np.mean([len(set(a) & set(e)) / max(1, len(e)) for a, e in zip(approximate, exact)]))


def row(label: str, timings: list[float], recall_at_10: float) -> str:
    p50, p99 = (1000 * float(np.percentile(timings, q)) for q in (50, 99))
    return f"| {label:58s} | {p50:8.1f} | {p99:8.1f} | {recall_at_10:9.3f} |"


def exact_results(uri: str, regions, images, queries: np.ndarray, table_version: int) -> tuple[list, list[float]]:
    """Exact top-10 images per query, cached beside the table (the flat scan takes seconds per query at 1M)."""
    cache = Path(uri + f".exact-{len(queries)}-v{table_version}.json")
    if cache.exists():
        saved = json.loads(cache.read_text())
        return saved["results"], saved["timings"]
    timings, results = time_queries(regions, images, queries, None, 1)
    cache.write_text(json.dumps({"results": results, "timings": timings}))
    return results, timings


def append_tail(regions, images, rows: int, dim: int, first_image: int) -> None:
    embeddings = clustered_embeddings(rows, dim, seed=7, cluster_size=300)
    store_rows = index_rows(embeddings, REGIONS_PER_IMAGE, first_image=first_image)
    from maskdex.storage import rows as row_batches

    batch = row_batches.prepare_batch(*store_rows, dim=dim, models="benchmark")
    regions.add(batch.regions_table(dim, "benchmark"))
    images.add(batch.images_table(dim, "benchmark"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="regions in the table")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cluster-size", type=int, default=300, help="regions per synthetic cluster")
    parser.add_argument("--index", action="append", choices=vector_index.INDEX_TYPES,
                        help="index kinds to compare (repeatable; default IVF_PQ)")
    parser.add_argument("--partitions", type=_ints, default=None, help="IVF partition counts (default: the store's)")
    parser.add_argument("--nprobes", type=_ints, default=None, help="probes to sweep (default: the store's)")
    parser.add_argument("--refine", type=_ints, default=None, help="refine factors to sweep; 0 = none")
    parser.add_argument("--ef", type=_ints, default=None, help="HNSW beam widths to sweep")
    parser.add_argument("--float16", action="store_true", help="also run every index over float16 vectors")
    parser.add_argument("--tail", type=int, default=0, help="unindexed rows to append for the last row")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "maskdex-search-bench"),
                        help="where the synthetic tables are kept between runs")
    parser.add_argument("--uri", default=None, help="the table's location (default: under --cache)")
    args = parser.parse_args()

    uri = args.uri or os.path.join(args.cache, f"r{args.rows}-d{args.dim}-c{args.cluster_size}")
    os.makedirs(os.path.dirname(uri) or ".", exist_ok=True)
    build_seconds = build_table(uri, args.rows, args.dim, args.cluster_size)
    variants = [("float32", uri)]
    if args.float16:
        float16_copy(uri, uri + "-f16")
        variants.append(("float16", uri + "-f16"))

    lines = []
    for vectors, location in variants:
        db = lancedb.connect(location)
        regions, images = db.open_table(REGIONS), db.open_table(IMAGES)
        rows = regions.count_rows()
        queries = sample_queries(regions, args.queries)
        exact, exact_timings = exact_results(uri, regions, images, queries, 0)
        if vectors == "float32":
            per_row = 1e6 * statistics.median(exact_timings) / rows
            lines.append(row(f"exact (flat scan), {per_row:.2f} us/row", exact_timings, 1.0))
        for kind in args.index or [vector_index.INDEX_TYPE]:
            default = vector_index.VectorIndexParams.for_table(rows, args.dim, kind)
            for partitions in args.partitions or [default.num_partitions]:
                params = vector_index.VectorIndexParams(partitions, default.num_sub_vectors, rows, kind)
                seconds = ensure_index(regions, params)
                base = params.search_settings()
                sweeps = [(n, r, e) for n in (args.nprobes or [base.nprobes]) for r in (args.refine or [base.refine_factor])
                          for e in ((args.ef or [base.ef]) if kind == "IVF_HNSW_SQ" else [None])]
                for nprobes, refine, ef in sweeps:
                    settings = vector_index.SearchSettings(nprobes=min(nprobes, partitions), refine_factor=refine or None,
                                                          ef=ef)
                    timings, found = time_queries(regions, images, queries, settings, args.repeats)
                    label = (f"{vectors} {kind} p={partitions} np={settings.nprobes} rf={refine or 0}"
                             + (f" ef={ef}" if ef else "") + (f" (built {seconds:.0f} s)" if seconds else ""))
                    seconds = 0
                    lines.append(row(label, timings, recall(found, exact)))
                    print(lines[-1], flush=True)
        if args.tail and vectors == "float32":
            version, images_version = regions.version, images.version
            append_tail(regions, images, args.tail, args.dim, first_image=rows // REGIONS_PER_IMAGE + 1)
            settings = vector_index.VectorIndexParams.recorded(regions).search_settings()
            timings, found = time_queries(regions, images, queries, settings, args.repeats)
            lines.append(row(f"same, default settings, +{args.tail} unindexed rows", timings, float("nan")))
            regions.restore(version)
            images.restore(images_version)

    print(f"\n{args.rows} regions x {args.dim} dims ({args.rows // REGIONS_PER_IMAGE} images, clusters of "
          f"{args.cluster_size}), {args.queries} queries, k=10, oversample=10, median of {args.repeats}, "
          f"{os.cpu_count()} CPUs (shared); table build {build_seconds:.0f} s (0: cached at {uri})")
    print(f"| {'search':58s} | {'p50 ms':>8s} | {'p99 ms':>8s} | {'recall@10':>9s} |")
    print(f"|{'-' * 60}|{'-' * 10}|{'-' * 10}|{'-' * 11}|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

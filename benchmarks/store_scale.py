"""The index write path at scale, and resume over a finished folder.

    python -m benchmarks.store_scale [--images 20000] [--baseline-images 4000] [--regions 20] [--dim 768]
                                     [--resume-images 10000] [--workers 2] [--no-row-path]
                                     [--run-partitions 0,256]

1. Writes: what run_index does with each image minus the models, for --images synthetic images of
   --regions regions of --dim dims, twice in one process: the fragment path (Ray tasks, --workers at
   a time, write each block of images' regions as Lance fragments and hand the IndexWriter only the
   images rows and the fragments' metadata, as the job's Alpha-CLIP actors do) and the row path (the
   driver receives every region row and writes the fragments itself, then the same IndexWriter).
   Both commit by the same policy (sized by rows and time, a tidy every few commits, vector index
   trainings on their own thread). As the baseline, the old path (IndexStore.commit every 16
   images, nothing compacted) for --baseline-images. For each tenth of a run: images committed
   per second, and the p50 of a few searches issued from a second, read-only store during that
   tenth (their time is not counted as write time). Then search p50 after the run and the job's
   closing upkeep (IndexUpkeep.maybe_build_index: a retraining to sqrt(rows) partitions when due).
   --run-partitions runs the fragment path once per value of CommitPolicy.run_partitions, the most
   partitions a training during the run gets (0: sqrt(rows), as after the run), in that order.
2. Resume: a folder of --resume-images tiny files, all recorded as indexed, run through run_index
   again: seconds until it has decided there is nothing to do, against a plain listing of the folder.

Prints tables, never asserts. Timings on a shared machine are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from benchmarks.synthetic_regions import clustered_embeddings, image_id, queries_near
from maskdex.operators.registry.presets import embedding_dim, get_preset
from maskdex.pipelines.common.sources import expand_sources
from maskdex.pipelines.index.job import IndexSettings, run_index
from maskdex.storage.index_store import IndexStore
from maskdex.storage.index_writer import CommitPolicy, IndexWriter
from maskdex.storage.region_fragments import RegionFragments, RegionFragmentWriter
from maskdex.storage.vector_index import RUN_PARTITIONS

MODELS = "synthetic(store_scale)"
POOL = 8192  # distinct embeddings drawn from (generating 4M x 768 would dominate the run)
SEARCHES_PER_TENTH = 3
BASELINE_COMMIT_EVERY = 16
BLOCK = IndexSettings().clip.batch_size  # images per worker write: one Alpha-CLIP batch of the job


def _partition_caps(text: str) -> list[int]:
    try:
        caps = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        caps = []
    if not caps or any(cap < 0 for cap in caps):
        raise argparse.ArgumentTypeError(f"partition caps are whole numbers >= 0 (0: sqrt(rows)), got {text!r}")
    return caps


def _rows(number: int, n_regions: int, pool: np.ndarray) -> tuple[dict, list[dict]]:
    # The rows table_rows builds for one image, with pooled embeddings.
    image = image_id(number)
    picks = (number * 7919 + np.arange(n_regions + 1) * 104729) % len(pool)
    regions = [{"region_id": f"{image}:{n}", "image_id": image, "rle": {"size": [480, 640], "counts": "PPa03Rf0"},
                "bbox": [n, 20, 30, 40], "area": 1000 + n, "predicted_iou": 0.9, "stability_score": 0.97,
                "embedding": pool[picks[n]]} for n in range(n_regions)]
    row = {"image_id": image, "uri": f"/corpus/{number:09d}.jpg", "width": 640, "height": 480, "status": "ok",
           "error": None, "n_regions": n_regions, "embedding": pool[picks[-1]], "models": MODELS,
           "source_size": 100_000 + number, "source_mtime_ns": 1_700_000_000_000_000_000 + number}
    return row, regions


def _block(start: int, stop: int, n_regions: int, pool: np.ndarray) -> tuple[list[dict], list[dict]]:
    images, regions = [], []
    for number in range(start, stop):
        image, its_regions = _rows(number, n_regions, pool)
        images.append(image)
        regions += its_regions
    return images, regions


@ray.remote
def _write_block(dataset_uri: str, start: int, stop: int, n_regions: int, pool: np.ndarray) -> tuple[list[dict], str]:
    # A worker: makes its rows where it is (as an Alpha-CLIP actor holds its embeddings) and writes them.
    writer = RegionFragmentWriter(dataset_uri, dim=pool.shape[1], models=MODELS)
    images, written = writer.write(*_block(start, stop, n_regions, pool))
    return images, written.to_json()


def _driver_writes(store: IndexStore, images: int, n_regions: int, pool: np.ndarray):
    writer = RegionFragmentWriter(store.regions_dataset_uri, dim=pool.shape[1], models=MODELS)
    for start in range(0, images, BLOCK):
        yield writer.write(*_block(start, min(start + BLOCK, images), n_regions, pool))


def _worker_writes(store: IndexStore, images: int, n_regions: int, pool: np.ndarray, workers: int):
    pool_ref, uri = ray.put(pool), store.regions_dataset_uri
    starts = iter(range(0, images, BLOCK))
    in_flight = []
    while True:
        # Two writes queued per worker, as the job's actor pools keep.
        for start in starts:
            in_flight.append(_write_block.remote(uri, start, min(start + BLOCK, images), n_regions, pool_ref))
            if len(in_flight) >= 2 * workers:
                break
        if not in_flight:
            return
        ready, in_flight = ray.wait(in_flight, num_returns=1)
        rows, written = ray.get(ready[0])
        yield rows, RegionFragments.from_json(written)


def _write_run(uri: str, images: int, n_regions: int, pool: np.ndarray, queries: np.ndarray, *,
               path: str, workers: int = 1, policy: CommitPolicy = CommitPolicy(),
               ) -> tuple[list[float], list[float], float, dict, dict]:
    """Per tenth of the images: images/s committed and search p50 in ms during it; then search p50
    after the run, the store's stats and the writer's counts. path: "baseline", "rows" or "fragments".

    A tenth's rate is a tenth of the images over the write time between the moments the committed
    count passed the tenth's bounds (interpolated within a commit that spans a bound; search time
    is left out). Searches run from a second store each time the committed count passes a bound."""
    store = IndexStore.open(uri, fingerprint=MODELS, embed_dim=pool.shape[1])
    reader = IndexStore.open(uri, fingerprint=None, embed_dim=None, read_only=True)
    writer = None if path == "baseline" else IndexWriter(store, policy)
    tenth = images / 10
    events = [(0.0, 0)]  # (write seconds so far, images committed so far)
    search_p50: list[float] = []
    committed = 0
    searching = 0.0
    started = time.perf_counter()
    if path == "baseline":
        commits = ((store.commit, _block(start, min(start + BASELINE_COMMIT_EVERY, images), n_regions, pool))
                   for start in range(0, images, BASELINE_COMMIT_EVERY))
    else:
        writes = _driver_writes(store, images, n_regions, pool) if path == "rows" else \
            _worker_writes(store, images, n_regions, pool, workers)
        commits = ((writer.add, write) for write in writes)
    for commit, arguments in commits:
        if writer is None:
            committed += commit(*arguments)
        else:
            commit(*arguments)
            committed = writer.committed_images
        if writer is not None and writer.committed_images + writer.pending_images >= images:
            writer.flush()  # the last commit; close() below waits for the upkeep in flight, timed apart
            committed = writer.committed_images
        if committed == events[-1][1]:
            continue
        events.append((time.perf_counter() - started - searching, committed))
        while committed >= (len(search_p50) + 1) * tenth - 1e-9 and len(search_p50) < 10:
            one_tenth = time.perf_counter()
            timings = []
            for query in queries[len(search_p50) * SEARCHES_PER_TENTH:(len(search_p50) + 1) * SEARCHES_PER_TENTH]:
                one = time.perf_counter()
                reader.search(query, k=10)
                timings.append(time.perf_counter() - one)
            search_p50.append(1000 * statistics.median(timings))
            searching += time.perf_counter() - one_tenth
    closing = time.perf_counter()
    if writer is not None:
        writer.close()
    closing = time.perf_counter() - closing
    final_upkeep = time.perf_counter()
    # What run_index does after the run: new rows folded in, and a retraining when the run's capped
    # partitions are too few for the table (the baseline gets the same, so "after" compares alike).
    upkeep = store.upkeep.maybe_build_index() or {"vector_index": "none (too few rows)"}
    final_upkeep = time.perf_counter() - final_upkeep
    seconds, counts_ = zip(*events)
    bounds = np.interp([tenth * k for k in range(11)], counts_, seconds)
    rates = [tenth / (b - a) if b > a else float("nan") for a, b in zip(bounds[:-1], bounds[1:])]
    after = []
    for query in queries[:10]:
        one = time.perf_counter()
        reader.search(query, k=10)
        after.append(time.perf_counter() - one)
    counts = {} if writer is None else {"commits": writer.commits, "tidies": writer.tidies,
                                        "tidy_s": round(writer.tidy_seconds, 1),
                                        "trainings (rows)": [r["regions"] for r in writer.index_reports],
                                        "training_s": round(writer.training_seconds, 1),
                                        "close waited for upkeep s": round(closing, 1),
                                        "closing upkeep s": round(final_upkeep, 1),
                                        "closing upkeep": f"{upkeep['vector_index']}, "
                                                          f"{upkeep.get('num_partitions', 0)} partitions"}
    return rates, search_p50, 1000 * statistics.median(after), store.stats(), counts


def _print_writes(name: str, images: int, rates: list[float], p50: list[float], after: float, stats: dict,
                  counts: dict) -> None:
    print(f"\n{name}: {images} images")
    print("| tenth | images/s committed | search p50 ms (during) |")
    print("|---|---|---|")
    for index, (rate, latency) in enumerate(zip(rates, p50), 1):
        print(f"| {index} | {rate:8.0f} | {latency:7.1f} |")
    print(f"ratio last tenth / first tenth: {rates[-1] / rates[0]:.2f}; mean {statistics.mean(rates):.0f} images/s; "
          f"search p50 after the run {after:.1f} ms")
    print(f"fragments images/regions {stats['images_fragments']}/{stats['regions_fragments']}, versions "
          f"{stats['images_versions']}/{stats['regions_versions']}, bytes {stats['images_bytes']}/"
          f"{stats['regions_bytes']}, regions {stats['regions']}, "
          f"unindexed rows {stats['unindexed_rows']} {counts}")


def _resume(scratch: str, n_files: int) -> tuple[dict[str, float], float, float, object]:
    folder = Path(scratch) / "finished"
    folder.mkdir()
    for number in range(n_files):
        (folder / f"{number:06d}.jpg").write_bytes(number.to_bytes(4, "little") * 8)
    preset = get_preset("tiny")
    db = f"{scratch}/resume_db"
    store = IndexStore.open(db, fingerprint=preset.fingerprint, embed_dim=embedding_dim(preset.alpha_clip))
    files = sorted(folder.iterdir())
    rows = []
    for number, path in enumerate(files):  # recorded as a finished run would have
        stat = path.stat()
        rows.append({"image_id": image_id(number), "uri": str(path), "status": "failed", "error": "synthetic",
                     "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns})
    store.commit(rows, [])
    store.upkeep.tidy()
    settings = IndexSettings(models="tiny", build_index=False)
    listings = {"os.scandir, names only": lambda: [entry.path for entry in os.scandir(folder)],
                "os.walk + os.stat (ls -lR)": lambda: [os.stat(os.path.join(root, name))
                                                       for root, _, names in os.walk(folder) for name in names],
                "expand_sources (maskdex's listing)": lambda: expand_sources([str(folder)]).files}
    listing = {name: [] for name in listings}
    deciding = []
    for _ in range(3):
        for name, list_folder in listings.items():
            started = time.perf_counter()
            assert len(list_folder()) == n_files
            listing[name].append(time.perf_counter() - started)
        started = time.perf_counter()
        summary = run_index([str(folder)], db, settings)
        deciding.append(time.perf_counter() - started)
    return ({name: statistics.median(times) for name, times in listing.items()}, statistics.median(deciding),
            min(deciding), summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--baseline-images", type=int, default=4_000)
    parser.add_argument("--regions", type=int, default=20)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--resume-images", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="Ray worker processes writing fragments")
    parser.add_argument("--no-row-path", action="store_true", help="skip the row path (halves a long run)")
    parser.add_argument("--run-partitions", type=_partition_caps, default=[RUN_PARTITIONS],
                        help="most partitions of a training during the run, one fragment-path run per value "
                             f"(0: sqrt(rows)); default {RUN_PARTITIONS}")
    args = parser.parse_args()

    pool = clustered_embeddings(POOL, args.dim, seed=0)
    queries = queries_near(pool, 40, seed=1)
    print(f"{os.cpu_count()} CPUs (shared: other jobs run beside this one); {args.regions} regions x {args.dim}-d "
          f"per image; policy {CommitPolicy()}")
    with tempfile.TemporaryDirectory() as scratch:
        if args.baseline_images:
            result = _write_run(f"{scratch}/old", args.baseline_images, args.regions, pool, queries, path="baseline")
            _print_writes(f"old path (IndexStore.commit every {BASELINE_COMMIT_EVERY} images)", args.baseline_images,
                          *result)
        if args.images and not args.no_row_path:
            result = _write_run(f"{scratch}/rows", args.images, args.regions, pool, queries, path="rows")
            _print_writes("row path (the driver receives every region row and writes it; IndexWriter)", args.images,
                          *result)
        if args.images:
            ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
            # Started and imported before the clock runs, as a job's actors are before results flow.
            warm = IndexStore.open(f"{scratch}/warm", fingerprint=MODELS, embed_dim=pool.shape[1])
            ray.get([_write_block.remote(warm.regions_dataset_uri, 0, BLOCK, args.regions, pool)
                     for _ in range(2 * args.workers)])
            for cap in args.run_partitions:
                policy = CommitPolicy(run_partitions=cap or None)
                result = _write_run(f"{scratch}/fragments-{cap}", args.images, args.regions, pool, queries,
                                    path="fragments", workers=args.workers, policy=policy)
                _print_writes(f"fragment path ({args.workers} Ray workers write fragments, the IndexWriter commits "
                              f"their metadata, as run_index; trainings during the run with at most "
                              f"{cap or 'sqrt(rows)'} partitions)", args.images, *result)
                shutil.rmtree(f"{scratch}/fragments-{cap}", ignore_errors=True)  # 13 GB at 200k images
            ray.shutdown()
        if args.resume_images:
            listing, deciding, best, summary = _resume(scratch, args.resume_images)
            print(f"\nresume over a finished folder of {args.resume_images} files (median of 3)")
            print("| step | seconds |")
            print("|---|---|")
            for name, seconds in listing.items():
                print(f"| listing: {name} | {seconds:.3f} |")
            print(f"| run_index deciding nothing to do | {deciding:.3f} (best {best:.3f}) |")
            print("ratio run_index / listing: " + ", ".join(f"{deciding / seconds:.1f}x {name.split(' (')[0]}"
                                                          for name, seconds in listing.items()))
            print(f"skipped {summary.skipped}, decided without reading them: {summary.unread}")


if __name__ == "__main__":
    main()

"""Removing images from a real LanceDB index (storage/removal.py): by id and by uri prefix, through
flat and ANN search, a dry run, and a removal killed with SIGKILL part way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import lancedb
import numpy as np
import pytest

from benchmarks.synthetic_regions import clustered_embeddings, index_rows
from maskdex.storage import removal
from maskdex.storage.index_store import IndexStore
from maskdex.storage.segmentation_store import SegmentationKey, SegmentationStore
from maskdex.storage.tables import READER_CONSISTENCY, connect
from tests.support.paths import REPO

DIM = 32
PER_IMAGE = 20
KEY = SegmentationKey("scenes", ("sky", "grass"), "patch", "tiny(test)")


def _segmentation(image_id: str, uri: str) -> dict:
    return {"image_id": image_id, "uri": uri, "status": "ok", "width": 4, "height": 2, "labels_png": b"\x89PNG",
            "pixel_fractions": [0.5, 0.5], "visual_support": ["sky"], "text_support": [], "used_fallback": False,
            "regions": None}


def _index(uri: str, images: int, *, segmented: int = 0, build: bool = True) -> tuple[list[dict], np.ndarray]:
    """An index of `images` images of PER_IMAGE clustered regions; the first `segmented` get a segmentation."""
    embeddings = clustered_embeddings(images * PER_IMAGE, DIM, seed=3, cluster_size=40)
    image_rows, region_rows = index_rows(embeddings, PER_IMAGE)
    store = IndexStore.open(uri, fingerprint="test-build", embed_dim=DIM)
    store.commit(image_rows, region_rows)
    if build:
        assert store.upkeep.build_index()["vector_index"] == "built"
    if segmented:
        SegmentationStore.open(uri).commit(KEY, [_segmentation(r["image_id"], r["uri"]) for r in image_rows[:segmented]])
    return image_rows, embeddings


def _rows(uri: str, table: str) -> dict[str, dict]:
    key = {"images": "image_id", "regions": "region_id", "segmentations": "image_id"}[table]
    return {row[key]: row for row in lancedb.connect(uri).open_table(table).to_arrow().to_pylist()}


def _searched_ids(store: IndexStore, queries: np.ndarray, *, exact: bool) -> set[str]:
    return {hit["image_id"] for query in queries for hit in store.search(query, k=10, exact=exact)}


def test_removal_by_id_and_by_prefix_leaves_no_trace_in_search_and_the_others_untouched(tmp_path):
    uri = str(tmp_path / "db")
    images, embeddings = _index(uri, 600, segmented=40)  # 12,000 regions: an IVF_PQ index
    store = IndexStore.open(uri, fingerprint=None, embed_dim=None)
    reader = IndexStore.open(uri, fingerprint=None, embed_dim=None, read_only=True)  # a service started earlier
    by_id = [images[n]["image_id"] for n in (0, 3, 7, 250, 599)]
    prefix = "file:///synthetic/000001"  # images 100-199
    by_prefix = [row["image_id"] for row in images if row["uri"].startswith(prefix)]
    gone = set(by_id) | set(by_prefix)
    # Queries right on the removed images' regions: before, they find them, flat and through the index.
    numbers = [n for n, row in enumerate(images) if row["image_id"] in gone]
    queries = embeddings[[n * PER_IMAGE + 1 for n in numbers[::5]]]
    assert _searched_ids(store, queries, exact=False) & gone and _searched_ids(reader, queries, exact=True) & gone
    images_before, regions_before = _rows(uri, "images"), _rows(uri, "regions")
    segmentations_before = _rows(uri, "segmentations")
    versions = {name: lancedb.connect(uri).open_table(name).version for name in ("images", "regions", "segmentations")}

    dry = removal.remove_images(reader, by_id, dry_run=True)
    assert (dry.images, dry.regions, dry.segmentations, dry.dry_run) == (5, 5 * PER_IMAGE, 3, True)
    assert versions == {name: lancedb.connect(uri).open_table(name).version for name in versions}

    report = removal.remove_images(store, by_id + ["f" * 64])
    assert (report.images, report.regions, report.segmentations, report.not_found) == (5, 100, 3, ["f" * 64])
    under = removal.images_under(store, prefix)
    assert sorted(under) == sorted(by_prefix) and len(under) == 100
    report = removal.remove_images(store, list(under))
    assert (report.images, report.regions, report.segmentations) == (100, 100 * PER_IMAGE, 0)

    images_after, regions_after = _rows(uri, "images"), _rows(uri, "regions")
    assert not gone & set(images_after) and not gone & {row["image_id"] for row in regions_after.values()}
    assert not gone & set(_rows(uri, "segmentations"))
    # The others: the same rows, embeddings included.
    kept = {i: row for i, row in images_before.items() if i not in gone}
    assert images_after.keys() == kept.keys()
    assert all(np.array_equal(images_after[i]["embedding"], row["embedding"]) for i, row in kept.items())
    kept_regions = {r: row for r, row in regions_before.items() if row["image_id"] not in gone}
    assert regions_after.keys() == kept_regions.keys()
    assert all(np.array_equal(regions_after[r]["embedding"], row["embedding"]) and regions_after[r]["rle"] == row["rle"]
               for r, row in kept_regions.items())
    assert set(_rows(uri, "segmentations")) == set(segmentations_before) - gone

    # Search, flat and through the vector index (still there), never returns them, and still fills k.
    assert store.stats()["indexed"]
    time.sleep(READER_CONSISTENCY.total_seconds() + 0.2)  # the reader looks for new versions this often
    for searcher in (store, reader):
        for exact in (False, True):
            assert not _searched_ids(searcher, queries, exact=exact) & gone
            assert all(len(searcher.search(query, k=10, exact=exact)) == 10 for query in queries)
    stats = store.stats()
    assert stats["images_ok"] == 600 - len(gone) and stats["regions"] == (600 - len(gone)) * PER_IMAGE
    # The tidy after a removal rewrote every regions fragment that lost rows: Lance's ANN search takes a
    # slow path while any fragment under the vector index has a deletion file.
    assert stats["deleted_rows"] == {"images": 0, "regions": 0}
    # What a removal stopped before its tidy leaves is counted, and the next tidy takes it away.
    removal.remove_images(store, [images[1]["image_id"]], tidy=False)
    assert store.stats()["deleted_rows"]["regions"] == PER_IMAGE
    store.upkeep.tidy()
    assert store.stats()["deleted_rows"] == {"images": 0, "regions": 0} and store.stats()["indexed"]
    assert images[1]["image_id"] not in _searched_ids(store, embeddings[[PER_IMAGE + 1]], exact=False)


@pytest.mark.slow
def test_a_removal_killed_part_way_leaves_each_image_present_or_gone_and_a_rerun_finishes(tmp_path):
    uri = str(tmp_path / "db")
    images, embeddings = _index(uri, 300, segmented=300, build=False)
    ids = [row["image_id"] for row in images]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids[:240]) + "\n")
    images_table = connect(uri).open_table("images")  # sees every new version
    start = images_table.version
    # Chunks of 4 images: 60 chunks of three commits, so a kill lands in the middle.
    script = ("import sys; from maskdex.storage import removal; from maskdex.storage.index_store import IndexStore; "
              "store = IndexStore.open(sys.argv[1], fingerprint=None, embed_dim=None); "
              "removal.remove_images(store, removal.read_ids_file(sys.argv[2]), chunk=4)")
    process = subprocess.Popen([sys.executable, "-c", script, uri, str(ids_file)], cwd=REPO)
    deadline = time.monotonic() + 120
    while images_table.version < start + 5 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the removal ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    present = _rows(uri, "images")
    regions = _rows(uri, "regions")
    segmentations = _rows(uri, "segmentations")
    removed = [i for i in ids[:240] if i not in present]
    assert removed and len(removed) < 240, "the kill should land part way"
    per_image = {}
    for row in regions.values():
        per_image[row["image_id"]] = per_image.get(row["image_id"], 0) + 1
    for image_id in present:  # fully present: every region and its segmentation
        assert per_image.get(image_id) == PER_IMAGE and image_id in segmentations
    # Fully gone for every reader: search never shows an image without its row.
    reader = IndexStore.open(uri, fingerprint=None, embed_dim=None, read_only=True)
    numbers = [ids.index(i) for i in removed]
    queries = embeddings[[n * PER_IMAGE for n in numbers]]
    assert not _searched_ids(reader, queries, exact=True) & set(removed)

    rerun = subprocess.run([sys.executable, "-m", "maskdex.jobs.cli", "remove", "--db", uri, "--ids-file",
                            str(ids_file)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert set(_rows(uri, "images")) == set(ids[240:])
    assert {row["image_id"] for row in _rows(uri, "regions").values()} == set(ids[240:])
    assert set(_rows(uri, "segmentations")) == set(ids[240:])


def test_bad_ids_and_an_empty_prefix_are_refused(tmp_path):
    uri = str(tmp_path / "db")
    _index(uri, 3, build=False)
    store = IndexStore.open(uri, fingerprint=None, embed_dim=None)
    with pytest.raises(ValueError, match="not an image id"):
        removal.remove_images(store, ["x' OR 1=1 --"])
    with pytest.raises(ValueError, match="empty"):
        removal.images_under(store, "")
    with pytest.raises(ValueError, match="read_only"):
        removal.remove_images(IndexStore.open(uri, fingerprint=None, embed_dim=None, read_only=True), ["a" * 64])
    bad = tmp_path / "ids.txt"
    bad.write_text("# takedown 12\n" + "a" * 64 + "\nnot-an-id\n")
    with pytest.raises(ValueError, match="line 3"):
        removal.read_ids_file(str(bad))
    assert removal.images_under(store, "file:///synthetic/it's") == {}  # quotes are data, not SQL

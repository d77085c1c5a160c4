"""Region fragments written apart (by a Ray task) and committed by IndexStore: the same rows as the
row path, the images row still the commit mark, appends beside a compaction."""

import threading

import lance
import lancedb
import pytest

from maskdex.storage import IndexStore, ModelMismatchError
from maskdex.storage.region_fragments import RegionFragments, RegionFragmentWriter
from tests.storage.test_index_writer import worker_write
from tests.storage.test_storage_store import DIM, MODELS, counts, image_with_regions


def _rows(uri: str, table: str, key: str) -> list[dict]:
    rows = lancedb.connect(uri).open_table(table).to_arrow().drop_columns(
        ["indexed_at"] if table == "images" else []).to_pylist()
    return sorted(rows, key=lambda row: row[key])


def test_fragments_written_by_a_ray_task_commit_the_same_rows_as_the_row_path(tmp_path, ray_local):
    images, regions = [], []
    for number in range(6):
        image, its_regions = image_with_regions(number, n_regions=number % 3)  # some images without regions
        images.append(image)
        regions += its_regions
    images.append({"image_id": "f" * 64, "uri": "/bad.jpg", "status": "failed", "error": "truncated"})
    row_path = str(tmp_path / "rows")
    IndexStore.open(row_path, fingerprint=MODELS, embed_dim=DIM).commit(images, regions)

    fragment_path = str(tmp_path / "fragments")
    store = IndexStore.open(fragment_path, fingerprint=MODELS, embed_dim=DIM)

    @ray_local.remote
    def worker(dataset_uri, images, regions):
        rows, written = RegionFragmentWriter(dataset_uri, dim=DIM, models=MODELS).write(images, regions)
        return rows, written.to_json()

    rows, written = ray_local.get(worker.remote(store.regions_dataset_uri, images, regions))
    written = RegionFragments.from_json(written)
    assert (written.images, written.rows) == (7, len(regions))
    assert store.commit_written(rows, written) == 7

    assert _rows(fragment_path, "regions", "region_id") == _rows(row_path, "regions", "region_id")
    assert _rows(fragment_path, "images", "image_id") == _rows(row_path, "images", "image_id")
    hit = store.search(regions[0]["embedding"], k=1)[0]
    assert hit["region"]["region_id"] == regions[0]["region_id"]


def test_a_crash_between_the_fragments_and_the_images_rows_leaves_nothing_after_a_writable_open(tmp_path):
    uri = str(tmp_path / "index")
    store = IndexStore.open(uri, fingerprint=MODELS, embed_dim=DIM)
    store.commit_written(*worker_write(store, 0))
    images, written = worker_write(store, 1, n_regions=3)
    # The crash: commit_written appended the fragments, and died before adding the images rows.
    dataset_uri = store.regions_dataset_uri
    lance.LanceDataset.commit(dataset_uri, lance.LanceOperation.Append(written.metadata()),
                              read_version=lance.dataset(dataset_uri).version)
    assert counts(store) == (1, 5)
    crashed = images[0]["image_id"]
    assert crashed not in {hit["image_id"] for hit in store.search(image_with_regions(1, 3)[1][0]["embedding"])}

    reopened = IndexStore.open(uri, fingerprint=MODELS, embed_dim=DIM)
    assert counts(reopened) == (1, 2) and reopened.regions_of(crashed) == []
    assert reopened.commit_written(*worker_write(reopened, 1, n_regions=3)) == 1  # the re-run
    assert counts(reopened) == (2, 5) and len(reopened.regions_of(crashed)) == 3


def test_appends_commit_beside_a_compaction_and_lose_nothing(tmp_path):
    store = IndexStore.open(str(tmp_path / "index"), fingerprint=MODELS, embed_dim=DIM)
    done = threading.Event()
    errors = []

    def compact_until_done():
        try:
            while not done.is_set():
                store.upkeep.tidy()
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    compactor = threading.Thread(target=compact_until_done)
    compactor.start()
    try:
        for number in range(30):
            assert store.commit_written(*worker_write(store, number, n_regions=2)) == 1
    finally:
        done.set()
        compactor.join()
    assert not errors, errors
    assert counts(store) == (30, 60)
    region_ids = [row["region_id"] for row in _rows(store.uri, "regions", "region_id")]
    assert len(set(region_ids)) == 60


def test_commit_written_refuses_what_would_orphan_or_repeat_regions(tmp_path):
    store = IndexStore.open(str(tmp_path / "index"), fingerprint=MODELS, embed_dim=DIM)
    images, written = worker_write(store, 0, 1)
    with pytest.raises(ValueError, match="account for 2 regions but the fragments hold 4 rows"):
        store.commit_written(images[:1], written)
    with pytest.raises(ValueError, match="n_regions must be a count"):
        store.commit_written([{**images[0], "n_regions": None}], written)
    assert store.commit_written(images, written) == 2
    with pytest.raises(ValueError, match="already stored.*twice"):
        store.commit_written(*worker_write(store, 1))
    assert counts(store) == (2, 4)


def test_a_writer_of_another_build_is_refused_before_it_writes(tmp_path):
    store = IndexStore.open(str(tmp_path / "index"), fingerprint=MODELS, embed_dim=DIM)
    with pytest.raises(ModelMismatchError, match="this writer makes"):
        RegionFragmentWriter(store.regions_dataset_uri, dim=DIM * 2, models=MODELS)
    with pytest.raises(ModelMismatchError, match="this writer makes"):
        RegionFragmentWriter(store.regions_dataset_uri, dim=DIM, models="other")

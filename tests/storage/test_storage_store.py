"""IndexStore on real LanceDB directories: creation, the build record, commits, recovery, bad input."""

import re

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from benchmarks.synthetic_regions import image_row, region_row, unit
from maskdex.storage import IndexStore, ModelMismatchError
from maskdex.storage.rows import prepare_batch

DIM = 16
MODELS = "tiny(sam2=tiny,alpha_clip=tiny,dense=tiny)"  # a preset fingerprint


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32))


def image_with_regions(number: int, n_regions: int = 2) -> tuple[dict, list[dict]]:
    embeddings = vectors(n_regions + 1, seed=number)
    image = image_row(number, embeddings[-1])
    return image, [region_row(image["image_id"], n, embeddings[n]) for n in range(n_regions)]


def one_image(number: int, n_regions: int = 2) -> tuple[list[dict], list[dict]]:
    image, regions = image_with_regions(number, n_regions)
    return [image], regions


def counts(store: IndexStore) -> tuple[int, int]:
    stats = store.stats()
    return stats["images_ok"] + stats["images_failed"], stats["regions"]


@pytest.fixture
def uri(tmp_path) -> str:
    return str(tmp_path / "index")


@pytest.fixture
def store(uri) -> IndexStore:
    return IndexStore.open(uri, fingerprint=MODELS, embed_dim=DIM)


def test_create_then_reopen_with_whatever_it_was_built_with(store, uri):
    store.commit(*one_image(0))
    reopened = IndexStore.open(uri, fingerprint=None, embed_dim=None, create=False)
    assert (reopened.fingerprint, reopened.embed_dim) == (MODELS, DIM)
    assert counts(reopened) == (1, 2)


def test_tables_have_the_design_schema(store, uri):
    db = lancedb.connect(uri)
    images, regions = db.open_table("images").schema, db.open_table("regions").schema
    assert images.field("embedding").type == pa.list_(pa.float32(), DIM)
    assert images.field("embedding").nullable
    assert images.field("indexed_at").type == pa.timestamp("us", tz="UTC")
    assert [images.field(name).type for name in ("width", "height", "n_regions")] == [pa.int32()] * 3
    assert regions.field("rle").type == pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])
    assert regions.field("bbox").type == pa.list_(pa.int32(), 4)
    assert regions.field("area").type == pa.int64()
    assert regions.field("stability_score").type == pa.float32()
    assert images.metadata[b"maskdex.models"] == regions.metadata[b"maskdex.models"] == MODELS.encode()


def test_opening_with_another_preset_names_both(store, uri):
    with pytest.raises(ModelMismatchError, match=re.escape(f"built with models {MODELS!r}, not 'other-preset'")):
        IndexStore.open(uri, fingerprint="other-preset", embed_dim=DIM)
    with pytest.raises(ModelMismatchError, match="16-dimensional embeddings, not 32"):
        IndexStore.open(uri, fingerprint=MODELS, embed_dim=32)


def test_missing_index_and_incomplete_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="no maskdex index"):
        IndexStore.open(str(tmp_path / "none"), fingerprint=MODELS, embed_dim=DIM, create=False)
    with pytest.raises(ValueError, match="needs models and a positive embed_dim"):
        IndexStore.open(str(tmp_path / "none"), fingerprint=None, embed_dim=None)


def test_commit_writes_regions_before_the_images_row(store, uri):
    assert store.commit(*one_image(0)) == 1
    db = lancedb.connect(uri)
    regions_written = db.open_table("regions").list_versions()[-1]["timestamp"]
    images_written = db.open_table("images").list_versions()[-1]["timestamp"]
    assert regions_written <= images_written


def test_a_row_that_fails_conversion_writes_nothing(store):
    image, regions = image_with_regions(0)
    with pytest.raises(ValueError, match="width='wide' is not int32"):
        store.commit([{**image, "width": "wide"}], regions)
    assert counts(store) == (0, 0)


def test_reopen_deletes_regions_left_by_a_crashed_commit(store, uri):
    store.commit(*one_image(0))
    crashed_image, crashed_regions = image_with_regions(1, n_regions=3)
    # The crash: commit's first write (the regions) happened, its images row never did.
    batch = prepare_batch([crashed_image], crashed_regions, dim=DIM, models=MODELS)
    lancedb.connect(uri).open_table("regions").add(batch.regions_table(DIM, MODELS))
    assert counts(store) == (1, 5)
    assert crashed_image["image_id"] not in {r["image_id"] for r in store.search(crashed_regions[0]["embedding"])}

    reopened = IndexStore.open(uri, fingerprint=MODELS, embed_dim=DIM)
    assert counts(reopened) == (1, 2)
    assert reopened.regions_of(crashed_image["image_id"]) == []
    assert reopened.commit([crashed_image], crashed_regions) == 1
    assert len(reopened.regions_of(crashed_image["image_id"])) == 3


def test_read_only_neither_recovers_nor_writes(store, uri):
    image, regions = image_with_regions(1)
    batch = prepare_batch([image], regions, dim=DIM, models=MODELS)
    lancedb.connect(uri).open_table("regions").add(batch.regions_table(DIM, MODELS))
    reader = IndexStore.open(uri, fingerprint=None, embed_dim=None, read_only=True)
    assert counts(reader) == (0, 2)
    with pytest.raises(ValueError, match="opened read_only"):
        reader.commit([image], regions)


def test_recommit_does_not_duplicate(store):
    first, first_regions = image_with_regions(0)
    second, second_regions = image_with_regions(1)
    assert store.commit([first], first_regions) == 1
    assert store.commit([first], first_regions) == 0
    assert store.commit([first, second], first_regions + second_regions) == 1
    assert counts(store) == (2, 4)
    assert store.known_image_ids([first["image_id"], second["image_id"], "f" * 64]) == {
        first["image_id"], second["image_id"]}


def test_duplicates_inside_a_batch_collapse_first_wins(store):
    image, regions = image_with_regions(0)
    copy = {**image, "uri": "file:///elsewhere/same-bytes.jpg"}
    assert store.commit([image, copy], regions + regions) == 1
    stored = store.image(image["image_id"])
    assert stored["uri"] == image["uri"]
    assert stored["n_regions"] == 2
    assert [r["region_id"] for r in store.regions_of(image["image_id"])] == [r["region_id"] for r in regions]


def test_forget_failed_lets_a_rerun_retry(store):
    ok, ok_regions = image_with_regions(0)
    failed = image_row(1, status="failed")
    assert store.commit([ok, failed], ok_regions) == 2
    assert store.stats()["images_failed"] == 1
    assert store.known_image_ids([failed["image_id"]]) == {failed["image_id"]}
    assert store.image(failed["image_id"])["embedding"] is None

    assert store.forget_failed() == 1
    assert store.known_image_ids([failed["image_id"]]) == set()
    retried, retried_regions = image_with_regions(1)
    assert store.commit([retried], retried_regions) == 1
    assert store.stats()["images_failed"] == 0


def test_image_and_regions_of_return_stored_rows(store):
    image, regions = image_with_regions(0, n_regions=12)
    store.commit([image], regions[::-1])
    stored = store.image(image["image_id"])
    assert (stored["status"], stored["error"], stored["models"], stored["width"]) == ("ok", None, MODELS, 640)
    np.testing.assert_allclose(stored["embedding"], image["embedding"], rtol=1e-6)
    got = store.regions_of(image["image_id"])
    assert [r["region_id"] for r in got] == [r["region_id"] for r in regions]  # numeric order: :2 before :10
    assert got[0]["rle"] == regions[0]["rle"] and got[0]["bbox"] == regions[0]["bbox"]
    assert store.image("0" * 64) is None


def _bad(change):
    image, regions = image_with_regions(0)
    change(image, regions)
    return image, regions


BAD_BATCHES = {
    r"embedding has shape \(8,\), this store holds \(16,\)":
        lambda image, regions: regions[1].update(embedding=np.ones(8, np.float32) / np.sqrt(8)),
    "embedding contains NaN":
        lambda image, regions: regions[0].update(embedding=np.full(DIM, np.nan, np.float32)),
    "images row .* embedding contains NaN":
        lambda image, regions: image.update(embedding=np.full(DIM, np.nan, np.float32)),
    "not L2-normalised":
        lambda image, regions: regions[0].update(embedding=np.ones(DIM, np.float32)),
    "is not among this batch's images":
        lambda image, regions: regions[0].update(image_id="e" * 64, region_id="e" * 64 + ":0"),
    r"regions\[3\] .*missing embedding":
        lambda image, regions: regions[1].pop("embedding"),
    r"images\[1\] .*missing uri":
        lambda image, regions: image.pop("uri"),
    "status 'failed' but 2 regions":
        lambda image, regions: image.update(status="failed", error="boom"),
    "status 'failed' needs an error":
        lambda image, regions: image.update(status="failed"),
    "status must be one of":
        lambda image, regions: image.update(status="done"),
    "n_regions=3 but the batch has 2":
        lambda image, regions: image.update(n_regions=3),
    "rle must be":
        lambda image, regions: regions[0].update(rle={"size": [480, 640], "counts": b"PPa03Rf0"}),
    "region_id must be":
        lambda image, regions: regions[0].update(region_id="region-0"),
    "made by models 'other'":
        lambda image, regions: image.update(models="other"),
}


@pytest.mark.parametrize("message", list(BAD_BATCHES))
def test_bad_input_raises_and_writes_nothing(store, message):
    image, regions = _bad(BAD_BATCHES[message])
    good, good_regions = image_with_regions(5)
    with pytest.raises(ValueError, match=message):
        store.commit([good, image], good_regions + regions)
    assert counts(store) == (0, 0)

"""IndexStore.search: planted matches, grouping by image, filters, widening, and the vector index."""

import numpy as np
import pytest

from benchmarks.synthetic_regions import clustered_embeddings, image_id, image_row, index_rows, region_row, unit
from maskdex.storage import IndexStore

DIM = 32
MODELS = "tiny(sam2=tiny,alpha_clip=tiny,dense=tiny)"


def at_cosine(query: np.ndarray, cosine: float, seed: int) -> np.ndarray:
    """A unit vector whose cosine with the unit query is exactly `cosine`."""
    other = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    other = unit(other - other.dot(query) * query)
    return (cosine * query + np.sqrt(1 - cosine**2) * other).astype(np.float32)


@pytest.fixture
def store(tmp_path) -> IndexStore:
    """400 images of 5 regions from clustered embeddings (enough rows to train a small index)."""
    store = IndexStore.open(str(tmp_path / "index"), fingerprint=MODELS, embed_dim=DIM)
    store.commit(*index_rows(clustered_embeddings(2000, DIM, cluster_size=20), regions_per_image=5))
    return store


def exact_image_ranking(store: IndexStore, query: np.ndarray, k: int) -> list[str]:
    return [r["image_id"] for r in store.search(query, k=k, exact=True)]


def test_planted_region_comes_first_with_that_region(store):
    planted = store.regions_of(image_id(123))[3]
    results = store.search(planted["embedding"], k=5)
    assert results[0]["image_id"] == image_id(123)
    assert results[0]["uri"] == "file:///synthetic/00000123.jpg"
    assert results[0]["region"]["region_id"] == planted["region_id"]
    assert results[0]["region"]["rle"] == planted["rle"] and results[0]["region"]["bbox"] == planted["bbox"]
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert len({r["image_id"] for r in results}) == 5


def test_an_image_scores_by_its_best_region(tmp_path):
    store = IndexStore.open(str(tmp_path / "index"), fingerprint=MODELS, embed_dim=DIM)
    query = unit(np.arange(1, DIM + 1, dtype=np.float32))
    cosines = {0: [0.5, 0.9, 0.1], 1: [0.8, 0.7], 2: [0.85]}
    images = [image_row(n, query) for n in cosines]
    regions = [region_row(image_id(n), j, at_cosine(query, c, seed=10 * n + j))
               for n, cs in cosines.items() for j, c in enumerate(cs)]
    store.commit(images, regions)
    results = store.search(query, k=3)
    assert [r["image_id"] for r in results] == [image_id(0), image_id(2), image_id(1)]
    assert [r["score"] for r in results] == pytest.approx([0.9, 0.85, 0.8], abs=1e-5)
    assert results[0]["region"]["region_id"] == f"{image_id(0)}:1"
    assert results[0]["region"]["score"] == results[0]["score"]


def test_filters_on_area_and_image_ids(store):
    query = store.regions_of(image_id(7))[0]["embedding"]
    by_area = store.search(query, k=10, filters={"min_area": 20_000, "max_area": 60_000})
    assert len(by_area) == 10
    for result in by_area:
        region = next(r for r in store.regions_of(result["image_id"]) if r["region_id"] == result["region"]["region_id"])
        assert 20_000 <= region["area"] <= 60_000
    wanted = [image_id(n) for n in (3, 50, 300)]
    assert {r["image_id"] for r in store.search(query, k=10, filters={"image_ids": wanted})} == set(wanted)
    assert store.search(query, filters={"image_ids": []}) == []
    with pytest.raises(ValueError, match="unknown search filter"):
        store.search(query, filters={"label": "cat"})


def test_widens_when_the_nearest_regions_crowd_into_few_images(tmp_path):
    store = IndexStore.open(str(tmp_path / "index"), fingerprint=MODELS, embed_dim=DIM)
    query = unit(np.ones(DIM, dtype=np.float32))
    crowded = image_row(0, query)
    others = [image_row(n, query) for n in range(1, 8)]
    regions = [region_row(crowded["image_id"], j, at_cosine(query, 0.99, seed=j)) for j in range(400)]
    regions += [region_row(image["image_id"], 0, at_cosine(query, 0.5, seed=1000 + n)) for n, image in enumerate(others)]
    store.commit([crowded, *others], regions)
    for indexed in (False, True):
        if indexed:
            store.upkeep.build_index(force=True)
        results = store.search(query, k=5, oversample=2)  # the first 400 rows all belong to image 0
        assert len(results) == 5
        assert results[0]["image_id"] == crowded["image_id"]
        assert len(store.search(query, k=20)) == 8  # never more images than there are


def test_search_before_and_after_the_index_and_on_unindexed_rows(store):
    queries = [store.regions_of(image_id(n))[1]["embedding"] for n in (5, 99, 250)]
    before = [exact_image_ranking(store, q, 10) for q in queries]
    assert [store.search(q, k=10) for q in queries] == [store.search(q, k=10, exact=True) for q in queries]

    report = store.upkeep.build_index(force=True)
    assert report["vector_index"] == "built" and report["metric"] == "cosine"
    assert DIM % report["num_sub_vectors"] == 0
    assert store.stats()["indexed"] and store.stats()["unindexed_rows"] == 0
    for query, exact in zip(queries, before):
        ranked = [r["image_id"] for r in store.search(query, k=10)]
        assert ranked[0] == exact[0]
        assert len(set(ranked) & set(exact)) >= 9

    images, regions = index_rows(clustered_embeddings(50, DIM, seed=7), regions_per_image=5, first_image=1000)
    store.commit(images, regions)
    assert store.stats()["unindexed_rows"] == 50
    for n in (1000, 1009):
        planted = store.regions_of(image_id(n))[2]
        assert store.search(planted["embedding"], k=1)[0]["region"]["region_id"] == planted["region_id"]

    assert store.upkeep.maybe_build_index()["vector_index"] == "refreshed"
    assert store.stats()["unindexed_rows"] == 0
    assert store.search(store.regions_of(image_id(1009))[2]["embedding"], k=1)[0]["image_id"] == image_id(1009)


def test_small_tables_skip_the_vector_index_unless_forced(store):
    report = store.upkeep.build_index()
    assert report["vector_index"] == "skipped" and "below" in report["reason"]
    assert report["scalar_indexes"] == ["images.image_id", "regions.image_id", "regions.area"]
    assert store.upkeep.maybe_build_index() is None
    assert not store.stats()["indexed"]


def test_bad_queries(store):
    with pytest.raises(ValueError, match=r"query has shape \(16,\)"):
        store.search(np.ones(16, dtype=np.float32))
    with pytest.raises(ValueError, match="finite and non-zero"):
        store.search(np.full(DIM, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="k and oversample"):
        store.search(np.ones(DIM, dtype=np.float32), k=0)


def test_maybe_build_index_retrains_once_the_table_has_doubled(store):
    assert store.upkeep.build_index(force=True)["trained_rows"] == 2000
    images, regions = index_rows(clustered_embeddings(2500, DIM, seed=3), regions_per_image=5, first_image=1000)
    store.commit(images, regions)
    report = store.upkeep.maybe_build_index()
    assert report["vector_index"] == "built" and report["trained_rows"] == 4500
    assert store.stats()["vector_index"]["trained_rows"] == 4500


def test_a_reader_sees_new_commits_and_new_indexes_within_a_second(store, tmp_path):
    """A read-only store keeps the image uris and the index settings between queries; a commit and
    an index built by another store still show in its results within its consistency interval."""
    import time

    reader = IndexStore.open(store.uri, fingerprint=None, embed_dim=None, read_only=True)
    query = unit(np.arange(1, DIM + 1, dtype=np.float32))
    first = reader.search(query, k=5)
    assert reader.search(query, k=5) == first  # the second answer comes from the caches, unchanged
    planted = at_cosine(query, 0.999, seed=5)
    store.commit([image_row(9000, planted)], [region_row(image_id(9000), 0, planted)])
    store.upkeep.build_index(force=True)
    time.sleep(1.0)
    found = reader.search(query, k=5)
    assert found[0]["image_id"] == image_id(9000) and found[0]["uri"] == "file:///synthetic/00009000.jpg"
    assert reader.upkeep.search_settings(reader.regions_table.version) is not None  # the new vector index is used
    assert len({r["image_id"] for r in found} & set(exact_image_ranking(reader, query, 5))) >= 4


def test_a_stored_region_or_image_is_a_query_and_its_image_can_be_left_out(store):
    planted = store.regions_of(image_id(42))[2]
    vector, owner = store.stored_vector(planted["region_id"])
    assert owner == image_id(42)
    np.testing.assert_array_equal(vector, planted["embedding"])
    np.testing.assert_array_equal(store.stored_vector(image_id(42))[0], store.image(image_id(42))["embedding"])
    assert store.search(vector, k=3)[0]["image_id"] == image_id(42)
    others = store.search(vector, k=3, filters={"exclude_image_ids": [image_id(42)]})
    assert len(others) == 3 and image_id(42) not in [r["image_id"] for r in others]


@pytest.mark.parametrize("like, problem", [
    ("f" * 64, "no image"), ("", "no image"), ("{}:9", "has no region 9 .it has 5: 0 to 4."), ("{}:x", "region number"),
])
def test_an_unknown_stored_example_is_named(store, like, problem):
    with pytest.raises(ValueError, match=problem):
        store.stored_vector(like.format(image_id(42)))

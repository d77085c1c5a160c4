"""IndexWriter on a real LanceDB directory: commits sized by rows and time, compaction during a run,
search while it runs; the digest sets and the migration of an older images table."""

import time

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from benchmarks.synthetic_regions import image_id
from maskdex.storage import IndexStore, schemas, vector_index
from maskdex.storage.digests import DigestSet, image_key, image_keys, source_key
from maskdex.storage.index_writer import CommitPolicy, IndexWriter
from maskdex.storage.region_fragments import RegionFragmentWriter
from tests.storage.test_storage_store import DIM, MODELS, image_with_regions


def worker_write(store: IndexStore, *numbers: int, n_regions: int = 2):
    """What an index worker hands the writer: images rows and the fragments it wrote their regions to."""
    images, regions = [], []
    for number in numbers:
        image, its_regions = image_with_regions(number, n_regions)
        images.append(image)
        regions += its_regions
    return RegionFragmentWriter(store.regions_dataset_uri, dim=DIM, models=MODELS).write(images, regions)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_many_small_commits_end_in_few_fragments_and_search_sees_committed_images(tmp_path):
    uri = str(tmp_path / "index")
    store = IndexStore.open(uri, fingerprint=MODELS, embed_dim=DIM)
    reader = IndexStore.open(uri, fingerprint=None, embed_dim=None, read_only=True)
    writer = IndexWriter(store, CommitPolicy(commit_images=2, compact_every=5, background_upkeep=False))
    found_during_run = set()
    for number in range(60):
        image, regions = image_with_regions(number, n_regions=3)
        assert writer.add(*worker_write(store, number, n_regions=3)) == [True]
        if number == 39:  # mid-run: 20 commits so far, the last compaction after the 20th
            # A read-only store looks for new commits every half second (storage/tables.py).
            deadline = time.monotonic() + 2.0
            while image["image_id"] not in found_during_run and time.monotonic() < deadline:
                found_during_run = {hit["image_id"] for hit in reader.search(regions[0]["embedding"], k=5)}
                time.sleep(0.05)
            assert image["image_id"] in found_during_run, "a committed image is searchable during the run"
    writer.close()
    assert (writer.commits, writer.tidies, writer.committed_images) == (30, 6, 60)
    stats = store.stats()
    assert (stats["images_ok"], stats["regions"]) == (60, 180)
    # 30 commits without compaction would leave 30 fragments per table.
    assert stats["images_fragments"] <= 2 and stats["regions_fragments"] <= 2, stats
    assert found_during_run


def test_background_upkeep_leaves_few_fragments_and_loses_no_row(tmp_path):
    store = IndexStore.open(str(tmp_path / "index"), fingerprint=MODELS, embed_dim=DIM)
    writer = IndexWriter(store, CommitPolicy(commit_images=2, compact_every=4))
    for number in range(40):
        assert writer.add(*worker_write(store, number)) == [True]
    writer.close()
    writer.store.upkeep.tidy()  # what run_index's closing maybe_build_index does
    stats = store.stats()
    assert (stats["images_ok"], stats["regions"], writer.commits) == (40, 80, 20)
    # 20 commits wrote 20 fragments. Lance merges no fragment the scalar indexes cover with one they
    # do not, and which rows the last background fold covered depends on thread timing, so the
    # closing tidy (merge, then fold) leaves one fragment per coverage: 1 to 3 in 40 runs here. Once
    # its fold has covered every row, the next tidy merges them into one.
    assert writer.tidies >= 1 and stats["regions_fragments"] <= 3, stats
    writer.store.upkeep.tidy()
    assert store.stats()["regions_fragments"] == 1


def test_commits_are_sized_by_images_rows_and_time(tmp_path):
    store = IndexStore.open(str(tmp_path / "index"), fingerprint=MODELS, embed_dim=DIM)
    clock = Clock()
    writer = IndexWriter(store, CommitPolicy(commit_images=100, commit_rows=10, commit_seconds=5.0), clock=clock)
    writer.add(*worker_write(store, 0, n_regions=4))
    writer.add(*worker_write(store, 1, n_regions=4))
    assert writer.commits == 0 and writer.pending_images == 2
    writer.add(*worker_write(store, 2, n_regions=4))  # 12 region rows >= 10
    assert writer.commits == 1 and writer.pending_images == 0
    writer.add(*worker_write(store, 3, n_regions=1))
    clock.now = 4.9
    writer.add(*worker_write(store, 4, n_regions=1))
    assert writer.commits == 1
    clock.now = 10.0
    writer.add(*worker_write(store, 5, n_regions=1))  # 5 s since the last commit
    assert writer.commits == 2 and store.stats()["images_ok"] == 6


def test_duplicates_collapse_against_the_buffer_and_the_table(tmp_path):
    uri = str(tmp_path / "index")
    store = IndexStore.open(uri, fingerprint=MODELS, embed_dim=DIM)
    store.commit(*[[row] if isinstance(row, dict) else row for row in image_with_regions(0)])
    writer = IndexWriter(store, CommitPolicy(commit_images=10))
    assert writer.add(*worker_write(store, 0)) == [False], "stored before the run"
    assert writer.add(*worker_write(store, 1)) == [True]
    assert writer.add(*worker_write(store, 1)) == [False], "buffered in this run"
    writer.close()
    assert writer.add(*worker_write(store, 1)) == [False], "committed in this run"
    writer.close()
    images = lancedb.connect(uri).open_table("images").to_arrow()["image_id"].to_pylist()
    assert sorted(images) == sorted([image_id(0), image_id(1)])
    regions = lancedb.connect(uri).open_table("regions").to_arrow()["region_id"].to_pylist()
    assert len(regions) == len(set(regions)) == 4, "the dropped writes' fragments were never committed"


def test_a_write_that_mixes_taken_and_new_images_is_refused(tmp_path):
    store = IndexStore.open(str(tmp_path / "index"), fingerprint=MODELS, embed_dim=DIM)
    writer = IndexWriter(store, CommitPolicy(commit_images=10))
    assert writer.add(*worker_write(store, 0)) == [True]
    with pytest.raises(ValueError, match="store that image's regions twice"):
        writer.add(*worker_write(store, 0, 1))
    images, written = worker_write(store, 2, 3)
    with pytest.raises(ValueError, match="split from its fragments"):
        writer.add(images[:1], written)
    writer.close()
    assert store.stats()["regions"] == 2


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="commit_rows"):
        CommitPolicy(commit_rows=0)
    with pytest.raises(ValueError, match="commit_seconds"):
        CommitPolicy(commit_seconds=0)


def test_digest_sets_match_digests_ending_in_zero_bytes():
    rng = np.random.default_rng(0)
    digests = [bytes(rng.integers(0, 256, 31, dtype=np.uint8)) + b"\0" for _ in range(50)]
    digests += [bytes(rng.integers(0, 256, 32, dtype=np.uint8)) for _ in range(50)]
    merged = DigestSet(32, np.array(digests[:30], dtype="S32"))
    for digest in digests[30:60]:
        merged.add(digest)  # pending, not merged yet
    expected = [True] * 60 + [False] * 40
    assert merged.contains_many(digests).tolist() == expected
    assert merged.frozen().contains_many(digests).tolist() == expected and len(merged) == 60
    # Ids that are not sha256 hex (unreadable inputs) are hashed to the same width.
    assert image_keys(["unreadable-x", "a" * 64]).tolist() == [image_key("unreadable-x"), bytes.fromhex("a" * 64)]
    assert source_key("/a.jpg", 10, 1) != source_key("/a.jpg", 10, 2) != source_key("/a.jpg", 11, 2)


def test_known_ids_and_sources_cost_a_fixed_width_per_image(tmp_path):
    store = IndexStore.open(str(tmp_path / "index"), fingerprint=MODELS, embed_dim=DIM)
    images, regions = [], []
    for number in range(20):
        image, its_regions = image_with_regions(number, 1)
        images.append({**image, "source_size": 100 + number, "source_mtime_ns": 7})
        regions += its_regions
    images.append(image_with_regions(99, 0)[0])  # no identity (a parquet row, say)
    store.commit(images, regions)
    known = store.known_ids()
    assert len(known) == 21 and known.nbytes == 21 * 32
    assert known.contains_many([image_key(image_id(3)), image_key(image_id(50))]).tolist() == [True, False]
    sources = store.known_sources()
    assert len(sources) == 20 and sources.nbytes == 20 * 16
    assert source_key(images[3]["uri"], 103, 7) in sources
    assert source_key(images[3]["uri"], 103, 8) not in sources


def test_an_older_images_table_gains_the_source_columns_when_opened_writable(tmp_path):
    old_uri = str(tmp_path / "old")
    current = schemas.images_schema(DIM, MODELS)
    old_fields = [f for f in current if f.name not in schemas.IMAGES_ADDED_COLUMNS]
    db_old = lancedb.connect(old_uri)
    db_old.create_table("regions", schema=schemas.regions_schema(DIM, MODELS))
    db_old.create_table("images", schema=pa.schema(old_fields, metadata=current.metadata))
    image, regions = image_with_regions(0)

    reader = IndexStore.open(old_uri, fingerprint=None, embed_dim=None, read_only=True)
    assert len(reader.known_sources()) == 0  # read_only never changes the table, and still works
    assert "source_size" not in lancedb.connect(old_uri).open_table("images").schema.names

    store = IndexStore.open(old_uri, fingerprint=MODELS, embed_dim=DIM)
    assert {"source_size", "source_mtime_ns"} <= set(lancedb.connect(old_uri).open_table("images").schema.names)
    assert store.fingerprint == MODELS and store.embed_dim == DIM  # the build record survived
    store.commit([{**image, "source_size": 5, "source_mtime_ns": 6}], regions)
    assert source_key(image["uri"], 5, 6) in store.known_sources()


def test_small_fragments_of_worker_writes_are_merged_every_few_writes(tmp_path):
    store = IndexStore.open(str(tmp_path / "index"), fingerprint=MODELS, embed_dim=DIM)
    writer = IndexWriter(store, CommitPolicy(commit_images=4, compact_every=1000, upkeep_rows=10**6, merge_fragments=8,
                                             background_upkeep=False))
    for number in range(0, 64, 2):  # 32 writes of 2 images, one fragment each; a commit every 2 writes
        assert writer.add(*worker_write(store, number, number + 1)) == [True, True]
    writer.close()
    assert (writer.commits, writer.tidies) == (16, 4)
    stats = store.stats()
    assert (stats["images_ok"], stats["regions"]) == (64, 128)
    assert stats["regions_fragments"] <= 2, stats  # 32 without merging
    region_ids = lancedb.connect(store.uri).open_table("regions").to_arrow()["region_id"].to_pylist()
    assert len(set(region_ids)) == 128


def test_tidy_beside_a_training_merges_only_new_fragments_and_both_commit(tmp_path):
    store = IndexStore.open(str(tmp_path / "index"), fingerprint=MODELS, embed_dim=DIM)
    for first in range(0, 300, 50):  # 6 fragments of 100 regions
        store.commit_written(*worker_write(store, *range(first, first + 50)))
    snapshot = store.upkeep.regions_snapshot()  # what a training in flight reads
    frozen = {fragment.fragment_id for fragment in snapshot.get_fragments()}
    for number in range(300, 340, 2):  # 20 small fragments committed meanwhile
        store.commit_written(*worker_write(store, number, number + 1))
    assert store.upkeep.tidy(frozen=frozen) == 19  # the 20 new ones became one; the frozen ones stayed
    assert {f.fragment_id for f in store.upkeep.regions_snapshot().get_fragments()} >= frozen
    report = store.upkeep.train_vector_index(snapshot)  # commits after the merge, on the snapshot's rows
    assert (report["vector_index"], report["regions"]) == ("built", 600)
    stats = store.stats()
    assert (stats["images_ok"], stats["regions"], stats["regions_fragments"]) == (340, 680, 7)
    assert stats["indexed"] and stats["unindexed_rows"] == 80  # the merged fragment, until the next tidy
    store.upkeep.tidy()
    assert store.stats()["unindexed_rows"] == 0


def test_background_trainings_during_a_run_lose_no_row(tmp_path, monkeypatch):
    # A small MIN_ROWS so that the run trains its vector index, and retrains it as it doubles,
    # on the training thread while commits and tidies go on.
    monkeypatch.setattr(vector_index, "MIN_ROWS", 300)
    store = IndexStore.open(str(tmp_path / "index"), fingerprint=MODELS, embed_dim=DIM)
    writer = IndexWriter(store, CommitPolicy(commit_images=8, upkeep_rows=32, retrain_growth=2.0))
    for number in range(0, 800, 4):
        assert writer.add(*worker_write(store, *range(number, number + 4))) == [True] * 4
    writer.close()
    assert writer.index_reports and all(report["vector_index"] == "built" for report in writer.index_reports)
    store.upkeep.tidy()
    stats = store.stats()
    assert (stats["images_ok"], stats["regions"], stats["unindexed_rows"]) == (800, 1600, 0)
    # 200 worker writes. Lance merges only fragments that the same index segments cover, so each
    # training and fold leaves its own few fragments behind.
    assert stats["regions_fragments"] <= 20, stats
    region_ids = lancedb.connect(store.uri).open_table("regions").to_arrow()["region_id"].to_pylist()
    assert len(set(region_ids)) == 1600
    image, regions = image_with_regions(777, 2)
    assert store.search(regions[1]["embedding"], k=1)[0]["image_id"] == image["image_id"]


def test_a_run_trains_with_few_partitions_and_the_closing_upkeep_sizes_them_for_the_table(tmp_path, monkeypatch):
    # Folds cost CPU per row and partition, so trainings during a run are capped (run_partitions);
    # the upkeep after the run (what run_index calls) retrains with sqrt(rows) partitions.
    monkeypatch.setattr(vector_index, "MIN_ROWS", 300)
    store = IndexStore.open(str(tmp_path / "index"), fingerprint=MODELS, embed_dim=DIM)
    policy = CommitPolicy(commit_images=8, upkeep_rows=32, retrain_growth=2.0, run_partitions=2,
                          background_upkeep=False)
    writer = IndexWriter(store, policy)
    for number in range(0, 800, 4):
        writer.add(*worker_write(store, *range(number, number + 4)))
    writer.close()
    trained = [(report["regions"], report["num_partitions"]) for report in writer.index_reports]
    # The first training, at 320 rows, gets one partition (at most rows / 256), the later ones the cap.
    assert len(trained) >= 2 and all(partitions <= 2 for _, partitions in trained), trained
    last_rows, last_partitions = trained[-1]
    assert last_partitions == 2 < vector_index.VectorIndexParams.for_table(last_rows, DIM).num_partitions, trained
    # 1,600 regions call for 6 partitions (sqrt, at most rows / 256): 3x the run's, so it is due.
    assert vector_index.VectorIndexParams.for_table(1600, DIM).num_partitions == 6
    assert store.upkeep.vector_index_due()
    assert not store.upkeep.vector_index_due(growth=policy.retrain_growth, max_partitions=policy.run_partitions)
    report = store.upkeep.maybe_build_index()
    assert (report["vector_index"], report["num_partitions"], report["trained_rows"]) == ("built", 6, 1600)
    assert not store.upkeep.vector_index_due()
    image, regions = image_with_regions(321, 2)
    assert store.search(regions[0]["embedding"], k=1)[0]["image_id"] == image["image_id"]


def test_run_partitions_must_be_positive():
    with pytest.raises(ValueError, match="run_partitions must be >= 1"):
        CommitPolicy(run_partitions=0)


def test_each_tidy_indexes_new_rows_in_a_segment_and_merges_them_at_the_cap(tmp_path):
    store = IndexStore.open(str(tmp_path / "index"), fingerprint=MODELS, embed_dim=DIM)
    store.commit_written(*worker_write(store, *range(150)))  # 300 regions
    store.upkeep.train_vector_index(store.upkeep.regions_snapshot())
    segments = []
    for number in range(150, 150 + vector_index.MAX_INDEX_SEGMENTS + 2):
        store.commit_written(*worker_write(store, number))
        store.upkeep.tidy()
        assert store.stats()["unindexed_rows"] == 0
        index = next(i for i in store.upkeep.regions_snapshot().describe_indices() if i.name == vector_index.VECTOR_INDEX_NAME)
        segments.append(len(index.segments))
    cap = vector_index.MAX_INDEX_SEGMENTS
    assert segments == list(range(2, cap + 1)) + [2, 3, 4], segments
    image, regions = image_with_regions(150 + cap, 2)
    assert store.search(regions[0]["embedding"], k=1)[0]["image_id"] == image["image_id"]

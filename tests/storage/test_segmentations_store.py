"""The segmentations table: keyed rows written once, failures kept with their cause, lookups by image."""

from __future__ import annotations

import lance
import pytest

from maskdex.storage import segmentation_store
from maskdex.storage.segmentation_store import SegmentationKey, SegmentationStore

KEY = SegmentationKey("scenes", ("sky", "grass"), "patch", "tiny(test)", seed=0)


def ok(image_id: str, share: float = 0.25) -> dict:
    return {"image_id": image_id, "uri": f"/data/{image_id}.png", "status": "ok", "width": 4, "height": 2,
            "labels_png": b"\x89PNG...", "pixel_fractions": [share, 1 - share], "visual_support": ["sky", "grass"],
            "text_support": [], "used_fallback": False, "regions": None}


def failed(image_id: str, error: str = "cannot read image /data/x.png: No such file or directory") -> dict:
    return {"image_id": image_id, "uri": f"/data/{image_id}.png", "status": "failed", "error": error}


def test_rows_of_a_key_are_written_once(tmp_path):
    store = SegmentationStore.open(str(tmp_path / "db"))
    assert store.commit(KEY, [ok("a"), failed("b"), ok("a", 0.5)]) == 2  # a repeat in the batch: first wins
    assert store.commit(KEY, [ok("a"), ok("c")]) == 1
    assert store.done_image_ids(KEY) == {"a", "b", "c"}
    rows = {row["image_id"]: row for row in store.rows(KEY)}
    assert rows["a"]["pixel_fractions"] == [0.25, 0.75] and rows["a"]["classes"] == ["sky", "grass"]
    assert rows["b"]["status"] == "failed" and "No such file" in rows["b"]["error"] and rows["b"]["labels_png"] is None

    other = SegmentationKey("scenes", ("grass", "sky"), "patch", "tiny(test)", seed=0)  # another class order
    assert other.class_key != KEY.class_key and store.done_image_ids(other) == set()
    assert store.commit(other, [ok("a", 0.9)]) == 1
    found = store.find("a", set_name="scenes")
    assert [row["classes"] for row in found] == [["grass", "sky"], ["sky", "grass"]]  # newest first
    assert [row["classes"] for row in store.find("a", classes=["sky", "grass"])] == [["sky", "grass"]]
    assert store.find("a", set_name="other") == [] and store.find("a", mode="region") == []

    assert store.forget_failed(KEY) == 1
    assert store.done_image_ids(KEY) == {"a", "c"}
    assert store.count() == 3


def test_commits_merge_their_fragments_as_they_go_and_keep_every_row_once(tmp_path):
    store = SegmentationStore.open(str(tmp_path / "db"))
    commits = 2 * segmentation_store._TIDY_EVERY + 3
    for number in range(commits):
        # Each batch repeats the previous batch's last image, which must be skipped, merged or not.
        assert store.commit(KEY, [ok(f"{number:04d}-{i}") for i in range(4)] + [ok(f"{number - 1:04d}-3")]) \
            == (5 if number == 0 else 4)
    dataset = lance.dataset(f"{tmp_path}/db/segmentations.lance")
    # Two tidies merged the first 128 commits' fragments; the last 3 commits are still their own.
    assert len(dataset.get_fragments()) <= 3 + 2
    # The duplicate check finds the merged rows through the image_id index, not by reading them.
    assert dataset.stats.index_stats("image_id_idx")["num_unindexed_rows"] == 4 * 3
    assert store.count() == len(store.done_image_ids(KEY)) == 4 * commits + 1


def test_a_bad_row_writes_nothing(tmp_path):
    store = SegmentationStore.open(str(tmp_path / "db"))
    cases = [
        ({**ok("x"), "pixel_fractions": [1.0]}, "1 pixel fractions for 2 classes"),
        ({**ok("x"), "labels_png": None}, "status 'ok' but no labels_png"),
        ({**failed("x"), "error": ""}, "status 'failed' needs an error message"),
        ({**ok("x"), "status": "done"}, "status must be one of"),
        ({**ok("x"), "width": "wide"}, "does not fit the table"),
        ({"image_id": "x", "status": "ok"}, "missing uri"),
    ]
    for row, message in cases:
        with pytest.raises(ValueError, match=message):
            store.commit(KEY, [ok("fine"), row])
    assert store.count() == 0


def test_opening_without_create(tmp_path):
    with pytest.raises(FileNotFoundError, match="no segmentations at"):
        SegmentationStore.open(str(tmp_path / "nothing"), create=False)
    (tmp_path / "db").mkdir()
    with pytest.raises(FileNotFoundError, match="run `maskdex segment-index` first"):
        SegmentationStore.open(str(tmp_path / "db"), create=False)
    with pytest.raises(ValueError, match="needs its classes"):
        SegmentationKey("scenes", (), "patch", "tiny")

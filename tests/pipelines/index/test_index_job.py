"""The index job on a real local Ray instance and a real LanceDB directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import lancedb
import numpy as np
import pytest
from PIL import Image
from skimage import data

from maskdex.operators.common import rle as rle_codec
from maskdex.pipelines.common.sources import SourceError
from maskdex.pipelines.index.job import IndexSettings, run_index
from maskdex.storage.index_store import IndexStore
from tests.support.corpus import build_corpus, index_settings

SETTINGS = index_settings(max_pixels=5_000_000, commit_every=4)


def _table(db, name):
    return lancedb.connect(str(db)).open_table(name).to_arrow().to_pylist()


@pytest.mark.slow
def test_every_input_is_accounted_for_and_regions_fit_their_images(tmp_path, ray_local):
    corpus = build_corpus(tmp_path / "corpus")
    db = tmp_path / "db"
    # A source that does not exist is a typo, not an input that failed: nothing starts, nothing is created.
    with pytest.raises(SourceError, match="does_not_exist.jpg' does not exist"):
        run_index([str(corpus.root), str(corpus.root / "does_not_exist.jpg")], str(db), SETTINGS)
    assert not db.exists()

    summary = run_index([str(corpus.root)], str(db), SETTINGS)

    assert summary.inputs == corpus.inputs
    assert (summary.ok, summary.failed, summary.duplicates, summary.skipped) == (
        len(corpus.ok), len(corpus.bad), len(corpus.duplicates), 0)
    rows = _table(db, "images")
    assert len(rows) == summary.ok + summary.failed
    images = {row["uri"]: row for row in rows}
    by_id = {row["image_id"]: row for row in rows}
    for path in corpus.ok:
        # Copies race to the writer, so an image's uri is any of its byte-identical paths.
        row = by_id[hashlib.sha256(path.read_bytes()).hexdigest()]
        assert row["status"] == "ok" and row["error"] is None and row["n_regions"] > 0, row
        assert Path(row["uri"]) in [path, *(d for d in corpus.duplicates if d.read_bytes() == path.read_bytes())]
    for path, word in corpus.bad.items():
        row = images[str(path)]
        assert row["status"] == "failed" and word in row["error"], row
    # EXIF orientation is applied: chelsea is 451 x 300, rotated by 90 degrees.
    rotated = images[str(corpus.root / "odd" / "exif_rotated.jpg")]
    assert (rotated["width"], rotated["height"]) == (300, 451)

    regions = _table(db, "regions")
    assert len(regions) == summary.regions == sum(row["n_regions"] for row in rows)
    assert len({r["region_id"] for r in regions}) == len(regions)
    for region in regions:
        image = by_id[region["image_id"]]
        mask = rle_codec.decode(region["rle"])
        assert mask.shape == (image["height"], image["width"])
        assert mask.sum() == region["area"]
        assert list(region["bbox"]) == rle_codec.bbox(region["rle"])
        assert np.isclose(np.linalg.norm(region["embedding"]), 1.0, atol=1e-4)

    again = run_index([str(corpus.root)], str(db), SETTINGS)
    assert again.skipped == corpus.inputs and again.ok == again.failed == again.regions == 0
    assert len(_table(db, "regions")) == len(regions)


def test_appending_with_another_preset_is_refused(tmp_path, ray_local):
    corpus = build_corpus(tmp_path / "corpus", photos=("coffee",), with_bad=False)
    db = str(tmp_path / "db")
    run_index([str(corpus.ok[0])], db, SETTINGS)
    store = IndexStore.open(db, fingerprint=None, embed_dim=None, create=False)
    assert store.stats()["images_ok"] == 1
    with pytest.raises(ValueError, match="tiny"):
        run_index([str(corpus.ok[0])], db, IndexSettings(models="fast"))


@pytest.mark.slow
def test_a_resume_over_a_finished_folder_reads_no_image_bytes(tmp_path, ray_local):
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).resize((96, 64)).save(folder / f"{name}.png")
    (folder / "notes.jpg").write_text("not an image, recorded as failed\n")
    db = str(tmp_path / "db")
    first = run_index([str(folder)], db, SETTINGS)
    assert (first.ok, first.failed, first.unread) == (2, 1, 0)

    # Same size, same mtime, other bytes: were any file read, it would hash to a new image (or fail).
    for path in folder.iterdir():
        stat = path.stat()
        path.write_bytes(os.urandom(stat.st_size))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = run_index([str(folder)], db, SETTINGS)
    assert (again.inputs, again.skipped, again.unread) == (3, 3, 3)
    assert again.ok == again.failed == again.regions == 0 and not again.failures
    assert len(_table(db, "images")) == 3

    # A file that changed (its mtime moved) is read again: its new bytes are a new input.
    changed = folder / "coffee.png"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = run_index([str(folder)], db, SETTINGS)
    assert (third.unread, third.failed) == (2, 1) and "not an image" in third.failures[0][1]

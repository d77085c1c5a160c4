"""Tar shards in webdataset's layout as an index source, on a real local Ray instance and a real
LanceDB directory: they index like the same files in a folder, bad samples are recorded with their
cause, and a rerun opens no finished shard."""

from __future__ import annotations

import io
import json
import os
import tarfile

import lancedb
import numpy as np
import pytest
from PIL import Image
from skimage import data

from maskdex.pipelines.common.shards import expand_braces, read_samples
from maskdex.pipelines.common.sources import SourceError, expand_sources
from maskdex.pipelines.index.job import run_index
from maskdex.storage.index_store import IndexStore
from tests.support.corpus import index_settings

SETTINGS = index_settings(commit_every=2)


def _encoded(name: str, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(getattr(data, name)()).convert("RGB").resize((128, 96)).save(out, format=fmt)
    return out.getvalue()


def _write_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


def _rows(db, name="images") -> list[dict]:
    return lancedb.connect(str(db)).open_table(name).to_arrow().to_pylist()


def _corpus(root):
    """Three shards and a folder holding the same good images; shard 1 also holds a truncated image
    and a sample with no image."""
    images = {"astronaut": _encoded("astronaut", "JPEG"), "coffee": _encoded("coffee", "PNG"),
              "chelsea": _encoded("chelsea", "WEBP"), "rocket": _encoded("rocket", "JPEG")}
    extension = {"astronaut": "jpg", "coffee": "png", "chelsea": "webp", "rocket": "jpg"}
    (root / "shards").mkdir(parents=True)
    (root / "folder").mkdir()
    for name, payload in images.items():
        (root / "folder" / f"{name}.{extension[name]}").write_bytes(payload)
    _write_tar(root / "shards" / "00000.tar", [
        ("astronaut.jpg", images["astronaut"]), ("astronaut.txt", b"an astronaut with a flag"),
        ("coffee.json", json.dumps({"url": "http://example.com/coffee", "width": 128}).encode()),
        ("coffee.png", images["coffee"]),
    ])
    _write_tar(root / "shards" / "00001.tar", [
        ("chelsea.webp", images["chelsea"]), ("chelsea.txt", b"a cat"),
        ("broken.jpg", images["astronaut"][: len(images["astronaut"]) // 3]), ("broken.txt", b"cut short"),
        ("orphan.json", b'{"caption": "no image here"}'),
    ])
    _write_tar(root / "shards" / "00002.tar", [("rocket.jpg", images["rocket"])])
    return images


def test_brace_patterns_expand_like_webdataset(tmp_path):
    assert expand_braces("s/{00008..00011}.tar") == ["s/00008.tar", "s/00009.tar", "s/00010.tar", "s/00011.tar"]
    assert expand_braces("s3://b/{a,b}/{1..2}.tar") == ["s3://b/a/1.tar", "s3://b/a/2.tar", "s3://b/b/1.tar",
                                                         "s3://b/b/2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(SourceError, match="backwards"):
        expand_sources(["s/{00009..00001}.tar"])
    _write_tar(tmp_path / "0.tar", [("a.jpg", b"x")])
    _write_tar(tmp_path / "1.tar", [("b.png", b"y")])
    assert expand_sources([str(tmp_path / "{0..1}.tar")]).shards == [str(tmp_path / "0.tar"), str(tmp_path / "1.tar")]
    assert expand_sources([str(tmp_path)]).shards == [str(tmp_path / "0.tar"), str(tmp_path / "1.tar")]


def test_a_truncated_shard_ends_with_its_cause(tmp_path):
    _write_tar(tmp_path / "whole.tar", [("a.jpg", b"x" * 5000), ("a.txt", b"caption"), ("b.jpg", b"y" * 5000)])
    whole = (tmp_path / "whole.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(whole[:2000])
    samples = list(read_samples(str(tmp_path / "cut.tar")))
    assert samples[-1].error and "corrupt or truncated tar shard" in samples[-1].error
    assert [s.key for s in read_samples(str(tmp_path / "whole.tar"))] == ["a", "b"]


@pytest.mark.slow
def test_shards_index_like_a_folder_and_a_rerun_opens_no_finished_shard(tmp_path, ray_local):
    _corpus(tmp_path)
    shards, folder = tmp_path / "shards", tmp_path / "folder"
    from_folder, db = tmp_path / "from_folder", tmp_path / "db"
    run_index([str(folder)], str(from_folder), SETTINGS)
    pattern = str(shards / "{00000..00001}.tar")
    summary = run_index([pattern], str(db), SETTINGS)
    assert (summary.inputs, summary.ok, summary.failed) == (5, 3, 2), summary.render()

    rows = {row["uri"]: row for row in _rows(db)}
    broken, orphan = rows[f"{shards / '00001.tar'}#broken"], rows[f"{shards / '00001.tar'}#orphan"]
    assert broken["status"] == "failed" and "truncated" in broken["error"]
    assert orphan["status"] == "failed" and "no image member" in orphan["error"]
    assert json.loads(orphan["metadata"]) == {"json": {"caption": "no image here"}}
    astronaut = rows[f"{shards / '00000.tar'}#astronaut"]
    assert json.loads(astronaut["metadata"]) == {"txt": "an astronaut with a flag"}
    assert json.loads(rows[f"{shards / '00000.tar'}#coffee"]["metadata"])["json"]["width"] == 128
    assert astronaut["source_size"] == (shards / "00000.tar").stat().st_size

    # The same images as from the folder: ids, regions, masks and embeddings.
    folder_images = {row["image_id"]: row for row in _rows(from_folder) if "rocket" not in row["uri"]}
    shard_ok = {row["image_id"]: row for row in rows.values() if row["status"] == "ok"}
    assert set(shard_ok) == set(folder_images)
    assert all(row["metadata"] is None for row in folder_images.values())
    folder_regions = {r["region_id"]: r for r in _rows(from_folder, "regions") if r["image_id"] in shard_ok}
    shard_regions = {r["region_id"]: r for r in _rows(db, "regions")}
    assert set(shard_regions) == set(folder_regions) and shard_regions
    for region_id, region in shard_regions.items():
        assert region["rle"] == folder_regions[region_id]["rle"]
        np.testing.assert_allclose(region["embedding"], folder_regions[region_id]["embedding"], atol=1e-4)

    # A rerun opens no finished shard: their bytes are now garbage of the same size and mtime, which
    # would fail as corrupt tars if read. The new shard beside them is read.
    for path in (shards / "00000.tar", shards / "00001.tar"):
        stat = path.stat()
        path.write_bytes(os.urandom(stat.st_size))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = run_index([str(shards / "{00000..00002}.tar")], str(db), SETTINGS)
    assert (again.inputs, again.skipped, again.unread, again.ok, again.failed) == (6, 5, 5, 1, 0), again.render()
    assert len(_rows(db)) == 6


@pytest.mark.slow
def test_an_unfinished_shard_skips_its_committed_samples_by_key(tmp_path, ray_local):
    images = _corpus(tmp_path)
    shard, db = tmp_path / "shards" / "00000.tar", tmp_path / "db"
    assert run_index([str(shard)], str(db), SETTINGS).ok == 2
    # As after a kill between the samples' commit and the shard's record: the shard is opened again.
    # Its astronaut image is overwritten in place (same size, same mtime): hashing it would make a new
    # image, so only a skip by (shard identity, key) leaves the database as it is.
    with tarfile.open(shard) as archive:
        offset = archive.getmember("astronaut.jpg").offset_data
    stat = shard.stat()
    with open(shard, "r+b") as handle:
        handle.seek(offset + 200)
        handle.write(bytes(reversed(images["astronaut"][200:1200])))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    IndexStore.open(str(db), fingerprint=None, embed_dim=None).forget_finished_shards()
    again = run_index([str(shard)], str(db), SETTINGS)
    assert (again.inputs, again.skipped, again.unread, again.ok, again.failed) == (2, 2, 0, 0, 0), again.render()
    assert len(_rows(db)) == 2
    assert run_index([str(shard)], str(db), SETTINGS).unread == 2  # recorded finished again


@pytest.mark.slow
def test_shards_follow_sync_and_removal(tmp_path, ray_local):
    from dataclasses import replace

    from maskdex.storage.removal import remove_images

    images = _corpus(tmp_path)
    shards, db = tmp_path / "shards", tmp_path / "db"
    first = run_index([str(shards / "{00000..00002}.tar")], str(db), SETTINGS)
    assert first.ok == 4
    ids = {row["uri"].rpartition("#")[2]: row["image_id"] for row in _rows(db) if row["status"] == "ok"}

    # A removed sample makes its shard unfinished: the next run opens that shard (only), skips the
    # samples that still have rows by key, and indexes the removed one again, as for a removed file.
    assert remove_images(IndexStore.open(str(db), fingerprint=None, embed_dim=None), [ids["coffee"]]).images == 1
    again = run_index([str(shards / "{00000..00002}.tar")], str(db), SETTINGS)
    assert (again.ok, again.unread) == (1, 4), again.render()  # shards 1 and 2 unopened
    assert ids["coffee"] in {row["image_id"] for row in _rows(db)}

    # Sync: shard 2 is gone, shard 0 is rewritten without its coffee sample. The rocket's rows go,
    # the coffee's go, the astronaut's stay (re-pointed to the new shard identity), shard 1 is unread.
    (shards / "00002.tar").unlink()
    _write_tar(shards / "00000.tar", [("astronaut.jpg", images["astronaut"])])
    synced = run_index([str(shards / "*.tar")], str(db), replace(SETTINGS, sync=True))
    assert (synced.sync["removed"], synced.sync["repointed"]) == (2, 1), synced.render()
    left = {row["image_id"]: row for row in _rows(db)}
    assert ids["astronaut"] in left and ids["chelsea"] in left
    assert ids["coffee"] not in left and ids["rocket"] not in left
    assert left[ids["astronaut"]]["source_size"] == (shards / "00000.tar").stat().st_size
    assert {row["image_id"] for row in _rows(db, "regions")} <= set(left)
    assert run_index([str(shards / "*.tar")], str(db), replace(SETTINGS, sync=True)).sync["removed"] == 0

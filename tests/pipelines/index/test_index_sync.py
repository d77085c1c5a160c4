"""`maskdex index SOURCES --sync` on real Ray and a real LanceDB directory: a deleted file's image goes,
an overwritten file is indexed once under its new hash with its old rows gone, a moved file keeps its
rows, and no other file is read."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lancedb
import pytest
from PIL import Image
from skimage import data

from maskdex.jobs.cli import main
from maskdex.pipelines.index.job import run_index
from maskdex.pipelines.index.sync import SourceScope
from maskdex.storage.index_store import IndexStore
from tests.support.corpus import index_settings

SETTINGS = index_settings(commit_every=4)
ACTORS = ["--sam-actors", "2", "--clip-actors", "1"]


def _photo(name: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(getattr(data, name)()).convert("RGB").resize((96, 64)).save(path)
    return path


def _images(db: str) -> dict[str, dict]:
    return {row["image_id"]: row for row in lancedb.connect(db).open_table("images").to_arrow().to_pylist()}


def _region_images(db: str) -> list[str]:
    return lancedb.connect(db).open_table("regions").to_arrow()["image_id"].to_pylist()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sync(db: str, folder: Path, capsys) -> dict:
    assert main(["index", str(folder), "--db", db, "--sync", "--json", *ACTORS]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_sync_follows_deleted_overwritten_and_moved_files_reading_only_what_changed(tmp_path, ray_local, capsys):
    folder, other = tmp_path / "photos", tmp_path / "other"
    paths = {name: _photo(name, folder / f"{name}.png") for name in ("coffee", "chelsea", "astronaut", "rocket")}
    outside = _photo("camera", other / "camera.png")  # indexed too, but not under the synced SOURCE
    db = str(tmp_path / "db")
    first = run_index([str(folder), str(other)], db, SETTINGS)
    assert first.ok == 5
    ids = {name: _sha(path) for name, path in paths.items()}
    outside_id = _sha(outside)

    paths["coffee"].unlink()
    _photo("moon", paths["chelsea"])  # other content under the same name
    stat = paths["chelsea"].stat()
    os.utime(paths["chelsea"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    new_chelsea = _sha(paths["chelsea"])
    # Same size and mtime, other bytes: were this file read, it would hash to a new image (or fail).
    stat = paths["rocket"].stat()
    paths["rocket"].write_bytes(os.urandom(stat.st_size))
    os.utime(paths["rocket"], ns=(stat.st_atime_ns, stat.st_mtime_ns))

    synced = _sync(db, folder, capsys)
    assert synced["unread"] == 2 and synced["ok"] == 1 and synced["failed"] == 0  # only chelsea.png was read
    assert {key: synced["sync"][key] for key in ("added", "unchanged", "changed", "removed", "repointed")} == \
        {"added": 0, "unchanged": 2, "changed": 1, "removed": 2, "repointed": 0}
    images = _images(db)
    assert set(images) == {ids["astronaut"], ids["rocket"], new_chelsea, outside_id}
    assert images[new_chelsea]["uri"] == str(paths["chelsea"]) and images[new_chelsea]["n_regions"] > 0
    regions = _region_images(db)
    assert not {ids["coffee"], ids["chelsea"]} & set(regions)
    assert regions.count(new_chelsea) == images[new_chelsea]["n_regions"]
    stats = IndexStore.open(db, fingerprint=None, embed_dim=None, read_only=True).stats()
    assert stats["last_sync"]["removed"] == 2 and stats["last_sync"]["sources"] == [str(folder)]

    # Moved: the same bytes under another name keep their row (and regions), re-pointed.
    moved = folder / "sub" / "astro.png"
    moved.parent.mkdir()
    paths["astronaut"].rename(moved)
    regions_before = _region_images(db).count(ids["astronaut"])
    again = _sync(db, folder, capsys)
    assert {key: again["sync"][key] for key in ("added", "changed", "removed", "repointed")} == \
        {"added": 0, "changed": 0, "removed": 0, "repointed": 1}
    row = _images(db)[ids["astronaut"]]
    assert row["uri"] == str(moved) and row["source_size"] == moved.stat().st_size
    assert _region_images(db).count(ids["astronaut"]) == regions_before

    quiet = _sync(db, folder, capsys)  # nothing changed: decided from the listing alone
    assert quiet["unread"] == 3 and quiet["sync"]["removed"] == quiet["sync"]["changed"] == 0
    assert set(_images(db)) == {ids["astronaut"], ids["rocket"], new_chelsea, outside_id}


def test_the_scope_of_a_sync_is_what_the_sources_would_list(tmp_path):
    folder = str(tmp_path / "photos")
    scope = SourceScope([folder, str(tmp_path / "one.jpg"), str(tmp_path / "globbed" / "*.png"),
                         "s3://bucket/prefix/"])
    assert scope.covers(f"{folder}/a.jpg") and scope.covers(f"{folder}/deep/er/b.PNG")
    assert not scope.covers(f"{folder}/notes.txt")  # a folder's walk lists image files only
    assert not scope.covers(f"{folder}2/a.jpg") and not scope.covers(str(tmp_path / "a.jpg"))
    assert scope.covers(str(tmp_path / "one.jpg"))
    assert scope.covers(str(tmp_path / "globbed" / "x.png"))
    assert not scope.covers(str(tmp_path / "globbed" / "x.jpg"))
    assert not scope.covers(str(tmp_path / "globbed" / "sub" / "x.png"))  # * stays in its folder
    assert scope.covers("s3://bucket/prefix/a/b.jpg") and not scope.covers("s3://bucket/prefixed/b.jpg")
    assert not scope.covers(f"{folder}/table.parquet#key-1")  # parquet rows are not synced
    assert SourceScope([str(tmp_path / "**" / "*.jpg")]).covers(str(tmp_path / "a" / "b" / "c.jpg"))

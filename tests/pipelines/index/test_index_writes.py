"""Where the index job's regions are written: by the workers, so the driver receives no region
embedding; and copies of one image in separate batches, stored once."""

from __future__ import annotations

import shutil

import lancedb
import numpy as np
import ray
from PIL import Image
from skimage import data

from maskdex.operators.registry.presets import embedding_dim, get_preset
from maskdex.pipelines.index.job import index_dataset, settings_for_cluster, run_index
from maskdex.pipelines.index.stages import NO_IDENTITY
from maskdex.storage.index_store import IndexStore
from tests.support.corpus import index_settings

# What the driver receives per input: the images row's fields, and where its regions went.
DRIVER_COLUMNS = {"uri", "image_id", "status", "error", "width", "height", "source_size", "source_mtime_ns", "node",
                  "image_embedding", "n_regions", "fragments", "metadata", "shard", "shard_samples"}


def _photos(folder, names=("coffee", "chelsea")):
    folder.mkdir()
    for name in names:
        Image.fromarray(getattr(data, name)()).resize((96, 64)).save(folder / f"{name}.png")
    return sorted(folder.iterdir())


def test_no_region_embedding_reaches_the_driver(tmp_path, ray_local):
    files = _photos(tmp_path / "photos")
    preset = get_preset("tiny")
    dim = embedding_dim(preset.alpha_clip)
    store = IndexStore.open(str(tmp_path / "db"), fingerprint=preset.fingerprint, embed_dim=dim)
    cluster = ray.cluster_resources()
    settings = settings_for_cluster(index_settings(read_batch_size=1), cluster)
    dataset = index_dataset(store, [(str(path), NO_IDENTITY, NO_IDENTITY) for path in files], [], store.known_ids(),
                            settings, cluster)
    batches = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))

    assert set().union(*(batch.keys() for batch in batches)) == DRIVER_COLUMNS
    floats = sum(np.asarray(vector).size for batch in batches for vector in batch["image_embedding"])
    assert floats == len(files) * dim, "one whole-image embedding per image, nothing per region"
    assert sum(int(batch["n_regions"].sum()) for batch in batches) > 0
    assert store.stats()["regions"] == 0, "written, not committed: invisible until the driver commits"


def test_copies_in_separate_batches_store_one_image_and_one_set_of_regions(tmp_path, ray_local):
    folder = tmp_path / "photos"
    _photos(folder)
    coffee = folder / "coffee.png"
    for name in ("copy_1.png", "copy_2.png"):
        shutil.copyfile(coffee, folder / name)
    db = tmp_path / "db"
    summary = run_index([str(folder)], str(db), index_settings(read_batch_size=1, commit_every=1))
    assert (summary.inputs, summary.ok, summary.duplicates) == (4, 2, 2)

    images = lancedb.connect(str(db)).open_table("images").to_arrow().to_pylist()
    regions = lancedb.connect(str(db)).open_table("regions").to_arrow().to_pylist()
    assert len({row["image_id"] for row in images}) == len(images) == 2
    region_ids = [row["region_id"] for row in regions]
    assert len(region_ids) == len(set(region_ids)) == sum(row["n_regions"] for row in images) == summary.regions

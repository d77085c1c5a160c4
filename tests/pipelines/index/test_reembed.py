"""maskdex reembed on a real local Ray instance and real LanceDB directories: a tiny index embedded
again with another random Alpha-CLIP (preset tiny-seed1, the same SAM 2)."""

from __future__ import annotations

from dataclasses import replace

import lancedb
import numpy as np
import pytest
from PIL import Image
from skimage import data

from maskdex.operators.registry.presets import get_preset, reembed_preset
from maskdex.pipelines.common.ray_pools import StageResources
from maskdex.pipelines.index.job import IndexSettings, run_index
from maskdex.pipelines.index.reembed import REEMBED_CLIP, plan_clip_actors, run_reembed
from tests.support.corpus import index_settings

# max_side below the photos' size: the index downscales them for SAM 2, so the re-embed must bring the
# stored (full-size) masks back to the working size exactly.
SETTINGS = index_settings(commit_every=2, max_side=96)


def _table(db, name) -> dict[str, dict]:
    key = "image_id" if name == "images" else "region_id"
    return {row[key]: row for row in lancedb.connect(str(db)).open_table(name).to_arrow().to_pylist()}


def _folder(root):
    root.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).resize((160, 120)).save(root / f"{name}.png")
    (root / "notes.jpg").write_text("not an image: a failed row that the new database keeps\n")
    return root


@pytest.mark.slow
def test_reembed_keeps_masks_and_gives_the_index_jobs_embeddings(tmp_path, ray_local):
    folder = _folder(tmp_path / "photos")
    old, new, fresh = tmp_path / "old", tmp_path / "new", tmp_path / "fresh"
    run_index([str(folder)], str(old), SETTINGS)
    summary = run_reembed(str(old), str(new), replace(SETTINGS, models="tiny-seed1"))
    assert (summary.ok, summary.failed, summary.skipped) == (3, 1, 0), summary.render()
    run_index([str(folder)], str(fresh), replace(SETTINGS, models="tiny-seed1"))

    old_images, new_images, fresh_images = (_table(db, "images") for db in (old, new, fresh))
    assert set(new_images) == set(old_images) == set(fresh_images)
    for image_id, row in new_images.items():
        assert (row["status"], row["n_regions"], row["uri"]) == (old_images[image_id]["status"],
                                                                  old_images[image_id]["n_regions"],
                                                                  old_images[image_id]["uri"])
    assert "not an image" in next(r["error"] for r in new_images.values() if r["status"] == "failed")
    assert new_images[next(iter(new_images))]["models"] == get_preset("tiny-seed1").fingerprint

    old_regions, new_regions, fresh_regions = (_table(db, "regions") for db in (old, new, fresh))
    assert set(new_regions) == set(old_regions) == set(fresh_regions) and new_regions
    for region_id, region in new_regions.items():
        for name in ("rle", "bbox", "area", "predicted_iou", "stability_score"):
            assert region[name] == old_regions[region_id][name], (region_id, name)
        # Another model: other embeddings; the index job with that model on the same masks: the same.
        assert not np.allclose(region["embedding"], old_regions[region_id]["embedding"], atol=1e-3)
        np.testing.assert_allclose(region["embedding"], fresh_regions[region_id]["embedding"], atol=1e-4)
    for image_id, row in new_images.items():
        if row["status"] == "ok":
            np.testing.assert_allclose(row["embedding"], fresh_images[image_id]["embedding"], atol=1e-4)

    again = run_reembed(str(old), str(new), replace(SETTINGS, models="tiny-seed1"))
    assert (again.ok, again.failed, again.skipped) == (0, 0, 4)


def test_the_reembed_plan_keeps_every_core_busy_and_a_slot_for_reads():
    settings = IndexSettings(clip=REEMBED_CLIP)
    for cpus in (1, 2, 3, 16):
        actors, share = plan_clip_actors({"CPU": float(cpus)}, settings)
        assert actors == max(1, round(cpus - settings.read_num_cpus))  # one single-threaded actor per core
        assert actors * share + settings.read_num_cpus <= cpus + 1e-9 and share <= REEMBED_CLIP.num_cpus
    # Two nodes of 2 cores: each node holds 2 actors and still has a read task's slot.
    actors, share = plan_clip_actors({"CPU": 4.0}, settings, largest_node_cpus=2.0)
    assert actors == 4 and 2 * share + settings.read_num_cpus <= 2.0 + 1e-9
    # GPUs decide where there are GPUs; max_actors caps.
    gpu = replace(settings, clip=StageResources(max_actors=None, num_cpus=1.0, num_gpus=1.0))
    assert plan_clip_actors({"CPU": 16.0, "GPU": 4.0}, gpu) == (4, 1.0)
    assert plan_clip_actors({"CPU": 16.0}, replace(settings, clip=replace(REEMBED_CLIP, max_actors=3)))[0] == 3
    # No more actors than read blocks: the rest would only load the model.
    assert plan_clip_actors({"CPU": 16.0}, settings, blocks=3)[0] == 3
    assert plan_clip_actors({"CPU": 16.0}, settings, blocks=40)[0] == 16


def test_the_sam2_part_must_be_the_sources(tmp_path):
    tiny = get_preset("tiny").fingerprint
    assert reembed_preset("tiny-seed1", tiny).name == "tiny-seed1"
    kept = reembed_preset("keep+alpha-clip-tiny-seed1", tiny)
    assert kept.sam2.name == "tiny" and kept.alpha_clip.name == "alpha-clip-tiny-seed1"
    with pytest.raises(ValueError, match="keep\\+alpha-clip-b16"):
        reembed_preset("fast", tiny)
    with pytest.raises(ValueError, match="already"):
        reembed_preset("tiny", tiny)
    with pytest.raises(ValueError, match="after 'keep\\+'"):
        reembed_preset("keep+nonsense", tiny)


def _variants(root, count: int):
    """count distinct small photos: the sample photos turned and flipped."""
    root.mkdir()
    names = ("astronaut", "coffee", "chelsea", "rocket", "camera")
    turns = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270,
             Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM)
    for index in range(count):
        image = Image.fromarray(getattr(data, names[index % len(names)])()).resize((128, 96))
        turn = turns[index // len(names)]
        (image if turn is None else image.transpose(turn)).save(root / f"photo_{index:02d}.png")
    return root


@pytest.mark.slow
def test_a_killed_reembed_resumes_exactly_once_and_runs_no_sam2(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import time

    from tests.pipelines.index.test_index_cluster import ENV, MASKDEX, _rows
    from tests.support.paths import REPO
    from tests.support.sam2_calls import counting_env, sam2_calls

    total = 10  # 5 commits of 2: the kill after the first lands part way
    folder = _variants(tmp_path / "photos", total)
    old, new, calls = tmp_path / "old", tmp_path / "new", tmp_path / "sam2_calls"
    env = counting_env(ENV, calls)

    def run(*args):
        done = subprocess.run([MASKDEX, *args, "--json"], env=env, capture_output=True, text=True, timeout=1200, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout[done.stdout.index("{"):])

    assert run("index", str(folder), "--db", str(old))["ok"] == total
    indexed = sam2_calls(calls)
    assert indexed["generate"] == total and indexed["build"] >= 1  # the count sees SAM 2 where it runs

    reembed = [MASKDEX, "reembed", "--from", str(old), "--db", str(new), "--models", "tiny-seed1",
               "--commit-every", "2", "--clip-batch", "2", "--clip-actors", "1"]
    first = subprocess.Popen(reembed, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 900
        while len(_rows(new, "images")) < 2:
            assert first.poll() is None, first.stdout.read()
            assert time.monotonic() < deadline, "no re-embedded image committed in 900 s (a loaded machine?)"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    committed = len(_rows(new, "images"))
    assert 0 < committed < total, "the kill must land part way through"

    second = run("reembed", "--from", str(old), "--db", str(new), "--models", "tiny-seed1")
    assert (second["ok"], second["skipped"], second["failed"]) == (total - committed, committed, 0)
    old_regions = {row["region_id"]: row for row in _rows(old, "regions")}
    new_images, new_regions = _rows(new, "images"), _rows(new, "regions")
    assert sorted(row["image_id"] for row in new_images) == sorted(row["image_id"] for row in _rows(old, "images"))
    assert sorted(row["region_id"] for row in new_regions) == sorted(old_regions), "each region exactly once"
    assert all(row["rle"] == old_regions[row["region_id"]]["rle"] for row in new_regions)
    assert sam2_calls(calls) == indexed, "the re-embed built or ran SAM 2"

"""`maskdex segment-index`: the indexed images segmented on Ray Data into the segmentations table, killed and
resumed exactly once, equal to `maskdex segment` image by image, failures recorded with their cause."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lancedb
import numpy as np
import pytest
from PIL import Image

from maskdex.jobs.cli import main
from maskdex.pipelines.fewshot.segment_index import SegmentIndexSettings, Selection, run_segment_index
from maskdex.pipelines.fewshot.request import SegmentSpec
from maskdex.pipelines.fewshot.segmenter import Segmenter
from maskdex.pipelines.index.job import run_index
from maskdex.storage import IndexStore
from maskdex.storage.segmentation_store import SegmentationStore
from tests.support.corpus import index_settings
from tests.support.paths import REPO
from tests.support.synthetic import SEGMENT_SETTINGS, add_scenes, scene

pytestmark = pytest.mark.slow
MASKDEX = str(Path(sys.executable).parent / "maskdex")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
N_IMAGES = 10


def write_scenes(folder: Path, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paths = []
    for number in range(count):
        paths.append(folder / f"scene_{number}.png")
        Image.fromarray(scene(rng, size=(64, 80))[0]).save(paths[-1])
    return paths


def indexed_db(root: Path, count: int, seed: int) -> tuple[str, list[Path]]:
    """An index of `count` synthetic scenes with a support set 'scenes' beside it."""
    paths = write_scenes(root / "images", count, seed)
    db = str(root / "db")
    assert run_index([str(root / "images")], db, index_settings()).ok == count
    add_scenes(Segmenter(db, SEGMENT_SETTINGS, create=True), "scenes", per_class=1, seed=0)
    return db, paths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, ray_local) -> tuple[str, list[Path]]:
    return indexed_db(tmp_path_factory.mktemp("segment_index"), N_IMAGES, seed=21)


def segmentations(db: str, **where) -> list[dict]:
    try:
        table = lancedb.connect(db).open_table("segmentations")
    except (ValueError, FileNotFoundError, OSError):
        return []
    clause = " AND ".join(f"{name} = {value}" for name, value in where.items()) or None
    query = table.search()
    if clause:
        query = query.where(clause)
    return query.limit(None).to_arrow().to_pylist()


def segment_index(*args, timeout=600) -> dict:
    done = subprocess.run([MASKDEX, "segment-index", *args, "--json"], env=ENV, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def labels_of(row: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(row["labels_png"])))


def committed_rows(db: str, seed: int) -> int:
    try:
        return lancedb.connect(db).open_table("segmentations").count_rows(f"seed = {seed}")
    except (ValueError, FileNotFoundError, OSError):
        return 0


def test_a_killed_job_resumes_and_segments_every_image_exactly_once(corpus, ray_local):
    db, paths = corpus
    # The CLI joins the tests' Ray instance as a cluster, which outlives the killed driver (and whose
    # start on a loaded machine the test does not pay for again).
    args = ["--db", db, "--set", "scenes", "--all", "--seed", "11", "--batch-size", "1", "--commit-every", "1",
            "--address", ray_local.get_runtime_context().gcs_address]
    first = subprocess.Popen([MASKDEX, "segment-index", *args], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while True:
            # The driver is stopped while the table is counted, so that it cannot commit the rest of the
            # images between the count and the kill however slow the count is on a loaded machine.
            os.killpg(first.pid, signal.SIGSTOP)
            if committed_rows(db, seed=11) >= 1:
                break
            os.killpg(first.pid, signal.SIGCONT)
            if first.poll() is not None:
                pytest.fail(f"the job ended before committing an image: {first.stdout.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no image segmented within 300s")
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the driver already ended (and was reaped)
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    committed = len(segmentations(db, seed=11))
    assert 0 < committed < N_IMAGES, "the kill must land part way through"

    second = segment_index(*args)
    assert second["skipped"] == committed and second["ok"] == N_IMAGES - committed and second["failed"] == 0
    rows = segmentations(db, seed=11)
    ids = [row["image_id"] for row in rows]
    assert len(ids) == len(set(ids)) == N_IMAGES
    assert set(ids) == set(IndexStore.open(db, fingerprint=None, embed_dim=None, read_only=True).image_uris())
    for row in rows:
        assert row["status"] == "ok" and row["classes"] == ["brick", "grass", "sand", "sky"]
        labels = labels_of(row)
        assert labels.shape == (row["height"], row["width"]) == (64, 80)
        shares = np.bincount(labels.ravel(), minlength=4) / labels.size
        np.testing.assert_allclose(row["pixel_fractions"], shares, atol=1e-6)

    third = segment_index(*args)
    assert third["ok"] == third["failed"] == 0 and third["skipped"] == N_IMAGES
    assert len(segmentations(db, seed=11)) == N_IMAGES


@pytest.mark.parametrize("mode", ["patch", "region"])
def test_each_result_equals_maskdex_segment_on_the_same_image_and_seed(corpus, tmp_path, capsys, mode):
    db, paths = corpus
    chosen = [str(path) for path in paths[:3]]
    index = IndexStore.open(db, fingerprint=None, embed_dim=None, read_only=True)
    wanted = {image_id for image_id, uri in index.image_uris().items() if uri in chosen}
    # The job over every image, the heads of three images trained together per call.
    assert main(["segment-index", "--db", db, "--set", "scenes", "--all", "--mode", mode, "--seed", "3",
                 "--classes", "sand,sky,grass,brick", "--batch-size", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] == N_IMAGES and summary["classes"] == ["sand", "sky", "grass", "brick"]
    rows = {row["image_id"]: row for row in segmentations(db, seed=3, mode=f"'{mode}'")}
    assert wanted <= set(rows)

    assert main(["segment", *chosen, "--db", db, "--set", "scenes", "--mode", mode, "--seed", "3",
                 "--classes", "sand,sky,grass,brick", "--out", str(tmp_path / "out"), "--json"]) == 0
    for single in json.loads(capsys.readouterr().out):
        row = rows[single["image_id"]]
        assert row["status"] == "ok" and row["uri"] == single["image"]
        assert np.array_equal(labels_of(row), np.asarray(Image.open(single["outputs"]["labels"])))
        assert dict(zip(row["classes"], row["pixel_fractions"])) == pytest.approx(single["pixel_fractions"], abs=1e-6)
        assert row["regions"] == single["regions"] == ("index" if mode == "region" else None)
        assert row["used_fallback"] is single["used_fallback"] is False


def test_failures_are_recorded_with_their_cause_and_retried_on_request(tmp_path, ray_local):
    db, paths = indexed_db(tmp_path, 4, seed=33)
    index = IndexStore.open(db, fingerprint=None, embed_dim=None, read_only=True)
    ids = {uri: image_id for image_id, uri in index.image_uris().items()}
    gone, changed = paths[0], paths[1]
    shutil.move(gone, tmp_path / "away.png")
    original = changed.read_bytes()
    Image.fromarray(np.zeros((64, 80, 3), dtype=np.uint8)).save(changed)

    settings = SegmentIndexSettings(segment=SEGMENT_SETTINGS)
    request = SegmentSpec("scenes", ("sky", "grass", "brick", "sand"))
    summary = run_segment_index(db, request, Selection(), settings)
    assert (summary.ok, summary.failed) == (2, 2)
    store = SegmentationStore.open(db, create=False)
    rows = {row["uri"]: row for row in store.rows(summary.key)}
    assert rows[str(gone)]["status"] == "failed" and "cannot read image" in rows[str(gone)]["error"]
    assert rows[str(changed)]["status"] == "failed" and "changed since it was indexed" in rows[str(changed)]["error"]
    assert rows[str(changed)]["labels_png"] is None
    assert {rows[str(path)]["status"] for path in paths[2:]} == {"ok"}

    # A re-run leaves recorded failures alone; with retry_failed it segments them again.
    shutil.move(tmp_path / "away.png", gone)
    changed.write_bytes(original)
    again = run_segment_index(db, request, Selection(), settings)
    assert (again.ok, again.failed, again.skipped) == (0, 0, 4)
    retried = run_segment_index(db, request, Selection(), SegmentIndexSettings(segment=SEGMENT_SETTINGS,
                                                                               retry_failed=True))
    assert (retried.ok, retried.failed, retried.skipped) == (2, 0, 2)
    rows = store.rows(summary.key)
    assert sorted(row["image_id"] for row in rows) == sorted(ids.values())
    assert {row["status"] for row in rows} == {"ok"}

    # The top k of a text search: exactly the images the search ranks first.
    from maskdex.pipelines.search import TextSearcher

    top = [hit["image_id"] for hit in TextSearcher(db, device="cpu").search("a red brick wall", k=2)]
    searched = run_segment_index(db, SegmentSpec("scenes", seed=5), Selection("a red brick wall", k=2), settings)
    assert searched.selected == searched.ok == 2
    assert sorted(row["image_id"] for row in store.rows(searched.key)) == sorted(top)


def test_what_cannot_run_is_refused_before_any_image(corpus, tmp_path, capsys):
    db, _ = corpus
    assert main(["segment-index", "--db", db, "--set", "nope", "--all"]) == 2
    assert "no support set 'nope'" in capsys.readouterr().err
    assert main(["segment-index", "--db", db, "--set", "scenes", "--all", "-k", "3"]) == 2
    assert "-k goes with --query" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["segment-index", "--db", db, "--set", "scenes"])
    assert "one of the arguments --query --all is required" in capsys.readouterr().err
    empty = str(tmp_path / "empty")
    add_scenes(Segmenter(empty, SEGMENT_SETTINGS, create=True), "scenes", per_class=1, seed=0)
    assert main(["segment-index", "--db", empty, "--set", "scenes", "--all"]) == 2
    assert "no maskdex index at" in capsys.readouterr().err

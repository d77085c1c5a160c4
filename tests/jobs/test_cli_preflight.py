"""What `maskdex` checks before it starts anything, its exit statuses, and how it ends on a closed stdout.

The CLI runs as a subprocess, as a user or a scheduler runs it. Ray is pointed at a temp dir of the
test's own (RAY_TMPDIR): a command that starts Ray leaves a session folder there, so an empty one
shows that Ray never started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from benchmarks.synthetic_regions import clustered_embeddings, index_rows
from maskdex.jobs.cli import describe, main
from maskdex.operators.registry.presets import PRESETS, embedding_dim, weight_files
from maskdex.pipelines.index.job import IndexSummary
from maskdex.storage import IndexStore

MASKDEX = str(Path(sys.executable).parent / "maskdex")


def run(args: list[str] | str, tmp_path: Path, *, shell: bool = False, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray"), "MASKDEX_LOG_DIR": str(tmp_path / "logs"),
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run(args if shell else [MASKDEX, *args], cwd=tmp_path, env=environment, capture_output=True,
                          text=True, timeout=600, shell=shell, executable="/bin/bash" if shell else None)


def ray_started(tmp_path: Path) -> bool:
    return (tmp_path / "ray").exists() and any((tmp_path / "ray").iterdir())


def no_traceback(done: subprocess.CompletedProcess) -> bool:
    return "Traceback" not in done.stderr and "Traceback" not in done.stdout


def test_index_names_every_missing_weight_file_and_starts_nothing(tmp_path):
    photo = tmp_path / "coffee.jpg"
    Image.fromarray(data.coffee()).save(photo)
    weights = tmp_path / "weights"
    weights.mkdir()
    needed = [f.filename for f in weight_files("fast", ("sam2", "alpha_clip"))]
    assert len(needed) == 3
    (weights / needed[1]).write_bytes(b"present")  # one of them is there: only the others are named

    done = run(["index", str(photo), "--db", "db", "--models", "fast"], tmp_path, MASKDEX_WEIGHTS=str(weights))
    assert done.returncode == 2, done.stderr
    for name in (needed[0], needed[2]):
        assert f"missing {weights / name}" in done.stderr, done.stderr
    assert needed[1] not in done.stderr
    assert "needs 2 weight files" in done.stderr and "MASKDEX_ALLOW_DOWNLOAD" in done.stderr
    assert len(done.stderr.splitlines()) <= 5 and no_traceback(done)
    assert done.stdout == ""
    assert not (tmp_path / "db").exists()
    assert not ray_started(tmp_path)


def test_index_of_a_source_that_does_not_exist_fails_before_anything_starts(tmp_path):
    done = run(["index", "/nonexistent-photos", "--db", "db"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == ("maskdex index: error: source '/nonexistent-photos' does not exist "
                                   "(looked at /nonexistent-photos)")
    assert not (tmp_path / "db").exists()
    assert not ray_started(tmp_path)

    (tmp_path / "empty").mkdir()
    done = run(["index", "empty", "--db", "db"], tmp_path)
    assert done.returncode == 2 and "empty: no image, parquet or tar file there" in done.stderr
    assert not (tmp_path / "db").exists()


def test_read_commands_on_a_missing_database_create_nothing(tmp_path, capsys):
    for args in (["search", "a dog", "--db", "no-such-db"], ["stats", "--db", "no-such-db"]):
        done = run(args, tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == f"maskdex {args[0]}: error: no maskdex index at no-such-db: there is no such folder"
    # The other readers, in this process (the same main()).
    db = str(tmp_path / "no-such-db")
    for args in (["build-index", "--db", db], ["supports", "list", "--db", db],
                 ["supports", "remove", "--db", db, "--set", "x"],
                 ["segment-index", "--db", db, "--set", "x", "--all"]):
        assert main(args) == 2, args
        assert "no such folder" in capsys.readouterr().err, args
    assert main(["eval", "retrieval", "--db", db, "--annotations", "a.json", "--out", str(tmp_path / "out")]) == 2
    assert "a.json does not exist" in capsys.readouterr().err
    assert not (tmp_path / "no-such-db").exists() and not (tmp_path / "out").exists()
    assert not ray_started(tmp_path)


def tiny_index(db: Path, images: int = 60) -> None:
    tiny = PRESETS["tiny"]
    store = IndexStore.open(str(db), fingerprint=tiny.fingerprint, embed_dim=embedding_dim(tiny.alpha_clip))
    store.commit(*index_rows(clustered_embeddings(images * 5, embedding_dim(tiny.alpha_clip), cluster_size=5),
                             regions_per_image=5))


def test_search_into_a_closed_pipe_ends_quietly(tmp_path):
    tiny_index(tmp_path / "db")
    full = run(["search", "a dog", "--db", "db", "--json", "-k", "50"], tmp_path)
    assert full.returncode == 0 and len(full.stdout) > 600, full.stderr
    for reader in ("head -c 600", "true"):  # true closes the pipe before maskdex writes at all
        done = run(f"set -o pipefail; maskdex search 'a dog' --db db --json -k 50 | {reader} > /dev/null", tmp_path,
                   shell=True)
        assert done.returncode in (0, 141), (reader, done.stderr)
        assert done.stderr == "", (reader, done.stderr)


def test_the_exit_status_rule():
    summary = IndexSummary(ok=95, failed=5)
    assert summary.too_many_failures(0.1) is None
    assert "5 of 100 inputs failed" in summary.too_many_failures(0.01)
    assert IndexSummary(ok=0, failed=3).too_many_failures(1.0) == "no input could be indexed: all 3 failed"
    assert IndexSummary(skipped=10).too_many_failures(0.0) is None  # all done before: the job's work is done


def test_an_error_a_ray_worker_raised_is_told_by_its_own_exception():
    import ray.exceptions

    try:
        raise ValueError("cannot read checkpoint /w/sam.pt")
    except ValueError as error:
        wrapped = ray.exceptions.RayTaskError("MaskStage.__init__", "Traceback ...", error).as_instanceof_cause()
    assert describe(wrapped) == ("cannot read checkpoint /w/sam.pt", True)
    assert describe(RuntimeError("boom")) == ("RuntimeError: boom", False)


@pytest.mark.slow
def test_a_run_that_indexes_nothing_fails_and_one_bad_file_of_many_does_not(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "notes.jpg").write_text("a text file with a .jpg name\n")
    # Ray's socket paths must stay under 108 bytes: its temp dir goes where pytest's long names are not.
    ray_dir = tempfile.mkdtemp(prefix="maskdex-ray-", dir="/tmp")
    done = run(["index", "photos", "--db", "db"], tmp_path, RAY_TMPDIR=ray_dir)
    assert done.returncode == 1, done.stderr
    assert "failed: " in done.stdout and "notes.jpg" in done.stdout  # listed, and recorded
    assert "no input could be indexed: all 1 failed" in done.stderr and no_traceback(done)

    for name in ("coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(photos / f"{name}.jpg")
    (photos / "more_notes.jpg").write_text("another text file\n")
    done = run(["index", "photos", "--db", "db", "--max-failed-fraction", "0.5"], tmp_path, RAY_TMPDIR=ray_dir)
    shutil.rmtree(ray_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr  # 1 of 3 tried failed; notes.jpg was done before
    assert "ok 2, failed 1, already indexed 1" in done.stdout
    assert IndexStore.open(str(tmp_path / "db"), fingerprint=None, embed_dim=None, read_only=True).stats()["images_failed"] == 2


def test_model_commands_name_the_missing_files_of_the_models_they_load(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MASKDEX_WEIGHTS", str(tmp_path / "weights"))
    assert main(["demo", "--models", "fast"]) == 2
    err = capsys.readouterr().err
    assert all(f"missing {tmp_path / 'weights' / f.filename}" in err for f in weight_files("fast", ("sam2", "alpha_clip")))
    dense = weight_files("fast", ("dense_clip",))[0].filename
    assert dense not in err

    photo = tmp_path / "coffee.jpg"
    Image.fromarray(data.coffee()).save(photo)
    assert main(["segment", str(photo), "--db", str(tmp_path / "db"), "--set", "s", "--out", str(tmp_path / "out"),
                 "--models", "fast"]) == 2
    err = capsys.readouterr().err
    assert "needs 1 weight file that is not" in err and f"missing {tmp_path / 'weights' / dense}" in err
    assert not (tmp_path / "db").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_first_run_that_fails_in_its_actors_leaves_no_database_and_names_the_file(tmp_path):
    """Checkpoints that are there but unreadable pass the preflight (it looks for files, the actors read
    them): the run fails, names the file, and leaves no empty index behind."""
    photo = tmp_path / "coffee.jpg"
    Image.fromarray(data.coffee()).resize((96, 64)).save(photo)
    weights = tmp_path / "weights"
    weights.mkdir()
    for file in weight_files("fast", ("sam2", "alpha_clip")):
        (weights / file.filename).write_bytes(b"not a checkpoint")

    ray_dir = tempfile.mkdtemp(prefix="ray")  # Ray's socket paths must stay under 107 bytes
    done = run(["index", str(photo), "--db", "db", "--models", "fast"], tmp_path, MASKDEX_WEIGHTS=str(weights),
               RAY_TMPDIR=ray_dir)
    shutil.rmtree(ray_dir, ignore_errors=True)
    assert done.returncode == 1, done.stderr
    assert "cannot read checkpoint" in done.stderr and str(weights) in done.stderr, done.stderr
    assert not (tmp_path / "db").exists()

"""The index job as users run it: a CLI process, killed and resumed; a two-node cluster losing a node;
`ray job submit` to a `ray start --head` cluster. Each test owns its Ray processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lancedb
import pytest
from PIL import Image

from tests.support.corpus import build_corpus
from tests.support.paths import REPO
from tests.support.ports import free_port

pytestmark = pytest.mark.slow
MASKDEX = str(Path(sys.executable).parent / "maskdex")
# conftest has set Ray to loopback, without auth. The venv goes first on PATH, as for a user who
# activated it: a job entrypoint such as `maskdex index` is looked up on the head node's PATH.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1",
       "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


def _rows(db: Path, table: str) -> list[dict]:
    try:
        return lancedb.connect(str(db)).open_table(table).to_arrow().to_pylist()
    except (ValueError, FileNotFoundError, OSError):
        return []


def _wait_for_images(db: Path, at_least: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(_rows(db, "images")) >= at_least:
            return
        if process.poll() is not None:
            pytest.fail(f"index job ended before committing {at_least} images: {process.stdout.read()}")
        time.sleep(0.5)
    pytest.fail(f"no {at_least} images committed within {timeout}s")


def _assert_exactly_once(db: Path, expected_images: int) -> None:
    images = _rows(db, "images")
    regions = _rows(db, "regions")
    ids = [row["image_id"] for row in images]
    assert len(ids) == len(set(ids)) == expected_images
    region_ids = [row["region_id"] for row in regions]
    assert len(region_ids) == len(set(region_ids)), "a region was written twice"
    assert {row["image_id"] for row in regions} <= set(ids), "regions without their image row"
    assert len(regions) == sum(row["n_regions"] for row in images)


def _index(*args, timeout=600) -> dict:
    done = subprocess.run([MASKDEX, "index", *args, "--json"], env=ENV, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def test_killed_job_resumes_exactly_once(tmp_path):
    corpus = build_corpus(tmp_path / "corpus", photos=("astronaut", "coffee", "chelsea", "rocket", "camera"),
                          with_bad=False)
    for index in range(5):  # more distinct images, so the kill lands part way
        Image.open(corpus.ok[index]).rotate(90, expand=True).save(corpus.root / f"rotated_{index}.png")
    total = len(corpus.ok) + 5
    inputs = corpus.inputs + 5
    db = tmp_path / "db"
    # Alpha-CLIP calls of 2 images commit in steps of 2, so the kill lands between commits.
    first = subprocess.Popen([MASKDEX, "index", str(corpus.root), "--db", str(db), "--commit-every", "2",
                              "--clip-batch", "2"],
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True, cwd=REPO)
    try:
        _wait_for_images(db, 2, first, timeout=300)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    committed = len(_rows(db, "images"))
    assert 0 < committed < total, "the kill must land part way through"

    second = _index(str(corpus.root), "--db", str(db))
    assert second["ok"] == total - committed and second["failed"] == 0
    assert second["skipped"] + second["duplicates"] == inputs - second["ok"]
    _assert_exactly_once(db, total)
    third = _index(str(corpus.root), "--db", str(db))
    assert third["ok"] == third["failed"] == third["regions"] == 0 and third["skipped"] == inputs
    _assert_exactly_once(db, total)


SCENARIO = r"""
import json, subprocess, sys, time
import lancedb
import ray
from ray.cluster_utils import Cluster
spread_corpus, loss_corpus, db, maskdex = sys.argv[1:5]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
worker = cluster.add_node(num_cpus=2)
cluster.wait_for_nodes()
ray.init(address=cluster.address)

def index(corpus):
    return [maskdex, "index", corpus, "--db", db, "--address", cluster.address, "--sam-actors", "2",
            "--commit-every", "2", "--clip-batch", "2", "--json"]

def summary(out):
    return json.loads(out[out.find("{"):])

# 1. Both nodes up for a whole run: the SAM 2 actors spread over them.
spread = subprocess.run(index(spread_corpus), capture_output=True, text=True, timeout=400)
report = {"spread_rc": spread.returncode, "spread_nodes": summary(spread.stdout)["nodes"] if spread.returncode == 0 else spread.stderr[-2000:]}

# 2. The worker node is stopped part way through a run.
before = lancedb.connect(db).open_table("images").count_rows()
job = subprocess.Popen(index(loss_corpus), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
while lancedb.connect(db).open_table("images").count_rows() < before + 2 and job.poll() is None:
    time.sleep(0.3)
cluster.remove_node(worker)
try:
    out, err = job.communicate(timeout=300)
    report["loss_rc"] = job.returncode
except subprocess.TimeoutExpired:
    job.kill()
    report["loss_rc"] = "timeout"
rerun = subprocess.run(index(loss_corpus), capture_output=True, text=True, timeout=400)
report["rerun_rc"] = rerun.returncode
report["rerun"] = summary(rerun.stdout) if rerun.returncode == 0 else rerun.stderr[-2000:]
print(json.dumps(report))
ray.shutdown()
cluster.shutdown()
"""


def test_two_nodes_share_the_work_and_survive_losing_one(tmp_path):
    spread = build_corpus(tmp_path / "spread", photos=("astronaut", "coffee", "chelsea", "rocket", "camera",
                                                       "cat", "coins", "page"), with_bad=False)
    for index in range(12):  # enough blocks that the second node's actor, ready later, still gets work
        Image.open(spread.ok[index % len(spread.ok)]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(
            90 * (index // 8), expand=True).save(spread.root / f"flipped_{index}.png")
    loss = build_corpus(tmp_path / "loss", photos=("astronaut", "coffee", "chelsea", "rocket", "camera"),
                        with_bad=False)
    for index in range(7):  # distinct from the first corpus, so every image of this run is new
        Image.open(loss.ok[index % len(loss.ok)]).rotate(90 + 90 * (index // 5), expand=True).save(
            loss.root / f"rotated_{index}.png")
    db = tmp_path / "db"
    done = subprocess.run([sys.executable, "-c", SCENARIO, str(spread.root), str(loss.root), str(db), MASKDEX],
                          env=ENV, capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["spread_rc"] == 0, report
    assert len(report["spread_nodes"]) == 2, f"SAM 2 ran on {len(report['spread_nodes'])} node(s): {report}"
    assert report["rerun_rc"] == 0, f"after losing a node, a rerun must finish the job: {report}"
    # The loss corpus's base photos are byte-identical to the spread corpus's: only its 7 rotations are new.
    _assert_exactly_once(db, len(spread.ok) + 12 + 7)


def test_ray_job_submit_to_a_head_node(tmp_path):
    corpus = build_corpus(tmp_path / "corpus", photos=("coffee", "chelsea"), with_bad=False)
    db = tmp_path / "db"
    ray_bin = str(Path(sys.executable).parent / "ray")
    log = open(tmp_path / "head.log", "w")
    # --block keeps the head's processes in this process group, so the test stops exactly them
    # (`ray stop` would stop every Ray instance on the machine, other tests' included).
    # Free ports throughout: another Ray on this machine (this session's own) holds the defaults.
    gcs, dashboard, agent, agent_grpc, metrics = (free_port() for _ in range(5))
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
         "--num-cpus", "4", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
         "--metrics-export-port", str(metrics), "--include-dashboard", "true", "--disable-usage-stats"],
        env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        done = None
        for _ in range(60):  # the job server refuses jobs until the dashboard and its agent are up
            done = subprocess.run(
                [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", str(REPO),
                 "--", "maskdex", "index", str(corpus.root), "--db", str(db)],
                env=ENV, capture_output=True, text=True, timeout=600)
            output = done.stderr + done.stdout
            if "Connection refused" not in output and "try again later" not in output:
                break
            time.sleep(2)
        head_log = (tmp_path / "head.log").read_text()[-2000:]
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + head_log
        assert "succeeded" in done.stdout.lower(), done.stdout[-2000:]
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
    _assert_exactly_once(db, len(corpus.ok))

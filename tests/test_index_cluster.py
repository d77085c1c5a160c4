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

from tests.corpus import build_corpus

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
MASKDEX = str(Path(sys.executable).parent / "maskdex")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}  # conftest has set Ray to loopback, without auth


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
    for index in range(15):  # more distinct images, so the kill lands part way
        Image.open(corpus.ok[index % len(corpus.ok)]).rotate(90 + 90 * (index // 5), expand=True).save(
            corpus.root / f"rotated_{index}.png")
    total = len(corpus.ok) + 15
    inputs = corpus.inputs + 15
    db = tmp_path / "db"
    first = subprocess.Popen([MASKDEX, "index", str(corpus.root), "--db", str(db), "--commit-every", "2"],
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


SCENARIO = r'''
import json, subprocess, sys, time
import ray
import ray.util.state
from ray.cluster_utils import Cluster
corpus, db, maskdex = sys.argv[1:4]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": True,
                                                        "dashboard_host": "127.0.0.1"})
worker = cluster.add_node(num_cpus=2)
cluster.wait_for_nodes()
ray.init(address=cluster.address)
args = [maskdex, "index", corpus, "--db", db, "--address", cluster.address, "--sam-actors", "2",
        "--commit-every", "2", "--json"]
job = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
import lancedb
while True:
    try:
        if lancedb.connect(db).open_table("images").count_rows() >= 2:
            break
    except Exception:
        pass
    if job.poll() is not None:
        break
    time.sleep(0.3)
nodes_seen = {a["node_id"] for a in ray.util.state.list_actors(filters=[("class_name", "=", "_MapWorker")])}
cluster.remove_node(worker)
try:
    first_rc = job.wait(timeout=240)
except subprocess.TimeoutExpired:
    job.kill(); first_rc = "timeout"
rerun = subprocess.run(args, capture_output=True, text=True, timeout=400)
print(json.dumps({"nodes": len(nodes_seen), "first_rc": first_rc, "rerun_rc": rerun.returncode,
                  "rerun": rerun.stdout[rerun.stdout.find("{"):] if rerun.returncode == 0 else rerun.stderr[-2000:]}))
ray.shutdown()
cluster.shutdown()
'''


def test_two_nodes_share_the_work_and_survive_losing_one(tmp_path):
    corpus = build_corpus(tmp_path / "corpus", photos=("astronaut", "coffee", "chelsea", "rocket", "camera",
                                                       "cat", "coins", "page"), with_bad=False)
    db = tmp_path / "db"
    done = subprocess.run([sys.executable, "-c", SCENARIO, str(corpus.root), str(db), MASKDEX], env=ENV,
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["nodes"] == 2, f"model actors ran on {report['nodes']} node(s): {report}"
    assert report["rerun_rc"] == 0, report
    _assert_exactly_once(db, len(corpus.ok))


def test_ray_job_submit_to_a_head_node(tmp_path):
    corpus = build_corpus(tmp_path / "corpus", photos=("coffee", "chelsea"), with_bad=False)
    db = tmp_path / "db"
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = "26379"
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", port, "--num-cpus", "4",
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", "28265",
                    "--include-dashboard", "true", "--disable-usage-stats"], env=ENV, check=True,
                   capture_output=True, timeout=180)
    try:
        done = subprocess.run(
            [ray_bin, "job", "submit", "--address", "http://127.0.0.1:28265", "--working-dir", str(REPO),
             "--", "maskdex", "index", str(corpus.root), "--db", str(db)],
            env=ENV, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "succeeded" in done.stdout.lower(), done.stdout[-2000:]
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=ENV, capture_output=True, timeout=120)
    _assert_exactly_once(db, len(corpus.ok))

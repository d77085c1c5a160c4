"""The segmentation evaluation end to end on a generated folder-layout data set, with the tiny preset.

The CLI runs on a two-node local Ray cluster (in a subprocess, so that it does not meet the session's
Ray) and must give exactly the confusion matrices of a single-process run with the same settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskdex.pipelines.evaluation.datasets import open_dataset
from maskdex.pipelines.evaluation.report import write_segmentation_report
from maskdex.pipelines.evaluation.segmentation import SegmentationEvalSettings, evaluate_segmentation
from tests.support import seg_datasets
from tests.support.paths import REPO

MASKDEX = str(Path(sys.executable).parent / "maskdex")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}  # conftest has set Ray to loopback, without auth
# Small windows for 64 x 80 images, and fewer RNS steps than the paper's 700: same code, less time.
SMALL = dict(short_side=64, rns_steps=100, shard_size=1)

SCENARIO = r'''
import json, subprocess, sys
import ray
import ray.util.state
from ray.cluster_utils import Cluster
data, out, maskdex = sys.argv[1:4]
# Logical CPUs to spare on both nodes, so that placing the shard actors never waits for the slots of
# the support stage's actors or of Ray Data's tasks.
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "include_dashboard": True,
                                                        "dashboard_host": "127.0.0.1"})
cluster.add_node(num_cpus=4)
cluster.wait_for_nodes()
done = subprocess.run([maskdex, "eval", "segmentation", "--data", data, "--dataset", "folder",
                       "--methods", "zero-shot,rns,knn", "--shots", "1,2", "--seeds", "0,1", "--out", out,
                       "--address", cluster.address, "--short-side", "64", "--rns-steps", "100",
                       "--shard-size", "1", "--actors", "2"], capture_output=True, text=True, timeout=600)
ray.init(address=cluster.address)
# An actor Ray Data asked for but never placed has no node.
actors = [a for a in ray.util.state.list_actors(detail=True, limit=1000)
          if "_ShardStage" in a["class_name"] and a["node_id"]]
print(json.dumps({"rc": done.returncode, "stdout": done.stdout[-4000:], "stderr": done.stderr[-4000:],
                  "actor_nodes": sorted(a["node_id"] for a in actors)}))
ray.shutdown()
cluster.shutdown()
'''


@pytest.mark.slow
def test_two_node_cluster_report_equals_a_single_process_run(tmp_path):
    data = tmp_path / "data"
    seg_datasets.write_folder(data, n_train=6, n_val=4)
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-c", SCENARIO, str(data), str(out), MASKDEX], env=ENV,
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    assert run["rc"] == 0, run["stderr"]

    results = json.loads((out / "results.json").read_text())
    keys = {(r["method"], r["shots"], r["seed"]) for r in results["results"]}
    assert keys == {(m, s, seed) for m in ("zero-shot", "rns", "knn") for s in (1, 2) for seed in (0, 1)}
    assert results["evaluated_images"] == results["val_images"] == 4 and results["failed_shards"] == []
    # The model actors spread over both nodes (which of them evaluates a shard is up to Ray Data). On
    # a loaded machine the second actor's worker may still be starting when the first has done every
    # shard; Ray Data then ends it unplaced, so only the actors that were placed are compared.
    placed = run["actor_nodes"]
    assert 1 <= len(placed) <= 2 and len(set(placed)) == len(placed), placed
    assert {shard["node"] for shard in results["shards"]} <= set(placed)
    supports = {(s["shots"], s["seed"]): s for s in results["supports"]}
    for record in results["results"]:
        assert 0.0 <= record["miou"] <= 1.0 and set(record["per_class_iou"]) == {"sky", "grass", "brick", "sand"}
        if record["method"] != "zero-shot":
            support = supports[(record["shots"], record["seed"])]
            assert record["support_ids"] == support["image_ids"]
            assert min(support["images_per_class"].values()) >= record["shots"]
    with Image.open(out / "miou_vs_shots.png") as plot:
        plot.load()
        assert plot.format == "PNG" and plot.size[0] > 300
    report = (out / "report.md").read_text()
    assert "| method | 1 shot | 2 shots |" in report and "re-implementations" in report
    assert "| rns |" in run["stdout"]

    local = evaluate_segmentation(open_dataset("folder", data), SegmentationEvalSettings(
        methods=("zero-shot", "rns", "knn"), shots=(1, 2), seeds=(0, 1), **SMALL), single_process=True)
    distributed = np.load(out / "confusion.npz")
    assert len(distributed.files) == len(local.confusions) == 12
    for (method, shots, seed), matrix in local.confusions.items():
        np.testing.assert_array_equal(distributed[f"{method}__{shots}shot__seed{seed}"], matrix)
    assert [s["image_ids"] for s in results["supports"]] == [list(s.image_ids) for s in local.supports]
    # RNS learns the textures from its supports; the random-weight text of the tiny preset cannot.
    by_key = {(r["method"], r["shots"], r["seed"]): r["miou"] for r in results["results"]}
    assert np.mean([by_key[("rns", 2, seed)] for seed in (0, 1)]) > by_key[("zero-shot", 2, 0)] + 0.3


@pytest.mark.slow
def test_ablations_and_freeda_on_ray_with_a_failed_shard(tmp_path, ray_local):
    data = tmp_path / "data"
    seg_datasets.write_folder(data, n_train=6, n_val=3)
    dataset = open_dataset("folder", data)
    broken = dataset.split("val")[1]
    Path(broken.labels).write_bytes(b"not a png")  # listed and present, but unreadable
    settings = SegmentationEvalSettings(methods=("freeda", "rns-no-text", "rns-no-relevance"), shots=(1,),
                                        seeds=(0,), actors=1, **SMALL)
    evaluation = evaluate_segmentation(dataset, settings)

    [failed] = evaluation.failed_shards
    assert failed.shard == 1 and failed.sample_ids == (broken.id,) and failed.attempts == 2
    assert "val_001.png" in failed.error
    assert evaluation.evaluated_images == 2 and evaluation.val_images == 3
    paths = write_segmentation_report(evaluation, tmp_path / "report")
    results = json.loads(paths["results"].read_text())
    assert results["failed_shards"] == [{"shard": 1, "image_ids": [broken.id], "attempts": 2, "error": failed.error}]
    assert {r["method"] for r in results["results"]} == {"freeda", "rns-no-text", "rns-no-relevance"}
    assert all(r["miou"] is not None and r["images"] == 2 for r in results["results"])
    assert "1 shard(s) failed" in paths["report"].read_text()


def test_region_mode_with_sam2_regions(tmp_path):
    data = tmp_path / "data"
    seg_datasets.write_folder(data, n_train=4, n_val=2)
    evaluation = evaluate_segmentation(open_dataset("folder", data), SegmentationEvalSettings(
        methods=("rns-region", "rns"), shots=(1,), seeds=(0,), **SMALL), single_process=True)
    region = evaluation.confusions[("rns-region", 1, 0)]
    patch = evaluation.confusions[("rns", 1, 0)]
    # Every labelled pixel is predicted once, in either mode.
    assert region.sum() == patch.sum() > 0
    assert not np.array_equal(region, patch)

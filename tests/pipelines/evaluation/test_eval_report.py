"""The evaluation report: numbers with their configuration, the mean ± std table, the plot; CLI errors."""

import json

import numpy as np
import pytest
from PIL import Image

from maskdex.jobs.cli import main
from maskdex.pipelines.evaluation.report import markdown_table, write_segmentation_report
from maskdex.pipelines.evaluation.segmentation import SegmentationEvalSettings, SegmentationEvaluation, ShardOutcome
from maskdex.pipelines.evaluation.sampling import SupportSet


def _evaluation() -> SegmentationEvaluation:
    settings = SegmentationEvalSettings(methods=("zero-shot", "rns"), shots=(1,), seeds=(0, 1))
    rns = {0: [[3, 1, 0], [1, 3, 0], [0, 0, 0]],  # IoU 3/5, 3/5, absent -> 0.6
           1: [[5, 0, 0], [0, 2, 0], [0, 0, 0]]}  # 1.0
    confusions = {("zero-shot", 1, seed): np.array([[2, 2, 0], [2, 2, 0], [0, 0, 0]]) for seed in (0, 1)}
    confusions.update({("rns", 1, seed): np.array(matrix) for seed, matrix in rns.items()})
    return SegmentationEvaluation(
        dataset="folder", data="/data", classes=("sky", "grass", "sand"), settings=settings,
        supports=[SupportSet(1, 0, ("t1", "t2"), (1, 1, 0)), SupportSet(1, 1, ("t3",), (1, 1, 0))],
        confusions=confusions,
        shards=[ShardOutcome(0, ("v1",), "ok", None, "node-a", 1.0, 1),
                ShardOutcome(1, ("v2",), "failed", "DatasetError: bad file", "node-b", 2.0, 2)],
        val_images=2)


def test_report_files_hold_every_number_with_its_configuration(tmp_path):
    paths = write_segmentation_report(_evaluation(), tmp_path / "out")
    results = json.loads(paths["results"].read_text())
    rns = {r["seed"]: r for r in results["results"] if r["method"] == "rns"}
    assert rns[0]["miou"] == pytest.approx(0.6) and rns[1]["miou"] == pytest.approx(1.0)
    assert rns[0]["per_class_iou"] == {"sky": pytest.approx(0.6), "grass": pytest.approx(0.6), "sand": None}
    assert rns[0]["support_ids"] == ["t1", "t2"] and rns[1]["support_ids"] == ["t3"]
    assert rns[0]["images"] == results["evaluated_images"] == 1
    assert results["failed_shards"] == [{"shard": 1, "image_ids": ["v2"], "attempts": 2,
                                         "error": "DatasetError: bad file"}]
    assert results["supports"][0]["short_classes"] == ["sand"]
    assert any("re-implementations" in note for note in results["notes"])

    report = paths["report"].read_text()
    # rns: mean of 0.6 and 1.0, sample std 0.4 / sqrt(2); zero-shot: 2 / 6 on both seeds
    assert "| rns | 80.0 ± 28.3 |" in report and "| zero-shot | 33.3 ± 0.0 |" in report
    assert "shard 1 (v2), after 2 attempts: DatasetError: bad file" in report
    assert "fewer than 1 for: sand" in report
    with Image.open(paths["plot"]) as plot:
        assert plot.format == "PNG"
    assert set(np.load(paths["confusion"]).files) == {"zero-shot__1shot__seed0", "zero-shot__1shot__seed1",
                                                      "rns__1shot__seed0", "rns__1shot__seed1"}


def test_table_columns_per_dataset_and_shots():
    records = [{"dataset": d, "method": "rns", "shots": s, "seed": 0, "miou": m}
               for d, s, m in (("voc", 1, 0.5), ("voc", 5, 0.6), ("ade", 1, None))]
    table = markdown_table(records, ["rns"])
    assert table.splitlines()[0] == "| method | voc 1 shot | voc 5 shots | ade 1 shot |"
    assert table.splitlines()[2] == "| rns | 50.0 | 60.0 | n/a |"


@pytest.mark.parametrize("args,message", [
    (["--methods", "zero-shot,magic"], "unknown method(s) magic"),
    (["--shots", "1,five"], "expected comma-separated whole numbers"),
    (["--shots", "0"], "expected whole numbers >= 1"),
    (["--dataset", "pascal"], "invalid choice: 'pascal'"),
])
def test_bad_segmentation_arguments_exit_2(tmp_path, capsys, args, message):
    base = {"--data": str(tmp_path), "--dataset": "folder", "--out": str(tmp_path / "out")}
    base.update(dict(zip(args[::2], args[1::2])))
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "segmentation", *[part for pair in base.items() for part in pair]])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_inputs_exit_2(tmp_path, capsys):
    assert main(["eval", "segmentation", "--data", str(tmp_path / "none"), "--dataset", "folder",
                 "--out", str(tmp_path / "out")]) == 2
    assert "data set directory" in capsys.readouterr().err
    assert main(["eval", "segmentation", "--data", str(tmp_path), "--dataset", "ade", "--out", str(tmp_path)]) == 2
    assert "missing images/training" in capsys.readouterr().err
    assert main(["eval", "retrieval", "--db", str(tmp_path / "db"), "--annotations", str(tmp_path / "a.json"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "annotation file" in capsys.readouterr().err
    (tmp_path / "a.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert main(["eval", "retrieval", "--db", str(tmp_path / "db"), "--annotations", str(tmp_path / "a.json"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "no maskdex index" in capsys.readouterr().err

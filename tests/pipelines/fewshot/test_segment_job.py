"""`segment` of many images as a Ray Data job, its files on disk, and `maskdex segment` end to end."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from maskdex.jobs.cli import main
from maskdex.pipelines.fewshot.segmenter import Segmenter
from maskdex.pipelines.fewshot.request import SegmentSpec
from maskdex.pipelines.fewshot.segment_job import output_names, segment_many
from tests.support.synthetic import NAMES, SEGMENT_SETTINGS, add_scenes, scene


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("job") / "db")
    add_scenes(Segmenter(db, SEGMENT_SETTINGS, create=True), "scenes", per_class=1, seed=0)
    return db


def write_images(folder, count: int, size=(64, 64)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(50)
    paths = []
    for number in range(count):
        path = folder / f"test_{number}.png"
        Image.fromarray(scene(rng, size=size)[0]).save(path)
        paths.append(str(path))
    return paths


def check_outputs(summary: dict, image: str, classes: list[str]) -> None:
    width, height = Image.open(image).size
    labels = Image.open(summary["outputs"]["labels"])
    assert labels.mode == "P" and labels.size == (width, height)
    values = np.unique(np.asarray(labels))
    assert values.min() >= 0 and values.max() < len(classes)
    overlay = Image.open(summary["outputs"]["overlay"])
    assert overlay.width >= width and overlay.height > height  # the legend sits below the image
    with open(summary["outputs"]["json"]) as handle:
        assert json.load(handle) == summary
    assert summary["image"] == image and summary["classes"] == classes
    assert set(summary["found"]) == {classes[value] for value in values}
    assert sum(summary["pixel_fractions"].values()) == pytest.approx(1.0, abs=1e-4)
    assert summary["visual_support"] == classes and summary["text_support"] == classes
    assert summary["used_fallback"] is False


def test_output_names_are_unique():
    assert output_names(["a/x.png", "b/x.jpg", "c/y.png", "x"]) == ["x", "x-2", "y", "x-3"]


@pytest.mark.slow
def test_many_images_are_segmented_on_an_actor_pool(db, tmp_path, ray_local):
    images = write_images(tmp_path / "images", 3, size=(64, 80))
    unreadable = tmp_path / "images" / "notes.png"  # one bad image fails alone
    unreadable.write_text("this is a text file with a .png name\n")
    out = tmp_path / "out"
    summaries = segment_many([images[0], str(unreadable), *images[1:]], db, str(out),
                             SegmentSpec("scenes", classes=("sand", "sky", "grass", "brick")), SEGMENT_SETTINGS)
    assert [summary["image"] for summary in summaries] == [images[0], str(unreadable), *images[1:]]
    assert str(unreadable) in summaries[1]["error"]
    for summary, image in zip([summaries[0], *summaries[2:]], images):
        check_outputs(summary, image, ["sand", "sky", "grass", "brick"])
    assert sorted(os.listdir(out)) == sorted(f"test_{n}.{kind}" for n in range(3)
                                             for kind in ("labels.png", "overlay.png", "json"))

    with pytest.raises(ValueError, match="no support set 'nope'"):
        segment_many(images, db, str(out), SegmentSpec("nope"), SEGMENT_SETTINGS)


@pytest.mark.slow  # the command's own RNS settings: the paper's 700 steps
def test_the_segment_command(db, tmp_path, capsys):
    image = write_images(tmp_path / "images", 1)[0]
    assert main(["segment", image, "--db", db, "--set", "scenes", "--out", str(tmp_path / "out"), "--json"]) == 0
    [summary] = json.loads(capsys.readouterr().out)
    check_outputs(summary, image, sorted(NAMES))


def test_the_segment_command_refuses_what_it_cannot_do(db, tmp_path, capsys):
    image = write_images(tmp_path / "images", 1)[0]
    common = ["--db", db, "--out", str(tmp_path / "out")]
    assert main(["segment", image, "--set", "scenes", "--classes", "sky,@mine", "--shots-only", *common]) == 2
    assert "maskdex segment: error: support set 'scenes' has no example of '@mine'" in capsys.readouterr().err
    assert main(["segment", image, "--set", "scenes", "--classes", "sky,,sand", *common]) == 2
    assert "classes: class 1 has a bad name ''" in capsys.readouterr().err
    assert main(["segment", image, "--set", "nope", *common]) == 2
    assert "no support set 'nope'" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "missing.png"), "--set", "scenes", *common]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

"""Each data set reader on a generated tiny data set in its layout, and the errors for broken layouts."""

import numpy as np
import pytest
from PIL import Image

from maskdex.pipelines.evaluation import classes as known
from maskdex.pipelines.evaluation.datasets import DatasetError, DatasetLayoutError, open_dataset, read_sample
from tests.support import seg_datasets


def _check(dataset, expected: dict, n_classes: int, splits=(3, 3)):
    assert len(dataset.classes) == len(set(dataset.classes)) == n_classes
    assert (len(dataset.split("train")), len(dataset.split("val"))) == splits
    for sample in dataset.split("train") + dataset.split("val"):
        image, labels = read_sample(sample, dataset.labels)
        assert image.dtype == np.uint8 and image.shape == (*labels.shape, 3)
        np.testing.assert_array_equal(labels, expected[sample.id], err_msg=sample.id)
        assert ((labels < n_classes) | (labels == 255)).all()


def test_folder_layout(tmp_path):
    expected = seg_datasets.write_folder(tmp_path / "data", n_train=5, n_val=3)
    dataset = open_dataset("folder", tmp_path / "data")
    assert dataset.classes == ("sky", "grass", "brick", "sand")
    _check(dataset, expected, 4, splits=(5, 3))
    assert [s.id for s in dataset.split("val")] == ["val_000", "val_001", "val_002"]


def test_voc_from_vocdevkit_with_palette_labels(tmp_path):
    expected = seg_datasets.write_voc(tmp_path)
    dataset = open_dataset("voc", tmp_path / "VOCdevkit")  # the folder above VOC2012 works too
    assert dataset.classes[0] == "background" and dataset.classes[-1] == "tv monitor"
    _check(dataset, expected, 21)
    assert any((v == 255).any() for v in expected.values()), "boundaries must be ignored"


@pytest.mark.parametrize("name,with_background,n_classes", [("context", False, 59), ("context60", True, 60)])
def test_pascal_context_59_and_60(tmp_path, name, with_background, n_classes):
    expected = seg_datasets.write_context(tmp_path, with_background)
    dataset = open_dataset(name, tmp_path / "VOC2010")
    _check(dataset, expected, n_classes)
    assert dataset.classes[0] == ("background" if with_background else "aeroplane")


@pytest.mark.parametrize("train_ids", [True, False], ids=["labelTrainIds", "stuffthingmaps"])
def test_coco_stuff_both_label_forms(tmp_path, train_ids):
    expected = seg_datasets.write_coco_stuff(tmp_path, train_ids)
    dataset = open_dataset("coco-stuff", tmp_path)
    _check(dataset, expected, 171)
    assert dataset.classes[:3] == ("person", "bicycle", "car") and dataset.classes[-1] == "wood"


def test_coco_stuff_raw_ids_map_to_the_171_classes():
    lut = known.mapping_lut(tuple(i - 1 for i in known.COCO_STUFF_CATEGORY_IDS))
    assert lut[0] == 0  # person (id 1)
    assert lut[12] == 11  # stop sign (id 13): id 12 is unused
    assert lut[11] == 255  # the unused id 12
    assert lut[91] == 80 and known.COCO_STUFF[80] == "banner"  # the first stuff class (id 92)
    assert lut[181] == 170 and lut[255] == 255


@pytest.mark.parametrize("train_ids", [True, False], ids=["labelTrainIds", "labelIds"])
def test_cityscapes_both_label_forms(tmp_path, train_ids):
    expected = seg_datasets.write_cityscapes(tmp_path, train_ids)
    dataset = open_dataset("cityscapes", tmp_path)
    _check(dataset, expected, 19)
    assert dataset.split("val")[0].id.startswith("lindau/")


def test_ade20k_reduces_the_zero_label(tmp_path):
    expected = seg_datasets.write_ade(tmp_path)
    dataset = open_dataset("ade", tmp_path)  # the folder holding ADEChallengeData2016
    _check(dataset, expected, 150)
    assert dataset.classes[0] == "wall" and dataset.classes[-1] == "flag"


def test_missing_pieces_are_named(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        open_dataset("voc", tmp_path / "nowhere")
    with pytest.raises(DatasetLayoutError, match="missing JPEGImages, SegmentationClass, ImageSets"):
        open_dataset("voc", tmp_path)
    with pytest.raises(DatasetLayoutError, match="images/validation"):
        (tmp_path / "ade" / "images" / "training").mkdir(parents=True)
        open_dataset("ade", tmp_path / "ade")
    with pytest.raises(ValueError, match="unknown data set 'pascal'"):
        open_dataset("pascal", tmp_path)

    seg_datasets.write_folder(tmp_path / "folder", n_train=2, n_val=2)
    (tmp_path / "folder" / "labels" / "val_001.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"1 label files of splits/val.txt missing .*val_001.png"):
        open_dataset("folder", tmp_path / "folder")
    (tmp_path / "folder" / "splits" / "train.txt").write_text("train_000\nghost\n")
    with pytest.raises(DatasetLayoutError, match=r"images named in splits/train.txt missing .*ghost"):
        open_dataset("folder", tmp_path / "folder")
    (tmp_path / "folder" / "splits" / "val.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="missing splits/val.txt"):
        open_dataset("folder", tmp_path / "folder")


def test_inconsistent_labels_are_clear_errors(tmp_path):
    seg_datasets.write_folder(tmp_path, n_train=2, n_val=2)
    dataset = open_dataset("folder", tmp_path)
    sample = dataset.split("val")[0]
    Image.fromarray(np.full((64, 80), 7, np.uint8)).save(sample.labels)
    with pytest.raises(DatasetError, match=r"raw value\(s\) \[7\] that are neither one of the 4 classes"):
        read_sample(sample, dataset.labels)
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(sample.labels)
    with pytest.raises(DatasetError, match="colour image"):
        read_sample(sample, dataset.labels)
    Image.fromarray(np.zeros((32, 80), np.uint8)).save(sample.labels)
    with pytest.raises(DatasetError, match="is 80x64 but its labels"):
        read_sample(sample, dataset.labels)


def test_the_folder_layout_reads_classes_txt_as_supports_do(tmp_path):
    seg_datasets.write_folder(tmp_path, n_train=2, n_val=2)
    names = (tmp_path / "classes.txt").read_text().splitlines()
    # An inner blank line would shift every later label by one: refused, not skipped.
    (tmp_path / "classes.txt").write_text("\n".join([names[0], "", *names[1:]]) + "\n")
    with pytest.raises(DatasetError, match="class 1 has a bad name"):
        open_dataset("folder", tmp_path)
    # 255 classes (0..254) fit beside the ignore value 255, as for a support set.
    (tmp_path / "classes.txt").write_text("".join(f"class {k}\n" for k in range(255)))
    assert len(open_dataset("folder", tmp_path).classes) == 255
    (tmp_path / "classes.txt").write_text("".join(f"class {k}\n" for k in range(256)))
    with pytest.raises(DatasetError, match="at most 255"):
        open_dataset("folder", tmp_path)

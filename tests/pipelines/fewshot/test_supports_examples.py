"""Adding examples in process (add_example) and checking labelled folders: what gets in, what is refused."""

import numpy as np
import pytest
import torch
from PIL import Image

from maskdex.pipelines.fewshot.dense import build_extractor, open_support_store
from maskdex.pipelines.common.class_names import read_classes_file
from maskdex.pipelines.fewshot.supports import add_example, example_rows, ingest_folder
from maskdex.storage import SupportStore
from tests.support.synthetic import NAMES, example, scene, write_labelled_folder


@pytest.fixture(scope="module")
def extractor():
    return build_extractor("tiny", device="cpu")


@pytest.fixture
def store(tmp_path):
    return open_support_store(str(tmp_path / "db"), "tiny")


def test_an_example_adds_one_row_per_class_and_adding_it_again_replaces_them(store, extractor, tmp_path):
    image, labels, _ = scene(np.random.default_rng(0), must=1)
    renumbered, names = example(labels)
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)

    added = add_example(store, "scenes", str(path), renumbered, names, extractor=extractor)
    assert added["classes"] == {name: int((labels == NAMES.index(name)).sum()) for name in names}
    assert store.list_sets() == {"scenes": {name: 1 for name in names}}

    # The same file again, now labelled as one example-only class: its rows are replaced.
    again = add_example(store, "scenes", path.read_bytes(), np.zeros(labels.shape, np.int64), ["@my-scene"],
                        extractor=extractor)
    assert again["image_id"] == added["image_id"]
    assert store.list_sets() == {"scenes": {"@my-scene": 1}}


@pytest.mark.parametrize("labels, names, message", [
    (np.zeros((64, 48), np.int64), ["sky"], r"label map is 48x64 but the image is 64x64"),
    (np.full((64, 64), 3, np.int64), ["sky", "grass"], r"class ids 3 outside the class list \(0..1; 255 = ignore\)"),
    (np.full((64, 64), 255, np.int64), ["sky"], "labels no pixel with a class"),
    (np.zeros((64, 64), np.int64), ["sky", "grass"], "'grass' named for this image cover no pixel of it"),
    (np.zeros((64, 64), np.float32), ["sky"], "integer class indices"),
    (np.zeros((64, 64), np.int64), ["sky", "sky"], "names 'sky' more than once"),
])
def test_a_bad_example_is_refused_and_nothing_is_written(store, extractor, labels, names, message):
    image, good_labels, _ = scene(np.random.default_rng(1))
    add_example(store, "scenes", image, *example(good_labels), extractor=extractor)
    version, before = store.version, store.list_sets()
    with pytest.raises(ValueError, match=message):
        add_example(store, "scenes", scene(np.random.default_rng(2))[0], labels, names, extractor=extractor)
    assert store.version == version and store.list_sets() == before


def test_a_folder_with_bad_pairs_is_refused_whole_naming_every_bad_file(tmp_path, extractor):
    folder = write_labelled_folder(tmp_path / "folder", 6)
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(folder.labels / "scene_0.png")  # wrong size
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(folder.labels / "scene_1.png")  # class 7 of 4
    (folder.labels / "scene_2.png").unlink()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder.labels / "scene_3.png")  # RGB, not indices
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder.labels / "orphan.png")
    db = str(tmp_path / "db")
    store = open_support_store(db, "tiny")
    image, labels, _ = scene(np.random.default_rng(3))
    add_example(store, "scenes", image, *example(labels), extractor=extractor)
    before = store.list_sets()

    with pytest.raises(ValueError) as refused:
        ingest_folder(str(folder.images), str(folder.labels), str(folder.classes), db, "scenes")
    message = str(refused.value)
    assert "5 problem(s)" in message and "nothing was added" in message
    assert "images/scene_0.png: label map is 64x48 but the image is 64x64" in message
    assert "images/scene_1.png: label map holds class ids 7 outside the class list (0..3" in message
    assert "images/scene_2.png: no label map labels/scene_2.png" in message
    assert "images/scene_3.png: label map must hold one class index per pixel" in message
    assert "labels/orphan.png: no image images/orphan.* for it" in message
    assert "scene_4" not in message and "scene_5" not in message
    assert store.list_sets() == before

    # Refused before the store is opened: a new database stays empty.
    with pytest.raises(ValueError, match="5 problem"):
        ingest_folder(str(folder.images), str(folder.labels), str(folder.classes), str(tmp_path / "new"), "scenes")
    with pytest.raises(FileNotFoundError):
        SupportStore.open(str(tmp_path / "new"), dense_model=None, embed_dim=None, create=False)


@pytest.mark.parametrize("text, message", [
    ("sky\n\ngrass\n", "class 1 has a bad name ''"),
    ("sky\ngrass\nsky\n", "names 'sky' more than once"),
    ("sky\n@\n", "class 1 has a bad name '@'"),
    ("\n\n", "is empty"),
])
def test_bad_classes_files_are_refused(tmp_path, text, message):
    path = tmp_path / "classes.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_classes_file(path)


def test_a_classes_file_may_end_in_blank_lines(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("sky\r\n@my backpack\r\n\r\n")
    assert read_classes_file(path) == ["sky", "@my backpack"]


def test_example_labels_go_through_the_images_resize_and_padding(extractor):
    # tiny preset: a 300x405 image becomes 128x173 pixels, padded to 128x176 (16x22 patches of 8)
    image = np.random.default_rng(5).integers(0, 256, (300, 405, 3), dtype=np.uint8)
    labels = np.zeros((300, 405), np.int64)
    labels[:, :93] = 1  # original columns 0..92 -> resized columns 0..39 (nearest): exactly patch columns 0..4
    rows = example_rows(extractor, "s", image, labels, ["rest", "left"], "id", None)
    dense = extractor.support_features(image)
    assert dense.resized_size == (128, 173) and dense.grid == (16, 22)
    left = next(row["prototype"] for row in rows if row["class_name"] == "left")
    expected = torch.nn.functional.normalize(dense.features[:, :5].reshape(-1, dense.features.shape[-1]).mean(0), dim=0)
    np.testing.assert_allclose(left, expected.numpy(), atol=1e-6)
    # the padding (columns 173..175) is ignored: the rest's prototype pools columns 5..21 only, with
    # column 21 holding 5 image columns of 8
    weights = torch.ones(16, 22)
    weights[:, :5] = 0
    weights[:, 21] = 5 / 8
    rest = torch.nn.functional.normalize((weights[..., None] * dense.features).sum((0, 1)), dim=0)
    np.testing.assert_allclose(next(row["prototype"] for row in rows if row["class_name"] == "rest"), rest.numpy(),
                               atol=1e-6)

"""SupportStore on real LanceDB directories: the supports table, sets, replacement, refusals, fresh reads."""

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from maskdex.storage import ModelMismatchError, SupportStore

DIM = 8
MODEL = "tiny"


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def row(set_name: str, image: str, class_name: str, seed: int = 0, **changes) -> dict:
    prototype = unit(np.random.default_rng(seed).standard_normal(DIM))
    return {"set_name": set_name, "class_name": class_name, "image_id": image, "prototype": prototype,
            "n_pixels": 10, "uri": f"/data/{image}.png", **changes}


@pytest.fixture
def uri(tmp_path) -> str:
    return str(tmp_path / "db")


@pytest.fixture
def store(uri) -> SupportStore:
    return SupportStore.open(uri, dense_model=MODEL, embed_dim=DIM)


def test_the_table_has_the_design_schema_and_records_its_model(store, uri):
    store.add([row("pets", "img1", "cat")])
    schema = lancedb.connect(uri).open_table("supports").schema
    assert schema.names == ["support_id", "set_name", "class_name", "image_id", "prototype", "n_pixels", "uri",
                            "added_at"]
    assert schema.field("prototype").type == pa.list_(pa.float32(), DIM)
    reopened = SupportStore.open(uri, dense_model=None, embed_dim=None, create=False)
    assert (reopened.dense_model, reopened.embed_dim) == (MODEL, DIM)


def test_add_list_load_and_remove(store):
    store.add([row("pets", "img1", "cat", 1), row("pets", "img1", "dog", 2), row("pets", "img2", "cat", 3),
               row("cars", "img3", "@my-car", 4)])
    assert store.list_sets() == {"cars": {"@my-car": 1}, "pets": {"cat": 2, "dog": 1}}

    everything = store.load("pets")
    assert everything.classes == ("cat", "dog")
    assert everything.class_ids.tolist() == [0, 0, 1]
    assert everything.images_per_class == {"cat": 2, "dog": 1}
    # img1 holds both classes: one image id for its two rows
    assert len(set(everything.image_ids.tolist())) == 2
    np.testing.assert_allclose(np.linalg.norm(everything.prototypes, axis=1), 1.0, atol=1e-6)

    ordered = store.load("pets", ["dog", "bird", "cat"])  # bird: no example, so no row
    assert ordered.classes == ("dog", "bird", "cat")
    assert ordered.class_ids.tolist() == [0, 2, 2]
    assert ordered.images_per_class == {"dog": 1, "bird": 0, "cat": 2}
    np.testing.assert_array_equal(ordered.prototypes[0], row("pets", "img1", "dog", 2)["prototype"])

    assert store.remove_class("pets", "dog") == 1
    assert store.list_sets()["pets"] == {"cat": 2}
    assert store.remove_set("pets") == 2
    assert store.list_sets() == {"cars": {"@my-car": 1}}


def test_adding_an_image_again_replaces_its_rows(store):
    store.add([row("pets", "img1", "cat", 1), row("pets", "img1", "dog", 2), row("other", "img1", "cat", 3)])
    store.add([row("pets", "img1", "dog", 5), row("pets", "img1", "bird", 6)])  # corrected labels: no cat
    assert store.list_sets() == {"other": {"cat": 1}, "pets": {"bird": 1, "dog": 1}}
    np.testing.assert_array_equal(store.load("pets", ["dog"]).prototypes[0], row("pets", "img1", "dog", 5)["prototype"])
    store.add([row("pets", "img1", "dog", 5), row("pets", "img1", "bird", 6)])  # a re-run
    assert len(store.load("pets")) == 2


@pytest.mark.parametrize("bad, message", [
    (row("pets", "img2", "cat", prototype=np.ones(DIM, np.float32)), "not a finite L2-normalised"),
    (row("pets", "img2", "cat", prototype=unit(np.ones(DIM + 1))), r"shape \(9,\).*\(8,\)"),
    (row("pets", "img2", "cat", n_pixels=0), "n_pixels must be >= 1"),
    (row("pets", "img2", " "), "class_name must be a non-blank string"),
    (row("pets", "img1", "cat"), r"the same \(set, image, class\) as rows\[0\]"),
    ({"set_name": "pets", "class_name": "cat", "image_id": "img2"}, "missing prototype, n_pixels"),
])
def test_a_bad_row_refuses_the_whole_batch(store, bad, message):
    store.add([row("pets", "img0", "cat")])
    version = store.version
    with pytest.raises(ValueError, match=message):
        store.add([row("pets", "img1", "cat"), row("pets", "img1", "dog"), bad])
    assert store.version == version
    assert store.list_sets() == {"pets": {"cat": 1}}


def test_unknown_sets_and_classes_are_refused(store, uri):
    store.add([row("pets", "img1", "cat")])
    for action in (lambda: store.load("cars"), lambda: store.remove_set("cars"),
                   lambda: store.remove_class("cars", "cat")):
        with pytest.raises(ValueError, match="no support set 'cars'.*it has 'pets'"):
            action()
    with pytest.raises(ValueError, match="has no class 'dog'; it has 'cat'"):
        store.remove_class("pets", "dog")
    with pytest.raises(ValueError, match="named more than once"):
        store.load("pets", ["cat", "cat"])
    assert store.list_sets() == {"pets": {"cat": 1}}
    with pytest.raises(FileNotFoundError, match="no support sets"):
        SupportStore.open(str(uri) + "-elsewhere", dense_model=None, embed_dim=None, create=False)


def test_another_dense_model_is_refused(store, uri):
    store.add([row("pets", "img1", "cat")])
    with pytest.raises(ModelMismatchError, match="dense model 'tiny', not 'maskclip-b16-laion2b'"):
        SupportStore.open(uri, dense_model="maskclip-b16-laion2b", embed_dim=512)
    with pytest.raises(ModelMismatchError, match="8-dimensional prototypes, not 512"):
        SupportStore.open(uri, dense_model=None, embed_dim=512)


def test_a_long_lived_reader_sees_rows_written_by_another_handle(store, uri):
    store.add([row("pets", "img1", "cat")])
    reader = SupportStore.open(uri, dense_model=MODEL, embed_dim=DIM, create=False)
    before = reader.version
    assert len(reader.load("pets")) == 1
    store.add([row("pets", "img2", "dog")])
    assert reader.version != before
    assert reader.load("pets").images_per_class == {"cat": 1, "dog": 1}

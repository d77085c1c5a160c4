"""Support sampling: B images per class where the train split has them, seeded, and the RNS order."""

import numpy as np
import pytest

from maskdex.pipelines.evaluation.datasets import open_dataset
from maskdex.pipelines.evaluation.sampling import ClassPresence, sample_supports
from tests.support import seg_datasets

N_CLASSES = 6


@pytest.fixture(scope="module")
def train_split():
    """60 images; class 5 is rare (2 images), every other class in many."""
    rng = np.random.default_rng(0)
    shown = {}
    for index in range(60):
        classes = set(rng.choice(5, size=int(rng.integers(1, 4)), replace=False).tolist())
        if index in (7, 40):
            classes.add(5)
        shown[f"img{index:02d}"] = frozenset(classes)
    return shown


@pytest.mark.parametrize("shots", [1, 3, 5])
def test_every_class_gets_b_images_where_the_split_has_them(train_split, shots):
    support = sample_supports(list(train_split), train_split.get, N_CLASSES, shots, seed=0)
    assert len(set(support.image_ids)) == len(support.image_ids)
    for cls in range(N_CLASSES):
        count = sum(cls in train_split[i] for i in support.image_ids)
        assert count == support.images_per_class[cls]
        assert count >= min(shots, sum(cls in s for s in train_split.values()))
    assert support.short_classes() == ((5,) if shots > 2 else ())


def test_deterministic_per_seed_and_different_across_seeds(train_split):
    ids = list(train_split)
    first = sample_supports(ids, train_split.get, N_CLASSES, 3, seed=1)
    assert sample_supports(ids, train_split.get, N_CLASSES, 3, seed=1) == first
    others = {sample_supports(ids, train_split.get, N_CLASSES, 3, seed=s).image_ids for s in range(2, 6)}
    assert first.image_ids not in others and len(others) > 1


def test_images_come_from_the_seeded_pool_and_are_read_lazily(train_split):
    calls = []

    def classes_of(image_id):
        calls.append(image_id)
        return train_split[image_id]

    pooled = sample_supports(list(train_split), classes_of, N_CLASSES, 1, seed=3, pool_size=10)
    rng = np.random.default_rng(3)
    pool = {list(train_split)[i] for i in rng.permutation(60)[:10]}
    assert set(pooled.image_ids) <= pool and set(calls) <= pool
    # Every image chosen for a class shows it, and only a few labels were looked at.
    assert len(pooled.image_ids) <= N_CLASSES


def test_class_presence_reads_label_files(tmp_path):
    expected = seg_datasets.write_folder(tmp_path, n_train=4, n_val=1)
    dataset = open_dataset("folder", tmp_path)
    presence = ClassPresence(dataset.split("train"), dataset.labels)
    for sample in dataset.split("train"):
        assert presence(sample.id) == set(np.unique(expected[sample.id]).tolist()) - {255}
    with pytest.raises(ValueError, match="shots must be >= 1"):
        sample_supports(["a"], presence, 4, 0, seed=0)

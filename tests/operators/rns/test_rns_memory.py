import pytest
import torch
import torch.nn.functional as F

from maskdex.operators.rns.memory import (
    SupportMemory,
    build_support_memory,
    class_features,
    patch_index_map,
    pool_patches,
    retrieve,
)

# A 2x2 grid of patches of 2x2 pixels each; patch j's feature is x[j].
X = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
FEATURES = X.reshape(2, 2, 3)
# Class 1: 3 pixels in patch 0, 1 pixel in patch 3. Class 2: all 4 pixels of patch 1. 255 elsewhere.
LABELS = torch.tensor([
    [1, 1, 2, 2],
    [1, 255, 2, 2],
    [255, 255, 255, 255],
    [255, 255, 255, 1],
])


def test_patch_index_map_follows_pixel_centres():
    assert patch_index_map((4, 4), (2, 2)).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    # 3 pixel rows over 2 patch rows: centres 0.5, 1.5, 2.5 of 3 -> patch rows 0, 1, 1
    assert patch_index_map((3, 2), (2, 2)).tolist() == [[0, 1], [2, 3], [2, 3]]


def test_prototype_is_the_pixel_fraction_weighted_sum_of_patches():
    classes, pooled = pool_patches(FEATURES, LABELS)
    assert classes.tolist() == [1, 2]  # class 0 is absent, 255 is ignored: neither gets a row
    expected_1 = F.normalize(0.75 * X[0] + 0.25 * X[3], dim=0)  # = (1, 0.25, 0) / |.|
    torch.testing.assert_close(pooled[0], expected_1)
    torch.testing.assert_close(expected_1, torch.tensor([1.0, 0.25, 0.0]) / (1 + 0.25**2) ** 0.5)
    torch.testing.assert_close(pooled[1], X[1])


def test_pooling_checks_its_inputs():
    with pytest.raises(ValueError, match=r"\(h, w, D\)"):
        pool_patches(X, LABELS)
    with pytest.raises(ValueError, match="integers"):
        pool_patches(FEATURES, LABELS.float())


def test_memory_has_one_row_per_present_image_class_pair():
    other_labels = torch.full((4, 4), 0)
    other_labels[:2] = 2
    memory = build_support_memory([(FEATURES, LABELS), (FEATURES, other_labels)])
    pairs = list(zip(memory.image_ids.tolist(), memory.class_ids.tolist()))
    assert pairs == [(0, 1), (0, 2), (1, 0), (1, 2)]
    for image, cls in pairs:
        assert (LABELS if image == 0 else other_labels).eq(cls).any()
    torch.testing.assert_close(memory.prototypes[2], F.normalize(X[2] + X[3], dim=0))


def test_class_feature_is_the_normalised_mean_of_its_prototypes():
    a = F.normalize(torch.tensor([1.0, 0.0, 1.0]), dim=0)
    b = torch.tensor([0.0, 1.0, 0.0])
    memory = SupportMemory(torch.stack([a, b, X[0]]), torch.tensor([2, 2, 0]), torch.tensor([0, 1, 1]))
    feats, has_support = class_features(memory, 4)
    torch.testing.assert_close(feats[2], F.normalize(a + b, dim=0))
    torch.testing.assert_close(feats[0], X[0])
    assert has_support.tolist() == [True, False, True, False]
    assert feats[1].abs().sum() == 0 and feats[3].abs().sum() == 0
    with pytest.raises(ValueError, match="holds class 2 but there are 2 classes"):
        class_features(memory, 2)


def test_retrieved_set_is_the_union_of_neighbours_each_once():
    prototypes = torch.eye(4)
    queries = torch.tensor([[1.0, 0.9, 0.0, 0.0], [0.9, 1.0, 0.0, 0.0], [0.0, 0.0, 0.2, 1.0]])
    assert retrieve(queries, prototypes, k=2).tolist() == [0, 1, 2, 3]  # 0 and 1 are hit twice, kept once
    assert retrieve(queries, prototypes, k=1).tolist() == [0, 1, 3]
    assert retrieve(queries, prototypes, k=10).tolist() == [0, 1, 2, 3]  # k larger than the memory
    assert retrieve(queries, prototypes[:0], k=4).numel() == 0
    with pytest.raises(ValueError, match="k must be"):
        retrieve(queries, prototypes, k=0)
    with pytest.raises(ValueError, match="queries"):
        retrieve(queries, torch.eye(3), k=1)


def test_memory_rejects_mismatched_ids():
    with pytest.raises(ValueError, match="class_ids"):
        SupportMemory(torch.zeros(2, 3), torch.tensor([0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=">= 0"):
        SupportMemory(torch.zeros(1, 3), torch.tensor([-1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="at least one support"):
        build_support_memory([])

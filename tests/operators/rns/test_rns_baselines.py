import pytest
import torch
import torch.nn.functional as F

from maskdex.operators.rns.baselines import freeda_segment, knn_vote_segment, zero_shot_segment
from maskdex.operators.rns.memory import SupportMemory
from maskdex.operators.rns.units import patch_units

TEXT = torch.eye(3)


def _units(*rows):
    features = F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)
    return patch_units(features.reshape(1, len(rows), 3), (1, len(rows)))


def test_zero_shot_takes_the_most_similar_class_per_patch():
    units = _units((0.9, 0.1, 0.0), (0.0, 0.2, 0.8), (0.1, 0.7, 0.2))
    assert zero_shot_segment(units, TEXT).tolist() == [[0, 2, 1]]


def test_knn_vote_takes_the_majority_of_the_retrieved_labels():
    prototypes = F.normalize(torch.tensor([
        [1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.8, 0.0, 0.2],  # class 1, 1, 0: nearest (1, 0, 0)
        [0.0, 0.0, 1.0], [0.0, 0.3, 1.0],  # class 2, 0
    ]), dim=-1)
    memory = SupportMemory(prototypes, torch.tensor([1, 1, 0, 2, 0]), torch.arange(5))
    units = _units((1.0, 0.0, 0.0), (0.0, 0.1, 1.0))
    # patch 0: neighbours of classes 1, 1, 0 -> 1. patch 1 with k=2: one vote each for 2 (more similar) and 0 -> 2
    assert knn_vote_segment(units, memory, n_classes=3, k=3).tolist()[0][0] == 1
    assert knn_vote_segment(units, memory, n_classes=3, k=2).tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="holds class 2 but there are 2"):
        knn_vote_segment(units, memory, n_classes=2)


def test_freeda_mixes_prototype_similarity_with_the_global_image_text_score():
    prototypes = torch.eye(3)
    memory = SupportMemory(prototypes, torch.tensor([0, 1, 2]), torch.arange(3))
    units = _units((0.6, 0.5, 0.0), (0.6, 0.5, 0.0), (0.0, 0.0, 1.0))
    text = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # the image matches class 1's text best
    x = units.features
    image = F.normalize(x.mean(dim=0), dim=0)
    scores = 0.8 * x @ prototypes.T + 0.2 * (text @ image)[None]
    assert freeda_segment(units, memory, text).tolist() == [scores.argmax(dim=1).tolist()] == [[0, 0, 2]]
    # locally patches 0 and 1 are class 0; a heavier global term moves them to class 1
    assert freeda_segment(units, memory, text, local_weight=0.5, global_weight=0.5).tolist()[0][:2] == [1, 1]
    partial = SupportMemory(prototypes[:2], torch.tensor([0, 1]), torch.arange(2))
    with pytest.raises(ValueError, match=r"classes \[2\] have none"):
        freeda_segment(units, partial, text)

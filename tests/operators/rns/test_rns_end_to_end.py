"""RNS end to end with the tiny preset on synthetic scenes whose classes differ in colour and texture.

The tiny CLIP has random weights, so its text features carry no meaning and zero-shot is near
chance: whatever RNS gets right, it learnt from the supports.
"""

import numpy as np
import pytest
import torch

from maskdex.operators.dense.features import WindowSpec
from maskdex.operators.metrics.segmentation import confusion_matrix, mean_iou
from maskdex.operators.registry.presets import dense_feature_extractor
from maskdex.operators.rns.method import RNSSettings, rns_segment
from maskdex.operators.rns.baselines import freeda_segment, knn_vote_segment, zero_shot_segment
from maskdex.operators.rns.memory import build_support_memory
from maskdex.operators.rns.units import patch_units, region_units
from tests.support.synthetic import NAMES, scene
N_TEST = 8
SETTINGS = RNSSettings(steps=300)  # 700 (the default) gives the same picture, more slowly

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def extractor():
    return dense_feature_extractor("tiny", device="cpu", test_windows=WindowSpec(64, (64,), 32),
                                   support_windows=WindowSpec(64, (64, 32), 16))


@pytest.fixture(scope="module")
def text(extractor):
    return extractor.class_text_features(NAMES)


def _data(extractor, seed: int, max_shots: int = 10):
    """Test images (features, labels, boxes) and, per class, max_shots support (features, labels) pairs."""
    rng = np.random.default_rng(seed)
    tests = []
    for _ in range(N_TEST):
        image, labels, boxes = scene(rng)
        tests.append((extractor.test_features(image), torch.from_numpy(labels), boxes))
    supports = {}
    for cls in range(len(NAMES)):
        scenes = [scene(rng, must=cls) for _ in range(max_shots)]
        supports[cls] = [(extractor.support_features(image).features, torch.from_numpy(labels))
                         for image, labels, _ in scenes]
    return tests, supports


@pytest.fixture(scope="module")
def seeded_data(extractor):
    return {seed: _data(extractor, seed) for seed in (0, 1, 2)}


def _memory(supports, shots: int, classes=range(len(NAMES))):
    return build_support_memory([pair for cls in classes for pair in supports[cls][:shots]])


def _miou(predict, tests) -> float:
    confusion = sum(confusion_matrix(predict(dense, labels, boxes), labels, len(NAMES))
                    for dense, labels, boxes in tests)
    return mean_iou(confusion)


def test_rns_with_five_supports_beats_zero_shot(seeded_data, text):
    tests, supports = seeded_data[0]
    memory = _memory(supports, shots=5)

    def rns(dense, labels, boxes):
        return rns_segment(patch_units(dense.features, dense.image_size), memory, text, SETTINGS).labels

    def zero_shot(dense, labels, boxes):
        return zero_shot_segment(patch_units(dense.features, dense.image_size), text)

    rns_miou, zero_shot_miou = _miou(rns, tests), _miou(zero_shot, tests)
    assert rns_miou > 0.6
    assert rns_miou > zero_shot_miou + 0.3

    def knn(dense, labels, boxes):
        return knn_vote_segment(patch_units(dense.features, dense.image_size), memory, len(NAMES))

    def freeda(dense, labels, boxes):
        return freeda_segment(patch_units(dense.features, dense.image_size), memory, text)

    assert _miou(knn, tests) > zero_shot_miou + 0.3
    assert _miou(freeda, tests) > zero_shot_miou + 0.3


def test_more_supports_do_not_hurt_on_average(seeded_data, text):
    by_shots = {}
    for shots in (1, 5, 10):
        scores = []
        for tests, supports in seeded_data.values():
            memory = _memory(supports, shots)
            scores.append(_miou(lambda d, _l, _b: rns_segment(patch_units(d.features, d.image_size), memory, text,
                                                              SETTINGS).labels, tests))
        by_shots[shots] = float(np.mean(scores))
    assert by_shots[5] >= by_shots[1] - 0.02, by_shots
    assert by_shots[10] >= by_shots[5] - 0.02, by_shots


def test_partial_support_and_region_mode(seeded_data, text):
    tests, supports = seeded_data[0]
    # "sand" has no support image and is left unlabelled (255) in the others
    unlabelled = {cls: [(f, labels.masked_fill(labels == 3, 255)) for f, labels in supports[cls]] for cls in (0, 1, 2)}
    memory = _memory(unlabelled, shots=5, classes=(0, 1, 2))
    dense, labels, boxes = tests[0]
    result = rns_segment(patch_units(dense.features, dense.image_size), memory, text, SETTINGS)
    assert not result.used_fallback
    assert result.visual_classes == (0, 1, 2) and result.text_classes == (0, 1, 2, 3)
    assert set(result.pseudo_classes) <= {3}

    no_text = rns_segment(patch_units(dense.features, dense.image_size), memory, None, SETTINGS, n_classes=4)
    assert no_text.pseudo_classes == () and no_text.text_classes == ()

    # Region mode with the scenes' own rectangles as masks: regions cannot be worse than patches here.
    full = _memory(supports, shots=5)

    def regions(dense, labels, boxes):
        masks = torch.zeros(len(boxes), *labels.shape, dtype=torch.bool)
        for index, (y, x, h, w) in enumerate(boxes):
            masks[index, y : y + h, x : x + w] = True
        return rns_segment(region_units(dense.features, masks), full, text, SETTINGS).labels

    def patches(dense, labels, boxes):
        return rns_segment(patch_units(dense.features, dense.image_size), full, text, SETTINGS).labels

    assert _miou(regions, tests) >= _miou(patches, tests) - 0.02

"""mIoU against an independent computation, and the retrieval metrics against hand-computed cases."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

from maskdex.operators.common import rle as rle_codec
from maskdex.operators.metrics.segmentation import class_iou, confusion_matrix, mean_iou
from maskdex.operators.metrics.retrieval import average_precision_at_k, matches_an_instance, recall_at_k


@pytest.mark.parametrize("seed", range(5))
def test_miou_equals_an_independent_computation_on_random_label_maps(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 12))
    images = []
    for _ in range(3):
        size = tuple(rng.integers(5, 40, 2))
        truth = rng.integers(0, n_classes, size)
        truth[rng.random(size) < 0.1] = 255
        # Predictions right about half the time, so IoUs spread over (0, 1); some classes never predicted.
        prediction = np.where(rng.random(size) < 0.5, truth, rng.integers(0, max(1, n_classes - 2), size))
        prediction[prediction == 255] = 0
        images.append((prediction, truth))

    ours = sum(confusion_matrix(p, t, n_classes) for p, t in images)
    kept = [(p[t != 255], t[t != 255]) for p, t in images]
    theirs = sklearn_confusion_matrix(np.concatenate([t for _, t in kept]), np.concatenate([p for p, _ in kept]),
                                      labels=list(range(n_classes)))
    np.testing.assert_array_equal(ours, theirs)

    # IoU from scikit-learn's matrix, written out independently: TP / (row sum + column sum - TP).
    expected = []
    for c in range(n_classes):
        tp = theirs[c, c]
        union = theirs[c, :].sum() + theirs[:, c].sum() - tp
        expected.append(tp / union if union else np.nan)
    np.testing.assert_allclose(class_iou(ours), expected, equal_nan=True)
    assert mean_iou(ours) == pytest.approx(np.nanmean(expected))


def test_average_precision_by_hand():
    # relevant at ranks 1, 3, 4 of 5; four relevant items exist: (1/1 + 2/3 + 3/4) / 4
    assert average_precision_at_k([1, 0, 1, 1, 0], 4, 50) == pytest.approx((1 + 2 / 3 + 3 / 4) / 4)
    # K cuts the list and caps the normaliser: top 2 only, min(4, 2) = 2 -> (1/1) / 2
    assert average_precision_at_k([1, 0, 1, 1, 0], 4, 2) == pytest.approx(0.5)
    assert average_precision_at_k([0, 0, 1], 1, 50) == pytest.approx(1 / 3)
    assert average_precision_at_k([], 3, 50) == 0.0
    assert average_precision_at_k([1, 1], 2, 50) == 1.0
    with pytest.raises(ValueError, match="without relevant"):
        average_precision_at_k([0], 0, 50)
    with pytest.raises(ValueError, match="3 relevant results for a query with 2"):
        average_precision_at_k([1, 1, 1], 2, 50)


def test_recall_at_k_is_a_hit_within_the_top_k():
    assert recall_at_k([0, 0, 1], 1) == 0.0
    assert recall_at_k([0, 0, 1], 3) == 1.0
    assert recall_at_k([], 5) == 0.0


def test_object_match_needs_iou_at_the_threshold():
    truth = np.zeros((10, 10), bool)
    truth[0:4, 0:5] = True  # 20 pixels
    half = np.zeros((10, 10), bool)
    half[0:4, 0:5] = True
    half[4:8, 0:5] = True  # 40 pixels, 20 shared: IoU 0.5
    less = np.zeros((10, 10), bool)
    less[0:4, 0:6] = True
    less[4:8, 0:5] = True  # 44 pixels, 20 shared: IoU < 0.5
    other = np.zeros((10, 10), bool)
    other[8:10, 8:10] = True
    gts = [rle_codec.encode(other), rle_codec.encode(truth)]
    assert rle_codec.iou(rle_codec.encode(half), gts).tolist() == [0.0, 0.5]
    assert matches_an_instance(rle_codec.encode(half), gts, 0.5)
    assert not matches_an_instance(rle_codec.encode(less), gts, 0.5)
    assert not matches_an_instance(rle_codec.encode(truth), [], 0.5)
    with pytest.raises(ValueError, match="sizes differ"):
        matches_an_instance(rle_codec.encode(np.zeros((5, 5), bool)), gts)


def test_coco_segmentations_become_rles():
    square = [[1, 1, 5, 1, 5, 5, 1, 5]]  # a polygon
    mask = rle_codec.decode(rle_codec.from_segmentation(square, 8, 8))
    assert mask.shape == (8, 8) and 12 <= mask.sum() <= 25
    uncompressed = {"size": [8, 8], "counts": [8, 8, 48]}  # column-major runs: column 1 set
    assert rle_codec.decode(rle_codec.from_segmentation(uncompressed, 8, 8))[:, 1].all()
    compressed = rle_codec.encode(mask)
    assert rle_codec.from_segmentation(compressed, 8, 8) == compressed
    with pytest.raises(ValueError, match="size"):
        rle_codec.from_segmentation(compressed, 9, 8)
    with pytest.raises(ValueError, match="not a COCO segmentation"):
        rle_codec.from_segmentation("nope", 8, 8)

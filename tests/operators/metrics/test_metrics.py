import math

import numpy as np
import pytest
import torch

from maskdex.operators.metrics.segmentation import class_iou, confusion_matrix, mean_iou


def test_confusion_matrix_counts_pixels_and_ignores_255():
    gt = np.array([[0, 0, 1], [1, 255, 2]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    confusion = confusion_matrix(pred, gt, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 2] = 1, 1, 2, 1
    np.testing.assert_array_equal(confusion, expected)


def test_mean_iou_averages_over_classes_in_ground_truth_or_prediction():
    gt = np.array([0, 0, 1, 1, 2, 255])
    pred = np.array([0, 1, 1, 1, 3, 2])
    confusion = confusion_matrix(pred, gt, 5)
    # class 0: 1/(1+0+1); class 1: 2/(2+1+0); class 2: 0/1 (missed); class 3: 0/1 (false positive); 4: absent
    iou = class_iou(confusion)
    np.testing.assert_allclose(iou[:4], [0.5, 2 / 3, 0.0, 0.0])
    assert math.isnan(iou[4])
    assert mean_iou(confusion) == pytest.approx((0.5 + 2 / 3) / 4)
    # summed confusions evaluate a data set as one
    assert mean_iou(confusion + confusion_matrix(np.array([4]), np.array([4]), 5)) == pytest.approx(
        (0.5 + 2 / 3 + 1.0) / 5)
    assert math.isnan(mean_iou(np.zeros((2, 2))))


def test_bad_label_maps_are_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrix(np.array([2]), np.array([0]), 2)
    with pytest.raises(ValueError, match="integers"):
        confusion_matrix(np.array([0.5]), np.array([0]), 2)

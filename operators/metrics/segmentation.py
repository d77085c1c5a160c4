"""Segmentation metrics (design.md section 5): a confusion matrix over all evaluated pixels, and mIoU."""

from __future__ import annotations

import numpy as np
import torch

from maskdex.operators.common.labels import IGNORE_INDEX


def confusion_matrix(prediction, ground_truth, n_classes: int, *, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(C, C) int64 counts, rows = ground truth, columns = prediction; ground-truth ignore_index pixels left out.

    Sum the matrices of many images to evaluate a data set.
    """
    pred = _as_int_array(prediction)
    gt = _as_int_array(ground_truth)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    keep = gt != ignore_index
    pred, gt = pred[keep], gt[keep]
    for name, labels in (("prediction", pred), ("ground truth", gt)):
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise ValueError(f"{name} has labels outside 0..{n_classes - 1} (other than {ignore_index})")
    counts = np.bincount(gt * n_classes + pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


def class_iou(confusion: np.ndarray) -> np.ndarray:
    """(C,) TP / (TP + FP + FN); NaN for classes in neither ground truth nor prediction."""
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {confusion.shape}")
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in ground truth or prediction (NaN when there are none)."""
    iou = class_iou(confusion)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else float("nan")


def _as_int_array(labels) -> np.ndarray:
    array = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"label maps must hold integers, got {array.dtype}")
    return array.astype(np.int64)

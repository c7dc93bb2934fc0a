"""Cityscapes pixel-level metrics, computed the way ``cityscapesScripts`` computes them.

Ground truth arrives in Cityscapes label ids and is mapped to the 19 train ids; pixels whose label
is ignored in evaluation (train id 255: unlabeled, ego vehicle, license plate, ...) are left out.
From one confusion matrix accumulated over all frames:

* class IoU = TP / (TP + FP + FN); a class that is neither in the ground truth nor predicted
  has no IoU (NaN, reported as null) and is left out of the mean, as in cityscapesScripts;
* category IoU uses the 7 Cityscapes categories, counting a prediction as correct when it is any
  class of the right category;
* pixel accuracy = correct / evaluated pixels.

``test/test_eval_metrics.py`` checks these numbers equal cityscapesScripts' on the same images.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..cityscapes import CATEGORIES, CLASS_NAMES, IGNORE_INDEX, label_ids_to_train_ids

NUM_CLASSES = len(CLASS_NAMES)


class ConfusionMatrix:
    """Rows: ground-truth train id, columns: predicted train id (19 x 19, int64)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction: np.ndarray, gt_train_ids: np.ndarray) -> np.ndarray:
        """Add one frame (both HxW train ids) and return that frame's own matrix."""
        if prediction.shape != gt_train_ids.shape:
            raise ValueError(f"prediction {prediction.shape} and ground truth {gt_train_ids.shape} differ in size")
        valid = gt_train_ids != IGNORE_INDEX
        gt = gt_train_ids[valid].astype(np.int64)
        pred = prediction[valid].astype(np.int64)
        if pred.size and pred.max() >= self.num_classes:
            raise ValueError(f"prediction has class {int(pred.max())}, expected < {self.num_classes}")
        frame = np.bincount(gt * self.num_classes + pred, minlength=self.num_classes**2)
        frame = frame.reshape(self.num_classes, self.num_classes)
        self.matrix += frame
        return frame

    def update_label_ids(self, prediction: np.ndarray, gt_label_ids: np.ndarray) -> np.ndarray:
        """:meth:`update` with ground truth in Cityscapes label ids."""
        return self.update(prediction, label_ids_to_train_ids(gt_label_ids))


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else math.nan


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def class_iou(matrix: np.ndarray) -> np.ndarray:
    tp = np.diag(matrix).astype(np.float64)
    den = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, tp / np.maximum(den, 1), np.nan)


def category_iou(matrix: np.ndarray) -> dict[str, float]:
    out = {}
    for name, ids in CATEGORIES.items():
        inside = list(ids)
        outside = [i for i in range(matrix.shape[0]) if i not in ids]
        tp = matrix[np.ix_(inside, inside)].sum()
        fn = matrix[inside, :].sum() - tp
        fp = matrix[np.ix_(outside, inside)].sum()
        out[name] = _ratio(tp, tp + fp + fn)
    return out


def summarize(matrix: np.ndarray) -> dict[str, Any]:
    """All metrics of a confusion matrix; NaN where undefined (JSON writers turn it into null)."""
    ious = class_iou(matrix)
    categories = category_iou(matrix)
    per_class_acc = [_ratio(matrix[i, i], matrix[i].sum()) for i in range(matrix.shape[0])]
    evaluated = int(matrix.sum())
    return {
        "miou": _nanmean(list(ious)),
        "class_iou": {name: float(v) for name, v in zip(CLASS_NAMES, ious, strict=True)},
        "category_miou": _nanmean(list(categories.values())),
        "category_iou": categories,
        "pixel_accuracy": _ratio(np.trace(matrix), evaluated),
        "mean_class_accuracy": _nanmean(per_class_acc),
        "evaluated_pixels": evaluated,
        "classes_present": [CLASS_NAMES[i] for i in range(matrix.shape[0]) if matrix[i].sum() > 0],
        "confusion_matrix": matrix.tolist(),
    }

"""Cityscapes metrics: ours against cityscapesScripts' evaluation on the same PNG files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from seg_perception.cityscapes import (
    CATEGORIES,
    CLASS_NAMES,
    LABEL_ID_TO_TRAIN_ID,
    label_ids_to_train_ids,
    train_ids_to_label_ids,
)
from seg_perception.evaluation.evaluate import EvalOptions, evaluate, resolve_params
from seg_perception.evaluation.metrics import ConfusionMatrix, summarize
from seg_perception.evaluation.sample_drive import make_sample_drive


def cityscapes_eval(predictions: list[Path], ground_truth: list[Path]) -> dict:
    """Run cityscapesScripts' pixel-level evaluation programmatically on explicit file lists."""
    cs = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
                             reason="cityscapesscripts is not installed")
    args = cs.args
    args.evalInstLevelScore = False  # needs *_instanceIds.png, which instance-free drives lack
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    return cs.evaluateImgLists([str(p) for p in predictions], [str(p) for p in ground_truth], args)


def assert_same(ours: float | None, theirs: float) -> None:
    if ours is None or math.isnan(ours):
        assert math.isnan(theirs)
    else:
        assert ours == pytest.approx(theirs, abs=1e-12)


def assert_matches_cityscapes(metrics: dict, result: dict) -> None:
    for name in CLASS_NAMES:
        assert_same(metrics["class_iou"][name], result["classScores"][name])
    assert_same(metrics["miou"], result["averageScoreClasses"])
    for name in CATEGORIES:
        assert_same(metrics["category_iou"][name], result["categoryScores"][name])
    assert_same(metrics["category_miou"], result["averageScoreCategories"])
    # Pixel accuracy from cityscapesScripts' label-id confusion matrix (its own pixel accuracy
    # option counts errors, so it is recomputed here from the matrix it accumulated).
    matrix = np.asarray(result["confMatrix"], dtype=np.int64)
    valid = [label for label, train in LABEL_ID_TO_TRAIN_ID.items() if train != 255]
    assert metrics["evaluated_pixels"] == matrix[valid].sum()
    assert_same(metrics["pixel_accuracy"], matrix[valid, valid].sum() / matrix[valid].sum())


def test_random_label_maps_match_cityscapesscripts(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    # Ground truth uses every label id 0..33 except a few classes, so some classes are absent
    # (NaN when also never predicted, 0 when predicted) and ignored ids are exercised.
    absent = {31, 32, 28}  # train, motorcycle, bus
    gt_ids = np.array([i for i in range(34) if i not in absent], dtype=np.uint8)
    confusion = ConfusionMatrix()
    predictions, ground_truth = [], []
    for i in range(3):
        gt = rng.choice(gt_ids, size=(40, 60)).astype(np.uint8)
        pred = label_ids_to_train_ids(gt).copy()
        flip = rng.random(gt.shape) < 0.4  # 40 % wrong, random class
        pred[flip] = rng.integers(0, 19, int(flip.sum()))
        pred[pred == 255] = rng.integers(0, 19, int((pred == 255).sum()))
        pred[pred == 16] = 0  # never predict 'train': with no ground truth its IoU is undefined
        confusion.update_label_ids(pred, gt)
        predictions.append(tmp_path / f"p{i}_pred.png")
        ground_truth.append(tmp_path / f"g{i}_gtFine_labelIds.png")
        cv2.imwrite(str(predictions[-1]), train_ids_to_label_ids(pred))
        cv2.imwrite(str(ground_truth[-1]), gt)
    metrics = summarize(confusion.matrix)
    assert math.isnan(metrics["class_iou"]["train"])
    assert metrics["class_iou"]["bus"] == 0.0  # predicted but not in the ground truth
    assert_matches_cityscapes(metrics, cityscapes_eval(predictions, ground_truth))


def test_hand_computed_iou() -> None:
    gt = np.array([[0, 0, 13, 255]], dtype=np.uint8)  # road, road, car, ignored
    pred = np.array([[0, 13, 13, 0]], dtype=np.uint8)
    confusion = ConfusionMatrix()
    confusion.update(pred, gt)
    metrics = summarize(confusion.matrix)
    assert metrics["class_iou"]["road"] == pytest.approx(1 / 2)  # tp 1, fn 1, ignored pixel not fp
    assert metrics["class_iou"]["car"] == pytest.approx(1 / 2)   # tp 1, fp 1
    assert metrics["miou"] == pytest.approx(0.5)
    assert metrics["pixel_accuracy"] == pytest.approx(2 / 3)
    assert metrics["category_iou"]["flat"] == pytest.approx(1 / 2)
    assert math.isnan(metrics["class_iou"]["sky"])
    assert metrics["evaluated_pixels"] == 3


def test_confusion_rejects_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        ConfusionMatrix().update(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8))


def test_offline_report_matches_cityscapesscripts_on_saved_predictions(tmp_path: Path) -> None:
    """The whole path: bag -> engine -> report.json equals cityscapesScripts on the written PNGs."""
    drive = make_sample_drive(tmp_path / "drive", frames=4, size=(64, 128), progress=False)
    values = resolve_params(device="cpu")
    report, paths = evaluate(EvalOptions(bag=drive.bag, out=tmp_path / "report", mode="offline",
                                         save_predictions=True, threads=1, progress=False), values)
    assert report["pooled"]["frames"]["evaluated"] == 4
    predictions = sorted((tmp_path / "report" / "predictions").glob("*_pred_labelIds.png"))
    ground_truth = sorted(drive.cityscapes.glob("gtFine/val/sample/*_gtFine_labelIds.png"))
    assert len(predictions) == len(ground_truth) == 4
    result = cityscapes_eval(predictions, ground_truth)
    assert_matches_cityscapes(json.loads(paths["json"].read_text())["pooled"]["metrics"], result)


# -- every metric, table-driven, against cityscapesScripts' own scoring functions ------------------
def _their_scores(gt_label_ids: np.ndarray, pred_train_ids: np.ndarray) -> dict[str, Any]:
    """cityscapesScripts' scores from its label-id confusion matrix, built as its evaluatePair does."""
    cs = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
                             reason="cityscapesscripts is not installed")
    from cityscapesscripts.helpers.labels import category2labels, labels

    args = cs.args
    args.normalized = True  # getMatrixFieldValue(i, i) is then the class accuracy (row-normalised)
    matrix = cs.generateMatrix(args)
    np.add.at(matrix, (gt_label_ids.ravel(), train_ids_to_label_ids(pred_train_ids).ravel()), 1)
    evaluated = [label for label in labels if not label.ignoreInEval]
    class_iou = {label.name: cs.getIouScoreForLabel(label.id, matrix, args) for label in evaluated}
    class_accuracy = {label.name: cs.getMatrixFieldValue(matrix, label.id, label.id, args) for label in evaluated}
    category_iou = {name: cs.getIouScoreForCategory(name, matrix, args) for name in category2labels}
    ids = [label.id for label in evaluated]
    return {"class_iou": class_iou, "miou": cs.getScoreAverage(class_iou, args),
            "category_iou": category_iou, "category_miou": cs.getScoreAverage(category_iou, args),
            "mean_class_accuracy": cs.getScoreAverage(class_accuracy, args),
            "pixel_accuracy": matrix[ids, ids].sum() / matrix[ids].sum() if matrix[ids].sum() else math.nan,
            "evaluated_pixels": int(matrix[ids].sum()),
            "classes_present": [label.name for label in evaluated if matrix[label.id].sum() > 0]}


def _case(seed: int, wrong: float, gt_ids: tuple[int, ...], pred_ids: tuple[int, ...] | None = None,
          shape: tuple[int, int] = (30, 40)) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth drawn from ``gt_ids`` (label ids); the prediction is right except a ``wrong``
    share of pixels, which get a train id drawn from ``pred_ids`` (default: all 19)."""
    rng = np.random.default_rng(seed)
    gt = rng.choice(np.array(gt_ids, np.uint8), size=shape)
    pred = label_ids_to_train_ids(gt).copy()
    flip = (rng.random(shape) < wrong) | (pred == 255)
    choices = np.array(pred_ids if pred_ids is not None else range(19), np.uint8)
    pred[flip] = rng.choice(choices, int(flip.sum()))
    return gt, pred


ALL_LABEL_IDS = tuple(range(34))
CASES = {
    "every label id, 40 % wrong": _case(1, 0.4, ALL_LABEL_IDS),
    "perfect": _case(2, 0.0, (7, 8, 11, 21, 23, 24, 26)),
    "all wrong into one class": _case(3, 1.0, (7, 8, 26), pred_ids=(10,)),
    # road dominates, errors go to sidewalk only: row and column sums differ a lot
    "lopsided": _case(4, 0.3, (7,) * 20 + (8, 26, 24), pred_ids=(1,)),
    "classes absent and never predicted": _case(5, 0.2, (7, 26), pred_ids=(0, 13)),
    "predicted but absent from the ground truth": _case(6, 0.5, (7, 8), pred_ids=(15, 16, 17)),
    "mostly ignored pixels": _case(7, 0.3, (0, 1, 2, 3, 4, 5, 6, 9, 10, 7)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_metric_matches_cityscapesscripts(case: str) -> None:
    gt, pred = CASES[case]
    confusion = ConfusionMatrix()
    half = gt.shape[0] // 2  # two frames: the matrix accumulates
    confusion.update_label_ids(pred[:half], gt[:half])
    confusion.update_label_ids(pred[half:], gt[half:])
    ours, theirs = summarize(confusion.matrix), _their_scores(gt, pred)
    for name in CLASS_NAMES:
        assert_same(ours["class_iou"][name], theirs["class_iou"][name])
    for name in CATEGORIES:
        assert_same(ours["category_iou"][name], theirs["category_iou"][name])
    for key in ("miou", "category_miou", "mean_class_accuracy", "pixel_accuracy"):
        assert_same(ours[key], theirs[key])
    assert ours["evaluated_pixels"] == theirs["evaluated_pixels"]
    assert ours["classes_present"] == theirs["classes_present"]
    assert ours["confusion_matrix"] == confusion.matrix.tolist()


@pytest.mark.parametrize(("gt", "pred", "expected"), [
    # one road pixel right, one road pixel called car, one car pixel right: road recall 1/2, car 1
    ([0, 0, 13], [0, 13, 13], {"class_iou/road": 1 / 2, "class_iou/car": 1 / 2, "miou": 1 / 2,
                               "pixel_accuracy": 2 / 3, "mean_class_accuracy": 3 / 4, "evaluated_pixels": 3}),
    # nine road pixels, all called sidewalk; one sidewalk pixel right: recall road 0, sidewalk 1
    ([0] * 9 + [1], [1] * 10, {"class_iou/road": 0.0, "class_iou/sidewalk": 1 / 10, "miou": 1 / 20,
                               "pixel_accuracy": 1 / 10, "mean_class_accuracy": 1 / 2,
                               "category_iou/flat": 1.0}),
    # ignored ground truth counts nowhere, whatever was predicted there
    ([255, 255, 2], [5, 6, 2], {"class_iou/building": 1.0, "miou": 1.0, "pixel_accuracy": 1.0,
                                "mean_class_accuracy": 1.0, "evaluated_pixels": 1}),
    # nothing evaluated: every metric undefined
    ([255, 255], [0, 1], {"miou": math.nan, "pixel_accuracy": math.nan, "mean_class_accuracy": math.nan,
                          "category_miou": math.nan, "evaluated_pixels": 0}),
])
def test_hand_computed_metrics(gt: list[int], pred: list[int], expected: dict[str, float]) -> None:
    confusion = ConfusionMatrix()
    confusion.update(np.array([pred], np.uint8), np.array([gt], np.uint8))
    metrics = summarize(confusion.matrix)
    for key, value in expected.items():
        group, _, name = key.partition("/")
        got = metrics[group][name] if name else metrics[group]
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got), key
        else:
            assert got == pytest.approx(value), key


def test_update_returns_the_frame_matrix_and_rejects_unknown_classes() -> None:
    confusion = ConfusionMatrix()
    first = confusion.update(np.array([[0, 1]], np.uint8), np.array([[0, 0]], np.uint8))
    assert first[0, 0] == 1 and first[0, 1] == 1 and first.sum() == 2
    second = confusion.update(np.array([[2]], np.uint8), np.array([[2]], np.uint8))
    assert second.sum() == 1 and confusion.matrix.sum() == 3 and confusion.matrix[2, 2] == 1
    with pytest.raises(ValueError, match="class 19"):
        confusion.update(np.array([[19]], np.uint8), np.array([[0]], np.uint8))

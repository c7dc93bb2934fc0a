"""Cityscapes metrics: ours against cityscapesScripts' evaluation on the same PNG files."""

from __future__ import annotations

import json
import math
from pathlib import Path

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

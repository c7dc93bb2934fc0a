"""The report files, their numbers against report.json, and the CLI around them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import pytest

from seg_perception.cityscapes import CLASS_NAMES
from seg_perception.cli import main
from seg_perception.evaluation.bag_io import DriveBag
from seg_perception.evaluation.evaluate import EvalOptions, evaluate, resolve_params
from seg_perception.evaluation.plots import PLOTS
from seg_perception.evaluation.report import pct, read_frames
from seg_perception.evaluation.sample_drive import make_sample_drive

FRAMES = 6


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory):
    return make_sample_drive(tmp_path_factory.mktemp("eval_report") / "drive", frames=FRAMES, size=(64, 128),
                             progress=False)


@pytest.fixture(scope="module")
def offline(drive, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("eval_report_out")
    evaluate(EvalOptions(bag=drive.bag, out=out, mode="offline", overlays=3, video=True, threads=1,
                         progress=False), resolve_params(device="cpu"))
    return out


def table(markdown: str, header: str) -> dict[str, str]:
    """Rows of the markdown table whose first header cell is ``header``: first cell -> second."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.startswith(f"| {header} |") and lines[i + 1].startswith("| ---"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1]
    return rows


def test_report_files_exist_and_are_images(offline: Path) -> None:
    report = json.loads((offline / "report.json").read_text())
    plots = report["files"]["plots"]
    # one camera of one drive: the per-camera, per-drive and per-tag bars have nothing to compare
    assert plots == {k: PLOTS[k] for k in ("class_iou", "confusion_matrix", "latency_histogram", "latency_over_time")}
    for name in list(plots.values()) + report["files"]["overlays"]:
        image = cv2.imread(str(offline / name))
        assert image is not None and image.shape[0] > 40, name
    assert len(report["files"]["overlays"]) == 3
    overlay = cv2.imread(str(offline / report["files"]["overlays"][0]))
    assert overlay.shape[:2] == (64, 3 * 128)  # input | prediction | ground truth
    assert report["files"]["video"] == "overlay.mp4" and (offline / "overlay.mp4").stat().st_size > 1000
    markdown = (offline / "report.md").read_text()
    for name in list(plots.values()) + report["files"]["overlays"]:
        assert f"]({name})" in markdown
    assert "UNTRAINED MODEL" in markdown


def test_markdown_numbers_equal_the_json(offline: Path) -> None:
    report = json.loads((offline / "report.json").read_text())
    markdown = (offline / "report.md").read_text()
    metrics = report["pooled"]["metrics"]
    classes = table(markdown, "class")
    assert {name: classes[name] for name in CLASS_NAMES} == {n: pct(metrics["class_iou"][n]) for n in CLASS_NAMES}
    assert classes["**mean**"] == pct(metrics["miou"])
    categories = table(markdown, "category")
    assert {k: v for k, v in categories.items() if k != "**mean**"} == {
        k: pct(v) for k, v in metrics["category_iou"].items()}
    summary = table(markdown, "metric")
    assert summary["mIoU (19 classes) %"].startswith(pct(metrics["miou"]) + " ")
    assert summary["pixel accuracy %"] == pct(metrics["pixel_accuracy"])
    latency = report["pooled"]["timing"]["latency_ms"]
    assert summary["latency p50 ms (engine call)"] == f"{latency['p50']:.1f}"
    assert summary["latency p99 ms (engine call)"] == f"{latency['p99']:.1f}"
    assert summary["throughput FPS"] == f"{report['pooled']['timing']['throughput_fps']:.2f}"
    timing = table(markdown, "stage")
    assert timing["inference"] == f"{report['pooled']['timing']['stages_ms']['inference']['p50']:.1f}"
    accounting = table(markdown, "frames")
    assert accounting["evaluated"] == str(report["pooled"]["frames"]["evaluated"]) == str(FRAMES)
    # The JSON's own numbers hang together.
    assert len(read_frames(offline)) == FRAMES
    assert metrics["evaluated_pixels"] == sum(map(sum, metrics["confusion_matrix"]))
    assert report["pooled"]["timing"]["stages_ms"]["inference"]["count"] == FRAMES
    assert report["engine"]["device"] == "cpu" and report["versions"]["rosbags"]


def test_cli_converts_and_evaluates(drive, tmp_path: Path, capsys) -> None:
    bag = tmp_path / "bag.mcap.d"
    assert main(["cityscapes-to-bag", "--root", str(drive.cityscapes), "--out", str(bag), "--storage", "mcap",
                 "--rate", "20"]) == 0
    with DriveBag(bag) as reader:
        assert reader.info.image_count == FRAMES and reader.info.storage == "mcap"
    assert main(["eval", "--bag", str(bag), "--mode", "offline", "--out", str(tmp_path / "r"), "--device", "cpu",
                 "--threads", "1", "--no-progress", "--overlays", "0"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert re.search(rf"\| mIoU \(19 classes\) % \| {re.escape(pct(report['pooled']['metrics']['miou']))} ", out)
    assert report["files"]["overlays"] == []


def test_cli_errors_name_the_problem(drive, tmp_path: Path, capsys) -> None:
    code = main(["eval", "--bag", str(drive.bag), "--out", str(tmp_path / "r"), "--mode", "offline",
                 "--gt-topic", "/camera/labels", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no ground-truth topic '/camera/labels'" in err and "/camera/semantic_gt" in err
    assert main(["eval", "--bag", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "bag not found" in capsys.readouterr().err
    assert main(["eval", "--bag", str(drive.bag), "--out", str(tmp_path / "r"), "--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "regseg" in err  # names the bad model and the valid ones
    (tmp_path / "precious").mkdir()
    assert main(["make-sample-drive", str(tmp_path / "precious")]) == 2
    assert "not a sample drive" in capsys.readouterr().err
    assert (tmp_path / "precious").is_dir()

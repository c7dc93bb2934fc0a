"""Live replay through the real node over DDS (loopback, private domain via conftest)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Writer

from seg_perception.cli import main
from seg_perception.evaluation.bag_io import GT_TOPIC, IMAGE_TOPIC, IMAGE_TYPE, TYPESTORE, DriveBag, image_message
from seg_perception.evaluation.evaluate import EvalOptions, evaluate, resolve_params
from seg_perception.evaluation.sample_drive import make_sample_drive

FRAMES = 8


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory):
    return make_sample_drive(tmp_path_factory.mktemp("eval_live") / "drive", frames=FRAMES, size=(64, 128),
                             progress=False)


def run(bag: Path, out: Path, mode: str, **options) -> dict:
    values = resolve_params(device="cpu")
    report, _ = evaluate(EvalOptions(bag=bag, out=out, mode=mode, threads=1, progress=False, **options), values)
    return report


def assert_every_frame_accounted(report: dict, frames: int) -> None:
    indices = sorted(r["index"] for r in report["per_frame"])
    assert indices == list(range(frames))  # each frame exactly once
    f = report["frames"]
    assert f["read"] == f["in_bag"] == frames
    assert (f["evaluated"] + f["not_evaluated"]["total"] + f["dropped"]["total"] + f["rejected"]["total"]
            == frames)
    live = report["live"]
    books = live["node_accounting"]
    assert live["published"] == frames
    assert books["in_flight"] == 0
    assert books["processed"] == live["results_received"] == f["evaluated"] + f["not_evaluated"]["total"]
    assert (books["dropped_total"] + books["rejected_total"] + live["transport_lost"]
            == f["dropped"]["total"] + f["rejected"]["total"])
    assert live["reconciliation"]["all_accounted"]
    assert live["unexpected_outputs"] == 0


def test_live_replay_through_the_node_accounts_for_every_frame(drive, tmp_path: Path) -> None:
    live = run(drive.bag, tmp_path / "live", "live", speed=0.5)
    assert_every_frame_accounted(live, FRAMES)
    assert live["frames"]["evaluated"] >= 1
    returned = [r for r in live["per_frame"] if r["status"] == "evaluated"]
    assert all(r["latency_ms"] > 0 for r in returned)
    assert live["timing"]["frame_latency_ms"]["count"] == len(returned)
    assert live["timing"]["stages_ms"]["inference"]["count"] == live["live"]["node_accounting"]["processed"]
    assert live["live"]["dds"]["discovery_range"] == "LOCALHOST"
    # The node's labels equal the engine's (same seeded random weights): every frame evaluated
    # live has the pixel accuracy the offline run measured on it.
    offline = run(drive.bag, tmp_path / "offline", "offline")
    offline_acc = {r["index"]: r["pixel_accuracy"] for r in offline["per_frame"]}
    for record in returned:
        assert record["pixel_accuracy"] == pytest.approx(offline_acc[record["index"]], abs=0)
    if live["frames"]["evaluated"] == FRAMES:
        assert live["metrics"]["confusion_matrix"] == offline["metrics"]["confusion_matrix"]


def test_live_counts_rejected_encodings_and_unusable_ground_truth(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    gt = np.full((32, 64), 7, np.uint8)
    with Writer(tmp_path / "bag", version=9) as writer:
        image_conn = writer.add_connection(IMAGE_TOPIC, IMAGE_TYPE, typestore=TYPESTORE)
        gt_conn = writer.add_connection(GT_TOPIC, IMAGE_TYPE, typestore=TYPESTORE)
        for i in range(6):
            stamp = 1_000_000_000 + i * 100_000_000
            if i in (1, 4):  # 16-bit depth-like frames: the node rejects the encoding
                image = image_message(stamp, "cam", np.zeros((32, 128), np.uint8), "rgb8")
                image.encoding, image.width = "16UC1", 64  # 2 bytes a pixel: step 128
            else:
                image = image_message(stamp, "cam", rgb, "rgb8")
            label = gt[:30] if i == 2 else gt  # frame 2: ground truth of another size
            writer.write(image_conn, stamp, TYPESTORE.serialize_cdr(image, IMAGE_TYPE))
            writer.write(gt_conn, stamp, TYPESTORE.serialize_cdr(image_message(stamp, "cam", label, "mono8"), IMAGE_TYPE))
    report = run(tmp_path / "bag", tmp_path / "out", "live", speed=0.5)
    assert_every_frame_accounted(report, 6)
    assert report["frames"]["rejected"] == {"total": 2, "by_reason": {"encoding": 2}}
    assert {r["index"]: r["status"] for r in report["per_frame"]}[1] == "rejected"
    statuses = {r["index"]: (r["status"], r["reason"]) for r in report["per_frame"]}
    if statuses[2][0] != "dropped":  # a frame the node dropped never gets to its ground-truth check
        assert statuses[2] == ("not_evaluated", "gt_size_mismatch")
        assert report["frames"]["not_evaluated"]["by_reason"] == {"gt_size_mismatch": 1}
        assert any("could not be evaluated" in note for note in report["notes"])
    offline = run(tmp_path / "bag", tmp_path / "offline", "offline")
    assert offline["frames"]["rejected"] == {"total": 2, "by_reason": {"encoding": 2}}
    assert offline["frames"]["not_evaluated"] == {"total": 1, "by_reason": {"gt_size_mismatch": 1}}
    assert offline["frames"]["evaluated"] == 3


def test_demo_command_prints_summary_and_untrained_warning(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--frames", "4", "--size", "48x96", "--no-progress", "--speed", "0.5",
                 "--weights", ""])
    captured = capsys.readouterr()
    assert code == 0
    assert "UNTRAINED MODEL" in captured.err
    assert "| mIoU (19 classes) % |" in captured.out and "| drop rate % |" in captured.out
    report = json.loads((out / "report" / "report.json").read_text())
    assert f"report: {out / 'report' / 'report.md'}" in captured.out
    assert report["mode"] == "live" and report["untrained"] is True
    assert report["frames"]["read"] == 4
    with DriveBag(out / "drive" / "bag") as bag:
        assert bag.info.image_count == 4

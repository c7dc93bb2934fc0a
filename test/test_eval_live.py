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
from seg_perception.evaluation.live.node_process import NodeStartError, books_delta, parse_diagnostics
from seg_perception.evaluation.report import read_frames
from seg_perception.evaluation.sample_drive import make_sample_drive

FRAMES = 8


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory):
    return make_sample_drive(tmp_path_factory.mktemp("eval_live") / "drive", frames=FRAMES, size=(64, 128),
                             progress=False)


def run(bag: Path, out: Path, mode: str, **options) -> dict:
    """The report of one single-camera bag, with its frames.csv rows under ``per_frame``."""
    values = resolve_params(device="cpu")
    report, paths = evaluate(EvalOptions(bag=bag, out=out, mode=mode, threads=1, progress=False, **options), values)
    report["per_frame"] = read_frames(paths["frames_csv"])
    return report


def assert_every_frame_accounted(report: dict, frames: int) -> None:
    indices = sorted(r["index"] for r in report["per_frame"])
    assert indices == list(range(frames))  # each frame exactly once
    f = report["pooled"]["frames"]
    assert f["read"] == f["in_bag"] == frames
    assert (f["evaluated"] + f["not_evaluated"]["total"] + f["dropped"]["total"] + f["rejected"]["total"]
            == frames)
    live = report["cameras"]["camera"]["live"]  # the camera's figures; the node process is report["live"]
    books = live["node_accounting"]
    assert live["published"] == frames
    assert books["in_flight"] == 0
    assert books["processed"] == live["results_received"] == f["evaluated"] + f["not_evaluated"]["total"]
    assert (books["dropped_total"] + books["rejected_total"] + live["transport_lost"]
            == f["dropped"]["total"] + f["rejected"]["total"])
    assert live["reconciliation"]["all_accounted"]
    assert live["unexpected_outputs"] == 0
    # the node ran as a process of its own, through seg_node's entry point, and was stopped cleanly
    node = report["live"]["node_process"]
    assert node["exit_code"] == 0
    assert "seg_perception.process" in " ".join(node["command"]) and "--params-file" in node["command"]
    assert "stopped in" in Path(node["log"]).read_text()


def test_live_replay_through_the_node_accounts_for_every_frame(drive, tmp_path: Path) -> None:
    live = run(drive.bag, tmp_path / "live", "live", speed=0.5)
    assert_every_frame_accounted(live, FRAMES)
    assert live["pooled"]["frames"]["evaluated"] >= 1
    returned = [r for r in live["per_frame"] if r["status"] == "evaluated"]
    assert all(r["latency_ms"] > 0 for r in returned)
    assert live["pooled"]["timing"]["latency_ms"]["count"] == len(returned)
    # stage timings come from the node's /diagnostics: its window holds the warm-up frames too
    processed = live["cameras"]["camera"]["live"]["node_accounting"]["processed"]
    assert live["pooled"]["timing"]["stages_ms"]["inference"]["count"] == processed + live["live"]["warmup_frames"]
    assert live["pooled"]["timing"]["stages_ms"]["inference"]["p50"] > 0
    assert live["live"]["dds"]["discovery_range"] == "LOCALHOST"
    assert live["live"]["dds"]["node_input_qos"].startswith("reliable")
    assert live["cameras"]["camera"]["live"]["transport_lost"] == 0  # reliable over shared memory: nothing lost
    # The node's labels equal the engine's (same seeded random weights): every frame evaluated
    # live has the pixel accuracy the offline run measured on it.
    offline = run(drive.bag, tmp_path / "offline", "offline")
    offline_acc = {r["index"]: r["pixel_accuracy"] for r in offline["per_frame"]}
    for record in returned:
        assert record["pixel_accuracy"] == pytest.approx(offline_acc[record["index"]], abs=0)
    if live["pooled"]["frames"]["evaluated"] == FRAMES:
        assert live["pooled"]["metrics"]["confusion_matrix"] == offline["pooled"]["metrics"]["confusion_matrix"]


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
            gt_msg = image_message(stamp, "cam", label, "mono8")
            writer.write(gt_conn, stamp, TYPESTORE.serialize_cdr(gt_msg, IMAGE_TYPE))
    report = run(tmp_path / "bag", tmp_path / "out", "live", speed=0.5)
    assert_every_frame_accounted(report, 6)
    assert report["pooled"]["frames"]["rejected"] == {"total": 2, "by_reason": {"encoding": 2}}
    assert {r["index"]: r["status"] for r in report["per_frame"]}[1] == "rejected"
    statuses = {r["index"]: (r["status"], r["reason"]) for r in report["per_frame"]}
    if statuses[2][0] != "dropped":  # a frame the node dropped never gets to its ground-truth check
        assert statuses[2] == ("not_evaluated", "gt_size_mismatch")
        assert report["pooled"]["frames"]["not_evaluated"]["by_reason"] == {"gt_size_mismatch": 1}
        assert any("could not be evaluated" in note for note in report["notes"])
    offline = run(tmp_path / "bag", tmp_path / "offline", "offline")
    assert offline["pooled"]["frames"]["rejected"] == {"total": 2, "by_reason": {"encoding": 2}}
    assert offline["pooled"]["frames"]["not_evaluated"] == {"total": 1, "by_reason": {"gt_size_mismatch": 1}}
    assert offline["pooled"]["frames"]["evaluated"] == 3


def test_demo_command_prints_summary_and_untrained_warning(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = Path("demo")  # relative, as `make demo` passes it: the node process must still find its files
    code = main(["demo", "--out", str(out), "--frames", "4", "--size", "48x96", "--no-progress", "--speed", "0.5",
                 "--weights", ""])
    captured = capsys.readouterr()
    assert code == 0
    assert "UNTRAINED MODEL" in captured.err
    assert "| mIoU (19 classes) % |" in captured.out and "| drop rate % |" in captured.out
    report = json.loads((out / "report" / "report.json").read_text())
    assert f"report: {out / 'report' / 'report.md'}" in captured.out
    assert report["mode"] == "live" and report["untrained"] is True
    assert report["pooled"]["frames"]["read"] == 4
    with DriveBag(out / "drive" / "bag") as bag:
        assert bag.info.image_count == 4


def test_node_that_cannot_start_is_a_clear_error_with_its_log(drive, tmp_path: Path) -> None:
    values = resolve_params(device="cpu", weights=str(tmp_path / "missing.pt"), model_options="{}")
    with pytest.raises(NodeStartError, match="seg_node exited with code 1") as info:
        evaluate(EvalOptions(bag=drive.bag, out=tmp_path, mode="live", progress=False), values)
    assert "missing.pt" in str(info.value)  # the node's own reason, from its log


def test_parse_diagnostics_reads_the_nodes_books_and_timings() -> None:
    values = {"frames_received": "40", "frames_processed": "30", "frames_dropped_total": "9",
              "frames_rejected_total": "1", "frames_in_flight": "0", "dropped_superseded": "8",
              "dropped_stale": "1", "rejected_encoding": "1", "drop_ratio": "0.25",
              "inference_ms_p50": "80.50", "inference_ms_p90": "90.00", "inference_ms_p99": "99.00",
              "inference_ms_max": "120.00", "model": "regseg", "parameters": "3334951"}
    parsed = parse_diagnostics(values)
    books = parsed["books"]
    assert books["received"] == 40 and books["processed"] == 30 and books["in_flight"] == 0
    assert books["dropped"] == {"superseded": 8, "stale": 1} and books["rejected"] == {"encoding": 1}
    assert parsed["stages"]["inference"]["p50"] == 80.5 and "preprocess" not in parsed["stages"]
    assert parsed["engine"]["parameters"] == 3334951
    baseline = parse_diagnostics({**values, "frames_received": "3", "frames_processed": "3",
                                  "frames_dropped_total": "0", "frames_rejected_total": "0",
                                  "dropped_superseded": "0", "dropped_stale": "0", "rejected_encoding": "0"})
    delta = books_delta(books, baseline["books"])
    assert delta["received"] == 37 and delta["processed"] == 27 and delta["dropped"] == {"superseded": 8, "stale": 1}


def test_compressed_frames_are_published_as_recorded() -> None:
    from types import SimpleNamespace

    from sensor_msgs.msg import CompressedImage

    from seg_perception.evaluation.bag_io import BagFrame
    from seg_perception.evaluation.live.replay import _image_message

    image = SimpleNamespace(format="rgb8; jpeg compressed bgr8", data=np.arange(10, dtype=np.uint8))
    msg = _image_message(BagFrame(0, 5, "cam", image, None), CompressedImage)
    assert msg.format == "rgb8; jpeg compressed bgr8" and bytes(msg.data) == bytes(range(10))
    assert msg.header.frame_id == "cam"


def test_two_cameras_replay_through_one_node_each_accounted(tmp_path: Path) -> None:
    from seg_perception.evaluation.ledger import Ledger
    from seg_perception.evaluation.live.replay import LiveCamera, run_live_cameras
    from seg_perception.evaluation.live.run import node_overrides

    rng = np.random.default_rng(0)
    topics = {cam: (f"/{cam}/image_raw", f"/{cam}/semantic_gt") for cam in ("front", "left")}
    with Writer(tmp_path / "bag", version=9) as writer:
        conns = {t: writer.add_connection(t, IMAGE_TYPE, typestore=TYPESTORE) for pair in topics.values() for t in pair}
        for i in range(5):
            stamp = 1_000_000_000 + i * 200_000_000
            for cam, (image_topic, gt_topic) in topics.items():
                rgb = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
                for topic, msg in ((image_topic, image_message(stamp, cam, rgb, "rgb8")),
                                   (gt_topic, image_message(stamp, cam, np.full((32, 64), 7, np.uint8), "mono8"))):
                    writer.write(conns[topic], stamp, TYPESTORE.serialize_cdr(msg, IMAGE_TYPE))
    values = resolve_params(device="cpu")
    cameras = []
    for cam, (image_topic, gt_topic) in topics.items():
        bag = DriveBag(tmp_path / "bag", image_topic, gt_topic)
        cameras.append(LiveCamera(cam, bag, Ledger(bag.info.image_count)))
        (tmp_path / cam).mkdir()
    try:
        stats = run_live_cameras(cameras, node_overrides(values, 10), tmp_path / "front", speed=0.5, progress=False,
                                 threads=1)
    finally:
        for camera in cameras:
            camera.bag.close()
    params = (tmp_path / "front" / "node_params.yaml").read_text()
    assert "cameras:" in params and "front.image_topic: front/image_raw" in params
    for camera, camera_stats in zip(cameras, stats, strict=True):
        books = camera_stats["node_accounting"]
        assert camera_stats["camera"] == camera.name and camera_stats["published"] == 5
        assert books["received"] == 5 and books["in_flight"] == 0  # this camera's own books
        assert camera_stats["reconciliation"]["all_accounted"] and camera_stats["transport_lost"] == 0
        assert sorted(r.index for r in camera.ledger.records) == list(range(5))
        assert camera_stats["results_received"] == books["processed"] >= 1
        assert camera_stats["stages_ms"]["inference"]["p50"] > 0 and camera_stats["node_process"]["exit_code"] == 0


def test_live_node_params_for_several_cameras_and_compressed_bags() -> None:
    from types import SimpleNamespace

    from seg_perception import params as P
    from seg_perception.evaluation.live.replay import LiveCamera, live_node_params

    def bag(topic: str, transport: str = "raw") -> SimpleNamespace:
        return SimpleNamespace(info=SimpleNamespace(image_topic=topic, image_transport=transport))

    cameras = [LiveCamera("front", bag("/front/image_raw"), None), LiveCamera("left", bag("/left/image_raw"), None)]
    params = live_node_params(cameras, {"model": "regseg"})
    assert params["cameras"] == ["front", "left"] and params["left.image_topic"] == "left/image_raw"
    assert cameras[1].topics(params) == ("left/image_raw", "left/segmentation/labels")
    compressed = LiveCamera(None, bag("/camera/image_raw/compressed", "compressed"), None)
    assert compressed.topics({"image_topic": "camera/image_raw"})[0] == "camera/image_raw/compressed"
    if "image_transport" in P.PARAMS_BY_NAME:
        assert live_node_params([compressed], {})["image_transport"] == "compressed"
    else:
        with pytest.raises(ValueError, match="--mode offline"):
            live_node_params([compressed], {})
    mixed = [LiveCamera("front", bag("/front/image_raw"), None),
             LiveCamera("left", bag("/left/image_raw/compressed", "compressed"), None)]
    with pytest.raises(ValueError, match="mix raw and compressed"):
        live_node_params(mixed, {})


def _csv_accuracy(path: Path) -> dict[tuple[str, int], float]:
    import csv

    with path.open() as handle:
        return {(row["camera"], int(row["index"])): float(row["pixel_accuracy"])
                for row in csv.DictReader(handle) if row["status"] == "evaluated"}


def test_multi_camera_bag_evaluated_live_through_one_node_matches_offline(tmp_path: Path) -> None:
    from seg_perception.evaluation.sample_drive import parse_cameras

    frames = 4
    drive = make_sample_drive(tmp_path / "multi", frames=frames, size=(64, 128), cameras=parse_cameras("front,left"),
                              progress=False)
    common = ["--bag", str(drive.bag), "--device", "cpu", "--threads", "1", "--no-progress"]
    assert main(["eval", *common, "--out", str(tmp_path / "live"), "--speed", "0.5"]) == 0  # live: the default
    assert main(["eval", *common, "--out", str(tmp_path / "offline"), "--mode", "offline"]) == 0
    live = json.loads((tmp_path / "live" / "report.json").read_text())
    offline = json.loads((tmp_path / "offline" / "report.json").read_text())
    assert live["mode"] == "live" and sorted(live["cameras"]) == ["front", "left"]
    assert live["live"]["node_process"]["exit_code"] == 0
    assert "cameras:" in (tmp_path / "live" / "node_params.yaml").read_text()  # ONE multi-camera node
    cams = live["drives"][0]["cameras"]
    for name, cam in cams.items():
        f, books = cam["frames"], cam["live"]["node_accounting"]
        assert f["read"] == f["in_bag"] == frames and f["all_accounted"]
        assert f["evaluated"] + f["not_evaluated"]["total"] + f["dropped"]["total"] + f["rejected"]["total"] == frames
        assert cam["live"]["published"] == frames and books["received"] == frames  # this camera's own books
        assert books["processed"] == cam["live"]["results_received"] == f["evaluated"] + f["not_evaluated"]["total"]
        assert f["dropped"]["total"] == books["dropped_total"] + cam["live"]["transport_lost"]
        assert live["cameras"][name]["latency_ms"]["count"] == f["evaluated"] >= 1  # end-to-end, per camera
        if f["evaluated"] == frames:  # the node's labels are the engine's: the same mIoU as offline
            assert cam["confusion_matrix"] == offline["drives"][0]["cameras"][name]["confusion_matrix"]
            assert live["cameras"][name]["metrics"]["miou"] == offline["cameras"][name]["metrics"]["miou"]
    pooled = live["pooled"]
    assert pooled["frames"]["read"] == 2 * frames and pooled["frames"]["all_accounted"]
    total = np.sum([c["confusion_matrix"] for c in cams.values()], axis=0)
    assert pooled["metrics"]["confusion_matrix"] == total.tolist()  # pooled from the SUM of the cameras
    # every frame evaluated live has the pixel accuracy the offline run measured on it
    offline_acc = _csv_accuracy(tmp_path / "offline" / "frames.csv")
    live_acc = _csv_accuracy(tmp_path / "live" / "frames.csv")
    assert live_acc and all(acc == offline_acc[key] for key, acc in live_acc.items())
    text = (tmp_path / "live" / "report.md").read_text()
    assert "one multi-camera seg_node" in text and "## Live run" in text and "| front |" in text


def test_compressed_bag_evaluated_live_through_the_node(tmp_path: Path) -> None:
    frames = 4
    drive = make_sample_drive(tmp_path / "jpeg", frames=frames, size=(64, 128), compressed="jpeg", jpeg_quality=80,
                              progress=False)
    report = run(drive.bag, tmp_path / "live", "live", speed=0.5)
    assert_every_frame_accounted(report, frames)
    assert report["pooled"]["frames"]["evaluated"] >= 1  # labels came back for JPEG frames the node decoded
    assert "image_transport: compressed" in (tmp_path / "live" / "node_params.yaml").read_text()
    info = report["drives"][0]["cameras"]["camera"]["input"]
    assert info["transport"] == "compressed" and info["codec"] == "jpeg" and info["jpeg_quality"] == 80
    assert "- images: compressed jpeg (format 'rgb8; jpeg compressed bgr8', JPEG quality 80)" in \
        (tmp_path / "live" / "report.md").read_text()


def test_node_and_offline_evaluator_decode_alike_padding_accepted_truncation_rejected(tmp_path: Path) -> None:
    """One decoder: a truncated JPEG is rejected as `corrupt` by the node (live) and by the offline
    evaluator, each frame with that reason; a JPEG padded with zeros, as V4L2 drivers pad their
    buffers, is decoded by both."""
    from seg_perception.evaluation.bag_io import COMPRESSED_TYPE, compressed_image_message

    rng = np.random.default_rng(1)
    gt = np.full((32, 64), 7, np.uint8)
    with Writer(tmp_path / "bag", version=9) as writer:
        image_conn = writer.add_connection(f"{IMAGE_TOPIC}/compressed", COMPRESSED_TYPE, typestore=TYPESTORE)
        gt_conn = writer.add_connection(GT_TOPIC, IMAGE_TYPE, typestore=TYPESTORE)
        for i in range(5):
            stamp = 1_000_000_000 + i * 200_000_000
            image = compressed_image_message(stamp, "cam", rng.integers(0, 256, (32, 64, 3), dtype=np.uint8), "jpeg")
            if i == 1:
                image.data = image.data[: len(image.data) // 2]  # truncated
            elif i == 3:
                image.data = np.concatenate([image.data, np.zeros(4096, np.uint8)])  # padded
            writer.write(image_conn, stamp, TYPESTORE.serialize_cdr(image, COMPRESSED_TYPE))
            writer.write(gt_conn, stamp, TYPESTORE.serialize_cdr(image_message(stamp, "cam", gt, "mono8"), IMAGE_TYPE))
    offline = run(tmp_path / "bag", tmp_path / "offline", "offline")
    assert offline["pooled"]["frames"]["rejected"] == {"total": 1, "by_reason": {"corrupt": 1}}
    assert offline["pooled"]["frames"]["evaluated"] == 4
    live = run(tmp_path / "bag", tmp_path / "live", "live", speed=0.25)
    assert_every_frame_accounted(live, 5)
    assert live["pooled"]["frames"]["rejected"] == {"total": 1, "by_reason": {"corrupt": 1}}  # the node's books
    statuses = {r["index"]: (r["status"], r["reason"]) for r in live["per_frame"]}
    assert statuses[1] == ("rejected", "corrupt")  # the evaluator's own check agrees with the node
    assert statuses[3][0] != "rejected"


def test_a_live_cameras_accounting_takes_the_nodes_reasons() -> None:
    """Per frame the evaluator only sees that labels did not come back; the node's books say why
    (and the transport counts), and the camera's accounting reconciles only with them."""
    from seg_perception.evaluation.drives.plan import Drive
    from seg_perception.evaluation.results import merge_drive

    books = {"received": 3, "processed": 2, "dropped_total": 1, "rejected_total": 1, "in_flight": 0,
             "dropped": {"superseded": 1}, "rejected": {"format": 1}}
    live = {"node_accounting": books, "transport_lost": 1, "output_lost": 0,
            "reconciliation": {"all_accounted": True}}
    records = [(0, 0, "evaluated", None, 5.0, 1.0, 0.0), (1, 1, "dropped", None, None, None, 0.1),
               (2, 2, "dropped", None, None, None, 0.2), (3, 3, "rejected", "format", None, None, 0.3),
               (4, 4, "not_evaluated", "gt_size_mismatch", 6.0, None, 0.4)]
    camera = {"camera": "camera", "image_topic": "/camera/image_raw", "gt_topic": "/camera/semantic_gt",
              "in_bag": 5, "storage": "sqlite3", "duration_s": 1.0, "rate_hz": 4.0, "input": None,
              "matrix": np.zeros((19, 19), np.int64), "records": records, "unreadable": 0, "gt_without_image": 0,
              "notes": [], "stage_samples": None, "stages_ms": {}, "live": live, "files": {}}
    drive = merge_drive(Drive("d", "/d"), [{"cameras": [camera]}])
    frames = drive["cameras"]["camera"]["frames"]
    assert frames["dropped"] == {"total": 2, "by_reason": {"superseded": 1, "transport_lost": 1}}
    assert frames["rejected"] == {"total": 1, "by_reason": {"format": 1}}
    assert frames["all_accounted"] and frames["drop_rate"] == 3 / 5
    live["reconciliation"]["all_accounted"] = False
    assert not merge_drive(Drive("d", "/d"), [{"cameras": [camera]}])["frames"]["all_accounted"]


def test_the_node_process_is_started_through_seg_nodes_entry_point(tmp_path: Path) -> None:
    """``seg_perception.process.main`` installs the signal handlers before torch is imported; the
    evaluator starts the node through it, with or without seeded random weights."""
    import sys

    from seg_perception.evaluation.live.node_process import node_command

    params = tmp_path / "node_params.yaml"
    assert node_command(params) == [sys.executable, "-m", "seg_perception.process", "--ros-args", "--params-file",
                                    str(params)]
    seeded = node_command(params, seed=7)
    assert seeded[1] == "-c" and "torch.manual_seed(7)" in seeded[2]
    assert "from seg_perception.process import main; main()" in seeded[2] and seeded[3:5] == ["--ros-args",
                                                                                                "--params-file"]

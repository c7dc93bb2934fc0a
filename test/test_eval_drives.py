"""Many drives in one process: several cameras, compressed images, tags, chunks, failures."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from seg_perception.cli import main
from seg_perception.compressed import is_compressed, jpeg_quality, message_to_rgb
from seg_perception.evaluation.bag_io import DriveBag, camera_topics, find_cameras
from seg_perception.evaluation.drives.plan import DriveListError, collect_drives, load_tags, plan_tasks
from seg_perception.evaluation.evaluate import EvalOptions, evaluate, resolve_params
from seg_perception.evaluation.metrics import summarize
from seg_perception.evaluation.plots import PLOTS
from seg_perception.evaluation.report import read_frames
from seg_perception.evaluation.sample_drive import make_sample_drive, parse_cameras, render_drive
from seg_perception.image_conversion import ImageRejected

SIZE = (48, 96)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drives")
    make_sample_drive(root / "raw", frames=5, size=SIZE, seed=0, progress=False)
    make_sample_drive(root / "multi", frames=4, size=SIZE, seed=1, progress=False,
                      cameras=parse_cameras("front,left,right"), compressed="jpeg", jpeg_quality=80)
    return root


def bag_frames(bag: Path, image_topic: str, gt_topic: str) -> list:
    with DriveBag(bag, image_topic, gt_topic) as reader:
        return list(reader.frames())


def test_several_cameras_share_stamps_and_see_different_views(root: Path) -> None:
    bag = root / "multi" / "bag"
    cameras = find_cameras(bag)
    assert [c.name for c in cameras] == ["front", "left", "right"]
    assert cameras[1].image_topic == "/left/image_raw/compressed" and cameras[1].gt_topic == "/left/semantic_gt"
    frames = {c.name: bag_frames(bag, c.image_topic, c.gt_topic) for c in cameras}
    stamps = {name: [f.stamp_ns for f in fr] for name, fr in frames.items()}
    assert stamps["front"] == stamps["left"] == stamps["right"] and len(stamps["front"]) == 4
    assert frames["left"][0].frame_id == "left"
    gts = {name: fr[0].gt for name, fr in frames.items()}
    assert not np.array_equal(gts["front"], gts["left"]) and not np.array_equal(gts["left"], gts["right"])
    # The front camera of a multi-camera drive is the single-camera drive of the same seed.
    np.testing.assert_array_equal(gts["front"], next(render_drive(1, *SIZE, seed=1))[1])
    # A single-camera drive keeps the historical topic names.
    assert [(c.name, c.image_topic) for c in find_cameras(root / "raw" / "bag")] == [("camera", "/camera/image_raw")]
    assert camera_topics("camera") == ("/camera/image_raw", "/camera/semantic_gt")


def test_compressed_images_decode_and_report_quality(root: Path, tmp_path: Path) -> None:
    camera = find_cameras(root / "multi" / "bag", ["front"])[0]
    frame = bag_frames(root / "multi" / "bag", camera.image_topic, camera.gt_topic)[0]
    assert is_compressed(frame.image) and frame.image.format == "rgb8; jpeg compressed bgr8"
    assert jpeg_quality(frame.image.data.tobytes()) == 80
    rendered = next(render_drive(1, *SIZE, seed=1))[0]
    decoded = message_to_rgb(frame.image)
    assert decoded.shape == rendered.shape and np.abs(decoded.astype(int) - rendered).mean() < 8  # lossy, close
    # PNG is lossless: the decoded image equals the raw render exactly.
    assert main(["make-sample-drive", str(tmp_path / "png"), "--frames", "2", "--size", "48x96",
                 "--compressed", "png"]) == 0
    png = bag_frames(tmp_path / "png" / "bag", "/camera/image_raw", "/camera/semantic_gt")
    assert png[0].image.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(message_to_rgb(png[1].image), list(render_drive(2, *SIZE))[1][0])
    np.testing.assert_array_equal(png[1].gt, list(render_drive(2, *SIZE))[1][1])  # ground truth stays mono8
    # The single-bag report says how the images were stored.
    report, paths = evaluate(EvalOptions(bag=tmp_path / "png" / "bag", out=tmp_path / "rep", mode="offline",
                                         overlays=1, threads=1, progress=False), resolve_params(device="cpu"))
    camera = report["drives"][0]["cameras"]["camera"]
    assert camera["input"]["transport"] == "compressed" and camera["input"]["codec"] == "png"
    assert report["pooled"]["frames"]["evaluated"] == 2 and len(report["files"]["overlays"]) == 1
    assert "- images: compressed png (format 'rgb8; png compressed bgr8')" in paths["markdown"].read_text()


def test_cityscapes_to_bag_writes_compressed_images(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "bag"
    assert main(["cityscapes-to-bag", "--root", str(root / "raw" / "cityscapes"), "--out", str(out),
                 "--compressed", "jpeg", "--jpeg-quality", "70"]) == 0
    with DriveBag(out) as bag:
        assert bag.info.image_topic == "/camera/image_raw/compressed" and bag.info.image_transport == "compressed"
        frames = list(bag.frames())
    assert len(frames) == 5 and jpeg_quality(frames[0].image.data.tobytes()) == 70
    assert all(f.gt is not None for f in frames)


def test_bad_compressed_data_is_rejected_with_a_reason() -> None:
    """Offline frames are rejected by the node's own checks, with the node's reasons."""
    ok, data = cv2.imencode(".jpg", np.zeros((32, 64, 3), np.uint8))
    header = type("H", (), {"frame_id": "c"})()

    def frame(payload: bytes, fmt: str = "jpeg") -> object:  # a CompressedImage as rosbags deserializes it
        return type("M", (), {"header": header, "format": fmt, "data": np.frombuffer(payload, np.uint8)})()

    cases = [(frame(b"garbage" * 10), "corrupt"), (frame(data.tobytes()[:200]), "corrupt"),
             (frame(data.tobytes(), "webp"), "format")]
    for bad, reason in cases:
        with pytest.raises(ImageRejected) as info:
            message_to_rgb(bad)
        assert info.value.reason == reason
    with pytest.raises(ImageRejected) as info:
        message_to_rgb(frame(data.tobytes()), max_pixels=32 * 63)  # from the header, before decoding
    assert info.value.reason == "too_large"
    assert message_to_rgb(frame(data.tobytes())).shape == (32, 64, 3)


def test_many_drives_pool_cameras_and_tags_exactly(root: Path, tmp_path: Path) -> None:
    values = resolve_params(device="cpu")
    tags = tmp_path / "tags.yaml"
    tags.write_text(f"{root / 'raw' / 'bag'}: {{city: aachen, weather: rain}}\n"
                    f"multi/bag: {{city: bonn}}\nelsewhere/bag: {{city: x}}\n")
    assert main(["eval", "--bag", str(root), "--tags", str(tags), "--out", str(tmp_path / "rep"), "--device", "cpu",
                 "--threads", "1", "--no-progress"]) == 0  # a folder of bags
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    # The single-bag evaluator, camera by camera, is the reference.
    single = {}
    for bag in (root / "multi" / "bag", root / "raw" / "bag"):
        for camera in find_cameras(bag):
            rep, _ = evaluate(EvalOptions(bag=bag, out=tmp_path / "single" / camera.name, mode="offline", overlays=0,
                                          threads=1, progress=False, image_topic=camera.image_topic,
                                          gt_topic=camera.gt_topic), values)
            single[camera.name] = np.asarray(rep["pooled"]["metrics"]["confusion_matrix"])
    total = sum(single.values())
    np.testing.assert_array_equal(np.asarray(report["pooled"]["metrics"]["confusion_matrix"]), total)
    for name, cam in report["cameras"].items():
        assert cam["metrics"]["miou"] == summarize(single[name])["miou"]
        assert cam["frames"]["evaluated"] == (5 if name == "camera" else 4) and cam["latency_ms"]["count"] == \
            cam["frames"]["evaluated"]
    by_city = report["tags"]["city"]
    assert by_city["aachen"]["miou"] == summarize(single["camera"])["miou"]
    multi = single["front"] + single["left"] + single["right"]
    assert by_city["bonn"]["miou"] == summarize(multi)["miou"] and by_city["bonn"]["frames"] == 12
    assert report["tags"]["weather"]["(untagged)"]["drives"] == 1
    assert any("elsewhere/bag" in note for note in report["notes"])  # a tag of a bag not evaluated
    multi_row = next(d for d in report["drives"] if d["name"] == "multi/bag")
    assert multi_row["cameras"]["left"]["input"]["jpeg_quality"] == 80
    assert report["inputs"]["transports"] == ["compressed jpeg (format 'rgb8; jpeg compressed bgr8', "
                                              "JPEG quality 80)", "raw rgb8"]
    for name in PLOTS.values():
        assert cv2.imread(str(tmp_path / "rep" / name)) is not None, name
    rows = read_frames(tmp_path / "rep")
    assert len(rows) == 5 + 3 * 4 and {r["status"] for r in rows} == {"evaluated"}
    markdown = (tmp_path / "rep" / "report.md").read_text()
    assert "### city" in markdown and "| bonn | 1 | 0 | 12 |" in markdown


def test_chunks_give_the_numbers_of_whole_drives(root: Path, tmp_path: Path) -> None:
    values = resolve_params(device="cpu")
    drives = collect_drives([str(root / "raw" / "bag"), str(root / "multi" / "bag")])
    tasks, unplanned = plan_tasks(drives, None, chunk_frames=2)
    assert not unplanned and len(tasks) == 3 + 3 * 2  # 5 frames -> 2+2+1; 4 frames per camera -> 2+2
    whole, _ = evaluate(EvalOptions(drives=drives, out=tmp_path / "whole", mode="offline", threads=1,
                                    progress=False), values)
    chunked, _ = evaluate(EvalOptions(drives=drives, out=tmp_path / "chunks", mode="offline", chunk_frames=2,
                                      threads=1, progress=False), values)
    assert chunked["execution"]["tasks"] == 9
    assert chunked["pooled"]["metrics"] == whole["pooled"]["metrics"]
    assert chunked["pooled"]["frames"] == whole["pooled"]["frames"]
    assert whole["pooled"]["frames"]["all_accounted"]
    # stage timings pool every frame of every chunk and camera (samples, not percentiles of percentiles)
    inference = [r["pooled"]["timing"]["stages_ms"]["inference"] for r in (whole, chunked)]
    assert inference[0]["count"] == inference[1]["count"] == 5 + 3 * 4
    assert [d["confusion_matrix"] for d in chunked["drives"]] == [d["confusion_matrix"] for d in whole["drives"]]


def test_a_broken_drive_is_reported_failed_and_the_others_pooled(root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("not: a bag\n")
    drives = collect_drives([str(root / "raw" / "bag"), str(broken)])
    report, _ = evaluate(EvalOptions(drives=drives, out=tmp_path / "rep", mode="offline", cameras=["camera"],
                                     threads=1, progress=False), resolve_params(device="cpu"))
    failed = [d for d in report["drives"] if d["status"] == "failed"]
    assert [d["name"] for d in failed] == ["broken"] and "BagError" in failed[0]["reason"]
    assert report["pooled"]["drives_ok"] == 1 and report["pooled"]["frames"]["evaluated"] == 5
    assert any("broken FAILED" in note for note in report["notes"])
    assert "**FAILED**" in (tmp_path / "rep" / "report.md").read_text()


def test_drive_lists_and_tags_are_checked(root: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"# drives\n{root / 'raw' / 'bag'}\n\n{root / 'multi' / 'bag'}  # three cameras\n")
    assert [d.name for d in collect_drives(bags_from=str(listing))] == ["raw/bag", "multi/bag"]
    with pytest.raises(DriveListError, match="listed twice"):
        collect_drives([str(root / "raw" / "bag")], str(listing))
    with pytest.raises(DriveListError, match="bag not found"):
        collect_drives([str(tmp_path / "nope")])
    with pytest.raises(DriveListError, match="no drive given"):
        collect_drives([])
    bad = tmp_path / "tags.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(DriveListError, match="must map bag"):
        load_tags(str(bad), collect_drives([str(root / "raw" / "bag")]))


def test_cli_refuses_live_many_drives_and_says_what_to_install_for_workers(root: Path, tmp_path: Path,
                                                                           monkeypatch, capsys) -> None:
    out = str(tmp_path / "rep")
    assert main(["eval", "--bag", str(root / "raw" / "bag"), "--bag", str(root / "multi" / "bag"), "--mode", "live",
                 "--out", out]) == 2
    assert "--mode offline" in capsys.readouterr().err
    assert main(["eval", "--bag", str(root / "multi" / "bag"), "--video", "--out", out]) == 2  # before any node starts
    assert "single-camera bags" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["eval", "--bag", str(root / "raw" / "bag"), "--workers", "2", "--out", out]) == 2
    assert "pip install 'seg_perception[cluster]'" in capsys.readouterr().err
    assert main(["make-sample-drive", str(tmp_path / "d"), "--cameras", "front,nowhere"]) == 2
    assert "nowhere=DEGREES" in capsys.readouterr().err


def test_a_drive_with_a_task_that_fails_while_running_is_failed_as_a_whole(root: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from seg_perception.evaluation.drives import local

    run_task = local.run_task

    def second_chunk_of_raw_fails(engine: Any, task: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if task.drive == 0 and task.task_id == 1:
            raise OSError("truncated message in the middle of the drive")
        return run_task(engine, task, *args, **kwargs)

    monkeypatch.setattr(local, "run_task", second_chunk_of_raw_fails)
    drives = collect_drives([str(root / "raw" / "bag"), str(root / "multi" / "bag")])
    report, _ = evaluate(EvalOptions(drives=drives, out=tmp_path / "rep", mode="offline", chunk_frames=2,
                                     threads=1, progress=False), resolve_params(device="cpu"))
    failed = [d for d in report["drives"] if d["status"] == "failed"]
    assert [d["name"] for d in failed] == ["raw/bag"] and "truncated message" in failed[0]["reason"]
    # none of the failed drive's frames is pooled, not even those of its chunks that came back
    assert report["pooled"]["drives_ok"] == 1 and report["pooled"]["frames"]["evaluated"] == 3 * 4


def test_threads_apply_to_the_run_and_are_restored_after_it(root: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from seg_perception.evaluation import evaluate as evaluate_module
    from seg_perception.evaluation.drives.local import torch_threads

    before = torch.get_num_threads()
    seen: list[int] = []
    run = evaluate_module._run

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return run(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "_run", spy)
    torch.set_num_threads(2)
    try:
        evaluate(EvalOptions(bag=root / "raw" / "bag", out=tmp_path / "rep", mode="offline", threads=1,
                             progress=False), resolve_params(device="cpu"))
        assert seen == [1] and torch.get_num_threads() == 2
        with torch_threads(None):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

"""``seg-perception train``: learning, exact resume, checkpoints through loader/engine, label
mappings, bad data, and the shipped synthetic_street checkpoint."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from seg_perception.cityscapes import CLASS_NAMES, PALETTE
from seg_perception.engine import EngineConfig, SegmentationEngine
from seg_perception.evaluation.cityscapes_folder import find_pairs, write_pair
from seg_perception.evaluation.metrics import ConfusionMatrix, summarize
from seg_perception.evaluation.sample_drive import render_drive
from seg_perception.models import build_model, load_checkpoint
from seg_perception.models.checkpoint import read_checkpoint, resolve_weights
from seg_perception.training import trainer
from seg_perception.training.data import TrainingDataError
from seg_perception.training.labels import LabelMappingError, load_label_mapping
from seg_perception.training.trainer import TrainConfig, learning_rate, train

SIZE = (64, 128)


def _drive(root: Path, frames: int = 2, seed: int = 3, size: tuple[int, int] = SIZE) -> Path:
    """A tiny Cityscapes folder (split 'train') rendered from the synthetic street."""
    for i, (rgb, ids) in enumerate(render_drive(frames, *size, seed=seed)):
        write_pair(root, "train", "x", f"x_000000_{i:06d}", rgb, ids)
    return root


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _drive(tmp_path_factory.mktemp("drive"))


def _config(data: Path, out: Path, **kw: Any) -> TrainConfig:
    base = dict(data=[str(data)], out=str(out), split="train", iterations=6, batch_size=2, crop=(64, 64),
                optimizer="adamw", lr=2e-3, warmup=1, val_every=3, num_workers=0, seed=5, device="cpu",
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    lrs = [learning_rate(i, 1.0, 100, 10) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a > b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] < 0.02


@pytest.fixture(scope="module")
def runs(drive: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One 8-iteration run (its iteration-4 last.pth kept), and a run resumed from that copy."""
    out = tmp_path_factory.mktemp("runs")
    saved = trainer._save

    def keep_iteration_4(path: Path, payload: dict) -> None:
        saved(path, payload)
        if path.name == "last.pth" and payload["meta"]["iteration"] == 4:
            shutil.copy(path, out / "interrupted.pth")

    trainer._save = keep_iteration_4
    try:  # workers for the straight run, none for the resumed one: the samples must not differ
        train(_config(drive, out / "straight", iterations=8, val_every=4, num_workers=1, val=[str(drive)],
                      val_split="train"))
    finally:
        trainer._save = saved
    train(_config(drive, out / "resumed", iterations=8, val_every=4, resume=str(out / "interrupted.pth"),
                  val=[str(drive)], val_split="train"))
    return {"straight": out / "straight", "resumed": out / "resumed"}


def test_training_reduces_the_loss_and_writes_outputs(runs: dict[str, Path]) -> None:
    out = runs["straight"]
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 8
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2])
    for name in ("best.pth", "last.pth", "loss.png", "val_miou.png"):
        assert (out / name).stat().st_size > 0, name
    assert read_checkpoint(out / "best.pth")["meta"]["val_miou"] is not None


def test_resume_continues_the_schedule_exactly(runs: dict[str, Path]) -> None:
    straight = read_checkpoint(runs["straight"] / "last.pth")
    resumed = read_checkpoint(runs["resumed"] / "last.pth")
    assert resumed["meta"]["iteration"] == straight["meta"]["iteration"] == 8
    assert resumed["history"]["lr"] == straight["history"]["lr"]
    assert resumed["history"]["loss"] == pytest.approx(straight["history"]["loss"], rel=1e-5)
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_checkpoint_round_trips_through_loader_and_engine(runs: dict[str, Path]) -> None:
    best = runs["straight"] / "best.pth"
    model = load_checkpoint(build_model("regseg"), best)
    saved = read_checkpoint(best)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved["state_dict"][key])
    assert saved["meta"]["labels"]["class_names"] == list(CLASS_NAMES)
    engine = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", weights=str(best)))
    assert engine.class_names == CLASS_NAMES
    np.testing.assert_array_equal(engine.palette, PALETTE)


def test_fp16_export_loads_and_keeps_the_labels(runs: dict[str, Path], tmp_path: Path) -> None:
    from seg_perception.training.shrink_checkpoint import shrink_checkpoint

    best = runs["straight"] / "best.pth"
    small = shrink_checkpoint(best, tmp_path / "small.pt")
    assert small.stat().st_size < 0.6 * best.stat().st_size
    frame = next(render_drive(1, *SIZE, seed=9))[0]
    full = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", weights=str(best))).infer(frame).labels
    half = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", weights=str(small))).infer(frame).labels
    assert (full == half).mean() > 0.99


MAPPING = """
classes:
  7:  {index: 0, name: drivable, color: [10, 20, 30]}
  8:  {index: 1, name: walkable, color: [40, 50, 60]}
  26: {index: 2, name: vehicle, color: [70, 80, 90]}
  33: {index: 2, name: vehicle, color: [70, 80, 90]}
ignore: [0, 1, 11, 17, 19, 20, 21, 22, 23, 24, 25]
"""


def test_class_balance_weights_rare_classes_more() -> None:
    weights = trainer.class_weights(np.array([1000, 10, 0, 100]), "sqrt")
    assert weights[1] > weights[3] > weights[0] and weights[2] == 1.0
    assert trainer.class_weights(np.array([1, 2]), "none") is None


def test_label_mapping_trains_a_custom_class_set(drive: Path, tmp_path: Path) -> None:
    (tmp_path / "map.yaml").write_text(MAPPING)
    train(_config(drive, tmp_path, iterations=1, val_every=1, warmup=0, label_mapping=str(tmp_path / "map.yaml")))
    meta = read_checkpoint(tmp_path / "best.pth")["meta"]
    assert meta["num_classes"] == 3
    assert meta["labels"]["id_to_index"][33] == 2 and meta["labels"]["id_to_index"][11] == 255
    engine = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", num_classes=3,
                                             weights=str(tmp_path / "best.pth")))
    assert engine.class_names == ("drivable", "walkable", "vehicle")
    assert engine.palette.tolist() == [[10, 20, 30], [40, 50, 60], [70, 80, 90]]
    labels = engine.infer(np.zeros((*SIZE, 3), np.uint8)).labels
    assert labels.max() < 3


@pytest.mark.ros
def test_node_class_names_follow_the_checkpoint(drive: Path, runs: dict[str, Path], tmp_path: Path) -> None:
    import rclpy
    from rclpy.parameter import Parameter
    from ros_harness import wait_for

    from seg_perception.node import SegmentationNode

    (tmp_path / "map.yaml").write_text(MAPPING)
    train(_config(drive, tmp_path, iterations=1, val_every=1, warmup=0, label_mapping=str(tmp_path / "map.yaml")))
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        overrides = [Parameter("device", value="cpu"), Parameter("precision", value="fp32"),
                     Parameter("num_classes", value=3), Parameter("weights", value=str(tmp_path / "best.pth")),
                     Parameter("weights_dirs", value=[str(tmp_path), str(runs["straight"])])]
        node = SegmentationNode(parameter_overrides=overrides, context=context)
        try:
            assert node.get_parameter("class_names").value == ["drivable", "walkable", "vehicle"]
            assert list(node.get_parameter("palette").value) == [10, 20, 30, 40, 50, 60, 70, 80, 90]
            # a runtime switch to a Cityscapes checkpoint brings the Cityscapes names back
            result = node.set_parameters_atomically([
                Parameter("num_classes", value=19), Parameter("weights", value=str(runs["straight"] / "best.pth"))])
            assert result.successful, result.reason
            assert wait_for(lambda: len(node.get_parameter("class_names").value) == 19, timeout=60)
            assert node.get_parameter("class_names").value == list(CLASS_NAMES)
        finally:
            node.stop()
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_init_from_another_class_count_keeps_the_body(drive: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_model("regseg")
    torch.save(source.state_dict(), tmp_path / "city.pt")
    (tmp_path / "map.yaml").write_text(MAPPING)
    model = build_model("regseg", num_classes=3)
    note = trainer._init_weights(model, str(tmp_path / "city.pt"))
    assert "19 -> 3 classes" in note
    torch.testing.assert_close(model.stem.conv.weight, source.stem.conv.weight)


@pytest.mark.parametrize(("text", "message"), [
    ("classes: {7: {index: 1, name: a, color: [1, 2, 3]}}", "without gaps"),
    ("classes: {7: {index: 0, name: a, color: [1, 2]}}", "color"),
    ("classes: {300: {index: 0, name: a, color: [1, 2, 3]}}", "0..255"),
    ("classes: {7: {index: 0, name: a, color: [1, 2, 3]}}\nignore: [7]", "both mapped and ignored"),
    ("classes: [", "not valid YAML"),
])
def test_bad_label_mapping_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(LabelMappingError, match=message) as info:
        load_label_mapping(path)
    assert str(path) in str(info.value)


def _broken(tmp_path: Path, how: str) -> tuple[Path, Path]:
    root = _drive(tmp_path / "data", frames=2)
    gt = find_pairs(root, "train")[1].gt
    if how == "missing":
        gt.unlink()
    elif how == "size":
        import cv2

        cv2.imwrite(str(gt), np.full((32, 64), 7, np.uint8))
    else:
        import cv2

        ids = cv2.imread(str(gt), cv2.IMREAD_UNCHANGED)
        ids[0, 0] = 200  # not a Cityscapes label id
        cv2.imwrite(str(gt), ids)
    return root, gt


@pytest.mark.parametrize(("how", "message"), [
    ("missing", "ground truth missing"), ("size", "is 64x32 but its image"), ("class", r"label id\(s\) \[200\]"),
])
def test_bad_data_is_a_clear_error_naming_the_file(tmp_path: Path, how: str, message: str) -> None:
    root, gt = _broken(tmp_path, how)
    with pytest.raises(TrainingDataError, match=message) as info:
        train(_config(root, tmp_path / "out"))
    assert gt.name in str(info.value)
    assert not (tmp_path / "out" / "last.pth").exists()


def test_trains_from_a_drive_bag(drive: Path, tmp_path: Path) -> None:
    from seg_perception.evaluation.cityscapes_folder import cityscapes_to_bag

    cityscapes_to_bag(drive, "train", tmp_path / "bag", progress=False)
    train(_config(tmp_path / "bag", tmp_path / "out", iterations=1, val_every=1, warmup=0))
    assert (tmp_path / "out" / "last.pth").exists()
    assert len(list((tmp_path / "out" / "data_cache").rglob("*_gtFine_labelIds.png"))) == 2


@pytest.mark.parametrize("codec", ["jpeg", "png"])
def test_trains_from_a_drive_bag_of_compressed_images(tmp_path: Path, codec: str) -> None:
    """A bag of CompressedImage trains like a raw one: decoded by the node's own decoder."""
    from seg_perception.evaluation.sample_drive import make_sample_drive

    drive = make_sample_drive(tmp_path / "drive", frames=2, size=SIZE, seed=3, progress=False, compressed=codec)
    train(_config(drive.bag, tmp_path / "out", iterations=1, val_every=1, warmup=0))
    assert (tmp_path / "out" / "last.pth").exists()
    pairs = find_pairs(next((tmp_path / "out" / "data_cache").iterdir()), "train")
    assert len(pairs) == 2
    import cv2

    rendered = list(render_drive(2, *SIZE, seed=3))
    for pair, (rgb, ids) in zip(pairs, rendered, strict=True):
        unpacked = cv2.imread(str(pair.image))[:, :, ::-1]
        assert np.abs(unpacked.astype(int) - rgb).mean() < (8 if codec == "jpeg" else 1e-9)  # colours not swapped
        np.testing.assert_array_equal(cv2.imread(str(pair.gt), cv2.IMREAD_UNCHANGED), ids)


def test_a_compressed_frame_that_does_not_decode_is_a_clear_error(tmp_path: Path) -> None:
    from rosbags.rosbag2 import Writer

    from seg_perception.evaluation.bag_io import (
        COMPRESSED_TYPE,
        IMAGE_TYPE,
        TYPESTORE,
        compressed_image_message,
        image_message,
    )

    rgb, ids = next(render_drive(1, *SIZE, seed=3))
    with Writer(tmp_path / "bag", version=9) as writer:
        images = writer.add_connection("/camera/image_raw/compressed", COMPRESSED_TYPE, typestore=TYPESTORE)
        gts = writer.add_connection("/camera/semantic_gt", IMAGE_TYPE, typestore=TYPESTORE)
        for index, stamp in enumerate((1_000, 2_000)):
            image = compressed_image_message(stamp, "camera", rgb, "jpeg")
            if index == 1:  # truncated in the recorder
                image.data = image.data[: len(image.data) // 2]
            writer.write(images, stamp, TYPESTORE.serialize_cdr(image, COMPRESSED_TYPE))
            writer.write(gts, stamp, TYPESTORE.serialize_cdr(image_message(stamp, "camera", ids, "mono8"), IMAGE_TYPE))
    with pytest.raises(TrainingDataError, match=r"frame 1 .*cannot be used \(corrupt\)"):
        train(_config(tmp_path / "bag", tmp_path / "out", iterations=1, val_every=1, warmup=0))
    assert not (tmp_path / "out" / "last.pth").exists()


def test_shipped_name_resolves_and_an_existing_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = Path(resolve_weights("synthetic_street"))
    assert shipped.name == "synthetic_street.pt" and shipped.is_file()
    monkeypatch.chdir(tmp_path)
    Path("synthetic_street").write_bytes(b"local")
    assert resolve_weights("synthetic_street") == "synthetic_street"


#: This drive (seed 4242, 224x448, 3 frames) was never trained on; the shipped file scores 87.4 %
#: on it (83.3 % on the model card's 16-frame 288x576 test drive). The bar is the model card's target.
SHIPPED_MIN_MIOU = 0.80


def test_shipped_checkpoint_segments_an_unseen_sample_drive() -> None:
    engine = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", weights="synthetic_street"))
    matrix = ConfusionMatrix()
    for rgb, ids in render_drive(3, 224, 448, seed=4242):
        matrix.update_label_ids(engine.infer(rgb).labels, ids)
    metrics = summarize(matrix.matrix)
    assert metrics["miou"] >= SHIPPED_MIN_MIOU, metrics["class_iou"]

"""``eval`` and ``bench`` with ``--model onnx --weights FILE.onnx``: a network that is not in the
registry evaluated on a sample drive, offline (the engine) and live (through seg_node), with the
confusion matrix of a reference computed in the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from byo_support import reference_labels

from seg_perception.cli import main
from seg_perception.evaluation.cityscapes_folder import find_pairs, read_pair
from seg_perception.evaluation.metrics import ConfusionMatrix
from seg_perception.evaluation.sample_drive import SPLIT, make_sample_drive

FRAMES = 3


def _reference_matrix(network, cityscapes: Path) -> np.ndarray:
    matrix = ConfusionMatrix()
    for pair in find_pairs(cityscapes, SPLIT):
        rgb, label_ids = read_pair(pair)
        matrix.update_label_ids(reference_labels(network, rgb), label_ids)
    return matrix.matrix


@pytest.mark.ros
def test_eval_model_onnx_on_a_sample_drive_offline_and_live(byo_networks, tmp_path: Path) -> None:
    drive = make_sample_drive(tmp_path / "drive", frames=FRAMES, size=(64, 128), progress=False)
    common = ["eval", "--bag", str(drive.bag), "--model", "onnx", "--weights", str(byo_networks.deeplabv3_path),
              "--device", "cpu", "--threads", "1", "--no-progress"]
    assert main([*common, "--mode", "offline", "--out", str(tmp_path / "offline")]) == 0
    offline = json.loads((tmp_path / "offline" / "report.json").read_text())
    assert offline["engine"]["model"] == "onnx" and offline["engine"]["variant"] == "deeplabv3_dynamic.onnx"
    assert not offline["untrained"] and offline["pooled"]["frames"]["all_accounted"]
    expected = _reference_matrix(byo_networks.deeplabv3, drive.cityscapes)
    got = np.asarray(offline["pooled"]["metrics"]["confusion_matrix"])
    assert got.sum() == expected.sum() > 0
    assert np.abs(got - expected).sum() <= 0.002 * expected.sum()  # ONNX Runtime vs PyTorch: a few pixels
    assert np.count_nonzero(expected.sum(0)) >= 3  # the network predicts several classes on the drive

    assert main([*common, "--out", str(tmp_path / "live"), "--speed", "0.5"]) == 0  # live: the default
    live = json.loads((tmp_path / "live" / "report.json").read_text())
    assert live["mode"] == "live" and live["live"]["node_process"]["exit_code"] == 0
    assert "model: onnx" in (tmp_path / "live" / "node_params.yaml").read_text()
    cam = next(iter(live["drives"][0]["cameras"].values()))
    if cam["frames"]["evaluated"] == FRAMES:  # the node's labels are the engine's
        assert live["pooled"]["metrics"]["confusion_matrix"] == offline["pooled"]["metrics"]["confusion_matrix"]


def test_eval_refuses_a_network_it_cannot_evaluate_before_any_frame(tmp_path: Path, capsys) -> None:
    from byo_support import identity_network

    drive = make_sample_drive(tmp_path / "drive", frames=1, size=(32, 64), progress=False)
    three = identity_network(tmp_path / "three.onnx")
    common = ["eval", "--bag", str(drive.bag), "--model", "onnx", "--mode", "offline", "--out", str(tmp_path / "out")]
    assert main([*common, "--weights", str(three)]) == 2
    assert "needs a 19-class model (train ids); num_classes is 3" in capsys.readouterr().err
    text = tmp_path / "text.onnx"
    text.write_text("not a network")
    assert main([*common, "--weights", str(text)]) == 2
    assert "is not an ONNX model" in capsys.readouterr().err
    assert not (tmp_path / "out" / "report.json").exists()


def test_bench_model_onnx(byo_networks, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "onnx", "--weights", str(byo_networks.lraspp_path), "--size", "48x80",
                 "--device", "cpu", "--iterations", "2", "--warmup", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["engine"]["model"] == "onnx" and report["engine"]["backend"].startswith("onnxruntime")
    assert "256x256" in report["engine"]["contract"] and report["total_ms"]["count"] == 2

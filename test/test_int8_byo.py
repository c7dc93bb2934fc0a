"""``precision: int8`` for a network brought as an ONNX file (``model: onnx``): the file is
quantized on the calibration frames by the same quantizer as a registered model, cached under the
file's digest and the calibration's, served under the file's contract, and gated against the fp32
ONNX Runtime session on the CPU (its reference) on held-out calibration frames. A network that
outputs labels is gated on its label maps."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from byo_support import TinySeg, export, frame

from seg_perception.backends.base import BackendError
from seg_perception.backends.parity import parity_check
from seg_perception.engine import EngineConfig, SegmentationEngine
from seg_perception.engine_api import ParityError
from seg_perception.evaluation.sample_drive import make_sample_drive
from seg_perception.reload import reference_values

SIZE = (48, 96)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("int8_byo")
    drive = make_sample_drive(root / "drive", 8, SIZE, seed=11, progress=False)
    other = make_sample_drive(root / "other", 8, SIZE, seed=12, progress=False)
    return {"root": root, "calibration": drive.cityscapes, "other": other.cityscapes,
            "logits": export(TinySeg(classes=5), root / "tiny.onnx", SIZE, dynamic=True),
            "labels": export(TinySeg(classes=5, output="labels", keepdim=True), root / "tiny_labels.onnx", SIZE,
                             dynamic=False)}


def _engine(path: Path, cache: Path, **kwargs: Any) -> SegmentationEngine:
    settings = {"precision": "int8", "calibration_frames": 3, "parity_min_agreement": 0.95, **kwargs}
    return SegmentationEngine(EngineConfig(model="onnx", weights=str(path), device="cpu", cache_dir=str(cache),
                                           **settings))


def test_an_onnx_file_is_quantized_cached_and_gated_against_its_fp32_cpu_session(data: dict[str, Path]) -> None:
    cache = data["root"] / "cache"
    engine = _engine(data["logits"], cache, calibration=str(data["calibration"]))
    described = engine.description
    assert described["backend"].startswith("onnxruntime int8")
    assert "quantized now, cached" in engine._forward.origin
    assert engine.parity is not None and engine.parity.source == "held-out calibration frames"
    assert engine.parity.agreement >= 0.9
    assert "fp32 ONNX Runtime reference (CPU)" in described["parity"]
    # the served graph is quantized: it holds QuantizeLinear nodes, the file itself does not
    import onnx

    quantized = onnx.load(str(next(p for p in cache.rglob("*.onnx"))))
    assert any(node.op_type == "QuantizeLinear" for node in quantized.graph.node)
    assert not any(node.op_type == "QuantizeLinear" for node in onnx.load(str(data["logits"])).graph.node)

    labels = engine.infer(frame(*SIZE)).labels
    fp32 = SegmentationEngine(EngineConfig(model="onnx", weights=str(data["logits"]), device="cpu"))
    assert fp32.is_reference and not engine.is_reference
    assert float((labels == fp32.infer(frame(*SIZE)).labels).mean()) >= 0.9

    again = _engine(data["logits"], cache, calibration=str(data["calibration"]))
    assert again._forward.origin.endswith("cached") and "quantized now" not in again._forward.origin
    other = _engine(data["logits"], cache, calibration=str(data["other"]))
    assert "quantized now" in other._forward.origin  # other calibration frames are another int8 model


def test_a_labels_network_is_gated_on_its_label_maps(data: dict[str, Path]) -> None:
    engine = _engine(data["labels"], data["root"] / "cache_labels", calibration=str(data["calibration"]))
    assert engine.output_kind == "labels"
    assert engine.parity is not None and engine.parity.agreement >= 0.9

    x = torch.zeros(1, 3, *SIZE)
    same = torch.zeros(1, 1, *SIZE, dtype=torch.long)
    moved = same.clone()
    moved[..., : SIZE[1] // 2] = 3  # half the pixels get another class

    report = parity_check(lambda _: moved, lambda _: same, [x])
    assert report.agreement == pytest.approx(0.5)
    assert parity_check(lambda _: same, lambda _: same, [x]).agreement == 1.0


def test_the_gate_refuses_a_quantized_file_that_lost_the_labels(data: dict[str, Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from seg_perception.backends import quantize

    wrong = export(TinySeg(classes=5, seed=99), data["root"] / "wrong.onnx", SIZE, dynamic=True).read_bytes()
    monkeypatch.setattr(quantize, "quantize_int8", lambda *args, **kwargs: wrong)
    with pytest.raises(ParityError, match="fp32 ONNX Runtime reference") as refused:
        _engine(data["logits"], data["root"] / "cache_refuse", calibration=str(data["calibration"]))
    assert refused.value.agreement < 0.9


def test_int8_of_an_onnx_file_needs_the_cpu_and_a_float_input(data: dict[str, Path], tmp_path: Path) -> None:
    engine = SegmentationEngine(EngineConfig(model="onnx", weights=str(data["logits"]), device="cpu"))
    from seg_perception.backends.onnx_model import build_onnx_file_network

    with pytest.raises(BackendError, match="CPU provider"):
        build_onnx_file_network(engine.model, engine.config, torch.device("cpu"), "int8", "tensorrt", None)
    with pytest.raises(BackendError, match="needs calibration"):
        build_onnx_file_network(engine.model, engine.config, torch.device("cpu"), "int8", "onnxruntime", None)
    copy = tmp_path / "copy.onnx"
    shutil.copy(data["logits"], copy)
    assert reference_values({"model": "onnx", "weights": str(copy), "precision": "int8", "device": "cuda"}) == {
        "model": "onnx", "weights": str(copy), "precision": "fp32", "backend": "onnxruntime", "device": "cpu"}
    assert reference_values({"model": "regseg", "precision": "int8", "device": "cuda"})["backend"] == "torch"
    assert np.all(engine.infer(frame(*SIZE)).labels < 5)


def test_the_cli_quantizes_an_onnx_file_ahead_and_refuses_a_plain_export(data: dict[str, Path], tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from seg_perception.cli import main

    out = tmp_path / "int8.onnx"
    assert main(["export", "--model", "onnx", "--weights", str(data["logits"]), "--precision", "int8",
                 "--calibration", str(data["calibration"]), "--calibration-frames", "3",
                 "--parity-min-agreement", "0.9", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    import onnx

    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(out)).graph.node)
    assert "fp32 ONNX Runtime reference (CPU)" in capsys.readouterr().out
    assert main(["export", "--model", "onnx", "--weights", str(data["logits"])]) != 0
    assert "nothing to export" in capsys.readouterr().err


def test_a_tensor_without_range_falls_back_to_minmax_calibration_and_says_so(tmp_path: Path,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Untrained LR-ASPP has a tensor whose values differ only in their last bits: onnxruntime's
    float32 histogram (percentile) cannot bin it. Calibration falls back to minmax, the file says
    so (and the served network's description reads it from there)."""
    import logging

    import onnx
    from byo_support import TorchvisionOut
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    from seg_perception.backends.quantize import SETTINGS, quantize_int8

    torch.manual_seed(0)
    net = TorchvisionOut(lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=19)).eval()
    path = export(net, tmp_path / "lraspp.onnx", (64, 128), dynamic=True)
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(1, 3, 64, 128)).astype(np.float32) for _ in range(3)]
    with caplog.at_level(logging.WARNING):
        data = quantize_int8(path, inputs, metadata={"quantization": SETTINGS.describe()})
    assert "percentile calibration failed" in caplog.text and "calibrating with minmax instead" in caplog.text
    quantized = onnx.load_from_string(data)
    assert {p.key: p.value for p in quantized.metadata_props}["quantization"].endswith("minmax")
    assert any(node.op_type == "QuantizeLinear" for node in quantized.graph.node)

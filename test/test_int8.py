"""INT8 engines and the parity gate, on the CPU: ONNX Runtime static quantization calibrated on
real frames, its cache (other calibration data is a rebuild), the gate refusing and passing, the
CLI, and TensorRT's INT8 path as far as it runs without a GPU.

Agreement and speed are measured by bench/int8.py, not here: these tests use the shipped
``synthetic_street`` weights on 48x96 frames, with 3 calibration frames, to stay fast.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from seg_perception.backends.calibration import CalibrationError
from seg_perception.backends.quantize import (
    SETTINGS,
    TENSORRT_TABLE,
    CalibrationSet,
    calibration_inputs,
    quantize_int8,
    write_tensorrt_table,
)
from seg_perception.cli import EXIT_PARITY, main
from seg_perception.engine import EngineConfig, SegmentationEngine
from seg_perception.engine_api import ParityError
from seg_perception.evaluation.sample_drive import make_sample_drive, render_drive

SIZE = (48, 96)
SHIPPED = "synthetic_street"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("int8")
    first = make_sample_drive(root / "a", 8, SIZE, seed=5, progress=False)
    second = make_sample_drive(root / "b", 8, SIZE, seed=6, progress=False)
    single = root / "single"
    single.mkdir()
    shutil.copy(next(first.cityscapes.rglob("*_leftImg8bit.png")), single / "only.png")
    return {"a": first.cityscapes, "a_bag": first.bag, "b": second.cityscapes, "single": single, "root": root}


def _int8(cache: Path, calibration: Path, **kwargs: Any) -> SegmentationEngine:
    settings = {"calibration_frames": 3, **kwargs}
    return SegmentationEngine(EngineConfig(device="cpu", precision="int8", weights=SHIPPED, cache_dir=str(cache),
                                           calibration=str(calibration), **settings))


@pytest.fixture(scope="module")
def cache(data: dict[str, Path]) -> Path:
    return data["root"] / "cache"


@pytest.fixture(scope="module")
def int8_engine(cache: Path, data: dict[str, Path]) -> SegmentationEngine:
    return _int8(cache, data["a"])


def test_an_int8_engine_is_quantized_from_the_calibration_frames_and_agrees_with_fp32(
        int8_engine: SegmentationEngine) -> None:
    described = int8_engine.description
    assert described["precision"] == "int8"
    assert described["backend"] == "onnxruntime int8 (CPUExecutionProvider)"
    assert "QDQ, per-channel int8 weights, uint8 activations, percentile" in described["quantization"]
    assert "3 of 8 frames of cityscapes" in described["quantization"]
    assert "on 4 held-out calibration frames" in described["parity"] and "gate 99.00 %" in described["parity"]
    assert float(described["parity_agreement"]) == pytest.approx(int8_engine.parity.agreement)
    proto = onnx.load(str(int8_engine.network.path))
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["precision"] == "int8" and metadata["model"] == "regseg" and metadata["calibration_digest"]
    reference = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", weights=SHIPPED, backend="torch"))
    frame = list(render_drive(1, *SIZE, seed=77))[0][0]  # a frame of another drive
    agreement = (int8_engine.infer(frame).labels == reference.infer(frame).labels).mean()
    assert agreement > 0.95
    assert int8_engine.parity.agreement > 0.95


def test_the_cache_serves_the_same_calibration_and_rebuilds_for_other_data(
        int8_engine: SegmentationEngine, cache: Path, data: dict[str, Path]) -> None:
    assert int8_engine.description["artifact"].startswith("quantized now, cached")
    again = _int8(cache, data["a"])
    assert again.description["artifact"].startswith("cache hit, verified")
    assert again.network.path == int8_engine.network.path
    other_data = _int8(cache, data["b"])
    other_count = _int8(cache, data["a"], calibration_frames=2)
    for engine in (other_data, other_count):
        assert engine.description["artifact"].startswith("quantized now, cached")
    paths = {int8_engine.network.path, other_data.network.path, other_count.network.path}
    assert len(paths) == 3 and len(list((cache / "onnx_int8").glob("*.onnx"))) == 3


def test_the_parity_gate_refuses_below_the_threshold_with_the_figure_and_can_be_turned_off(
        int8_engine: SegmentationEngine, cache: Path, data: dict[str, Path]) -> None:
    assert int8_engine.parity.agreement < 1.0  # int8 is not bit-exact: threshold 1.0 must refuse it
    with pytest.raises(ParityError) as refused:
        _int8(cache, data["a"], parity_min_agreement=1.0)
    message = str(refused.value)
    assert f"label agreement {100 * int8_engine.parity.agreement:.2f} %" in message
    assert "4 held-out calibration frames" in message and "parity_min_agreement 100.00 %" in message
    assert refused.value.agreement == pytest.approx(int8_engine.parity.agreement)
    off = _int8(cache, data["a"], parity_min_agreement=0.0)
    assert off.description["parity"].endswith("gate off") and off.parity is not None


def test_without_held_out_frames_the_gate_uses_the_synthetic_frame(cache: Path, data: dict[str, Path]) -> None:
    engine = _int8(cache, data["single"], parity_min_agreement=0.5)
    assert engine.calibration is not None and engine.calibration.holdout == ()
    assert engine.parity.source == "the synthetic probe frame"
    assert "on the synthetic probe frame" in engine.description["parity"]


def test_an_fp32_onnxruntime_engine_is_gated_and_the_torch_fp32_engine_is_the_reference() -> None:
    ort = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", weights=SHIPPED, backend="onnxruntime"))
    assert ort.parity is not None and ort.parity.agreement > 0.99
    assert "vs the fp32 PyTorch reference" in ort.description["parity"]
    torch_fp32 = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", weights=SHIPPED, backend="torch"))
    assert torch_fp32.parity is None and torch_fp32.description["parity"] == "this is the fp32 PyTorch reference"


def test_live_frames_measure_again_and_refuse(int8_engine: SegmentationEngine) -> None:
    frames = [rgb for rgb, _ in render_drive(2, *SIZE, seed=9)]
    report = int8_engine.check_parity(frames)
    assert report.source == "live input frames" and report.frames == 2 and int8_engine.parity is report
    int8_engine.config.parity_min_agreement = 1.0
    try:
        with pytest.raises(ParityError, match="2 live input frames"):
            int8_engine.check_parity([probe for probe in frames])
    finally:
        int8_engine.config.parity_min_agreement = 0.99


def test_bad_calibration_data_fails_the_build_with_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(CalibrationError, match="cannot be read: 'broken.png'"):
        _int8(tmp_path / "cache", tmp_path)


# -- the quantizer on any ONNX network ---------------------------------------------------------------
class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _tiny_onnx(fixed: bool) -> bytes:
    import io

    buffer = io.BytesIO()
    axes = {} if fixed else {"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}}
    torch.onnx.export(_Tiny().eval(), (torch.zeros(1, 3, 16, 24),), buffer, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes=axes)
    proto = onnx.load_from_string(buffer.getvalue())
    proto.metadata_props.add(key="model", value="tiny")
    return proto.SerializeToString()


def _inputs(count: int, size: tuple[int, int] = (16, 24)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(1, 3, *size)).astype(np.float32) for _ in range(count)]


def test_any_onnx_network_quantizes_from_bytes_or_a_file_keeping_its_metadata(tmp_path: Path) -> None:
    import onnxruntime as ort

    data = _tiny_onnx(fixed=False)
    path = tmp_path / "tiny.onnx"
    path.write_bytes(data)
    for source in (data, path):
        quantized = onnx.load_from_string(quantize_int8(source, _inputs(3), metadata={"precision": "int8"}))
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in quantized.graph.node}
        assert {p.key: p.value for p in quantized.metadata_props} == {"model": "tiny", "precision": "int8"}
    x = _inputs(1, (20, 28))[0]
    fp32 = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    int8 = ort.InferenceSession(quantize_int8(data, _inputs(3)), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    assert np.abs(int8 - fp32).max() < 0.1 * np.abs(fp32).max()  # same network, int8 error
    assert (int8.argmax(1) == fp32.argmax(1)).mean() > 0.9


def test_calibration_inputs_follow_a_fixed_network_size_and_are_capped_for_dynamic_ones() -> None:
    small, large = np.zeros((1, 3, 16, 24), np.float32), np.zeros((1, 3, 1024, 2048), np.float32)
    assert calibration_inputs([small], (32, 48))[0].shape == (1, 3, 32, 48)
    assert calibration_inputs([small], None)[0].shape == (1, 3, 16, 24)
    assert calibration_inputs([large], None)[0].shape == (1, 3, 512, 1024)
    digest = CalibrationSet.of([small], "a").digest
    assert CalibrationSet.of([small], "b").digest == digest  # the inputs decide, not their description
    assert CalibrationSet.of([small + 1], "a").digest != digest


# -- TensorRT INT8: what runs without a GPU ---------------------------------------------------------
def test_tensorrt_int8_writes_a_calibration_table_keys_the_engine_by_it_and_sets_the_provider(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unmeasured on a GPU: ONNX Runtime without the TensorRT provider runs these sessions on the
    CPU provider, so only the provider check is lifted; the options and the table are checked."""
    from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable

    from seg_perception.backends import tensorrt_backend as trt
    from seg_perception.backends.cache import ArtifactCache
    from seg_perception.backends.export import ExportSpec
    from seg_perception.models import build_model, load_checkpoint

    table = write_tensorrt_table(_tiny_onnx(fixed=False), _inputs(2), tmp_path / "table")
    parsed = TrtTable.GetRootAsTrtTable(bytearray(table.read_bytes()), 0)
    entries = {parsed.Dict(i).Key().decode(): float(parsed.Dict(i).Value()) for i in range(parsed.DictLength())}
    assert "x" in entries and "y" in entries and all(v > 0 for v in entries.values())

    monkeypatch.setattr(trt, "_require_tensorrt_provider", lambda network: None)
    model = build_model("regseg").eval()
    load_checkpoint(model, SHIPPED)
    spec = ExportSpec("regseg", model.variant, 19, {}, SHIPPED, SIZE)
    cache, cpu = ArtifactCache(tmp_path / "cache"), torch.device("cpu")
    calibration = CalibrationSet.of(_inputs(2, SIZE), "two frames")
    network = trt.build_tensorrt_network(model, spec, cpu, cache, False, None, calibration)
    assert network.name == "tensorrt via onnxruntime (int8)" and "two frames" in network.quantization
    folders = [p for p in (tmp_path / "cache" / "tensorrt").iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / TENSORRT_TABLE).is_file()
    record = json.loads(cache.sidecar(folders[0]).read_text())
    assert f"int8={calibration.digest}" in record["key"]["extra"]
    other = CalibrationSet.of(_inputs(2, SIZE)[:1], "one frame")
    trt.build_tensorrt_network(model, spec, cpu, cache, False, None, other)
    assert len([p for p in (tmp_path / "cache" / "tensorrt").iterdir() if p.is_dir()]) == 2  # other data: rebuilt
    options = trt.tensorrt_provider(folders[0], False, SIZE, folders[0])[0][1]
    assert options["trt_int8_enable"] is True and options["trt_int8_calibration_table_name"] == TENSORRT_TABLE
    assert options["trt_int8_use_native_calibration_table"] is False and options["trt_fp16_enable"] is True
    assert options["trt_engine_cache_path"] == str(folders[0])
    assert "trt_int8_enable" not in trt.tensorrt_provider(folders[0], True, SIZE)[0][1]


def test_int8_on_cuda_needs_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    from seg_perception import backends

    monkeypatch.setattr(backends, "_ort_providers", lambda: ["CPUExecutionProvider"])
    assert "use backend tensorrt" in backends.backend_problem("onnxruntime", "cuda", "none", "int8")
    assert "TensorRT provider" in backends.backend_problem("auto", "cuda", "none", "int8")
    assert backends.backend_problem("auto", "cpu", "none", "int8") is None
    assert backends.resolve_backend("auto", torch.device("cpu"), "none", True, precision="int8") == "onnxruntime"
    assert backends.resolve_backend("auto", torch.device("cuda"), "none", False, precision="int8") == "tensorrt"
    assert SETTINGS.format == "qdq" and SETTINGS.activations == "uint8"


# -- the CLI -----------------------------------------------------------------------------------------
def test_cli_builds_int8_ahead_of_time_and_exits_3_when_the_gate_refuses(
        data: dict[str, Path], cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--weights", SHIPPED, "--calibration", str(data["a"]), "--calibration-frames", "3",
              "--cache-dir", str(cache)]
    out = tmp_path / "regseg_int8.onnx"
    assert main(["export", "--precision", "int8", *common, "--out", str(out)]) == 0
    assert "DequantizeLinear" in {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "cache hit" in capsys.readouterr().out  # the engine's own entry: built with the same key
    assert main(["export", "--precision", "int8", "--weights", SHIPPED]) == 2
    assert "needs --calibration" in capsys.readouterr().err
    code = main(["bench", "--device", "cpu", "--precision", "int8", "--weights", SHIPPED, "--size", "48x96",
                 "--calibration", str(data["a"]), "--calibration-frames", "3", "--parity-min-agreement", "1",
                 "--iterations", "1", "--warmup", "0", "--out", str(tmp_path / "b.json")])
    assert code == EXIT_PARITY
    assert "refused by the parity gate: label agreement" in capsys.readouterr().err


def test_eval_reports_the_parity_figure(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    code = main(["eval", "--mode", "offline", "--bag", str(data["a_bag"]), "--out", str(out), "--device", "cpu",
                 "--weights", SHIPPED, "--precision", "int8", "--calibration", str(data["b"]),
                 "--calibration-frames", "3", "--no-progress", "--overlays", "0"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["engine"]["precision"] == "int8" and "held-out calibration frames" in report["engine"]["parity"]
    assert "parity" in (out / "report.md").read_text()

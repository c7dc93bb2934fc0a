"""Network backends: ONNX export of every model, ONNX Runtime in the engine, the on-disk cache,
configuration errors, the export command.

Tolerance of ONNX Runtime against PyTorch (fp32, CPU): logits within 1e-3 + 1e-3 * max|logit|
(measured ~1e-7 on random weights, 7e-5 on the golden RegSeg weights), labels >= 99.9 % equal.
Big models run only on tiny frames.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import reference
from torch import nn

from seg_perception.backends import ExportError, backend_problem, resolve_backend
from seg_perception.backends.cache import ArtifactCache
from seg_perception.backends.export import ExportSpec, cached_onnx, read_metadata
from seg_perception.cityscapes import CLASS_NAMES
from seg_perception.cli import main
from seg_perception.engine import EngineConfig, EngineConfigError, SegmentationEngine
from seg_perception.models import build_model, list_models
from seg_perception.params import validate_param

FRAME = (40, 56)


def _frame(seed: int = 0, size: tuple[int, int] = FRAME) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _ort_engine(tmp_path: Path, **kwargs: Any) -> SegmentationEngine:
    config = EngineConfig(device="cpu", precision="fp32", backend="onnxruntime", cache_dir=str(tmp_path), **kwargs)
    return SegmentationEngine(config)


def _logits_close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    return float((got - expected).abs().max()) <= 1e-3 + 1e-3 * float(expected.abs().max())


#: HRNet-OCR runs single-scale here (same network, a third of the work); its default multi-scale
#: inference is the ``slow`` case below.
FAST_OPTIONS = {"hrnet_ocr": {"scales": [1.0]}}


@pytest.mark.parametrize("model_name", [
    *list_models(), pytest.param("hrnet_ocr-multiscale", marks=pytest.mark.slow)])
def test_every_model_exports_and_onnxruntime_agrees_with_torch(tmp_path: Path, model_name: str) -> None:
    weights = str(reference("regseg", "regseg_exp48_decoder26_cityscapes_random_state.pt")) \
        if model_name == "regseg" else ""
    options = FAST_OPTIONS.get(model_name, {})
    model_name = model_name.split("-")[0]
    torch.manual_seed(0)
    engine = _ort_engine(tmp_path, model=model_name, weights=weights, inference_size=(32, 48), model_options=options)
    assert engine.description["backend"] == "onnxruntime (CPUExecutionProvider)"
    torch_engine = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", inference_size=(32, 48)),
                                      model=copy.deepcopy(engine.model))
    assert torch_engine.backend == "torch"
    frame = _frame()
    assert (engine.infer(frame).labels == torch_engine.infer(frame).labels).mean() >= 0.999
    # The file is shape-dynamic (batch and size other than the traced 32x48) and says what it holds.
    x = torch.randn(2, 3, 24, 64)
    with torch.no_grad():
        assert _logits_close(engine._forward(x), engine.model(x))
    metadata = engine._forward.metadata  # random weights: the export lives in memory only
    assert metadata["model"] == model_name and metadata["variant"] == engine.model.variant
    assert metadata["input_size"] == "dynamic" and metadata["num_classes"] == "19"
    assert metadata["classes"].startswith('["road"')
    assert json.loads(metadata["mean"]) == [0.485, 0.456, 0.406] and metadata["channel_order"] == "rgb"


def test_golden_regseg_logits_match_within_tolerance(tmp_path: Path) -> None:
    weights = reference("regseg", "regseg_exp48_decoder26_cityscapes_random_state.pt")
    model = build_model("regseg").eval()
    model.load_state_dict(torch.load(weights, weights_only=True))
    spec = ExportSpec("regseg", "exp48_decoder26", 19, {}, str(weights), (64, 128))
    path, hit = cached_onnx(spec, model, ArtifactCache(tmp_path))
    assert not hit
    x = torch.load(reference("regseg", "input.pt"), weights_only=True)[..., :128, :256]
    import onnxruntime as ort

    got = torch.from_numpy(ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        expected = model(x)
    assert float((got - expected).abs().max()) < 5e-4
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.999


class _BakedSize(nn.Module):
    """Traces its output size as a constant: not shape-dynamic in ONNX."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), size=(int(x.shape[2]), int(x.shape[3])), mode="bilinear")


def test_a_model_that_bakes_its_shape_is_exported_at_the_fixed_size(tmp_path: Path) -> None:
    def saved(model: nn.Module, name: str) -> ExportSpec:  # only weights from a file are cached
        torch.save(model.state_dict(), tmp_path / name)
        return ExportSpec("baked", "v", 4, {}, str(tmp_path / name), (32, 48))

    cache = tmp_path / "cache"
    first = _BakedSize().eval()
    path, _ = cached_onnx(saved(first, "a.pt"), first, ArtifactCache(cache))
    assert read_metadata(path)["input_size"] == "32x48"
    other = _BakedSize().eval()
    assert cached_onnx(saved(other, "b.pt"), other, ArtifactCache(cache))[1] is False  # other weights
    model = _BakedSize().eval()
    cached_onnx(saved(model, "m.pt"), model, ArtifactCache(cache))
    assert cached_onnx(saved(model, "m.pt"), model, ArtifactCache(cache))[1] is True  # the fixed export is found again


def test_cache_hit_miss_on_changed_weights_and_corrupt_file_rebuilt(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(3)
    weights = tmp_path / "w.pt"
    model = build_model("regseg")
    torch.save(model.state_dict(), weights)
    cache = tmp_path / "cache"
    first = _ort_engine(cache, weights=str(weights))
    second = _ort_engine(cache, weights=str(weights))
    assert not first._forward.cache_hit and second._forward.cache_hit
    assert second._forward.path == first._forward.path
    frame = _frame(1)
    before = second.infer(frame).labels

    with torch.no_grad():  # new weights in the same file: a miss, and the new weights are used
        model.decoder.classifier.bias.add_(torch.linspace(-3, 3, 19))
    torch.save(model.state_dict(), weights)
    changed = _ort_engine(cache, weights=str(weights))
    assert not changed._forward.cache_hit and changed._forward.path != first._forward.path
    reference_engine = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", backend="torch",
                                                       weights=str(weights)))
    assert (changed.infer(frame).labels == reference_engine.infer(frame).labels).mean() >= 0.999
    assert not np.array_equal(changed.infer(frame).labels, before)

    changed._forward.path.write_bytes(b"not an onnx file")  # corrupt: rebuilt, not fatal
    rebuilt = _ort_engine(cache, weights=str(weights))
    assert not rebuilt._forward.cache_hit
    assert "unusable" in caplog.text
    assert np.array_equal(rebuilt.infer(frame).labels, changed.infer(frame).labels)
    assert not [p for p in (cache / "onnx").iterdir() if p.name.endswith(".tmp")]  # atomic writes leave nothing


def test_crf_runs_after_the_onnxruntime_network(tmp_path: Path) -> None:
    torch.manual_seed(5)
    engine = _ort_engine(tmp_path, crf="gpu", crf_options={"iterations": 2})
    torch_engine = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", backend="torch", crf="gpu",
                                                   crf_options={"iterations": 2}), model=copy.deepcopy(engine.model))
    frame = _frame(2, (24, 32))
    assert (engine.infer(frame).labels == torch_engine.infer(frame).labels).mean() >= 0.999


def test_missing_packages_and_impossible_combinations_are_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EngineConfigError, match="compile torch_compile applies to the torch backend"):
        EngineConfig(device="cpu", precision="fp32", backend="onnxruntime", compile="torch_compile").validate()
    with pytest.raises(EngineConfigError, match="backend tensorrt needs a CUDA device"):
        EngineConfig(device="cpu", precision="fp32", backend="tensorrt").validate()
    with pytest.raises(EngineConfigError, match="backend must be one of auto, torch, onnxruntime, tensorrt"):
        EngineConfig(device="cpu", precision="fp32", backend="openvino").validate()
    problem = backend_problem("tensorrt", "cuda", "none")  # this machine's ORT has no TensorRT provider
    assert "pip install onnxruntime-gpu tensorrt" in problem
    assert "pip install onnxruntime-gpu" in backend_problem("onnxruntime", "cuda", "none")
    assert validate_param("backend", "tflite").startswith("backend must be one of")

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(EngineConfigError, match="needs the onnxruntime package.*pip install onnxruntime"):
        EngineConfig(device="cpu", precision="fp32", backend="onnxruntime").validate()
    assert resolve_backend("auto", torch.device("cpu"), "none", injected_model=False) == "torch"


def test_auto_resolution() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("auto", cpu, "none", injected_model=False) == "onnxruntime"
    assert resolve_backend("auto", cuda, "none", injected_model=False) == "torch"
    assert resolve_backend("auto", cpu, "torch_compile", injected_model=False) == "torch"
    assert resolve_backend("auto", cpu, "none", injected_model=True) == "torch"
    assert resolve_backend("torch", cpu, "none", injected_model=False) == "torch"


def test_auto_falls_back_to_torch_when_export_fails_but_explicit_backend_raises(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ExportError("model cannot be exported to ONNX: test")

    monkeypatch.setattr("seg_perception.backends.export._trace", refuse)
    auto = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", cache_dir=str(tmp_path)))
    assert auto.backend == "torch" and auto.description["backend"] == "torch"
    assert "running the network in PyTorch" in caplog.text
    assert auto.infer(_frame()).labels.shape == FRAME
    with pytest.raises(ExportError, match="cannot be exported"):
        _ort_engine(tmp_path)


def test_export_command_writes_onnx_with_metadata_and_refuses_what_it_cannot(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, weights = tmp_path / "regseg.onnx", tmp_path / "regseg.pt"
    torch.save(build_model("regseg").state_dict(), weights)
    args = ["export", "--model", "regseg", "--weights", str(weights), "--size", "64x128",
            "--cache-dir", str(tmp_path / "c")]
    assert main([*args, "--out", str(out)]) == 0
    metadata = read_metadata(out)
    assert (metadata["model"], metadata["variant"], metadata["input_size"]) == ("regseg", "exp48_decoder26", "dynamic")
    assert json.loads(metadata["classes"]) == list(CLASS_NAMES)
    assert "exported" in capsys.readouterr().out
    assert main([*args, "--out", str(out)]) == 0 and "cached" in capsys.readouterr().out

    assert main([*args, "--crf", "gpu"]) == 2
    assert "CRF is not part of the network" in capsys.readouterr().err
    assert main([*args, "--format", "tensorrt"]) == 2
    assert "pip install onnxruntime-gpu tensorrt" in capsys.readouterr().err


def test_backends_bench_runs_interleaved_and_reports_agreement_and_start_times(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_backends", Path(__file__).parents[1] / "bench" / "backends.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "b.json"
    assert bench.main(["--models", "regseg", "--sizes", "32x48", "--iterations", "2",
                       "--variants", "torch_eager,onnxruntime", "--out", str(out)]) == 0
    case = json.loads(out.read_text())["cases"][0]
    ort = case["variants"]["onnxruntime"]
    assert ort["backend"].startswith("onnxruntime") and ort["total_ms"]["count"] == 2
    assert ort["agreement"]["min"] >= 0.999 and ort["first_start_s"] > 0 and ort["cached_start_s"] > 0
    assert "| regseg | 32x48 | onnxruntime |" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert bench.main(["--gpu"]) == 0
        assert "GPU comparison skipped" in capsys.readouterr().out

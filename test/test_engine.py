"""The ROS-free engine: shapes, outputs that agree with the model, configuration errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seg_perception.cityscapes import PALETTE
from seg_perception.engine import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    STAGES,
    EngineConfig,
    EngineConfigError,
    FrameError,
    OutputRequest,
    SegmentationEngine,
)
from seg_perception.models import build_model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("regseg").eval()


@pytest.fixture(scope="module")
def engine(model: torch.nn.Module) -> SegmentationEngine:
    return SegmentationEngine(EngineConfig(device="cpu", precision="fp32"), model=model)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (72, 100, 3), dtype=np.uint8)


def _reference_logits(model: torch.nn.Module, frame: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    if size is not None:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        logits = model(x)
    return F.interpolate(logits, size=frame.shape[:2], mode="bilinear", align_corners=False)


def test_labels_equal_argmax_of_normalised_model_output(engine, model, frame) -> None:
    result = engine.infer(frame)
    expected = _reference_logits(model, frame).argmax(1)[0].numpy().astype(np.uint8)
    assert result.labels.shape == frame.shape[:2] and result.labels.dtype == np.uint8
    assert (result.labels == expected).mean() > 0.999


def test_inference_size_runs_smaller_and_returns_frame_size(model, frame) -> None:
    small = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", inference_size=(48, 64)), model=model)
    result = small.infer(frame)
    expected = _reference_logits(model, frame, (48, 64)).argmax(1)[0].numpy()
    assert result.labels.shape == (72, 100)
    assert (result.labels == expected).mean() > 0.999


def test_color_overlay_confidence(engine, model, frame) -> None:
    result = engine.infer(frame, OutputRequest(color=True, overlay=True, confidence=True, overlay_alpha=0.25))
    assert np.array_equal(result.color, PALETTE[result.labels])
    expected_overlay = np.round(frame * 0.75 + PALETTE[result.labels] * 0.25).astype(np.uint8)
    assert np.abs(result.overlay.astype(int) - expected_overlay).max() <= 1
    probs = torch.softmax(_reference_logits(model, frame), 1).max(1).values[0].numpy()
    assert np.abs(result.confidence.astype(float) - probs * 255).max() <= 1.0


def test_optional_outputs_absent_unless_requested(engine, frame) -> None:
    result = engine.infer(frame)
    assert result.color is None and result.overlay is None and result.confidence is None


def test_stage_timings_cover_every_stage(engine, frame) -> None:
    timings = engine.infer(frame).timings_ms
    assert tuple(timings) == STAGES
    assert all(v >= 0 for v in timings.values()) and timings["inference"] > 0


def test_torch_frame_accepted(engine, frame) -> None:
    assert np.array_equal(engine.infer(torch.from_numpy(frame)).labels, engine.infer(frame).labels)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8), np.uint8), "HxWx3"),
        (np.zeros((8, 8, 4), np.uint8), "HxWx3"),
        (np.zeros((0, 8, 3), np.uint8), "zero size"),
        ([[1, 2, 3]], "numpy array or torch tensor"),
    ],
)
def test_bad_frames_raise_frame_error(engine, bad, match) -> None:
    with pytest.raises(FrameError, match=match):
        engine.infer(bad)


def test_bad_overlay_alpha(engine, frame) -> None:
    with pytest.raises(ValueError, match="overlay_alpha"):
        engine.infer(frame, OutputRequest(overlay=True, overlay_alpha=1.5))


@pytest.mark.parametrize(
    "config, match",
    [
        (EngineConfig(device="tpu"), "device must be one of"),
        (EngineConfig(precision="int4"), "precision must be one of"),
        (EngineConfig(device="cpu", precision="fp16"), "fp16 needs device cuda"),
        (EngineConfig(inference_size=(0, 10)), "inference_size"),
    ],
)
def test_config_errors_at_construction(config, match) -> None:
    with pytest.raises(EngineConfigError, match=match):
        SegmentationEngine(config)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_auto_device_falls_back_to_cpu_fp32() -> None:
    engine = SegmentationEngine(EngineConfig(device="auto", precision="fp16"))
    assert engine.device.type == "cpu" and engine.precision == "fp32"
    assert engine.description["precision"] == "fp32"


def test_missing_weights_file_fails_at_configuration(tmp_path) -> None:
    from seg_perception.models import CheckpointNotFoundError

    with pytest.raises(CheckpointNotFoundError):
        SegmentationEngine(EngineConfig(device="cpu", precision="fp32", weights=str(tmp_path / "x.pt")))


def test_engine_loads_weights_file(tmp_path, model, frame) -> None:
    path = tmp_path / "w.pt"
    torch.save({"model": model.state_dict()}, path)
    loaded = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", weights=str(path), backend="torch"))
    direct = SegmentationEngine(EngineConfig(device="cpu", precision="fp32"), model=model)
    assert np.array_equal(loaded.infer(frame).labels, direct.infer(frame).labels)


def test_crf_stage_refines_any_models_logits(model, frame) -> None:
    from seg_perception.crf import CRFConfig, build_crf

    engine = SegmentationEngine(
        EngineConfig(device="cpu", precision="fp32", crf="gpu", crf_options={"iterations": 5}), model=model
    )
    result = engine.infer(frame, OutputRequest(confidence=True))
    crf = build_crf(CRFConfig(mode="gpu", iterations=5))
    probs = crf(_reference_logits(model, frame), torch.from_numpy(frame))
    assert (result.labels == probs.argmax(1)[0].numpy()).mean() > 0.999
    assert np.abs(result.confidence.astype(float) - probs.max(1).values[0].numpy() * 255).max() <= 1.0


def test_unknown_crf_option_fails_at_configuration() -> None:
    with pytest.raises(EngineConfigError, match="crf_options"):
        SegmentationEngine(EngineConfig(device="cpu", precision="fp32", crf="gpu", crf_options={"sigma": 3}))


def test_auto_precision_is_fp16_on_cuda_and_fp32_on_cpu() -> None:
    from seg_perception.engine import resolve_precision

    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
    assert EngineConfig().precision == "auto"
    EngineConfig(device="cpu").validate()  # the default works on the CPU


def test_normalisation_is_data_the_engine_receives(model) -> None:
    """The registry entry's normalisation by default; another one (mean, std, BGR order) when
    configured, applied exactly as the reference computation does (trained weights on a
    street-like frame, so the labels depend on the input's colours)."""
    from seg_perception.backends.parity import probe_frame
    from seg_perception.models import load_checkpoint, normalization_for
    from seg_perception.normalization import IMAGENET, Normalization

    assert normalization_for("regseg") == IMAGENET and model.normalization == IMAGENET
    trained = build_model("regseg").eval()
    load_checkpoint(trained, "synthetic_street")
    frame = probe_frame(96, 160)
    custom = Normalization(mean=(0.3, 0.45, 0.5), std=(0.25, 0.2, 0.3), channel_order="bgr")
    engine = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", normalization=custom), model=trained)
    assert engine.normalization == custom
    x = torch.from_numpy(frame[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255.0
    x = (x - torch.tensor(custom.mean).view(1, 3, 1, 1)) / torch.tensor(custom.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = trained(x).argmax(1)[0].numpy()
    assert len(np.unique(expected)) > 2  # the frame's colours decide the labels
    assert (engine.infer(frame).labels == expected).mean() > 0.999
    with pytest.raises(EngineConfigError, match="channel_order"):
        EngineConfig(device="cpu", normalization=Normalization(channel_order="yuv")).validate()

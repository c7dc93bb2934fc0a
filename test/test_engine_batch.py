"""The engine's batch API on the CPU: grouping, order, per-frame outputs, and that a batch labels
each frame exactly as that frame alone would be labelled."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from seg_perception.cityscapes import PALETTE
from seg_perception.engine import (
    STAGES,
    EngineConfig,
    FrameError,
    OutputRequest,
    SegmentationEngine,
)


class _Small(nn.Module):
    """A strided conv net with batch norm, so batching could change numerics if it were wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 19, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    net = _Small().eval()
    with torch.no_grad():
        net.body[1].running_var.uniform_(0.5, 1.5)
        net.body[1].running_mean.uniform_(-0.2, 0.2)
    return net


def _frames(*shapes: tuple[int, int], seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def _engine(model: nn.Module, **kwargs: object) -> SegmentationEngine:
    return SegmentationEngine(EngineConfig(device="cpu", precision="fp32", **kwargs), model=model)


def test_mixed_sizes_are_grouped_by_size_and_keep_their_order(model: nn.Module) -> None:
    engine = _engine(model)
    frames = _frames((40, 56), (32, 48), (40, 56), (32, 48), (24, 40))
    results = engine.infer_batch(frames, [OutputRequest()] * len(frames))
    assert [r.labels.shape for r in results] == [f.shape[:2] for f in frames]
    assert [r.batch_size for r in results] == [2, 2, 2, 2, 1]
    for frame, result in zip(frames, results, strict=True):
        alone = engine.infer(frame)
        assert alone.batch_size == 1
        assert (result.labels == alone.labels).mean() > 0.999


def test_inference_size_puts_every_frame_in_one_batch(model: nn.Module) -> None:
    engine = _engine(model, inference_size=(32, 48))
    frames = _frames((40, 56), (64, 96), (24, 40))
    results = engine.infer_batch(frames, [OutputRequest()] * 3)
    assert [r.batch_size for r in results] == [3, 3, 3]
    assert [r.labels.shape for r in results] == [(40, 56), (64, 96), (24, 40)]
    for frame, result in zip(frames, results, strict=True):
        assert (result.labels == engine.infer(frame).labels).mean() > 0.999


def test_each_frame_gets_only_the_outputs_it_asked_for(model: nn.Module) -> None:
    engine = _engine(model)
    frames = _frames((40, 56), (40, 56), (40, 56))
    requests = [OutputRequest(color=True), OutputRequest(overlay=True, overlay_alpha=0.25, confidence=True),
                OutputRequest(overlay=True, overlay_alpha=1.0)]
    a, b, c = engine.infer_batch(frames, requests)
    assert a.color is not None and a.overlay is None and a.confidence is None
    assert np.array_equal(a.color, PALETTE[a.labels])
    assert b.color is None and b.overlay is not None and b.confidence is not None
    expected = np.round(frames[1] * 0.75 + PALETTE[b.labels] * 0.25).astype(np.uint8)
    assert np.abs(b.overlay.astype(int) - expected.astype(int)).max() <= 1
    assert np.array_equal(c.overlay, PALETTE[c.labels])  # alpha 1: the colour only, per frame
    assert c.confidence is None and c.color is None


def test_submit_equals_a_batch_of_one(model: nn.Module) -> None:
    engine = _engine(model)
    (frame,) = _frames((40, 56))
    request = OutputRequest(confidence=True)
    single = engine.submit(frame, request).result()
    (batched,) = engine.infer_batch([frame], [request])
    assert np.array_equal(single.labels, batched.labels) and np.array_equal(single.confidence, batched.confidence)


def test_batch_results_carry_stage_timings_and_queue(model: nn.Module) -> None:
    engine = _engine(model)
    results = engine.infer_batch(_frames((40, 56), (40, 56)), [OutputRequest()] * 2)
    for result in results:
        assert tuple(result.timings_ms) == STAGES and result.timings_ms["inference"] > 0
        assert result.queue_ms == 0.0  # the CPU never waits for a busy stream
        assert result.total_ms == pytest.approx(sum(result.timings_ms.values()))


def test_torch_tensor_frames_on_the_engine_device_are_used_in_place(model: nn.Module) -> None:
    engine = _engine(model)
    (frame,) = _frames((40, 56))
    tensor = torch.from_numpy(frame)
    assert np.array_equal(engine.infer_batch([tensor], [OutputRequest()])[0].labels, engine.infer(frame).labels)


def test_bad_batches_raise_before_any_work(model: nn.Module) -> None:
    engine = _engine(model)
    good = _frames((40, 56))[0]
    with pytest.raises(ValueError, match="2 frames but 1 output"):
        engine.submit_batch([good, good], [OutputRequest()])
    with pytest.raises(FrameError, match="uint8"):
        engine.submit_batch([good, good.astype(np.float32)], [OutputRequest()] * 2)
    with pytest.raises(ValueError, match="overlay_alpha"):
        engine.submit_batch([good], [OutputRequest(overlay_alpha=-0.1)])
    assert engine.recent_batches() == []  # nothing ran
    assert engine.submit_batch([], []) == []


def test_recent_batches_list_what_a_reload_should_prepare(model: nn.Module) -> None:
    engine = _engine(model)
    frames = _frames((40, 56), (32, 48))
    engine.infer_batch(frames, [OutputRequest(color=True, overlay_alpha=0.9), OutputRequest()])
    batches = engine.recent_batches()
    assert ((((40, 56),), (OutputRequest(color=True),)) in batches)  # alpha is not part of it
    assert ((((32, 48),), (OutputRequest(),)) in batches)
    engine.prepare(*batches[0])  # nothing to compile in eager mode: a no-op that must not fail

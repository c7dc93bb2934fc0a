"""The engine's CUDA paths run on the CPU with fake streams, events and graphs: captures hold the
process-wide lock, a failed capture serves eagerly with bounded retries,
graph keys ignore the overlay alpha, stage figures exclude queueing, the completion event blocks.

The fakes replace only what needs a GPU (streams, events, pinned memory, graph capture); the
engine's own code (grouping, upload/compute ordering, static buffers, replay, timers) is real.
A fake graph re-runs its captured function on replay and writes into the captured outputs in
place, which is what a CUDA graph does to its static buffers.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from seg_perception import engine as engine_module
from seg_perception.engine import (
    _EAGER_SPANS,
    _GRAPH_SPANS,
    STAGES,
    EngineConfig,
    OutputRequest,
    SegmentationEngine,
    _Timer,
    recover_from_failure,
)
from seg_perception.preparation import CAPTURE_LOCK


class FakeStream:
    def __init__(self, *args: Any, name: str = "side") -> None:
        self.name, self.log = name, []

    def wait_event(self, event: Any) -> None:
        self.log.append(("wait", event))

    def wait_stream(self, stream: Any) -> None:
        self.log.append(("wait_stream", getattr(stream, "name", "?")))

    def synchronize(self) -> None:
        self.log.append(("synchronize",))


class FakeEvent:
    created: list[FakeEvent] = []

    def __init__(self, enable_timing: bool = False, blocking: bool = False) -> None:
        self.enable_timing, self.blocking = enable_timing, blocking
        self.stream, self.time, self.waited = None, None, False
        FakeEvent.created.append(self)

    def record(self, stream: Any = None) -> None:
        self.stream, self.time = stream, time.perf_counter()
        if isinstance(stream, FakeStream):
            stream.log.append(("record",))

    def elapsed_time(self, other: FakeEvent) -> float:
        return (other.time - self.time) * 1e3

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        self.waited = True


class FakeGraph:
    """Replay re-runs the captured function and copies into the captured outputs in place."""

    def __init__(self, fn: Any, out: Any) -> None:
        self.fn, self.out, self.replays = fn, out, 0

    def pool(self) -> None:
        return None

    def replay(self) -> None:
        self.replays += 1
        _copy_into(self.out, self.fn())


def _copy_into(dst: Any, src: Any) -> None:
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    elif isinstance(dst, dict):
        for k in dst:
            _copy_into(dst[k], src[k])
    else:
        for d, s in zip(dst, src, strict=True):
            _copy_into(d, s)


class Captures:
    """The fake capture function: records whether the lock was held and how many ran at once."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.calls, self.locked, self.active, self.max_active = fail, 0, [], 0, 0
        self._lock = threading.Lock()

    def __call__(self, fn: Any, pool: Any) -> tuple[FakeGraph, Any]:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.locked.append(CAPTURE_LOCK.locked())
        try:
            time.sleep(0.02)  # long enough for a second capture to overlap if nothing serialised them
            if self.fail:
                raise RuntimeError("operation not permitted when stream is capturing")
            out = fn()
            return FakeGraph(fn, out), out
        finally:
            with self._lock:
                self.active -= 1


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 19, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.fixture()
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Captures:
    FakeEvent.created = []
    captures = Captures()
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream(name="current"))
    monkeypatch.setattr(engine_module, "_pinned_empty", lambda shape, dtype: torch.empty(tuple(shape), dtype=dtype))
    monkeypatch.setattr(engine_module, "_keep_for", lambda tensor, stream: None)
    monkeypatch.setattr(engine_module, "_capture_graph", captures)
    return captures


def _engine(compile_mode: str = "none", **kwargs: Any) -> SegmentationEngine:
    """A CPU engine switched onto its CUDA code path (the fakes stand in for the device)."""
    torch.manual_seed(0)
    engine = SegmentationEngine(EngineConfig(device="cpu", precision="fp32", **kwargs), model=_Small().eval())
    engine._cuda = True
    engine._upload_stream, engine._compute_stream = FakeStream(name="upload"), FakeStream(name="compute")
    engine.config.compile = compile_mode  # validate() refuses cuda_graph without CUDA; set it after
    return engine


def _frames(n: int, shape: tuple[int, int] = (32, 48), seed: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(n)]


# -- captures serialised, failures fall back to eager ---------------------------------------
def test_every_capture_holds_the_process_wide_lock_and_never_overlaps(fake_cuda: Captures) -> None:
    engines = [_engine("cuda_graph") for _ in range(2)]
    threads = [threading.Thread(target=e.prepare, args=([(32, 48)], [OutputRequest(color=True)])) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(len(e._captured) == 1 for e in engines)
    assert fake_cuda.calls == 6  # preprocess, inference, postprocess per engine
    assert all(fake_cuda.locked) and fake_cuda.max_active == 1
    assert not CAPTURE_LOCK.locked()


def test_empty_cache_after_out_of_memory_holds_the_capture_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    held: list[bool] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: held.append(CAPTURE_LOCK.locked()))
    assert recover_from_failure(torch.cuda.OutOfMemoryError("oom")) == "out_of_memory"
    assert held == [True] and not CAPTURE_LOCK.locked()


def test_a_failed_capture_serves_eagerly_and_is_not_retried_every_frame(fake_cuda: Captures) -> None:
    fake_cuda.fail = True
    engine = _engine("cuda_graph", background_prepare=False)
    eager = _engine("none")
    frames = _frames(3)
    for i in range(30):
        result = engine.infer(frames[i % 3])
        assert np.array_equal(result.labels, eager.infer(frames[i % 3]).labels)
    key = (((32, 48), (False, False, False)),)
    assert engine._captured.failures() == {key: 1}  # one attempt in 30 frames (retry after 100)
    assert fake_cuda.calls == 1 and len(engine._captured) == 0
    engine._captured.retry_after = 2
    for _ in range(20):
        engine.infer(frames[0])
    assert engine._captured.failures() == {key: engine._captured.max_attempts}  # bounded
    assert fake_cuda.calls == engine._captured.max_attempts


# -- keys only by what changes the graph; new shapes prepared off the hot path ------------------
def test_graph_key_ignores_alpha_and_the_overlay_follows_it(fake_cuda: Captures) -> None:
    engine = _engine("cuda_graph", background_prepare=False)
    eager = _engine("none")
    (frame,) = _frames(1)
    for alpha in (0.2, 0.8, 0.5):
        request = OutputRequest(overlay=True, overlay_alpha=alpha)
        got, expected = engine.infer(frame, request), eager.infer(frame, request)
        assert np.array_equal(got.overlay, expected.overlay) and np.array_equal(got.labels, expected.labels)
    assert len(engine._captured) == 1 and fake_cuda.calls == 3  # one capture for all three alphas
    engine.infer(frame, OutputRequest(color=True))  # different flags: a different graph
    assert len(engine._captured) == 2


def test_a_new_shape_is_served_eagerly_while_captured_in_the_background(fake_cuda: Captures) -> None:
    engine = _engine("cuda_graph")
    eager = _engine("none")
    frames = _frames(2)
    first = engine.submit_batch(frames, [OutputRequest()] * 2)  # served now, capture scheduled
    assert [p.result().batch_size for p in first] == [2, 2]
    assert engine.wait_prepared(60)
    graph = engine._captured.lookup((((32, 48), (False, False, False)),) * 2, None)
    assert graph is not None and graph.inference.replays == 0
    later = engine.infer_batch(frames, [OutputRequest()] * 2)
    assert graph.inference.replays == 1  # the second batch replays the captured graphs
    for frame, a, b in zip(frames, first, later, strict=True):
        assert np.array_equal(a.result().labels, b.labels)
        assert np.array_equal(b.labels, eager.infer(frame).labels)
    engine.close()


def test_batches_of_different_sizes_each_get_their_own_graph(fake_cuda: Captures) -> None:
    engine = _engine("cuda_graph", background_prepare=False)
    for n in (1, 2, 3, 2):
        assert [r.batch_size for r in engine.infer_batch(_frames(n), [OutputRequest()] * n)] == [n] * n
    assert len(engine._captured) == 3


# -- stage figures without queueing; blocking completion --------------------------------
@pytest.mark.parametrize("compile_mode", ["none", "cuda_graph"])
def test_the_compute_stream_marks_its_start_after_waiting(fake_cuda: Captures, compile_mode: str) -> None:
    engine = _engine(compile_mode, background_prepare=False)
    engine.infer(_frames(1)[0])
    FakeEvent.created.clear()
    engine._compute_stream.log.clear()
    pending = engine.submit(_frames(1)[0])
    timer = pending._group.timer
    log = engine._compute_stream.log
    handoff = "preprocess" if compile_mode == "none" else "upload"
    assert log[0] == ("wait", timer.marks[handoff]) and log[1] == ("record",)  # 'compute' right after the wait
    assert timer.marks["compute"].stream is engine._compute_stream
    # The frames are on the engine's device (here: CPU tensors on a CPU engine): no upload, but
    # the upload stream waits for the caller's stream, where their producer queued them.
    assert ("wait_stream", "current") in engine._upload_stream.log
    done = timer.marks["download"]
    assert done.blocking and all(not e.blocking for n, e in timer.marks.items() if n != "download")
    result = pending.result()
    assert done.waited  # result() sleeps on the blocking event
    assert tuple(result.timings_ms) == STAGES and result.queue_ms >= 0


class _At:
    """An event at a fixed time (ms)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def elapsed_time(self, other: _At) -> float:
        return other.t - self.t


@pytest.mark.parametrize("spans", [_EAGER_SPANS, _GRAPH_SPANS])
def test_stage_figures_exclude_waiting_for_the_compute_stream(spans: dict) -> None:
    """Frame N+1 is handed over at t=4 ms but the compute stream is busy with frame N until t=10."""
    handoff = spans["queue"][0]
    times = {"start": 0.0, "upload": 1.0, "preprocess": 4.0, "compute": 10.0, "inference": 13.0,
             "postprocess": 14.0, "download": 15.0}
    if handoff == "upload":  # graphs: preprocess runs on the compute stream, after the queue
        times.update(upload=4.0, compute=10.0, preprocess=11.0, inference=13.0)
    timer = _Timer(cuda=True, spans=spans)
    timer.marks = {name: _At(t) for name, t in times.items()}
    stages, queue = timer.elapsed_ms()
    assert queue == pytest.approx(6.0)
    assert stages["inference"] == pytest.approx(2.0 if handoff == "upload" else 3.0)
    assert sum(stages.values()) + queue == pytest.approx(15.0)  # nothing counted twice or lost

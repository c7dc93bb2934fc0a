"""What a worker does with a task: every frame of its cameras through the engine, in order.

This is evaluation's task function; a runner takes any other with the same signature as its
``job`` (``job(engine, task, max_pixels, on_frame) -> dict`` with ``frames`` and ``busy_s``), as
mining does (:func:`seg_perception.mining.job.score_task`).

A worker (this process, or a Ray actor) keeps one engine (:func:`build_engine`) and evaluates
tasks with it (:func:`run_task`). Frames are converted or decoded by the node's own
:func:`~seg_perception.compressed.message_to_rgb` (raw and compressed images alike, with the node's
reject reasons) and segmented by the node's engine, one after the other, as fast as it can. What
comes back is one camera result per camera (:func:`~..results.camera_result`): confusion matrix,
per-frame records and stage timings, never images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ... import params as P
from ...compressed import message_to_rgb
from ...engine import STAGES
from ...image_conversion import ImageRejected
from ..bag_io import BagFrame, DriveBag, find_cameras
from ..ledger import Ledger, Outputs
from ..results import camera_result
from .plan import Task

LOG = logging.getLogger(__name__)


def run_offline(frames: Iterator[BagFrame], engine: Any, ledger: Ledger, max_pixels: int,
                on_frame: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Every frame through the engine in order; returns each stage's samples (ms), the engine's
    own per-stage timing. A frame the node would reject is rejected with its reason; a frame whose
    inference fails is dropped, as the node drops it."""
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    start = time.perf_counter()
    for frame in frames:
        sent = time.perf_counter() - start
        try:
            rgb = message_to_rgb(frame.image, max_pixels)
        except ImageRejected as exc:
            ledger.missing(frame, "rejected", exc.reason, sent)
        else:
            if not rgb.flags.writeable:  # a view of the bag's buffer; torch wants writable memory
                rgb = rgb.copy()
            t0 = time.perf_counter()
            try:
                result = engine.infer(rgb)
            except Exception as exc:  # the node drops such a frame; so do we
                LOG.error("inference failed on frame %d: %s: %s", frame.index, type(exc).__name__, exc)
                ledger.missing(frame, "dropped", "inference_error", sent)
            else:
                wall = (time.perf_counter() - t0) * 1e3
                for stage, ms in result.timings_ms.items():
                    stages[stage].append(ms)
                ledger.result(frame, result.labels, wall, sent)
        on_frame()
    return stages


def frame_range(bag: DriveBag, start: int, stop: int | None) -> Iterator[BagFrame]:
    """The bag's frames with index in ``[start, stop)`` (stop None: to the end), in order."""
    for frame in bag.frames():
        if frame.index < start:
            continue
        if stop is not None and frame.index >= stop:
            return
        yield frame


def build_engine(values: dict[str, Any], seed: int = 0) -> Any:
    """The engine of a worker: random weights seeded like a single-process run, so every worker
    of an untrained run holds the same network."""
    import torch

    from ...engine import SegmentationEngine

    torch.manual_seed(seed)
    return SegmentationEngine(P.engine_config(values))


def run_task(engine: Any, task: Task, max_pixels: int, on_frame: Callable[[], None] = lambda: None,
             outputs: Outputs | None = None) -> dict[str, Any]:
    """Evaluate a task with ``engine``: one camera result per camera. ``outputs`` (in-process runs
    of one camera only) writes the report's images of that camera's frames."""
    started = time.perf_counter()
    cameras = []
    for camera in task.cameras or find_cameras(task.path):
        with DriveBag(task.path, camera.image_topic, camera.gt_topic) as bag:
            rate = (bag.info.image_count - 1) / bag.info.duration_s if bag.info.duration_s > 0 else 17.0
            ledger = Ledger(bag.info.image_count, outputs, rate)
            first: list[Any] = []

            def frames(bag: DriveBag = bag, first: list[Any] = first) -> Iterator[BagFrame]:
                for frame in frame_range(bag, task.start, task.stop):
                    if not first:
                        first.append(frame.image)
                    yield frame

            samples = {stage: np.asarray(ms, np.float64)  # compact to send and keep: 8 bytes a sample
                       for stage, ms in run_offline(frames(), engine, ledger, max_pixels, on_frame).items()}
            # only the task that reads to the end sees the bag's tail
            cameras.append(camera_result(camera, bag, ledger, first[0] if first else None, last=task.stop is None,
                                         stage_samples=samples))
    return {"task_id": task.task_id, "cameras": cameras, "busy_s": time.perf_counter() - started,
            "frames": sum(len(c["records"]) for c in cameras)}

"""What a worker does with a mining task: every frame of its cameras scored, in order.

The frames are decoded by the node's own :func:`~seg_perception.compressed.message_to_rgb` (raw
and compressed images alike; a frame the node would reject is counted with its reason) and
segmented by the node's engine with the per-pixel confidence. What comes back per frame is a
:class:`~.select.Candidate`: where the frame is, its score and a 768-byte thumbnail, never the
image, so a worker's result stays small however long the drive.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..compressed import message_to_rgb
from ..engine import OutputRequest
from ..evaluation.bag_io import DriveBag, find_cameras
from ..evaluation.drives.plan import Task
from ..evaluation.drives.task import frame_range
from ..image_conversion import ImageRejected
from .scores import frame_score, needs_flip
from .select import Candidate, thumbnail

LOG = logging.getLogger(__name__)
CONFIDENCE = OutputRequest(confidence=True)


@dataclass(frozen=True)
class ScoreSettings:
    """How a worker scores frames (picklable: it travels to Ray workers)."""

    score: str


def score_frame(engine: Any, rgb: np.ndarray, kind: str) -> tuple[float, np.ndarray]:
    """(score, labels) of one RGB frame."""
    result = engine.infer(rgb, CONFIDENCE)
    mirrored = None
    if needs_flip(kind):
        mirrored = engine.infer(np.ascontiguousarray(rgb[:, ::-1])).labels
    return frame_score(kind, result.confidence, result.labels, mirrored), result.labels


def score_task(engine: Any, task: Task, max_pixels: int, on_frame: Callable[[], None] = lambda: None, *,
               settings: ScoreSettings) -> dict[str, Any]:
    """Score every frame of the task's cameras; a runner's ``job`` (bind ``settings`` with
    ``functools.partial``). Every frame read is a candidate, rejected (node reason) or failed."""
    started = time.perf_counter()
    candidates: list[Candidate] = []
    rejected: Counter = Counter()
    cameras: dict[str, dict[str, Any]] = {}
    frames = 0
    for camera in task.cameras or find_cameras(task.path, need_gt=False):
        with DriveBag(task.path, camera.image_topic, None) as bag:
            read = 0
            for frame in frame_range(bag, task.start, task.stop):
                read += 1
                try:
                    rgb = message_to_rgb(frame.image, max_pixels)
                except ImageRejected as exc:
                    rejected[exc.reason] += 1
                else:
                    if not rgb.flags.writeable:  # a view of the bag's buffer; torch wants writable memory
                        rgb = rgb.copy()
                    try:
                        score, _ = score_frame(engine, rgb, settings.score)
                    except Exception as exc:  # the node drops such a frame; so do we, counted
                        LOG.error("inference failed on frame %d: %s: %s", frame.index, type(exc).__name__, exc)
                        rejected["inference_error"] += 1
                    else:
                        candidates.append(Candidate(task.drive, camera.name, bag.image_topic, frame.index,
                                                    frame.stamp_ns, score, thumbnail(rgb)))
                on_frame()
            cameras[camera.name] = {"topic": bag.image_topic, "frames": read, "notes": list(bag.pairing.notes)}
            frames += read
    return {"task_id": task.task_id, "frames": frames, "busy_s": time.perf_counter() - started,
            "candidates": candidates, "rejected": dict(rejected), "cameras": cameras}

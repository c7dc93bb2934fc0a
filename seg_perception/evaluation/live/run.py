"""One drive (all its cameras, or the chosen ones) through one ``seg_node`` process: the live
counterpart of an offline worker's task. Each camera ends as a camera result of the same shape
an offline worker returns (:func:`~..results.camera_result`), with the node's books and the
replay's figures attached, so the report is built the same way whoever segmented the frames.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import params as P
from ..bag_io import CameraTopics, DriveBag, find_cameras
from ..drives.local import RunOutcome
from ..drives.plan import Task
from ..ledger import Ledger, Outputs
from ..results import camera_result
from .replay import LIVE_INPUT_DEPTH, LiveCamera, run_live_cameras

#: Per-camera live figures kept in the report (the rest of a camera's stats is per frame).
LIVE_KEYS = ("published", "results_received", "unexpected_outputs", "node_accounting", "transport_lost",
             "output_lost", "reconciliation", "node_end_to_end_ms", "throughput_fps", "input_fps", "replay_s")


@dataclass
class LiveOptions:
    """How to replay: rate, DDS domain, the node's threads and input QoS, and where it runs."""

    #: The node's working folder: ``node_params.yaml`` and ``node.log`` are written there.
    workdir: Path
    speed: float = 1.0
    domain_id: int | None = None
    #: Seeds the node's random weights (untrained runs), as offline workers are seeded.
    seed: int = 0
    #: The node's torch intra-op threads; None keeps torch's default.
    threads: int | None = None
    progress: bool = True
    #: The node's input QoS: reliable measures the node, not the transport.
    input_qos: str = "reliable"
    #: Overlays, predictions and video of a one-camera drive.
    outputs: Outputs | None = None


def node_overrides(values: dict[str, Any], frames: int) -> dict[str, Any]:
    """Parameters to start the node with: every non-default value, typed like its declaration.

    The latency window is widened to the whole drive so the per-stage percentiles cover every
    frame, not only the last few hundred.
    """
    out: dict[str, Any] = {}
    for spec in P.PARAMS:
        value = values[spec.name]
        if spec.read_only or value == spec.default:
            continue
        if isinstance(spec.default, float) and isinstance(value, int):
            value = float(value)
        elif isinstance(spec.default, list):
            value = [type(spec.default[0])(v) for v in value] if spec.default else list(value)
        out[spec.name] = value
    window_range = P.PARAMS_BY_NAME["latency_window"].range
    out["latency_window"] = int(min(window_range[1], max(values["latency_window"], frames)))
    return out


def node_params(values: dict[str, Any], frames: int, input_qos: str) -> dict[str, Any]:
    """The node's parameters for a live run of ``frames`` frames with the given input QoS."""
    params = {**node_overrides(values, frames), "qos_reliability": input_qos}
    if input_qos == "reliable":  # a starved node shows as superseded, not as queue overflow
        params["qos_depth"] = max(values["qos_depth"], LIVE_INPUT_DEPTH)
    return params


def _first_image(path: str, camera: CameraTopics) -> Any:
    with DriveBag(path, camera.image_topic, camera.gt_topic) as reader:
        first = next(reader.frames(), None)
    return first.image if first is not None else None


def _notes(name: str, stats: dict[str, Any]) -> list[str]:
    notes = []
    if stats["transport_lost"] or stats["output_lost"]:
        notes.append(
            f"camera {name}: {stats['transport_lost']} frames never reached the node's callback and "
            f"{stats['output_lost']} labels never came back. Over shared memory with reliable QoS this means the "
            f"node's input queue ({stats['dds']['node_input_qos']}) overflowed while its executor was starved of "
            f"CPU (with best_effort input: DDS loss). Profile: {stats['dds']['fastdds_profile']}")
    if not stats["reconciliation"]["all_accounted"]:
        notes.append(f"camera {name}: frame accounting does not reconcile: {stats['reconciliation']}")
    return notes


def run_live(task: Task, values: dict[str, Any], options: LiveOptions) -> RunOutcome:
    """Replay the task's drive through one node (single-camera mode for one camera, ``cameras``
    for several) and hand back its cameras as a runner's outcome."""
    if task.start or task.stop is not None:
        raise ValueError("a live run replays whole drives; --chunk-frames is for offline runs")
    topics = list(task.cameras or find_cameras(task.path))
    single = len(topics) == 1
    with ExitStack() as stack:
        cameras = []
        for camera in topics:
            bag = stack.enter_context(DriveBag(task.path, camera.image_topic, camera.gt_topic))
            rate = (bag.info.image_count - 1) / bag.info.duration_s if bag.info.duration_s > 0 else 17.0
            ledger = Ledger(bag.info.image_count, options.outputs if single else None, rate)
            cameras.append(LiveCamera(None if single else camera.name, bag, ledger))
        longest = max(c.bag.info.image_count for c in cameras)
        stats = run_live_cameras(cameras, node_params(values, longest * len(cameras), options.input_qos),
                                 options.workdir, options.speed, options.domain_id, options.progress,
                                 threads=options.threads, seed=None if values["weights"] else options.seed)
        results = [camera_result(topic, camera.bag, camera.ledger, _first_image(task.path, topic),
                                 stages_ms=s["stages_ms"], live={k: s[k] for k in LIVE_KEYS})
                   for topic, camera, s in zip(topics, cameras, stats, strict=True)]
    first = stats[0]
    notes = [n for topic, s in zip(topics, stats, strict=True) for n in _notes(topic.name, s)]
    process = first["node_process"]
    if process["exit_code"] != 0:
        notes.append(f"seg_node exited with code {process['exit_code']} (log: {process['log']})")
    execution = {"runner": "live", "workers": 1, "elapsed_s": max(s["replay_s"] for s in stats),
                 "throughput_fps": sum(s["throughput_fps"] for s in stats),
                 "input_fps": sum(s["input_fps"] for s in stats), "speed": options.speed, "per_worker": []}
    frames = sum(len(r["records"]) for r in results)
    result = {"task_id": task.task_id, "cameras": results, "busy_s": execution["elapsed_s"], "frames": frames}
    live = {"node_process": process, "dds": first["dds"], "warmup_frames": first["warmup_frames"],
            "stages_ms": first["stages_ms"], "multi_camera": not single}
    return RunOutcome({task.task_id: result}, {}, {}, {task.task_id: 1}, execution, first["engine"], live, notes)

"""Live evaluation of ONE bag with several cameras through ONE multi-camera ``seg_node``.

The cameras are replayed together on the recorded schedule into a node started with the
``cameras`` parameter (:func:`.replay.run_live_cameras`), as it runs on a car. The outcome is
written as the many-drive report (:mod:`.fleet_report`) of one drive: mIoU per camera and pooled
(from the SUM of the per-camera confusion matrices), end-to-end latency per camera, and frame
accounting per camera that adds up, with the node's own reasons for the frames it dropped or
rejected. Reusing that report keeps one format for every evaluation of several cameras.
"""

from __future__ import annotations

import datetime
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..benchmark import machine_info
from ..engine import resolve_device
from . import fleet_report as FR
from . import report as R
from .bag_images import describe_input
from .bag_io import CameraTopics, DriveBag, find_cameras
from .evaluate import LABEL_PARAMS, node_overrides
from .fleet import STATUSES, Drive, add_accounting, drive_rows, frame_rows, merge_drive, pool
from .replay import LIVE_INPUT_DEPTH, Ledger, LiveCamera, check_model_classes, run_live_cameras

#: Per-camera live figures copied into the report (the rest of a camera's stats is per frame).
LIVE_KEYS = ("published", "results_received", "unexpected_outputs", "node_accounting", "transport_lost",
             "output_lost", "reconciliation", "node_end_to_end_ms", "throughput_fps", "input_fps", "replay_s")


@dataclass
class LiveCamerasOptions:
    """A live evaluation of the cameras of one bag (``eval --bag B`` when B has several cameras)."""

    bag: Path
    out: Path
    #: Camera names; None: every camera found by the naming convention.
    cameras: list[str] | None = None
    speed: float = 1.0
    domain_id: int | None = None
    seed: int = 0
    #: torch intra-op threads of the node; None keeps torch's default.
    threads: int | None = None
    progress: bool = True
    input_qos: str = "reliable"


def _first_input(bag: Path, camera: CameraTopics) -> dict[str, Any] | None:
    with DriveBag(bag, camera.image_topic, camera.gt_topic) as reader:
        first = next(reader.frames(), None)
    return describe_input(first.image) if first is not None else None


def _camera_result(camera: CameraTopics, bag: DriveBag, ledger: Ledger, stats: dict[str, Any],
                   source: Path) -> dict[str, Any]:
    """One camera in the shape :func:`.fleet.merge_drive` takes (a worker's task result)."""
    return {
        "camera": camera.name, "image_topic": bag.info.image_topic, "gt_topic": camera.gt_topic,
        "in_bag": bag.info.image_count, "input": _first_input(source, camera),
        "matrix": ledger.confusion.matrix,
        "records": [(r.index, r.stamp_ns, r.status, r.reason, r.latency_ms, r.pixel_accuracy)
                    for r in ledger.records],
        "unreadable": bag.pairing.unreadable_images, "gt_without_image": bag.pairing.gt_without_image,
        "notes": list(bag.pairing.notes), "stages_ms": stats["stages_ms"],
    }


def live_accounting(frames: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """A camera's frame accounting with the node's reasons: a frame that did not come back is only
    seen as absent here; the node's books (and the transport counts) say why. The totals are the
    node's, so the accounting adds up exactly when the node's books reconcile with the replay."""
    books = stats["node_accounting"]
    dropped = Counter(books["dropped"])
    for lost in ("transport_lost", "output_lost"):
        if stats[lost]:
            dropped[lost] = stats[lost]
    out = dict(frames)
    out["dropped"] = {"total": sum(dropped.values()), "by_reason": dict(dropped)}
    out["rejected"] = {"total": sum(books["rejected"].values()), "by_reason": dict(books["rejected"])}
    counted = out["evaluated"] + sum(out[s]["total"] for s in STATUSES[1:])
    out["all_accounted"] = (counted == out["read"] and out["in_bag"] == out["read"] + out["unreadable"]
                            and stats["reconciliation"]["all_accounted"])
    return out


def _notes(name: str, stats: dict[str, Any]) -> list[str]:
    notes = []
    if stats["transport_lost"] or stats["output_lost"]:
        notes.append(f"camera {name}: {stats['transport_lost']} frames never reached the node's callback and "
                     f"{stats['output_lost']} labels never came back (node input "
                     f"{stats['dds']['node_input_qos']}; see the single-camera notes in the README)")
    if not stats["reconciliation"]["all_accounted"]:
        notes.append(f"camera {name}: frame accounting does not reconcile: {stats['reconciliation']}")
    return notes


def evaluate_cameras_live(options: LiveCamerasOptions,
                          values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path]]:
    """Replay the bag's cameras through one multi-camera node and write the report; returns the
    report dict and the file paths."""
    check_model_classes(int(values["num_classes"]))
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    topics = find_cameras(options.bag, options.cameras)
    threads = torch.get_num_threads()
    with ExitStack() as stack:
        cameras = []
        for camera in topics:
            bag = stack.enter_context(DriveBag(options.bag, camera.image_topic, camera.gt_topic))
            cameras.append(LiveCamera(camera.name, bag, Ledger(out, bag.info.image_count, overlays=0)))
        longest = max(c.bag.info.image_count for c in cameras)
        params = {**node_overrides(values, longest * len(cameras)), "qos_reliability": options.input_qos}
        if options.input_qos == "reliable":  # as in the single-camera run: lag shows as superseded
            params["qos_depth"] = max(values["qos_depth"], LIVE_INPUT_DEPTH)
        try:
            stats = run_live_cameras(cameras, params, options.speed, options.domain_id, options.progress,
                                     threads=options.threads, seed=None if values["weights"] else options.seed)
        finally:
            torch.set_num_threads(threads)
        results = [_camera_result(t, c.bag, c.ledger, s, options.bag)
                   for t, c, s in zip(topics, cameras, stats, strict=True)]
    path = Path(options.bag).resolve()  # bags are often all called "bag": name it with its folder
    drive = merge_drive(Drive(f"{path.parent.name}/{path.name}" if path.parent.name else path.name,
                              str(options.bag)), [{"cameras": results}])
    notes: list[str] = []
    for name, camera_stats in zip((t.name for t in topics), stats, strict=True):
        camera = drive["cameras"][name]
        camera["frames"] = live_accounting(camera["frames"], camera_stats)
        camera["live"] = {k: camera_stats[k] for k in LIVE_KEYS}
        notes += [f"camera {name}: {n}" for n in camera["notes"]] + _notes(name, camera_stats)
    drive["frames"] = add_accounting([c["frames"] for c in drive["cameras"].values()])
    pooled = pool([drive])
    for name, camera in pooled["cameras"].items():
        camera["live"] = drive["cameras"][name]["live"]
    if not pooled["frames"]["all_accounted"]:
        notes.append("frame accounting does not add up (see the per-camera frames)")
    if not pooled["frames"]["evaluated"]:
        notes.append("no frame was evaluated: the accuracy numbers are undefined")
    first = stats[0]
    process = first["node_process"]
    if process["exit_code"] != 0:
        notes.append(f"seg_node exited with code {process['exit_code']} (log: {process['log']})")
    replay_s = max(s["replay_s"] for s in stats)
    rows = drive_rows([drive])
    for name, camera in rows[0]["cameras"].items():
        camera["live"] = drive["cameras"][name]["live"]
    report = {
        "schema_version": 1,
        "kind": "drives",
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": "live",
        "untrained": not values["weights"],
        "config": {k: v for k, v in values.items() if k not in LABEL_PARAMS},
        "engine": first["engine"],
        "versions": R.versions(),
        "machine": machine_info(resolve_device(values["device"])),
        "execution": {"runner": "live", "workers": 1, "elapsed_s": replay_s,
                      "throughput_fps": sum(s["throughput_fps"] for s in stats), "per_worker": [],
                      "cameras_requested": options.cameras, "speed": options.speed},
        "inputs": {"drives": 1, "transports": sorted({R.input_text(c["input"]) for c in drive["cameras"].values()})},
        "pooled": {k: pooled[k] for k in ("metrics", "frames", "latency_ms", "drives_ok", "drives_failed")},
        "cameras": pooled["cameras"],
        "tags": pooled["tags"],
        "drives": rows,
        "live": {"node_process": process, "dds": first["dds"], "warmup_frames": first["warmup_frames"],
                 "stages_ms": first["stages_ms"]},
        "notes": notes,
        "files": {"plots": dict(FR.PLOTS), "frames_csv": FR.FRAMES_CSV},
    }
    paths = FR.write_report(report, frame_rows([drive]), out)
    return R.json_safe(report), paths

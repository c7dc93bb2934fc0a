"""Offline evaluation of many drives: which drives, how they are cut into tasks, what a worker
does with a task, and how the driver pools the results.

The unit of work is a :class:`Task`: one drive (all its cameras), or, with ``chunk_frames``, a
range of frame indices of one camera of a drive. A worker evaluates a task with the engine it
keeps (:func:`run_task`) and sends back only what the report needs: one 19x19 confusion matrix
per camera and one small record per frame, never images. The driver adds the matrices up
(:func:`pool`), so pooled mIoU is computed from the SUM of the per-drive confusion matrices and is
exactly what a single process evaluating every frame would compute, however the drives were split.

The same functions run in this process (:func:`run_local`) or on Ray workers (``ray_runner``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .. import params as P
from ..stats import percentiles
from .bag_images import describe_input
from .bag_io import BagError, BagFrame, CameraTopics, DriveBag, find_cameras
from .metrics import NUM_CLASSES, summarize
from .replay import Ledger, run_offline

#: Failures that the same input would repeat: reported at once, never retried.
DATA_ERRORS = (BagError, FileNotFoundError)
#: Longest reason or name echoed back from user input or a failing worker.
MAX_TEXT = 300
UNTAGGED = "(untagged)"


class DriveListError(ValueError):
    """The list of drives or the tags file is unusable; the message says which entry and why."""


def clip(text: str, limit: int = MAX_TEXT) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- which drives ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Drive:
    name: str
    path: str
    tags: dict[str, str] = field(default_factory=dict)


def _is_bag(path: Path) -> bool:
    return (path / "metadata.yaml").is_file() or path.suffix in (".mcap", ".db3")


def _expand(entry: Path) -> list[Path]:
    """A bag, or every bag below a folder (any depth, not looking inside bags), in path order."""
    if not entry.exists():
        raise DriveListError(f"bag not found: {clip(str(entry))}")
    if _is_bag(entry):
        return [entry]
    bags = sorted(p.parent for p in entry.rglob("metadata.yaml")) if entry.is_dir() else []
    bags = [b for b in bags if not any(parent in bags for parent in b.parents)]
    if not bags:
        raise DriveListError(f"{clip(str(entry))} is neither a rosbag2 bag (no metadata.yaml) nor a folder of bags")
    return bags


def collect_drives(bags: Sequence[str] = (), bags_from: str | None = None) -> list[Drive]:
    """The drives of ``--bag`` entries (bags or folders of bags) and a ``--bags-from`` list file
    (one path per line, ``#`` comments, relative paths from the file's folder), in order."""
    entries = [Path(b) for b in bags]
    if bags_from:
        listing = Path(bags_from)
        if not listing.is_file():
            raise DriveListError(f"--bags-from file not found: {clip(bags_from)}")
        for line in listing.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                path = Path(line)
                entries.append(path if path.is_absolute() else listing.parent / path)
    if not entries:
        raise DriveListError("no drive given: use --bag (repeatable), a folder of bags, or --bags-from")
    paths: list[Path] = []
    for entry in entries:
        paths += _expand(entry)
    resolved = [p.resolve() for p in paths]
    dupes = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if dupes:
        raise DriveListError(f"drive listed twice: {clip(', '.join(dupes))}")
    names = [p.name for p in paths]
    return [Drive(name if names.count(name) == 1 else f"{p.parent.name}/{name}", str(p))
            for p, name in zip(paths, names, strict=True)]


def load_tags(path: str, drives: list[Drive]) -> tuple[list[Drive], list[str]]:
    """Attach ``tags.yaml`` (bag -> {key: value}) to the drives; returns them and notes.

    A key matches a drive by its path (as given, absolute, or relative to the tags file) or its
    name in the report (the bag folder's name, with its parent when two bags share a name). Tags of bags that
    are not evaluated are noted, not an error (one tags file serves many runs).
    """
    file = Path(path)
    if not file.is_file():
        raise DriveListError(f"tags file not found: {clip(path)}")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DriveListError(f"tags file {clip(path)} is not valid YAML: {clip(str(exc))}") from None
    if not isinstance(data, dict):
        raise DriveListError(f"tags file {clip(path)} must map bag -> {{key: value}}, got {type(data).__name__}")
    used: set[str] = set()
    tagged = []
    for drive in drives:
        keys = (drive.path, str(Path(drive.path).resolve()), drive.name)
        match = next((k for k in data if str(k) in keys or str(Path(file.parent, str(k)).resolve()) == keys[1]), None)
        tags = {}
        if match is not None:
            used.add(match)
            value = data[match]
            if not isinstance(value, dict):
                raise DriveListError(f"tags of {clip(str(match))} must be a mapping {{key: value}}, "
                                     f"got {clip(repr(value))}")
            tags = {clip(str(k), 60): clip(str(v), 60) for k, v in value.items()}
        tagged.append(Drive(drive.name, drive.path, tags))
    notes = []
    unused = [str(k) for k in data if k not in used]
    if unused:
        notes.append(clip(f"{len(unused)} tagged bags are not in this evaluation: {', '.join(unused)}"))
    return tagged, notes


# -- tasks ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """Frames ``[start, stop)`` (stop None: to the end) of ``cameras`` (None: all) of a drive."""

    task_id: int
    drive: int
    path: str
    cameras: tuple[str, ...] | None
    start: int = 0
    stop: int | None = None
    #: Frames the task covers per camera when known (metadata), for the progress bar.
    frames: int = 0


def _camera_counts(path: str, cameras: Sequence[str] | None) -> list[tuple[CameraTopics, int]]:
    out = []
    for camera in find_cameras(path, cameras):
        with DriveBag(path, camera.image_topic, camera.gt_topic) as bag:
            out.append((camera, bag.info.image_count))
    return out


def plan_tasks(drives: list[Drive], cameras: Sequence[str] | None = None,
               chunk_frames: int = 0) -> tuple[list[Task], dict[int, str]]:
    """Tasks for the drives, and drives that cannot be planned (unreadable) with the reason.

    Only bag metadata is read here (for frame counts and cameras); pixels are read by workers.
    """
    tasks: list[Task] = []
    unplanned: dict[int, str] = {}
    for index, drive in enumerate(drives):
        try:
            counts = _camera_counts(drive.path, cameras)
        except DATA_ERRORS as exc:
            unplanned[index] = clip(f"{type(exc).__name__}: {exc}")
            continue
        if chunk_frames <= 0:
            tasks.append(Task(len(tasks), index, drive.path, tuple(cameras) if cameras else None, 0, None,
                              sum(n for _, n in counts)))
            continue
        for camera, count in counts:
            for start in range(0, max(count, 1), chunk_frames):
                stop = start + chunk_frames if start + chunk_frames < count else None
                tasks.append(Task(len(tasks), index, drive.path, (camera.name,), start, stop,
                                  (stop or count) - start))
    return tasks, unplanned


# -- what a worker does ---------------------------------------------------------------------------

class _FrameRange:
    """The part of a :class:`DriveBag` a task covers, shaped like the bag for ``run_offline``;
    calls ``on_frame`` after each frame is done."""

    def __init__(self, bag: DriveBag, start: int, stop: int | None, on_frame: Callable[[], None]) -> None:
        self.bag, self.info, self.start, self.stop, self.on_frame = bag, bag.info, start, stop, on_frame
        self.first_image: Any = None

    def frames(self) -> Iterator[BagFrame]:
        for frame in self.bag.frames():
            if frame.index < self.start:
                continue
            if self.stop is not None and frame.index >= self.stop:
                return
            if self.first_image is None:
                self.first_image = frame.image
            yield frame
            self.on_frame()


def build_engine(values: dict[str, Any], seed: int = 0) -> Any:
    """The engine of a worker: random weights seeded like a single-process run, so every worker
    of an untrained run holds the same network."""
    import torch

    from ..engine import SegmentationEngine

    torch.manual_seed(seed)
    return SegmentationEngine(P.engine_config(values))


def run_task(engine: Any, task: Task, max_pixels: int, on_frame: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Evaluate a task with ``engine``: per camera, the confusion matrix, per-frame records and
    frame accounting. Small enough to send back to the driver (no pixels)."""
    started = time.perf_counter()
    cameras = []
    for camera in find_cameras(task.path, task.cameras):
        with DriveBag(task.path, camera.image_topic, camera.gt_topic) as bag:
            view = _FrameRange(bag, task.start, task.stop, on_frame)
            ledger = Ledger(Path("."), 0, overlays=0)
            timing = run_offline(view, engine, ledger, max_pixels, progress=False)
            last = task.stop is None  # only the task that reads to the end sees the bag's tail
            cameras.append({
                "camera": camera.name, "image_topic": bag.info.image_topic, "gt_topic": camera.gt_topic,
                "in_bag": bag.info.image_count,
                "input": describe_input(view.first_image) if view.first_image is not None else None,
                "matrix": ledger.confusion.matrix,
                "records": [(r.index, r.stamp_ns, r.status, r.reason, r.latency_ms, r.pixel_accuracy)
                            for r in ledger.records],
                "unreadable": bag.pairing.unreadable_images if last else 0,
                "gt_without_image": bag.pairing.gt_without_image if last else 0,
                "notes": list(bag.pairing.notes) if last else [],
                "stages_ms": timing["stages_ms"],
            })
    return {"task_id": task.task_id, "cameras": cameras, "busy_s": time.perf_counter() - started,
            "frames": sum(len(c["records"]) for c in cameras)}


# -- pooling on the driver -------------------------------------------------------------------------

RECORD_FIELDS = ("index", "stamp_ns", "status", "reason", "latency_ms", "pixel_accuracy")
STATUSES = ("evaluated", "not_evaluated", "dropped", "rejected")


def _accounting(records: list[tuple], in_bag: int, unreadable: int, gt_without_image: int) -> dict[str, Any]:
    groups: dict[str, Counter] = {s: Counter() for s in STATUSES}
    for record in records:
        groups[record[2]][record[3] or "unattributed"] += 1
    read = len(records)
    out: dict[str, Any] = {"in_bag": in_bag, "read": read, "evaluated": sum(groups["evaluated"].values())}
    for status in STATUSES[1:]:
        out[status] = {"total": sum(groups[status].values()), "by_reason": dict(groups[status])}
    out["unreadable"] = unreadable
    out["gt_without_image"] = gt_without_image
    out["all_accounted"] = (read == out["evaluated"] + sum(out[s]["total"] for s in STATUSES[1:])
                            and in_bag == read + unreadable)
    return out


def add_accounting(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Frame accounting of several cameras or drives added up."""
    out: dict[str, Any] = {"in_bag": 0, "read": 0, "evaluated": 0, "unreadable": 0, "gt_without_image": 0}
    for status in STATUSES[1:]:
        out[status] = {"total": 0, "by_reason": Counter()}
    for part in parts:
        for key in ("in_bag", "read", "evaluated", "unreadable", "gt_without_image"):
            out[key] += part[key]
        for status in STATUSES[1:]:
            out[status]["total"] += part[status]["total"]
            out[status]["by_reason"].update(part[status]["by_reason"])
    for status in STATUSES[1:]:
        out[status]["by_reason"] = dict(out[status]["by_reason"])
    out["all_accounted"] = all(p["all_accounted"] for p in parts)
    return out


def _headline(matrix: np.ndarray) -> dict[str, Any]:
    full = summarize(matrix)
    return {k: full[k] for k in ("miou", "category_miou", "pixel_accuracy", "evaluated_pixels")}


def merge_drive(drive: Drive, results: list[dict[str, Any]]) -> dict[str, Any]:
    """One drive's task results (chunks, any order) -> its per-camera and whole-drive numbers."""
    by_camera: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        for cam in result["cameras"]:
            by_camera.setdefault(cam["camera"], []).append(cam)
    cameras: dict[str, Any] = {}
    for name in sorted(by_camera):
        parts = by_camera[name]
        matrix = sum((np.asarray(p["matrix"], dtype=np.int64) for p in parts),
                     np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
        records = sorted((r for p in parts for r in p["records"]), key=lambda r: r[0])
        latency = [r[4] for r in records if r[4] is not None]
        cameras[name] = {
            "image_topic": parts[0]["image_topic"], "gt_topic": parts[0]["gt_topic"],
            "input": next((p["input"] for p in parts if p["input"]), None),
            "matrix": matrix, "records": records,
            "frames": _accounting(records, parts[0]["in_bag"], sum(p["unreadable"] for p in parts),
                                  sum(p["gt_without_image"] for p in parts)),
            "latency_ms": percentiles(latency),
            "stages_ms": parts[0]["stages_ms"] if len(parts) == 1 else None,
            "notes": [n for p in parts for n in p["notes"]],
        }
    matrix = sum((c["matrix"] for c in cameras.values()), np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
    return {"name": drive.name, "path": drive.path, "tags": drive.tags, "status": "ok", "matrix": matrix,
            "cameras": cameras, "frames": add_accounting([c["frames"] for c in cameras.values()])}


def failed_drive(drive: Drive, reason: str, attempts: int, retries: Sequence[str] = ()) -> dict[str, Any]:
    """A drive left out of the pooled numbers: the final reason and every earlier attempt's."""
    return {"name": drive.name, "path": drive.path, "tags": drive.tags, "status": "failed",
            "reason": clip(reason), "attempts": attempts, "retries": [clip(r) for r in retries]}


def pool(drives: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled, per-camera and per-tag numbers, all from SUMS of confusion matrices."""
    ok = [d for d in drives if d["status"] == "ok"]
    zero = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    matrix = sum((d["matrix"] for d in ok), zero)
    latency = [r[4] for d in ok for c in d["cameras"].values() for r in c["records"] if r[4] is not None]
    cameras: dict[str, Any] = {}
    for name in sorted({c for d in ok for c in d["cameras"]}):
        parts = [d["cameras"][name] for d in ok if name in d["cameras"]]
        cam_matrix = sum((p["matrix"] for p in parts), zero)
        cameras[name] = {
            "drives": len(parts), "metrics": summarize(cam_matrix),
            "frames": add_accounting([p["frames"] for p in parts]),
            "latency_ms": percentiles([r[4] for p in parts for r in p["records"] if r[4] is not None]),
        }
    tags: dict[str, dict[str, Any]] = {}
    for key in sorted({k for d in drives for k in d["tags"]}):
        values: dict[str, dict[str, Any]] = {}
        for value in sorted({d["tags"].get(key, UNTAGGED) for d in drives}):
            members = [d for d in drives if d["tags"].get(key, UNTAGGED) == value]
            members_ok = [d for d in members if d["status"] == "ok"]
            tag_matrix = sum((d["matrix"] for d in members_ok), zero)
            values[value] = {"drives": len(members), "failed_drives": len(members) - len(members_ok),
                             "frames": sum(d["frames"]["evaluated"] for d in members_ok),
                             **_headline(tag_matrix)}
        tags[key] = values
    return {
        "metrics": summarize(matrix),
        "frames": add_accounting([d["frames"] for d in ok]) if ok else add_accounting([]),
        "latency_ms": percentiles(latency),
        "cameras": cameras,
        "tags": tags,
        "drives_ok": len(ok),
        "drives_failed": len(drives) - len(ok),
    }


def drive_rows(drives: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-drive table of report.json (numbers only, no per-frame records)."""
    rows = []
    for d in drives:
        if d["status"] != "ok":
            rows.append({k: d[k] for k in ("name", "path", "tags", "status", "reason", "attempts", "retries")})
            continue
        rows.append({
            "name": d["name"], "path": d["path"], "tags": d["tags"], "status": "ok",
            "attempts": d.get("attempts", 1), "retries": d.get("retries", []),
            **_headline(d["matrix"]), "confusion_matrix": d["matrix"].tolist(), "frames": d["frames"],
            "cameras": {name: {"image_topic": c["image_topic"], "gt_topic": c["gt_topic"], "input": c["input"],
                               **_headline(c["matrix"]), "confusion_matrix": c["matrix"].tolist(),
                               "frames": c["frames"], "latency_ms": c["latency_ms"], "stages_ms": c["stages_ms"]}
                        for name, c in d["cameras"].items()},
        })
    return rows


def frame_rows(drives: list[dict[str, Any]]) -> Iterator[list[Any]]:
    """Per-frame CSV rows: drive, camera, and the record fields."""
    for d in drives:
        if d["status"] != "ok":
            continue
        for name, cam in d["cameras"].items():
            for record in cam["records"]:
                yield [d["name"], name, *("" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                                          for v in record)]


# -- in-process runner ---------------------------------------------------------------------------

@dataclass
class RunOutcome:
    """What a runner hands back: results per task, failures per task, and how it ran."""

    results: dict[int, dict[str, Any]]
    failures: dict[int, tuple[str, int]]
    retries: dict[int, list[str]]
    attempts: dict[int, int]
    execution: dict[str, Any]
    engine: dict[str, Any] | None


def run_local(tasks: list[Task], values: dict[str, Any], seed: int = 0, progress: bool = True) -> RunOutcome:
    """Every task in this process with one engine, one after the other."""
    from tqdm import tqdm

    engine = build_engine(values, seed)
    bar = tqdm(total=sum(t.frames for t in tasks), desc="eval drives", unit="frame", disable=not progress)
    results, failures = {}, {}
    start = time.perf_counter()
    for task in tasks:
        try:
            results[task.task_id] = run_task(engine, task, values["max_pixels"], lambda: bar.update(1))
        except Exception as exc:  # a broken drive is reported, the others go on
            failures[task.task_id] = (clip(f"{type(exc).__name__}: {exc}"), 1)
    bar.close()
    elapsed = time.perf_counter() - start
    frames = sum(r["frames"] for r in results.values())
    busy = sum(r["busy_s"] for r in results.values())
    worker = {"worker": 0, "pid": None, "node": "driver", "tasks": len(results), "frames": frames, "busy_s": busy,
              "fps": frames / busy if busy > 0 else 0.0}
    execution = {"runner": "local", "workers": 1, "elapsed_s": elapsed,
                 "throughput_fps": frames / elapsed if elapsed > 0 else 0.0, "per_worker": [worker]}
    return RunOutcome(results, failures, {}, {t.task_id: 1 for t in tasks}, execution, engine.description)

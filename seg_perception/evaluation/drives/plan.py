"""Which drives an evaluation covers, their tags, and how they are cut into tasks.

The unit of work is a :class:`Task`: one drive (all its cameras), or, with ``chunk_frames``, a
range of frame indices of one camera of a drive. Planning reads bag metadata only (cameras and
frame counts); pixels are read by whoever runs the task (:mod:`.task`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ...text import bounded
from ..bag_io import BagError, CameraTopics, DriveBag, select_cameras

#: Failures that the same input would repeat: reported at once, never retried.
DATA_ERRORS = (BagError, FileNotFoundError)
#: Longest reason or name echoed back from user input or a failing worker.
MAX_TEXT = 300


class DriveListError(ValueError):
    """The list of drives or the tags file is unusable; the message says which entry and why."""


def clip(text: object) -> str:
    return bounded(text, MAX_TEXT)


@dataclass(frozen=True)
class Drive:
    """A bag to evaluate: its name in the report, its path, and its tags (``city: aachen``)."""

    name: str
    path: str
    tags: dict[str, str] = field(default_factory=dict)


def drive_of(path: str | Path) -> Drive:
    """One bag as a drive, named by its folder and that folder's parent (bags are often all
    called ``bag``)."""
    resolved = Path(path).resolve()
    name = f"{resolved.parent.name}/{resolved.name}" if resolved.parent.name else resolved.name
    return Drive(name, str(path))


def _is_bag(path: Path) -> bool:
    return (path / "metadata.yaml").is_file() or path.suffix in (".mcap", ".db3")


def _expand(entry: Path) -> list[Path]:
    """A bag, or every bag below a folder (any depth, not looking inside bags), in path order."""
    if not entry.exists():
        raise DriveListError(f"bag not found: {clip(entry)}")
    if _is_bag(entry):
        return [entry]
    bags = sorted(p.parent for p in entry.rglob("metadata.yaml")) if entry.is_dir() else []
    bags = [b for b in bags if not any(parent in bags for parent in b.parents)]
    if not bags:
        raise DriveListError(f"{clip(entry)} is neither a rosbag2 bag (no metadata.yaml) nor a folder of bags")
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
    name in the report (the bag folder's name, with its parent when two bags share a name). Tags of
    bags that are not evaluated are noted, not an error (one tags file serves many runs).
    """
    file = Path(path)
    if not file.is_file():
        raise DriveListError(f"tags file not found: {clip(path)}")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DriveListError(f"tags file {clip(path)} is not valid YAML: {clip(exc)}") from None
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
                raise DriveListError(f"tags of {clip(match)} must be a mapping {{key: value}}, got {clip(repr(value))}")
            tags = {bounded(k, 60): bounded(v, 60) for k, v in value.items()}
        tagged.append(Drive(drive.name, drive.path, tags))
    notes = []
    unused = [str(k) for k in data if k not in used]
    if unused:
        notes.append(clip(f"{len(unused)} tagged bags are not in this evaluation: {', '.join(unused)}"))
    return tagged, notes


@dataclass(frozen=True)
class Task:
    """Frames ``[start, stop)`` (stop None: to the end) of ``cameras`` (None: every camera found
    in the bag) of a drive."""

    task_id: int
    drive: int
    path: str
    cameras: tuple[CameraTopics, ...] | None
    start: int = 0
    stop: int | None = None
    #: Frames the task covers per camera when known (metadata), for the progress bar.
    frames: int = 0


def _camera_counts(path: str, cameras: Sequence[str] | None, topics: tuple[str, str | None] | None,
                   need_gt: bool) -> list[tuple[CameraTopics, int]]:
    out = []
    for camera in select_cameras(path, cameras, topics, need_gt):
        with DriveBag(path, camera.image_topic, camera.gt_topic) as bag:
            out.append((camera, bag.info.image_count))
    return out


def plan_tasks(drives: list[Drive], cameras: Sequence[str] | None = None, chunk_frames: int = 0,
               topics: tuple[str, str | None] | None = None,
               need_gt: bool = True) -> tuple[list[Task], dict[int, Exception]]:
    """Tasks for the drives, and drives that cannot be planned (unreadable) with the error.

    ``cameras`` picks cameras by name, ``topics`` (image topic, ground-truth topic) names one
    camera's topics explicitly; neither: every camera of the bag. ``need_gt=False`` plans the
    cameras' images alone (ground truth None), for work that needs none (mining).
    """
    tasks: list[Task] = []
    unplanned: dict[int, Exception] = {}
    for index, drive in enumerate(drives):
        try:
            counts = _camera_counts(drive.path, cameras, topics, need_gt)
        except DATA_ERRORS as exc:
            unplanned[index] = exc
            continue
        if chunk_frames <= 0:
            tasks.append(Task(len(tasks), index, drive.path, tuple(c for c, _ in counts), 0, None,
                              sum(n for _, n in counts)))
            continue
        for camera, count in counts:
            for start in range(0, max(count, 1), chunk_frames):
                stop = start + chunk_frames if start + chunk_frames < count else None
                tasks.append(Task(len(tasks), index, drive.path, (camera,), start, stop, (stop or count) - start))
    return tasks, unplanned

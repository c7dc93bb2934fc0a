"""Offline evaluation of many drives (several bags, cameras, tags or Ray workers) into ONE report.

Plans tasks from the drives (:mod:`.fleet`), runs them in this process or on Ray
(:mod:`.ray_runner`), turns every drive into ok-with-numbers or failed-with-a-reason, pools the
confusion matrices and writes the report (:mod:`.fleet_report`).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..benchmark import machine_info
from ..engine import resolve_device
from . import fleet_report as FR
from . import report as R
from .evaluate import LABEL_PARAMS
from .fleet import (
    Drive,
    RunOutcome,
    Task,
    clip,
    drive_rows,
    failed_drive,
    frame_rows,
    merge_drive,
    plan_tasks,
    pool,
    run_local,
)
from .ray_runner import Progress, RayOptions
from .replay import check_model_classes


@dataclass
class DrivesOptions:
    """A many-drive offline evaluation (``eval`` with several bags, cameras, tags or workers)."""

    drives: list[Drive]
    out: Path
    #: Camera names to evaluate; None: every camera found in each bag.
    cameras: list[str] | None = None
    #: Split drives into tasks of at most this many frames per camera; 0: one task per drive.
    chunk_frames: int = 0
    #: None: this process; otherwise run on Ray with these options.
    ray: RayOptions | None = None
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    notes: list[str] = field(default_factory=list)


def _progress_bar(total: int, enabled: bool) -> tuple[Any, Any]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc="eval drives", unit="frame", disable=not enabled)

    def update(progress: Any) -> None:
        bar.n = progress.done_frames
        bar.set_postfix(workers_busy=len(progress.in_flight), refresh=False)
        bar.refresh()

    return bar, update


def evaluate_drives(options: DrivesOptions, values: dict[str, Any],
                    on_progress: Callable[[Progress], None] | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate many drives offline (in this process or on Ray) and write one pooled report.

    ``on_progress`` (Ray only) is called with :class:`~.ray_runner.Progress` on every poll, after
    the progress bar.
    """
    check_model_classes(int(values["num_classes"]))
    if options.chunk_frames < 0:
        raise ValueError(f"--chunk-frames must be >= 0, got {options.chunk_frames}")
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        tasks, unplanned = plan_tasks(options.drives, options.cameras, options.chunk_frames)
        if options.ray is None:
            outcome = run_local(tasks, values, options.seed, options.progress)
        else:
            from .ray_runner import run_on_ray

            bar, update = _progress_bar(sum(t.frames for t in tasks), options.progress)

            def progress(p: Progress) -> None:
                update(p)
                if on_progress is not None:
                    on_progress(p)

            try:
                outcome = run_on_ray(tasks, values, options.ray, progress)
            finally:
                bar.close()
    finally:
        torch.set_num_threads(threads)
    drives = _drive_outcomes(options.drives, tasks, unplanned, outcome)
    pooled = pool(drives)
    notes = list(options.notes)
    for d in drives:
        if d["status"] != "ok":
            notes.append(clip(f"drive {d['name']} FAILED and is not in the pooled numbers: {d['reason']}"))
        else:
            notes += [clip(f"drive {d['name']}, camera {cam}: {n}")
                      for cam, c in d["cameras"].items() for n in c["notes"]]
    if not pooled["frames"]["all_accounted"]:
        notes.append("frame accounting does not add up (see the per-drive frames)")
    if not pooled["frames"]["evaluated"]:
        notes.append("no frame was evaluated: the accuracy numbers are undefined")
    transports = sorted({R.input_text(c["input"])
                         for d in drives if d["status"] == "ok" for c in d["cameras"].values()})
    execution = {**outcome.execution, "chunk_frames": options.chunk_frames, "tasks": len(tasks),
                 "cameras_requested": options.cameras}
    report = {
        "schema_version": 1,
        "kind": "drives",
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": "offline",
        "untrained": not values["weights"],
        "config": {k: v for k, v in values.items() if k not in LABEL_PARAMS},
        "engine": outcome.engine,
        "versions": R.versions(),
        "machine": machine_info(resolve_device(values["device"])),
        "execution": execution,
        "inputs": {"drives": len(drives), "transports": transports or ["-"]},
        "pooled": {k: pooled[k] for k in ("metrics", "frames", "latency_ms", "drives_ok", "drives_failed")},
        "cameras": pooled["cameras"],
        "tags": pooled["tags"],
        "drives": drive_rows(drives),
        "notes": notes,
        "files": {"plots": dict(FR.PLOTS), "frames_csv": FR.FRAMES_CSV},
    }
    paths = FR.write_report(report, frame_rows(drives), out)
    return R.json_safe(report), paths


def _drive_outcomes(drives: list[Drive], tasks: list[Task], unplanned: dict[int, str],
                    outcome: RunOutcome) -> list[dict[str, Any]]:
    """Every drive ends ok (all its tasks came back) or failed with the first reason."""
    out = []
    for index, drive in enumerate(drives):
        if index in unplanned:
            out.append(failed_drive(drive, unplanned[index], 0))
            continue
        mine = [t for t in tasks if t.drive == index]
        failed = [t for t in mine if t.task_id in outcome.failures]
        attempts = max((outcome.attempts.get(t.task_id, 0) for t in mine), default=0)
        retries = [r for t in mine for r in outcome.retries.get(t.task_id, [])]
        if failed:
            reason, tries = outcome.failures[failed[0].task_id]
            out.append(failed_drive(drive, reason, tries, retries))
            continue
        merged = merge_drive(drive, [outcome.results[t.task_id] for t in mine])
        merged["attempts"] = attempts
        merged["retries"] = retries
        out.append(merged)
    return out

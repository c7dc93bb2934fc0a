"""One mining run: drives -> tasks -> a runner scores every frame -> selection -> the output folder.

The drives, tasks and runners are the evaluation's: :func:`~seg_perception.evaluation.drives.plan.plan_tasks`
(cameras' images alone: no ground truth needed), :func:`~seg_perception.evaluation.drives.local.run_local`
or :func:`~seg_perception.evaluation.drives.ray_runner.run_on_ray` with mining's
:func:`~.job.score_task` as the job. As in evaluation, a drive that cannot be read or whose task
fails is reported with its reason and left out, the others are mined; when the only drive asked
for cannot be read, its error is raised.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..benchmark import machine_info
from ..engine import resolve_device
from ..evaluation.drives.local import RunOutcome, run_local, torch_threads
from ..evaluation.drives.plan import Drive, Task, clip
from ..evaluation.drives.ray_runner import Progress, RayOptions
from ..evaluation.drives.task import build_engine
from ..evaluation.evaluate import check_model_classes
from ..evaluation.report import json_safe
from .export import CSV_NAME, SHEET_NAME, SUMMARY_NAME, MiningError, export, written_files
from .job import ScoreSettings, score_task
from .scores import DEFAULT_SCORE, check_score
from .select import DEFAULT_MAX_SIMILARITY, DEFAULT_MIN_GAP_S, Candidate, check_settings, select

TIE_BREAK = ("higher score first; equal scores: the drive given first, then the camera name, then the "
             "earlier frame index")


@dataclass
class MineOptions:
    """What to mine and how."""

    out: Path
    drives: list[Drive]
    top: int
    score: str = DEFAULT_SCORE
    min_gap_s: float = DEFAULT_MIN_GAP_S
    max_similarity: float = DEFAULT_MAX_SIMILARITY
    #: Camera names; None: every camera (``/<cam>/image_raw[/compressed]``) of each bag.
    cameras: list[str] | None = None
    #: One camera's image topic, when it does not follow the naming convention.
    image_topic: str | None = None
    #: Split drives into tasks of at most this many frames per camera; 0: whole drives.
    chunk_frames: int = 0
    #: Score on Ray with these options; None: in this process.
    ray: RayOptions | None = None
    seed: int = 0
    #: torch intra-op threads in this process; None keeps torch's default.
    threads: int | None = None
    progress: bool = True
    #: Replace a previous mining run's output in ``out`` (its pseudo-labels may have been corrected).
    overwrite: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class MineResult:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    paths: dict[str, Path]


def prepare_out(out: Path, overwrite: bool) -> None:
    """Make ``out`` ready: new or empty, or a previous mining run's output replaced with ``overwrite``.
    Anything else is refused, so neither unrelated files nor corrected labels are lost by mistake."""
    if out.exists() and not out.is_dir():
        raise MiningError(f"--out {clip(out)} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / SUMMARY_NAME).is_file():
            raise MiningError(f"--out {clip(out)} is not empty and holds no earlier mining run; choose a new folder")
        if not overwrite:
            raise MiningError(f"--out {clip(out)} holds an earlier mining run (its pseudo-labels may have been "
                              f"corrected since); pass --overwrite to replace it, or choose a new folder")
        for path in written_files(out):
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def mine(options: MineOptions, values: dict[str, Any],
         on_progress: Callable[[Progress], None] | None = None) -> MineResult:
    """Mine the drives into ``options.out``; see the module docstring. ``values`` are node
    parameters (:func:`seg_perception.evaluation.evaluate.resolve_params`); ``on_progress`` (Ray
    only) is called with :class:`~seg_perception.evaluation.drives.ray_runner.Progress` on every poll."""
    with torch_threads(options.threads if options.ray is None else None):
        return _mine(options, values, on_progress)


def _mine(options: MineOptions, values: dict[str, Any],
          on_progress: Callable[[Progress], None] | None) -> MineResult:
    from ..evaluation.drives.plan import plan_tasks

    check_score(options.score)
    check_settings(options.top, options.min_gap_s, options.max_similarity)
    if options.chunk_frames < 0:
        raise ValueError(f"--chunk-frames must be >= 0, got {options.chunk_frames}")
    if not options.drives:
        raise ValueError("no drive to mine")
    check_model_classes(int(values["num_classes"]))
    if not values["weights"]:
        raise MiningError("mining needs a trained model: an untrained network is unsure of everything; "
                          "pass --weights CHECKPOINT (or set 'weights' in --config)")
    out = Path(options.out)
    prepare_out(out, options.overwrite)
    drives = options.drives
    topics = (options.image_topic, None) if options.image_topic else None
    tasks, unplanned = plan_tasks(drives, options.cameras, options.chunk_frames, topics, need_gt=False)
    if len(drives) == 1 and unplanned:  # the one bag asked for cannot be read: say why
        raise unplanned[0]
    torch.manual_seed(options.seed)
    began = time.perf_counter()
    job = partial(score_task, settings=ScoreSettings(options.score))
    outcome = _run(options, values, tasks, job, on_progress)
    statuses = _drive_statuses(drives, tasks, unplanned, outcome)
    ok = {i for i, s in enumerate(statuses) if s["status"] == "ok"}
    results = [outcome.results[t.task_id] for t in tasks if t.drive in ok]
    candidates: list[Candidate] = [c for r in results for c in r["candidates"]]
    selection = select(candidates, options.top, options.min_gap_s, options.max_similarity)
    rows: list[dict[str, Any]] = []
    if selection.chosen:
        engine = build_engine(values, options.seed)
        rows = export(out, selection.chosen, drives, engine, values["max_pixels"], options.progress)
    summary = _summary(options, values, outcome, statuses, results, candidates, selection, rows,
                       time.perf_counter() - began)
    paths = {"out": out, "csv": out / CSV_NAME, "contact_sheet": out / SHEET_NAME, "summary": out / SUMMARY_NAME}
    paths["summary"].write_text(json.dumps(json_safe(summary), indent=2) + "\n")
    if not selection.chosen:
        failed = [f"{s['name']}: {s['reason']}" for s in statuses if s["status"] != "ok"]
        raise MiningError("no frame could be scored" + (": " + clip("; ".join(failed)) if failed else
                                                        f" (see {paths['summary']})"))
    return MineResult(rows, summary, paths)


def _run(options: MineOptions, values: dict[str, Any], tasks: list[Task], job: Callable[..., dict[str, Any]],
         on_progress: Callable[[Progress], None] | None) -> RunOutcome:
    if options.ray is None:
        return run_local(tasks, values, options.seed, options.progress, job=job, desc="mine")
    from ..evaluation.drives.ray_runner import run_on_ray_with_bar

    return run_on_ray_with_bar(tasks, values, options.ray, "mine (Ray)", options.progress, on_progress, job)


def _drive_statuses(drives: list[Drive], tasks: list[Task], unplanned: dict[int, Exception],
                    outcome: RunOutcome) -> list[dict[str, Any]]:
    """Every drive ends ok (all its tasks came back) or failed with the first reason."""
    out = []
    for index, drive in enumerate(drives):
        entry: dict[str, Any] = {"name": drive.name, "path": drive.path, "status": "ok", "reason": None}
        mine = [t for t in tasks if t.drive == index]
        failure = outcome.drive_failure(mine)
        if index in unplanned:
            exc = unplanned[index]
            entry.update(status="failed", reason=clip(f"{type(exc).__name__}: {exc}"))
        elif failure is not None:
            entry.update(status="failed", reason=failure[0])
        else:
            cameras: dict[str, dict[str, Any]] = {}
            for task in mine:
                for name, cam in outcome.results[task.task_id]["cameras"].items():
                    merged = cameras.setdefault(name, {"topic": cam["topic"], "frames": 0, "notes": []})
                    merged["frames"] += cam["frames"]
                    merged["notes"] += [n for n in cam["notes"] if n not in merged["notes"]]
            entry["cameras"] = cameras
            entry["frames"] = sum(c["frames"] for c in cameras.values())
        out.append(entry)
    return out


def _summary(options: MineOptions, values: dict[str, Any], outcome: RunOutcome, statuses: list[dict[str, Any]],
             results: list[dict[str, Any]], candidates: list[Candidate], selection: Any,
             rows: list[dict[str, Any]], elapsed_s: float) -> dict[str, Any]:
    rejected: Counter = Counter()
    for r in results:
        rejected.update(r["rejected"])
    scores = sorted(c.score for c in candidates)
    return {
        "tool": "seg-perception mine",
        "score": options.score,
        "top": options.top,
        "chosen": len(rows),
        "min_gap_s": options.min_gap_s,
        "max_similarity": options.max_similarity,
        "tie_break": TIE_BREAK,
        "cameras_requested": options.cameras,
        "weights": values["weights"],
        "engine": outcome.engine,
        "machine": machine_info(resolve_device(values["device"])),
        "execution": outcome.execution,
        "elapsed_s": elapsed_s,
        "frames": {
            "read": sum(r["frames"] for r in results),
            "scored": len(candidates),
            "rejected": dict(rejected),
            "looked_at_for_selection": selection.considered,
            "skipped_near_in_time": selection.near_in_time,
            "skipped_similar": selection.similar,
        },
        "scores": ({"min": scores[0], "median": statistics.median(scores), "max": scores[-1],
                    "chosen_min": min(float(r["score"]) for r in rows) if rows else None} if scores else None),
        "drives": statuses,
        "drives_failed": sum(1 for s in statuses if s["status"] != "ok"),
        "notes": options.notes,
    }

"""One evaluation, whatever its size: settings -> drives -> tasks -> a runner -> ONE report.

The drives (one bag or hundreds, :mod:`.drives.plan`) are cut into tasks; a runner segments their
frames: this process (:mod:`.drives.local`), Ray workers (:mod:`.drives.ray_runner`), or, live,
``seg_node`` itself over DDS (:mod:`.live.run`). Every runner hands back camera results of one
shape, which are merged per drive and pooled (:mod:`.results`) into the one report format
(:mod:`.report`). A drive that fails is reported with its reason and left out of the pooled
numbers; when the only drive asked for cannot be read, its error is raised instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import params as P
from ..benchmark import machine_info
from ..choices import ONNX_MODEL
from ..engine import resolve_device
from .bag_io import GT_TOPIC, IMAGE_TOPIC
from .drives.local import RunOutcome, run_local, torch_threads
from .drives.plan import Drive, Task, clip, drive_of, plan_tasks
from .drives.ray_runner import Progress, RayOptions
from .ledger import Outputs
from .metrics import NUM_CLASSES
from .report import build_report, json_safe, write_report
from .results import failed_drive, merge_drive

MODES = ("live", "offline")


def resolve_params(config: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Node parameters from a ROS params file (or the defaults) with command-line overrides.

    On the CPU, fp16 (the shipped default) becomes fp32 unless it was asked for explicitly.
    """
    values = P.load_params_file(config) if config else P.defaults()
    for name, value in overrides.items():
        if value is not None:
            values[name] = value
    if overrides.get("precision") is None and values["precision"] == "fp16" \
            and resolve_device(values["device"]).type == "cpu":
        values["precision"] = "fp32"
    problems = P.validate_params(values)
    if problems:
        raise ValueError("invalid settings: " + "; ".join(problems))
    return values


def check_model_classes(num_classes: int) -> None:
    if num_classes != NUM_CLASSES:
        raise ValueError(f"Cityscapes evaluation needs a 19-class model (train ids); num_classes is {num_classes}")


def model_classes(values: dict[str, Any]) -> int:
    """How many classes the evaluated model predicts: ``num_classes``, or for ``model: onnx`` what
    the file's network outputs (the file is loaded and checked here, before any drive is read)."""
    if values["model"] != ONNX_MODEL:
        return int(values["num_classes"])
    from ..backends.onnx_model import load_onnx_model

    return load_onnx_model(P.engine_config(values)).num_classes


@dataclass
class EvalOptions:
    """What to evaluate and how. Give ``bag`` (one drive) or ``drives``."""

    out: Path
    bag: Path | None = None
    drives: list[Drive] | None = None
    #: live: through seg_node over DDS (one drive); offline: the engine directly.
    mode: str = "live"
    #: Camera names to evaluate; None: every camera found in each bag.
    cameras: list[str] | None = None
    #: One camera's topics, when they do not follow the naming convention.
    image_topic: str | None = None
    gt_topic: str | None = None
    #: Split drives into tasks of at most this many frames per camera (offline); 0: whole drives.
    chunk_frames: int = 0
    #: Run offline on Ray with these options; None: in this process.
    ray: RayOptions | None = None
    speed: float = 1.0
    #: Overlay images, overlay video and prediction PNGs: written for one camera of one drive.
    overlays: int = 4
    video: bool = False
    save_predictions: bool = False
    domain_id: int | None = None
    seed: int = 0
    #: torch intra-op threads (of the node, live); None keeps torch's default.
    threads: int | None = None
    progress: bool = True
    #: The node's input QoS in a live run: reliable measures the node, not the transport.
    input_qos: str = "reliable"
    #: Notes for the report from whoever assembled the drives (e.g. unused tags).
    notes: list[str] = field(default_factory=list)

    def topics(self) -> tuple[str, str] | None:
        if self.image_topic is None and self.gt_topic is None:
            return None
        return self.image_topic or IMAGE_TOPIC, self.gt_topic or GT_TOPIC

    def drive_list(self) -> list[Drive]:
        if (self.bag is None) == (self.drives is None):
            raise ValueError("give one bag or a list of drives")
        return [drive_of(self.bag)] if self.bag is not None else list(self.drives or [])


def _clean_outputs(out: Path) -> None:
    """Remove images a previous run left in ``out`` (only files this tool writes)."""
    for sub in ("overlays", "predictions"):
        for path in (out / sub).glob("*.png"):
            path.unlink()
    (out / "overlay.mp4").unlink(missing_ok=True)


def _outputs(options: EvalOptions, tasks: list[Task]) -> Outputs | None:
    """Report images are written when the evaluation is one camera of one drive, run here."""
    one_camera = len(tasks) == 1 and tasks[0].cameras is not None and len(tasks[0].cameras) == 1
    if one_camera and options.ray is None:
        return Outputs(Path(options.out), options.overlays, options.save_predictions, options.video)
    if options.video or options.save_predictions:
        raise ValueError("--video and --save-predictions are written for single-camera bags; pick one camera "
                         "with --cameras NAME (or --image-topic /<cam>/image_raw --gt-topic /<cam>/semantic_gt), "
                         "without --chunk-frames or --workers")
    return None


def evaluate(options: EvalOptions, values: dict[str, Any],
             on_progress: Callable[[Progress], None] | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """Run the evaluation and write the report; returns the report dict and the file paths.

    ``on_progress`` (Ray only) is called with :class:`~.drives.ray_runner.Progress` on every poll.
    """
    with torch_threads(options.threads if options.ray is None else None):
        return _evaluate(options, values, on_progress)


def _evaluate(options: EvalOptions, values: dict[str, Any],
              on_progress: Callable[[Progress], None] | None) -> tuple[dict[str, Any], dict[str, Path]]:
    if options.mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {options.mode!r}")
    if options.chunk_frames < 0:
        raise ValueError(f"--chunk-frames must be >= 0, got {options.chunk_frames}")
    check_model_classes(model_classes(values))
    drives = options.drive_list()
    live = options.mode == "live"
    if live and (len(drives) != 1 or options.ray is not None or options.chunk_frames):
        raise ValueError("live mode evaluates one bag (all its cameras) through the node; several drives, "
                         "workers or chunks are evaluated with --mode offline")
    tasks, unplanned = plan_tasks(drives, options.cameras, options.chunk_frames, options.topics())
    if len(drives) == 1 and unplanned:  # the one bag asked for cannot be read: say why, no report
        raise unplanned[0]
    outputs = _outputs(options, tasks)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    _clean_outputs(out)
    torch.manual_seed(options.seed)  # random-weight runs are reproducible
    outcome = _run(options, values, tasks, outputs, on_progress)
    merged = _drive_outcomes(drives, tasks, unplanned, outcome)
    execution = {**outcome.execution, "tasks": len(tasks), "chunk_frames": options.chunk_frames,
                 "cameras_requested": options.cameras}
    camera_files = [c["files"] for d in merged if d["status"] == "ok" for c in d["cameras"].values()]
    report = build_report(mode=options.mode, values=values, drives=merged, engine=outcome.engine,
                          execution=execution, live=outcome.live, notes=[*options.notes, *outcome.notes],
                          machine=machine_info(resolve_device(values["device"])),
                          outputs=camera_files[0] if outputs and camera_files else None)
    paths = write_report(report, merged, out)
    return json_safe(report), paths


def _run(options: EvalOptions, values: dict[str, Any], tasks: list[Task], outputs: Outputs | None,
         on_progress: Callable[[Progress], None] | None) -> RunOutcome:
    if options.mode == "live":
        from .live.run import LiveOptions, run_live

        return run_live(tasks[0], values, LiveOptions(
            workdir=Path(options.out), speed=options.speed, domain_id=options.domain_id, seed=options.seed,
            threads=options.threads, progress=options.progress, input_qos=options.input_qos, outputs=outputs))
    if options.ray is None:
        return run_local(tasks, values, options.seed, options.progress, outputs)
    from .drives.ray_runner import run_on_ray_with_bar

    return run_on_ray_with_bar(tasks, values, options.ray, "eval offline (Ray)", options.progress, on_progress)


def _drive_outcomes(drives: list[Drive], tasks: list[Task], unplanned: dict[int, Exception],
                    outcome: RunOutcome) -> list[dict[str, Any]]:
    """Every drive ends ok (all its tasks came back) or failed with the first reason."""
    out = []
    for index, drive in enumerate(drives):
        if index in unplanned:
            exc = unplanned[index]
            out.append(failed_drive(drive, clip(f"{type(exc).__name__}: {exc}"), 0))
            continue
        mine = [t for t in tasks if t.drive == index]
        attempts = max((outcome.attempts.get(t.task_id, 0) for t in mine), default=0)
        retries = [r for t in mine for r in outcome.retries.get(t.task_id, [])]
        if (failure := outcome.drive_failure(mine)) is not None:
            out.append(failed_drive(drive, *failure, retries))
            continue
        merged = merge_drive(drive, [outcome.results[t.task_id] for t in mine])
        merged["attempts"] = attempts
        merged["retries"] = retries
        out.append(merged)
    return out

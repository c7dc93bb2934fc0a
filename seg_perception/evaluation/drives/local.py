"""Run the tasks in this process, with one engine, one after the other.

:class:`RunOutcome` is what every runner hands back (this one, :mod:`.ray_runner`, and the live
replay through the node), so the report is built the same way whoever ran the frames.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..ledger import Outputs
from .plan import Task, clip
from .task import build_engine, run_task


@dataclass
class RunOutcome:
    """What a runner hands back: results per task, failures per task, and how it ran."""

    results: dict[int, dict[str, Any]]
    failures: dict[int, tuple[str, int]]
    retries: dict[int, list[str]]
    attempts: dict[int, int]
    execution: dict[str, Any]
    engine: dict[str, Any] | None
    #: A live run: the node process, DDS and warm-up (None offline).
    live: dict[str, Any] | None = None
    #: What the runner noticed that the report must say (e.g. frames lost in transport).
    notes: list[str] = field(default_factory=list)

    def drive_failure(self, tasks: list[Task]) -> tuple[str, int] | None:
        """``(reason, tries)`` of the first of a drive's ``tasks`` that failed, None when all came
        back: a drive is ok only as a whole (evaluation and mining report it the same way)."""
        failed = [t for t in tasks if t.task_id in self.failures]
        return self.failures[failed[0].task_id] if failed else None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads (None or 0: as they are), restored afterwards:
    a command run inside another program (tests, a notebook) leaves its thread count alone."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_local(tasks: list[Task], values: dict[str, Any], seed: int = 0, progress: bool = True,
              outputs: Outputs | None = None, job: Callable[..., dict[str, Any]] | None = None,
              desc: str = "eval offline") -> RunOutcome:
    """Every task in this process with one engine; a task that fails is reported, the others go on.

    ``job`` (``job(engine, task, max_pixels, on_frame)``) replaces evaluation's :func:`.task.run_task`
    (mining's frame scoring); ``desc`` names the progress bar.
    """
    from tqdm import tqdm

    engine = build_engine(values, seed)
    bar = tqdm(total=sum(t.frames for t in tasks), desc=desc, unit="frame", disable=not progress)
    results, failures = {}, {}
    start = time.perf_counter()
    for task in tasks:
        try:
            if job is None:
                results[task.task_id] = run_task(engine, task, values["max_pixels"], lambda: bar.update(1), outputs)
            else:
                results[task.task_id] = job(engine, task, values["max_pixels"], lambda: bar.update(1))
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

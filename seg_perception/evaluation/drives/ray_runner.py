"""Run evaluation tasks on Ray: a local instance with N workers, or an existing cluster.

Each worker is a Ray actor that builds ONE engine when it starts and keeps it for every task it
is given (no model load per drive); with CUDA it asks Ray for ``gpus_per_worker`` GPUs (fractions
share a GPU). The driver hands out one task per idle worker and pulls the next as results come
back, so fast workers take more drives. Results are confusion matrices and per-frame records
only. A worker that dies (killed, out of memory, node lost) or fails unexpectedly has its task
retried, on a replacement worker if needed, at most ``max_retries`` times; after that, or at once
for a bag that cannot be read, the task is reported failed with its reason. Nothing is silently
missing: every task ends in ``results`` or ``failures``.

Ray is optional (``pip install seg_perception[cluster]``); it is imported only here.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...text import bounded
from .local import RunOutcome
from .plan import DATA_ERRORS, Task, clip
from .task import build_engine, run_task

INSTALL_HINT = "--workers needs Ray: pip install 'seg_perception[cluster]' (or pip install 'ray[default]')"
#: How often the driver refreshes the progress bar while it waits, seconds.
POLL_S = 0.1
#: How long the first workers may take to be placed and load their engine, seconds.
WORKER_START_TIMEOUT_S = 600.0
#: How often a worker reports its frame count to the progress board, seconds.
REPORT_S = 0.2
#: Fault-injection hook for tests (like the node's ``before_inference``): seconds each worker waits
#: after every frame, so a test can kill a worker while its drive is certainly still running.
FRAME_DELAY_ENV = "SEG_PERCEPTION_TEST_FRAME_DELAY_S"


class RayUnavailable(ValueError):
    """``--workers`` was asked for but Ray is not installed."""


#: Environment of a local instance: every Ray socket on 127.0.0.1 (Ray otherwise binds the
#: machine's routable address, as a cluster head must) and no usage statistics sent anywhere.
#: Read when ``ray`` is first imported.
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def import_ray(local: bool = True) -> Any:
    """``ray``, configured for a loopback-only local instance unless a cluster is to be joined."""
    if local:
        for key, value in LOCAL_ENV.items():
            os.environ.setdefault(key, value)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise RayUnavailable(INSTALL_HINT) from None
    return ray


@dataclass
class RayOptions:
    workers: int = 2
    #: ``ray://`` or ``host:port`` of a running cluster; None: RAY_ADDRESS, else a local instance.
    address: str | None = None
    gpus_per_worker: float = 0.0
    #: torch intra-op threads (and CPUs requested) per worker.
    threads: int = 1
    max_retries: int = 2
    #: Object store of a local instance, bytes (results are small).
    object_store_bytes: int = 200 * 1024 * 1024
    seed: int = 0


@dataclass
class Progress:
    """Shown to ``on_progress`` on every poll: frames done, and what each worker is doing."""

    done_frames: int
    total_frames: int
    #: worker index -> (pid, task_id, frames done of that task)
    in_flight: dict[int, tuple[int, int, int]] = field(default_factory=dict)


class ProgressBoard:
    """A tiny actor the workers add their frame counts to, keyed by (task, attempt)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[int, int], int] = {}

    def add(self, key: tuple[int, int], frames: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + frames

    def snapshot(self) -> dict[tuple[int, int], int]:
        return dict(self.counts)


class EvalWorker:
    """A Ray actor: one engine, many tasks, each run by ``job`` (None: evaluation's ``run_task``)."""

    def __init__(self, values: dict[str, Any], seed: int, threads: int, board: Any,
                 job: Callable[..., dict[str, Any]] | None = None) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.engine = build_engine(values, seed)
        self.max_pixels = values["max_pixels"]
        self.board = board
        self.job = job

    def info(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "node": socket.gethostname(),
                "node_id": ray.get_runtime_context().get_node_id(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "engine": self.engine.description}

    def run(self, task: Task, attempt: int) -> dict[str, Any]:
        key = (task.task_id, attempt)
        pending, last = 0, time.monotonic()
        delay_s = float(os.environ.get(FRAME_DELAY_ENV, "0") or 0)

        def on_frame() -> None:
            nonlocal pending, last
            if delay_s > 0:
                time.sleep(delay_s)
            pending += 1
            if time.monotonic() - last >= REPORT_S:
                self.board.add.remote(key, pending)
                pending, last = 0, time.monotonic()

        result = (self.job or run_task)(self.engine, task, self.max_pixels, on_frame)
        if pending:
            self.board.add.remote(key, pending)
        return result


@dataclass
class _Slot:
    index: int
    actor: Any
    #: Pending ``info()`` call; resolved into ``info`` without blocking the dispatch loop.
    info_ref: Any = None
    info: dict[str, Any] | None = None
    task: Task | None = None
    alive: bool = True
    tasks: int = 0
    frames: int = 0
    busy_s: float = 0.0


def _address(options: RayOptions) -> str | None:
    return options.address or os.environ.get("RAY_ADDRESS") or None


def _connect(ray: Any, options: RayOptions) -> tuple[bool, str]:
    """Join the cluster or start a local instance; (whether we started it, how)."""
    if ray.is_initialized():
        return False, "already initialised in this process"
    address = _address(options)
    if address:
        ray.init(address=address, log_to_driver=False)
        return True, f"joined cluster {bounded(address, 100)}"
    ray.init(num_cpus=options.workers * max(1, options.threads), include_dashboard=False,
             object_store_memory=options.object_store_bytes, log_to_driver=False)
    return True, "local instance on 127.0.0.1"


def run_on_ray(tasks: list[Task], values: dict[str, Any], options: RayOptions,
               on_progress: Callable[[Progress], None] | None = None,
               job: Callable[..., dict[str, Any]] | None = None) -> RunOutcome:
    """Run every task on Ray workers; see the module docstring for retries and accounting.

    ``job`` (a picklable ``job(engine, task, max_pixels, on_frame)``, e.g. a ``functools.partial``
    of a module-level function) replaces evaluation's :func:`.task.run_task` in the workers."""
    ray = import_ray(local=_address(options) is None)
    if options.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {options.workers}")
    if options.gpus_per_worker < 0:
        raise ValueError(f"--gpus-per-worker must be >= 0, got {options.gpus_per_worker}")
    started, how = _connect(ray, options)
    try:
        return _run(ray, tasks, values, options, on_progress, how, job)
    finally:
        if started:
            ray.shutdown()


def _run(ray: Any, tasks: list[Task], values: dict[str, Any], options: RayOptions,
         on_progress: Callable[[Progress], None] | None, how: str,
         job: Callable[..., dict[str, Any]] | None = None) -> RunOutcome:
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0.0)
    if options.gpus_per_worker > 0 and gpus < options.gpus_per_worker and how.startswith("local"):
        raise ValueError(f"--gpus-per-worker {options.gpus_per_worker:g} but this machine has {gpus:g} GPUs for Ray: "
                         f"use --device cpu or --gpus-per-worker 0")
    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    worker_cls = ray.remote(num_cpus=max(1, options.threads), num_gpus=options.gpus_per_worker,
                            max_restarts=0)(EvalWorker)
    slots: list[_Slot] = []

    def new_slot() -> _Slot:
        actor = worker_cls.remote(values, options.seed, options.threads, board, job)
        slot = _Slot(len(slots), actor, actor.info.remote())
        slots.append(slot)
        return slot

    def resolve_info(timeout: float = 0.0) -> None:
        """Fill in the info of workers whose engine is up (a replacement is not waited for)."""
        for slot in slots:
            if slot.info is None and slot.info_ref is not None:
                done, _ = ray.wait([slot.info_ref], timeout=timeout)
                if done:
                    try:
                        slot.info = ray.get(slot.info_ref)
                    except ray.exceptions.RayError:
                        slot.info_ref = None  # its tasks fail as a dead worker's would

    for _ in range(min(options.workers, len(tasks))):
        new_slot()
    # Each first worker loads its model once; a model that cannot load is a configuration error.
    for slot in slots:
        try:
            slot.info = ray.get(slot.info_ref, timeout=WORKER_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise ValueError(f"workers were not started within {WORKER_START_TIMEOUT_S:.0f} s: the cluster cannot "
                             f"place {options.threads} CPU(s) + {options.gpus_per_worker:g} GPU(s) per worker "
                             f"(resources: {clip(resources)})") from None
        except ray.exceptions.RayError as exc:
            raise ValueError(f"a worker could not build its engine: {bounded(exc, 500)}") from None
    engine = slots[0].info["engine"] if slots else None

    queue = deque(tasks)
    attempts = {t.task_id: 0 for t in tasks}
    retries: dict[int, list[str]] = {}
    results: dict[int, dict[str, Any]] = {}
    failures: dict[int, tuple[str, int]] = {}
    in_flight: dict[Any, _Slot] = {}
    replacements_left = options.workers * (1 + options.max_retries)
    total = sum(t.frames for t in tasks)
    start = time.perf_counter()

    def assign() -> None:
        for slot in slots:
            if slot.alive and slot.task is None and queue:
                task = queue.popleft()
                attempts[task.task_id] += 1
                slot.task = task
                in_flight[slot.actor.run.remote(task, attempts[task.task_id])] = slot

    def give_up_or_retry(task: Task, reason: str, retry: bool) -> None:
        retries.setdefault(task.task_id, []).append(reason)
        if retry and attempts[task.task_id] <= options.max_retries:
            queue.appendleft(task)
        else:
            failures[task.task_id] = (reason, attempts[task.task_id])

    def report_progress() -> None:
        if on_progress is None:
            return
        counts = ray.get(board.snapshot.remote())
        done = sum(r["frames"] for r in results.values())
        running = {s.index: (s.info["pid"] if s.info else -1, s.task.task_id,
                             counts.get((s.task.task_id, attempts[s.task.task_id]), 0))
                   for s in slots if s.task is not None}
        on_progress(Progress(done + sum(n for _, _, n in running.values()), total, running))

    assign()
    while in_flight:
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_S)
        resolve_info()
        report_progress()
        for ref in ready:
            slot = in_flight.pop(ref)
            task, slot.task = slot.task, None
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                slot.alive = False
                give_up_or_retry(task, clip(f"worker {slot.index} (pid {slot.info and slot.info['pid']}) died: "
                                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"),
                                 retry=True)
                if queue and replacements_left > 0:
                    replacements_left -= 1
                    new_slot()  # loads its engine while the other workers go on
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                give_up_or_retry(task, clip(f"{type(cause).__name__}: {cause}"),
                                 retry=not isinstance(cause, DATA_ERRORS))
            else:
                results[task.task_id] = result
                slot.tasks += 1
                slot.frames += result["frames"]
                slot.busy_s += result["busy_s"]
        assign()
        if queue and not in_flight:  # every worker is gone and none may be replaced
            while queue:
                task = queue.popleft()
                failures[task.task_id] = ("no worker left to run it (all died, replacements used up)",
                                          attempts[task.task_id])
    elapsed = time.perf_counter() - start
    report_progress()
    resolve_info(timeout=1.0)
    frames = sum(r["frames"] for r in results.values())
    per_worker = [{"worker": s.index, "pid": s.info["pid"] if s.info else None,
                   "node": s.info["node"] if s.info else None, "gpu_ids": s.info["gpu_ids"] if s.info else [],
                   "alive": s.alive, "tasks": s.tasks, "frames": s.frames, "busy_s": s.busy_s,
                   "fps": s.frames / s.busy_s if s.busy_s > 0 else 0.0} for s in slots]
    execution = {
        "runner": "ray", "ray_version": ray.__version__, "connection": how,
        "gcs_address": ray.get_runtime_context().gcs_address,
        "workers": options.workers, "workers_started": len(slots), "gpus_per_worker": options.gpus_per_worker,
        "threads_per_worker": options.threads, "max_retries": options.max_retries,
        "cluster_resources": {k: v for k, v in resources.items() if not k.startswith("node:")},
        "cluster_nodes": sum(1 for k in resources if k.startswith("node:") and k != "node:__internal_head__"),
        "elapsed_s": elapsed, "throughput_fps": frames / elapsed if elapsed > 0 else 0.0,
        "per_worker": per_worker,
    }
    for slot in slots:
        if slot.alive:
            ray.kill(slot.actor)
    ray.kill(board)
    return RunOutcome(results, failures, retries, attempts, execution, engine)


def run_on_ray_with_bar(tasks: list[Task], values: dict[str, Any], options: RayOptions, desc: str,
                        show: bool = True, on_progress: Callable[[Progress], None] | None = None,
                        job: Callable[..., dict[str, Any]] | None = None) -> RunOutcome:
    """:func:`run_on_ray` behind a progress bar over the tasks' frames (``desc`` names it, ``show``
    False hides it); ``on_progress`` still sees every poll."""
    from tqdm import tqdm

    bar = tqdm(total=sum(t.frames for t in tasks), desc=desc, unit="frame", disable=not show)

    def progress(p: Progress) -> None:
        bar.n = p.done_frames
        bar.set_postfix(workers_busy=len(p.in_flight), refresh=False)
        bar.refresh()
        if on_progress is not None:
            on_progress(p)

    try:
        return run_on_ray(tasks, values, options, progress, job=job)
    finally:
        bar.close()

"""``seg_node`` as a process of its own, for the live evaluation: start, read its books, stop.

The live evaluation measures the node as it runs on a car, so the node must not share a Python
interpreter (and its GIL) with the replay publisher and the collector: it runs as
``python -m seg_perception.process --ros-args --params-file <generated file>``, the entry point of
the ``seg_node`` console script (signal handlers installed before torch is imported). Its frame accounting
and stage timings are read from what it publishes on ``/diagnostics`` (:func:`parse_diagnostics`),
and it is stopped with SIGINT, the way ``ros2 launch`` stops it, with its exit code reported.

Camera frames cross the process boundary over Fast DDS shared memory with a segment large enough
for several frames (``config/fastdds_large_images.xml``, the profile the package recommends for
camera images between processes, see docs/PERFORMANCE.md); the profile is applied to both
processes unless ``FASTDDS_DEFAULT_PROFILES_FILE`` is already set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ...engine import STAGES
from ...text import bounded

PACKAGE_DIR = Path(__file__).resolve().parents[2]
#: Seconds the node gets to stop after SIGINT before it is killed (its own budget is 2 s).
STOP_TIMEOUT_S = 15.0
PROFILE_NAME = "fastdds_large_images.xml"
#: Fast DDS reads the first; releases before 2.x-late (Humble) read the second, which newer ones
#: still honour with a deprecation warning. A user's choice in either wins.
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
#: Book-keeping counters the node publishes on /diagnostics (``frames_<name>``).
BOOK_KEYS = ("received", "processed", "dropped_total", "rejected_total", "in_flight")


class NodeStartError(RuntimeError):
    """The node process exited or never appeared on DDS; the message carries its log's tail."""


def large_image_profile() -> Path | None:
    """The shipped Fast DDS profile: in the source tree, or installed under ``share/``."""
    for candidate in (PACKAGE_DIR.parent / "config" / PROFILE_NAME,
                      Path(sys.prefix) / "share" / "seg_perception" / "config" / PROFILE_NAME):
        if candidate.is_file():
            return candidate
    return None


def use_large_image_transport(env: dict[str, str] | None = None) -> str | None:
    """Point Fast DDS at the large-image profile in ``env`` (default: this process) unless the
    user chose a profile; returns the profile in effect. Must run before the first participant."""
    env = os.environ if env is None else env
    chosen = next((env[v] for v in PROFILE_VARIABLES if env.get(v)), None)
    if chosen:
        return chosen
    profile = large_image_profile()
    if profile is None:
        return None
    env[PROFILE_VARIABLES[0]] = str(profile)
    return str(profile)


def write_params_file(path: Path, values: Mapping[str, Any]) -> Path:
    """A ROS 2 parameters file for every node (``/**``) holding ``values``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": dict(values)}}, sort_keys=False),
                    encoding="utf-8")
    return path


def node_command(params_file: Path, seed: int | None = None) -> list[str]:
    """The command line of the node process: ``seg_node``'s own entry point,
    :func:`seg_perception.process.main`. With a ``seed`` (untrained models) torch is seeded before
    the node builds its model, so its random weights equal those of an offline run."""
    ros_args = ["--ros-args", "--params-file", str(params_file)]
    if seed is None:
        return [sys.executable, "-m", "seg_perception.process", *ros_args]
    launcher = (f"import torch; torch.manual_seed({int(seed)}); "
                "from seg_perception.process import main; main()")
    return [sys.executable, "-c", launcher, *ros_args]


class NodeProcess:
    """One ``seg_node`` process with its log file; :meth:`stop` ends it and gives its exit code."""

    def __init__(self, params: Mapping[str, Any], workdir: Path, domain_id: int, threads: int | None = None,
                 seed: int | None = None) -> None:
        workdir = Path(workdir).resolve()  # the node runs in workdir: every path it gets is absolute
        self.params_file = write_params_file(workdir / "node_params.yaml", params)
        self.log_path = workdir / "node.log"
        self.command = node_command(self.params_file, seed)
        env = dict(os.environ)
        env["ROS_DOMAIN_ID"] = str(domain_id)
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        env["PYTHONUNBUFFERED"] = "1"
        # the package the evaluator runs is the one the node runs
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_DIR.parent), env.get("PYTHONPATH")) if p)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in the node
        self.profile = use_large_image_transport(env)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=workdir)
        self.exit_code: int | None = None
        self.stop_s: float | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, limit: int = 2000) -> str:
        """The end of the node's output, bounded, for error messages."""
        if not self._log.closed:
            self._log.flush()
        try:
            data = self.log_path.read_bytes()[-limit:]
        except OSError:
            return ""
        return bounded(data.decode("utf-8", "replace").strip(), limit)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGINT, wait, then kill; returns the exit code (negative: killed by that signal)."""
        if self.exit_code is not None:
            return self.exit_code
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stop_s = time.monotonic() - started
        self.exit_code = self.proc.returncode
        self._log.close()
        return self.exit_code


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_diagnostics(values: Mapping[str, str]) -> dict[str, Any]:
    """The node's ``/diagnostics`` key/values -> books, stage percentiles and engine description.

    Books are shaped like :meth:`~seg_perception.stats.FrameAccounting.snapshot`: ``received``,
    ``processed``, ``dropped_total``, ``rejected_total``, ``in_flight`` and per-reason
    ``dropped``/``rejected`` dicts.
    """
    books: dict[str, Any] = {key: int(values.get(f"frames_{key}", 0)) for key in BOOK_KEYS}
    books["dropped"] = {k[len("dropped_"):]: int(v) for k, v in values.items()
                        if k.startswith("dropped_") and k != "dropped_total"}
    books["rejected"] = {k[len("rejected_"):]: int(v) for k, v in values.items()
                         if k.startswith("rejected_") and k != "rejected_total"}
    stages = {}
    for stage in (*STAGES, "end_to_end"):
        keys = {q: f"{stage}_ms_{q}" for q in ("p50", "p90", "p99", "max")}
        if all(k in values for k in keys.values()):
            stages[stage] = {q: float(values[k]) for q, k in keys.items()}
    engine_keys = ("model", "variant", "device", "precision", "parameters", "weights", "crf", "compile", "backend",
                   "quantization", "parity", "parity_agreement", "parity_fallback")
    engine = {k: _number(values[k]) if k == "parameters" else values[k] for k in engine_keys if k in values}
    return {"books": books, "stages": stages, "engine": engine}


def books_delta(after: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    """The frames of ``after`` that came after ``before`` (e.g. minus the warm-up frames)."""
    out: dict[str, Any] = {k: int(after[k]) - int(before.get(k, 0)) for k in BOOK_KEYS if k != "in_flight"}
    out["in_flight"] = int(after["in_flight"])
    for group in ("dropped", "rejected"):
        reasons = {r: n - before.get(group, {}).get(r, 0) for r, n in after.get(group, {}).items()}
        out[group] = {r: n for r, n in reasons.items() if n}
    return out

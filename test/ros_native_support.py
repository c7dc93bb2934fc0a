"""A real ``colcon build`` of this package and the real ROS 2 launch system, without a ROS install.

The launch system (``launch``, ``launch_ros``, ``ros2launch``) is pure Python but not on PyPI. The
tests take its unmodified sources (the ros2/launch and ros2/launch_ros repositories) from the
folders named by ``SEG_PERCEPTION_LAUNCH_SOURCES`` (``os.pathsep``-separated, e.g. the two clones),
else from ``../shared/third_party/ros2_launch`` beside the checkout, else from a sourced ROS install.
Without them the launch tests skip with one line saying how to get them; under ``CI=true`` they
fail instead, since CI always has them and a silent skip is how a launch file goes untested.

``ros2cli`` (the ``ros2`` command) is not included either; ``ros2_launch.py`` beside this file makes
the calls its ``launch`` verb makes, so a test running ``ros2_launch.py PKG FILE ARGS`` runs what a
user's ``ros2 launch PKG FILE ARGS`` runs (see :func:`ros2_launch_command`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "seg_perception"
LAUNCH_SOURCES = REPO_ROOT.parent / "shared" / "third_party" / "ros2_launch"
#: One or more folders (``os.pathsep``-separated) to take the launch sources from instead.
LAUNCH_SOURCES_ENV = "SEG_PERCEPTION_LAUNCH_SOURCES"
#: The packages of ros2/launch (``launch``, ``launch_xml``, ``launch_yaml``) and ros2/launch_ros
#: (``launch_ros``, ``ros2launch``) that ``ros2 launch`` imports.
LAUNCH_PACKAGES = ("launch", "launch_xml", "launch_yaml", "launch_ros", "ros2launch")
#: A stand-in ``composition_interfaces``: launch_ros imports that message package at load time
#: for composable nodes only, seg_node is a plain process, and it is not on PyPI.
STUBS = Path(__file__).resolve().parent / "stubs"
#: How to get the sources, in the one line a skip or failure prints.
GET_LAUNCH_SOURCES = (
    "git clone https://github.com/ros2/launch (tag 3.7.1) and https://github.com/ros2/launch_ros, then "
    f"export {LAUNCH_SOURCES_ENV}=<launch clone>{os.pathsep}<launch_ros clone> (README, ROS-native path)"
)
ROS2_LAUNCH = Path(__file__).resolve().parent / "ros2_launch.py"
SHOW_ARGS = ("--show-args",)
#: Seconds colcon may take; it takes a few on an idle machine.
BUILD_TIMEOUT_S = 300.0


def in_ci() -> bool:
    """True under CI (``CI=true``, as GitHub Actions and GitLab set it), where nothing may skip."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def launch_source_roots() -> list[Path]:
    """Folders searched for the launch packages: :data:`LAUNCH_SOURCES_ENV`, else :data:`LAUNCH_SOURCES`."""
    given = os.environ.get(LAUNCH_SOURCES_ENV, "")
    if given.strip():
        return [Path(part).expanduser() for part in given.split(os.pathsep) if part.strip()]
    return [LAUNCH_SOURCES]


def _find_package(name: str, roots: list[Path]) -> Path | None:
    """The folder to put on PYTHONPATH for package ``name``: ``ROOT/name/name`` (a repository's
    layout) or ``ROOT/name`` (a site-packages); else where this interpreter imports it from (a
    sourced ROS install)."""
    for root in roots:
        if (root / name / name / "__init__.py").is_file():
            return root / name
        if (root / name / "__init__.py").is_file():
            return root
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin and spec.origin.endswith("__init__.py"):
        return Path(spec.origin).parent.parent
    return None


def launch_pythonpath() -> list[str]:
    """PYTHONPATH folders for the launch system; skips the test (fails it under CI) when missing."""
    roots = launch_source_roots()
    found = {name: _find_package(name, roots) for name in LAUNCH_PACKAGES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        where = os.pathsep.join(str(root) for root in roots)
        line = f"ROS 2 launch sources not found ({', '.join(missing)} missing in {where}): {GET_LAUNCH_SOURCES}"
        if in_ci():
            pytest.fail(f"{line}; CI=true, so this fails instead of skipping", pytrace=False)
        pytest.skip(line)
    folders = list(dict.fromkeys(str(path) for path in found.values()))
    return [*folders, str(STUBS)]


@dataclass(frozen=True)
class Workspace:
    """A colcon workspace holding a copy of this package, built and installed."""

    root: Path
    #: ``install/seg_perception``: the package's install prefix.
    prefix: Path
    #: The environment ``. install/setup.sh`` gives, nothing else added.
    env: dict[str, str]
    build_output: str
    build_seconds: float

    def launch_env(self) -> dict[str, str]:
        """:attr:`env` with the launch sources appended to PYTHONPATH (a ROS install has them)."""
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH", ""), *launch_pythonpath()]))
        return env


_workspace: Workspace | None = None


def _source_ignores() -> list[str]:
    """What a clone would not contain: .git and everything .gitignore names (venvs, builds)."""
    patterns = [".git"]
    for line in (REPO_ROOT / ".gitignore").read_text().splitlines():
        line = line.strip().strip("/")
        if line and not line.startswith("#"):
            patterns.append(line)
    return patterns


def _colcon() -> str:
    script = shutil.which("colcon", path=os.path.dirname(sys.executable)) or shutil.which("colcon")
    if script is None:
        pytest.fail("colcon not found next to this Python: pip install -r requirements-dev.txt", pytrace=False)
    return script


def _sourced_environment(root: Path, base: dict[str, str]) -> dict[str, str]:
    """The environment after ``. install/setup.sh`` in ``root``, read back through ``env -0``."""
    dump = subprocess.run(["sh", "-c", ". ./install/setup.sh && env -0"], cwd=root, env=base,
                          capture_output=True, check=True)
    return dict(item.split("=", 1) for item in dump.stdout.decode().split("\0") if "=" in item)


def colcon_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Build the package once per test process with ``colcon build --packages-select seg_perception``.

    The sources are copied into ``<ws>/src/seg_perception`` so the build never writes into the
    checkout. PYTHONPATH is cleared before sourcing so everything of this package that the tests
    then import or start comes from the install prefix, as after a user's build.
    """
    global _workspace
    if _workspace is not None:
        return _workspace
    root = tmp_path_factory.mktemp("colcon_ws")
    shutil.copytree(REPO_ROOT, root / "src" / PACKAGE, ignore=shutil.ignore_patterns(*_source_ignores()))
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    start = time.monotonic()
    build = subprocess.run([_colcon(), "build", "--packages-select", PACKAGE], cwd=root, env=base,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=BUILD_TIMEOUT_S)
    seconds = time.monotonic() - start
    if build.returncode != 0:
        pytest.fail(f"colcon build failed (rc {build.returncode}):\n{build.stdout[-4000:]}", pytrace=False)
    _workspace = Workspace(root=root, prefix=root / "install" / PACKAGE, env=_sourced_environment(root, base),
                           build_output=build.stdout, build_seconds=seconds)
    return _workspace


def ros2_launch_command(launch_args: tuple[str, ...]) -> str:
    """How a user types what :func:`ros2_launch` runs (the README lists these)."""
    return " ".join(["ros2 launch", PACKAGE, "seg.launch.py", *launch_args])


@dataclass
class Launch:
    """A running ``ros2 launch``; its output goes to a file so a chatty node can never block it."""

    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _terminal_signals() -> None:
    """In the launch child before exec: SIGINT as a terminal's process gets it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ros2_launch(workspace: Workspace, launch_args: tuple[str, ...], log: Path) -> Launch:
    """Start ``ros2 launch seg_perception seg.launch.py ARGS`` in the workspace root.

    A new session stands in for the terminal, so :func:`interrupt` can signal launch and its node
    together as Ctrl-C does. SIGINT starts at its default action, as in a terminal: a test run
    started in the background of a non-interactive shell inherits it ignored, and launch would
    then never see the Ctrl-C these tests send.
    """
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROS2_LAUNCH), PACKAGE, "seg.launch.py", *launch_args],
            cwd=workspace.root, env=workspace.launch_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_terminal_signals,
        )
    return Launch(process, log)


def show_args(workspace: Workspace) -> str:
    """Output of ``ros2 launch seg_perception seg.launch.py --show-args``."""
    run = subprocess.run([sys.executable, str(ROS2_LAUNCH), PACKAGE, "seg.launch.py", *SHOW_ARGS],
                         cwd=workspace.root, env=workspace.launch_env(), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def interrupt(process: subprocess.Popen, *, terminal: bool) -> None:
    """SIGINT to launch alone (``kill -INT``, a supervisor) or, with ``terminal``, to launch and
    its node together, as Ctrl-C in a terminal does (the node then gets it from launch too)."""
    if terminal:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGINT)


def kill_group(process: subprocess.Popen) -> None:
    """Last-resort cleanup so a failed test leaves no launch or node process behind."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()

"""``ros2 launch seg_perception seg.launch.py`` with the real launch system on a colcon install.

Every launch argument is listed with its description and documented in the README; a launch with
namespace, topic, config file and device/precision overrides starts seg_node from the install with
exactly those values, serves an image end to end, and stops with exit 0 within 2 s of SIGINT.
The commands below are the ones the README's ROS-native section shows (tested there too).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ros_native_support
import yaml
from lifecycle_msgs.srv import GetState
from rcl_interfaces.srv import GetParameters
from rclpy.parameter import parameter_value_to_python
from ros_harness import RosHarness, make_image, wait_for
from ros_native_support import (
    REPO_ROOT,
    SHOW_ARGS,
    Launch,
    Workspace,
    colcon_workspace,
    interrupt,
    kill_group,
    ros2_launch,
    ros2_launch_command,
    show_args,
)
from sensor_msgs.msg import Image

pytestmark = pytest.mark.ros

#: A front camera's parameter file; the launch arguments below override its device, precision
#: and topic (on a machine without CUDA the node could not even start with this file alone).
FRONT_YAML = """\
/**:
  ros__parameters:
    device: cuda
    precision: fp16
    image_topic: camera/image_raw
    qos_reliability: reliable
    publish_color: true
"""
SINGLE_CAMERA = ("namespace:=front", "image_topic:=/front_camera/image_raw", "config:=front.yaml",
                 "device:=cpu", "precision:=fp32", "max_age_ms:=0")
#: Two cameras served by one node, as config/seg_3cameras.yaml does for three at 512x1024 (too
#: slow for a CPU test); frames run at their own size here.
CARS_YAML = """\
/**:
  ros__parameters:
    cameras: [front, rear]
    front:
      image_topic: /sensing/camera/front/image_raw
    rear:
      image_topic: /sensing/camera/rear/image_raw
"""
MULTI_CAMERA = ("namespace:=car", "config:=cars.yaml", "device:=cpu", "precision:=fp32", "max_age_ms:=0")
#: A managed node that the launch configures and activates (launch_ros LifecycleNode and its events).
MANAGED = ("namespace:=managed", "lifecycle:=true", "autostart:=true", "device:=cpu", "precision:=fp32",
           "max_age_ms:=0")
#: Commands the README's ROS-native section must show verbatim, in this form.
COMMANDS = tuple(ros2_launch_command(args) for args in (SHOW_ARGS, SINGLE_CAMERA, MULTI_CAMERA, MANAGED))
#: Seconds seg_node may take to start (imports torch and builds the model) on a loaded machine.
STARTUP_TIMEOUT_S = 90.0
#: SIGINT must end launch and its node within this many seconds.
SHUTDOWN_LIMIT_S = 2.0
FRAME_SHAPE = (64, 128, 3)


@pytest.fixture(scope="module")
def workspace(launch_sources: list[str], tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return colcon_workspace(tmp_path_factory)


@pytest.fixture(scope="module")
def ros() -> RosHarness:
    harness = RosHarness()
    yield harness
    harness.close()


@pytest.fixture(scope="module")
def front(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Launch:
    (workspace.root / "front.yaml").write_text(FRONT_YAML)
    launch = ros2_launch(workspace, SINGLE_CAMERA, tmp_path_factory.mktemp("launch") / "front.log")
    yield launch
    kill_group(launch.process)


@pytest.fixture(scope="module")
def cars(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Launch:
    (workspace.root / "cars.yaml").write_text(CARS_YAML)
    launch = ros2_launch(workspace, MULTI_CAMERA, tmp_path_factory.mktemp("launch") / "cars.log")
    yield launch
    kill_group(launch.process)


@pytest.fixture(scope="module")
def managed(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Launch:
    launch = ros2_launch(workspace, MANAGED, tmp_path_factory.mktemp("launch") / "managed.log")
    yield launch
    kill_group(launch.process)


def _readme_ros_native_section() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index("## ROS-native path")
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end != -1 else None]


def _shown_arguments(text: str) -> dict[str, str]:
    """``{name: description}`` from ``--show-args`` output (``'name':`` then the description line)."""
    return dict(re.findall(r"^    '([^']+)':\n        (.*)$", text, flags=re.MULTILINE))


def _documented_arguments() -> dict[str, str]:
    """``{name: description}`` from the README's launch-argument table (`| `name` | description |`)."""
    return dict(re.findall(r"^\| `([a-z_]+)` \| (.+?) \|$", _readme_ros_native_section(), flags=re.MULTILINE))


def get_parameters(ros: RosHarness, launch: Launch, node_name: str, names: list[str]) -> dict[str, object]:
    """Read parameters through the node's ``get_parameters`` service, as ``ros2 param get`` does."""
    client = ros.probe.create_client(GetParameters, f"{node_name}/get_parameters")
    try:
        assert client.wait_for_service(timeout_sec=STARTUP_TIMEOUT_S), launch.output()[-3000:]
        future = client.call_async(GetParameters.Request(names=names))
        # The service exists from the node's first moment, but answers once the node spins.
        assert wait_for(future.done, timeout=STARTUP_TIMEOUT_S), launch.output()[-3000:]
        values = future.result().values
        # rclpy answers nothing at all when any name is undeclared or unset.
        assert len(values) == len(names), f"{node_name} has no value for some of {names}"
        return {n: parameter_value_to_python(v) for n, v in zip(names, values, strict=True)}
    finally:
        ros.probe.destroy_client(client)


def _serve_one(ros: RosHarness, launch: Launch, image_topic: str, output_prefix: str,
               kinds: tuple[str, ...] = ("labels", "color")) -> dict[str, list[Image]]:
    """Publish frames on ``image_topic`` until every output in ``kinds`` comes back under ``output_prefix``."""
    outputs = {kind: ros.collect(Image, f"{output_prefix}/segmentation/{kind}") for kind in kinds}
    publisher = ros.publisher(image_topic)
    rgb = np.random.default_rng(3).integers(0, 256, FRAME_SHAPE, dtype=np.uint8)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    sent = 0
    while not outputs["labels"] and time.monotonic() < deadline:
        assert launch.process.poll() is None, launch.output()[-3000:]
        stamp = ros.probe.get_clock().now().to_msg()
        publisher.publish(make_image(rgb, "rgb8", stamp, f"frame{sent}"))
        sent += 1
        wait_for(lambda: bool(outputs["labels"]), timeout=0.5)
    assert outputs["labels"], f"no labels on {output_prefix}/segmentation/labels\n{launch.output()[-3000:]}"
    wait_for(lambda: all(outputs.values()), timeout=5.0)
    return outputs


def test_show_args_lists_every_documented_argument_with_its_description(workspace: Workspace) -> None:
    shown = _shown_arguments(show_args(workspace))
    documented = _documented_arguments()
    assert {"config", "namespace", "use_sim_time", "model", "weights", "image_topic", "device", "precision",
            "compile", "image_transport", "backend", "max_age_ms", "lifecycle", "autostart"} <= set(shown)
    assert set(shown) == set(documented), "README launch-argument table differs from --show-args"
    for name, description in shown.items():
        assert description.strip(), f"{name} has no description"
        assert documented[name] == description.strip(), name


def test_readme_shows_the_commands_these_tests_run() -> None:
    section = _readme_ros_native_section()
    assert "colcon build --packages-select seg_perception" in section
    assert ". install/setup.sh" in section
    for command in COMMANDS:
        assert command in section, f"README ROS-native section lacks: {command}"
    assert FRONT_YAML in section and CARS_YAML in section, "README should show the files the commands use"


def test_shipped_configs_apply_in_any_namespace() -> None:
    # A `seg_node:` section matches only a node at /seg_node: under namespace:=car the node would
    # silently run on defaults (one camera) instead of the file.
    for path in sorted((REPO_ROOT / "config").glob("*.yaml")):
        keys = set(yaml.safe_load(path.read_text()))
        assert keys <= {"/**", "/**/seg_node"}, f"{path.name}: sections {sorted(keys)}"


@pytest.fixture
def no_launch_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The default folder is absent, no folder is given, and no ROS install provides the packages."""
    monkeypatch.setattr(ros_native_support, "LAUNCH_SOURCES", tmp_path / "absent")
    monkeypatch.delenv(ros_native_support.LAUNCH_SOURCES_ENV, raising=False)
    monkeypatch.setattr(ros_native_support.importlib.util, "find_spec", lambda name: None)
    return tmp_path / "absent"


def test_missing_launch_sources_fail_naming_the_folder(no_launch_sources: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="absent") as info:
        ros_native_support.launch_pythonpath()
    assert "CI=true" in str(info.value) and "git clone" in str(info.value)


def test_missing_launch_sources_skip_with_one_line_saying_how_to_get_them(
        no_launch_sources: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for ci in (None, "false", ""):
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.skip.Exception) as info:
            ros_native_support.launch_pythonpath()
        line = str(info.value)
        assert "\n" not in line and str(no_launch_sources) in line
        for needed in ("https://github.com/ros2/launch ", "https://github.com/ros2/launch_ros",
                       ros_native_support.LAUNCH_SOURCES_ENV):
            assert needed in line, needed


def test_launch_sources_are_found_in_the_given_clones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two clones laid out as the upstream repositories are, named by the environment variable."""
    clones = {"launch": ("launch", "launch_xml", "launch_yaml"), "launch_ros": ("launch_ros", "ros2launch")}
    for clone, packages in clones.items():
        for package in packages:
            (tmp_path / clone / package / package).mkdir(parents=True)
            (tmp_path / clone / package / package / "__init__.py").write_text("")
    monkeypatch.setattr(ros_native_support, "LAUNCH_SOURCES", tmp_path / "absent")
    monkeypatch.setenv(ros_native_support.LAUNCH_SOURCES_ENV,
                       os.pathsep.join(str(tmp_path / clone) for clone in clones))
    monkeypatch.setenv("CI", "true")
    path = ros_native_support.launch_pythonpath()
    expected = [tmp_path / clone / package for clone, packages in clones.items() for package in packages]
    assert path == [*map(str, expected), str(ros_native_support.STUBS)]
    assert (ros_native_support.STUBS / "composition_interfaces" / "srv.py").is_file()


@pytest.mark.parametrize(("ci", "returncode", "outcome"), [("", 0, r"\b2 skipped"), ("true", 1, r"\b2 errors")])
def test_pytest_without_launch_sources_skips_or_fails_under_ci(tmp_path: Path, ci: str, returncode: int,
                                                               outcome: str) -> None:
    """What a fresh clone's ``make test`` does: the launch tests skip and say why; CI fails."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update({ros_native_support.LAUNCH_SOURCES_ENV: str(tmp_path / "nowhere"), "CI": ci,
                "PYTHONPATH": str(REPO_ROOT)})
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rsf",
                          str(Path(__file__)), "-k", "show_args_lists or given_overrides"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == returncode, output[-3000:]
    assert re.search(outcome, output.splitlines()[-1]), output[-3000:]  # a failing setup is an error
    if not ci:  # one line, however many tests skip
        assert len(re.findall(r"^SKIPPED \[2\] .*ROS 2 launch sources not found", output, re.MULTILINE)) == 1, output
    assert "ROS 2 launch sources not found" in output and "git clone https://github.com/ros2/launch" in output
    assert "colcon build" not in output  # the skip comes before the build


def test_given_overrides_pass_unchanged_and_empty_ones_keep_the_config(launch_sources: list[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Values the node may only accept after later changes (precision auto, compressed input, the
    # onnxruntime backend) must reach it as typed: the node, not the launch file, validates them.
    for folder in reversed(launch_sources):
        monkeypatch.syspath_prepend(folder)
    from launch.launch_context import LaunchContext

    spec = importlib.util.spec_from_file_location("seg_launch", REPO_ROOT / "launch" / "seg.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "Node", lambda **kwargs: kwargs)
    context = LaunchContext()
    given = {"precision": "auto", "image_transport": "compressed", "backend": "onnxruntime", "max_age_ms": "250"}
    context.launch_configurations.update({name: "" for name in (*module.OVERRIDES, *module.LIFECYCLE_ARGUMENTS)})
    context.launch_configurations.update({"config": "front.yaml", "namespace": "", "use_sim_time": "false", **given})
    (node,) = module._node(context)
    config, overrides, sim_time = node["parameters"]
    assert overrides == {"precision": "auto", "image_transport": "compressed", "backend": "onnxruntime",
                         "max_age_ms": 250.0}
    assert config.perform(context) == "front.yaml"  # the file first: the arguments override it
    assert sim_time == {"use_sim_time": False}
    context.launch_configurations["max_age_ms"] = "soon"
    with pytest.raises(module.LaunchArgumentError, match="max_age_ms"):
        module._node(context)


def test_launch_arguments_and_config_reach_the_node(front: Launch, ros: RosHarness) -> None:
    values = get_parameters(ros, front, "/front/seg_node", [
        "device", "precision", "image_topic", "max_age_ms", "qos_reliability", "publish_color", "model"])
    assert values == {
        "device": "cpu", "precision": "fp32", "image_topic": "/front_camera/image_raw",  # launch arguments
        "max_age_ms": 0.0,
        "qos_reliability": "reliable", "publish_color": True,  # front.yaml
        "model": "regseg",  # declared default: neither the file nor an argument names it
    }, front.output()[-3000:]


def test_image_on_the_given_topic_comes_back_as_labels_in_the_namespace(front: Launch, ros: RosHarness) -> None:
    outputs = _serve_one(ros, front, "/front_camera/image_raw", "/front")
    labels = outputs["labels"][0]
    assert (labels.height, labels.width, labels.encoding) == (*FRAME_SHAPE[:2], "mono8")
    assert labels.header.frame_id.startswith("frame")
    assert max(labels.data) < 19
    assert outputs["color"], "publish_color from front.yaml did not reach the node"


def _stop_with_sigint(launch: Launch, *, terminal: bool) -> None:
    """SIGINT (see ros_native_support.interrupt) ends launch and node with exit 0 within SHUTDOWN_LIMIT_S."""
    started = re.search(r"\[seg_node-1\]: process started with pid \[(\d+)\]", launch.output())
    assert started, launch.output()[-3000:]
    node_pid = int(started.group(1))
    signalled = time.monotonic()
    interrupt(launch.process, terminal=terminal)
    try:
        launch.process.wait(timeout=30.0)
    finally:
        elapsed = time.monotonic() - signalled
    output = launch.output()
    sent_to = "launch and node" if terminal else "launch"
    print(f"\nSIGINT to {sent_to}: exited after {elapsed * 1e3:.0f} ms, rc {launch.process.returncode}\n"
          f"{output[-1500:]}")
    assert launch.process.returncode == 0, output[-3000:]
    assert f"process has finished cleanly [pid {node_pid}]" in output, output[-3000:]
    assert not Path(f"/proc/{node_pid}").exists(), "seg_node outlived launch"
    assert "Traceback" not in output, output[-3000:]
    assert elapsed < SHUTDOWN_LIMIT_S, f"launch and node took {elapsed:.2f} s to stop"


def test_sigint_ends_launch_and_node_with_exit_0_within_2_s(front: Launch, ros: RosHarness) -> None:
    get_parameters(ros, front, "/front/seg_node", ["device"])  # the node is up (also when run alone)
    _stop_with_sigint(front, terminal=False)


def test_multi_camera_config_serves_every_camera_in_the_namespace(cars: Launch, ros: RosHarness) -> None:
    cameras = get_parameters(ros, cars, "/car/seg_node", ["cameras"])["cameras"]
    assert cameras == ["front", "rear"], cars.output()[-3000:]
    topics = get_parameters(ros, cars, "/car/seg_node", [f"{camera}.image_topic" for camera in cameras])
    for camera in cameras:
        topic = topics[f"{camera}.image_topic"]
        resolved = topic if topic.startswith("/") else f"/car/{topic}"
        outputs = _serve_one(ros, cars, resolved, f"/car/{camera}", kinds=("labels",))
        labels = outputs["labels"][0]
        assert (labels.height, labels.width, labels.encoding) == (*FRAME_SHAPE[:2], "mono8"), camera
    assert get_parameters(ros, cars, "/car/seg_node", ["device", "precision"]) == {"device": "cpu", "precision": "fp32"}
    # Ctrl-C in a terminal: the node gets SIGINT from the terminal and again from launch.
    _stop_with_sigint(cars, terminal=True)


def _launch_module(launch_sources: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple:
    for folder in reversed(launch_sources):
        monkeypatch.syspath_prepend(folder)
    from launch.launch_context import LaunchContext

    spec = importlib.util.spec_from_file_location("seg_launch", REPO_ROOT / "launch" / "seg.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    context = LaunchContext()
    context.launch_configurations.update({name: "" for name in (*module.OVERRIDES, *module.LIFECYCLE_ARGUMENTS)})
    context.launch_configurations.update({"config": "seg.yaml", "namespace": "", "use_sim_time": "false"})
    return module, context


def test_lifecycle_arguments_choose_the_action_and_the_events(launch_sources: list[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    module, context = _launch_module(launch_sources, monkeypatch)
    from launch.actions import EmitEvent, RegisterEventHandler
    from launch_ros.actions import LifecycleNode, Node

    made: list[tuple[str, dict]] = []

    class PlainAction(Node):
        def __init__(self, **kwargs: object) -> None:
            made.append(("plain", kwargs["parameters"][1]))
            super().__init__(**kwargs)

    class ManagedAction(LifecycleNode):
        def __init__(self, **kwargs: object) -> None:
            made.append(("managed", kwargs["parameters"][1]))
            super().__init__(**kwargs)

    monkeypatch.setattr(module, "Node", PlainAction)
    monkeypatch.setattr(module, "LifecycleNode", ManagedAction)
    assert len(module._node(context)) == 1 and made[-1] == ("plain", {})  # empty: the config decides
    context.launch_configurations["lifecycle"] = "false"
    assert len(module._node(context)) == 1 and made[-1] == ("plain", {"lifecycle": False})
    context.launch_configurations["lifecycle"] = "true"
    (node,) = module._node(context)  # managed, left unconfigured for a lifecycle manager
    assert isinstance(node, ManagedAction) and made[-1] == ("managed", {"lifecycle": True})
    context.launch_configurations["autostart"] = "true"
    handler, node, configure = module._node(context)
    assert isinstance(node, ManagedAction) and isinstance(handler, RegisterEventHandler)
    assert isinstance(configure, EmitEvent) and configure.event.transition_id == 1  # configure
    (activate,) = handler.event_handler.entities
    assert activate.event.transition_id == 3  # activate, once configure has reached inactive
    context.launch_configurations["lifecycle"] = ""
    with pytest.raises(module.LaunchArgumentError, match="autostart:=true needs lifecycle:=true"):
        module._node(context)
    context.launch_configurations["lifecycle"] = "sometimes"
    with pytest.raises(module.LaunchArgumentError, match="lifecycle:='sometimes' must be true or false"):
        module._node(context)


def _lifecycle_state(ros: RosHarness, launch: Launch, node_name: str) -> str:
    client = ros.probe.create_client(GetState, f"{node_name}/get_state")
    try:
        assert client.wait_for_service(timeout_sec=STARTUP_TIMEOUT_S), launch.output()[-3000:]
        future = client.call_async(GetState.Request())
        assert wait_for(future.done, timeout=STARTUP_TIMEOUT_S), launch.output()[-3000:]
        return future.result().current_state.label
    finally:
        ros.probe.destroy_client(client)


def test_autostart_configures_and_activates_the_managed_node(managed: Launch, ros: RosHarness) -> None:
    assert wait_for(lambda: _lifecycle_state(ros, managed, "/managed/seg_node") == "active",
                    timeout=STARTUP_TIMEOUT_S, interval=0.5), managed.output()[-3000:]
    assert get_parameters(ros, managed, "/managed/seg_node", ["lifecycle"]) == {"lifecycle": True}
    outputs = _serve_one(ros, managed, "/managed/camera/image_raw", "/managed", kinds=("labels",))
    assert outputs["labels"][0].encoding == "mono8"
    output = managed.output()
    assert "lifecycle state: inactive" in output and "lifecycle state: active" in output
    assert output.index("lifecycle state: inactive") < output.index("lifecycle state: active")
    _stop_with_sigint(managed, terminal=True)

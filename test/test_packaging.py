"""config/seg.yaml, the launch file and setup.py agree with the parameters the node declares.

``launch``/``launch_ros`` are not installable from PyPI, so the launch file is checked statically
(and additionally executed when a ROS install provides them).
"""

from __future__ import annotations

import ast
import importlib.util
import runpy
import xml.etree.ElementTree as ET
from pathlib import Path
from unittest import mock

import pytest
import yaml

from seg_perception.params import PARAMS, PARAMS_BY_NAME, load_params_file, validate_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_kwargs() -> dict:
    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return setup.call_args.kwargs


def test_config_lists_every_settable_parameter_with_its_default() -> None:
    document = yaml.safe_load((ROOT / "config" / "seg.yaml").read_text())
    values = document["/**"]["ros__parameters"]
    settable = {p.name for p in PARAMS if not p.read_only}
    assert set(values) == settable
    for name, value in values.items():
        assert value == PARAMS_BY_NAME[name].default, name
    assert validate_params(load_params_file(str(ROOT / "config" / "seg.yaml"))) == []


def test_every_config_parameter_is_commented() -> None:
    lines = (ROOT / "config" / "seg.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("    ") and not line.strip().startswith("#"):
            assert lines[i - 1].strip().startswith("#"), f"no comment above {line.strip()}"


def test_launch_file_matches_node_and_setup(setup_kwargs: dict) -> None:
    source = (ROOT / "launch" / "seg.launch.py").read_text()
    tree = ast.parse(source)
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    declared = {
        n.args[0].value for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"
    }
    assert declared == {"config", "model", "weights", "image_topic", "namespace", "use_sim_time"}
    overrides = next(
        n.value for n in ast.walk(tree)
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "OVERRIDES"
    )
    assert {e.value for e in overrides.elts} <= set(PARAMS_BY_NAME)
    scripts = {s.split("=")[0].strip() for s in setup_kwargs["entry_points"]["console_scripts"]}
    assert "seg_node" in strings and "seg_node" in scripts and "seg-perception" in scripts
    assert {"seg_perception", "config", "seg.yaml"} <= strings
    installed = {dest: files for dest, files in setup_kwargs["data_files"]}
    assert "config/seg.yaml" in installed["share/seg_perception/config"]
    assert "launch/seg.launch.py" in installed["share/seg_perception/launch"]
    assert "resource/seg_perception" in installed["share/ament_index/resource_index/packages"]
    assert "package.xml" in installed["share/seg_perception"]


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None, reason="launch_ros not installed")
def test_launch_description_builds_with_ros_launch() -> None:  # pragma: no cover - needs a ROS install
    spec = importlib.util.spec_from_file_location("seg_launch", ROOT / "launch" / "seg.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with mock.patch.object(module, "get_package_share_directory", return_value=str(ROOT)):
        description = module.generate_launch_description()
    names = {getattr(e, "name", None) for e in description.entities}
    assert {"config", "model", "weights", "image_topic", "namespace", "use_sim_time"} <= names


def test_package_xml_declares_runtime_dependencies() -> None:
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    depends = {e.text for e in root.iter("exec_depend")}
    for dep in ("rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "cv_bridge", "python3-numpy",
                "python3-opencv", "python3-torch"):
        assert dep in depends, dep
    assert root.find("export/build_type").text == "ament_python"
    assert (ROOT / "resource" / "seg_perception").exists()


def test_readme_documents_every_parameter_and_both_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    table_rows = {line.split("|")[1].strip().strip("`") for line in readme.splitlines()
                  if line.startswith("| `")}
    missing = [p.name for p in PARAMS if p.name not in table_rows]
    assert not missing, f"README parameter table lacks {missing}"
    for command in ("make demo", "make test", "colcon build", "ros2 launch seg_perception seg.launch.py"):
        assert command in readme, command

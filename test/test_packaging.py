"""config/seg.yaml, the launch file and setup.py agree with the parameters the node declares.

The launch file is checked statically here; test_launch.py runs it with the real launch system on
a real colcon build.
"""

from __future__ import annotations

import ast
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
        and isinstance(n.args[0], ast.Constant)
    }
    overrides = next(
        n.value for n in ast.walk(tree)
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "OVERRIDES"
    )
    override_names = {k.value for k in overrides.keys}
    # The overrides are declared in a loop over OVERRIDES, the others one by one.
    assert declared == {"config", "namespace", "use_sim_time"}
    # Each override sets the node parameter of its name. image_transport and backend are declared
    # by the compressed-input and ONNX-backend work, merged separately from the launch file.
    assert override_names - set(PARAMS_BY_NAME) <= {"image_transport", "backend"}
    scripts = {s.split("=")[0].strip() for s in setup_kwargs["entry_points"]["console_scripts"]}
    assert "seg_node" in strings and "seg_node" in scripts and "seg-perception" in scripts
    assert {"seg_perception", "config", "seg.yaml"} <= strings
    installed = {dest: files for dest, files in setup_kwargs["data_files"]}
    assert "config/seg.yaml" in installed["share/seg_perception/config"]
    assert "launch/seg.launch.py" in installed["share/seg_perception/launch"]
    assert "resource/seg_perception" in installed["share/ament_index/resource_index/packages"]
    assert "package.xml" in installed["share/seg_perception"]


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

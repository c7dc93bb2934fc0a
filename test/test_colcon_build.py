"""A real ``colcon build --packages-select seg_perception`` installs what ``ros2 launch``/``ros2 run`` need.

ros2 finds a package only through the ament index under ``AMENT_PREFIX_PATH``, its launch and
config files under ``share/<pkg>`` and its executables under ``lib/<pkg>``; a setup.py that pip
installs fine can still break any of these. test_launch.py then starts the node from this install.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from ros_native_support import PACKAGE, REPO_ROOT, Workspace, colcon_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return colcon_workspace(tmp_path_factory)


def test_sourced_install_resolves_the_package_through_the_ament_index(workspace: Workspace) -> None:
    print(f"\ncolcon build took {workspace.build_seconds:.1f} s")
    marker = workspace.prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE
    assert marker.is_file(), workspace.build_output[-2000:]
    lookup = (
        "from ament_index_python.packages import get_package_prefix, get_package_share_directory\n"
        "import seg_perception\n"
        f"print(get_package_prefix('{PACKAGE}'))\n"
        f"print(get_package_share_directory('{PACKAGE}'))\n"
        "print(seg_perception.__file__)\n"
    )
    found = subprocess.run([sys.executable, "-c", lookup], cwd=workspace.root, env=workspace.env,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert found[0] == str(workspace.prefix)
    assert found[1] == str(workspace.prefix / "share" / PACKAGE)
    # The package code itself comes from the install, not from the checkout or a pip install.
    assert found[2].startswith(str(workspace.prefix / "lib")), found[2]


def test_launch_and_config_files_are_installed_unchanged(workspace: Workspace) -> None:
    share = workspace.prefix / "share" / PACKAGE
    shipped = ["package.xml", *(f"launch/{p.name}" for p in (REPO_ROOT / "launch").glob("*.launch.py")),
               *(f"config/{p.name}" for p in (REPO_ROOT / "config").iterdir() if p.suffix in (".yaml", ".xml"))]
    assert "launch/seg.launch.py" in shipped and "config/seg.yaml" in shipped
    for relative in shipped:
        assert (share / relative).is_file(), f"{relative} is not installed"
        assert (share / relative).read_bytes() == (REPO_ROOT / relative).read_bytes(), relative
    assert yaml.safe_load((share / "config" / "seg.yaml").read_text())["/**"]["ros__parameters"]


def test_seg_node_is_installed_where_ros2_run_looks(workspace: Workspace) -> None:
    executable = workspace.prefix / "lib" / PACKAGE / "seg_node"
    assert executable.is_file() and os.access(executable, os.X_OK)
    lines = executable.read_text().splitlines()
    interpreter = lines[0].removeprefix("#!").strip()
    assert os.access(interpreter, os.X_OK), f"seg_node's interpreter {interpreter} does not exist"
    assert "seg_node" in executable.read_text()

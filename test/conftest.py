"""Shared test fixtures: reference data location, DDS isolation, small deterministic frames."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Golden data produced by the official implementations; lives beside the checkout.
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"

# DDS traffic stays on loopback, in a domain of its own per test process.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))

# Exported ONNX models (backend auto/onnxruntime) are cached here, not in the user's cache folder;
# shared between runs (keys are content hashes, writes atomic), so a re-run skips the exports.
os.environ.setdefault("SEG_PERCEPTION_CACHE_DIR", str(Path(tempfile.gettempdir()) / "seg_perception_test_cache"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


def reference(*parts: str) -> Path:
    """Path of a reference file; skips the test with a clear reason when it is absent."""
    path = REFERENCE_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data not found at {path}")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# -- a node over DDS with a saved random-init RegSeg (test_node.py, test_node_multicam.py) -----------
@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A RegSeg checkpoint file (random init, seeded), so node and reference engine share weights."""
    from seg_perception.models import build_model

    torch.manual_seed(11)
    path = tmp_path_factory.mktemp("w") / "regseg.pt"
    torch.save(build_model("regseg").state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def reference_engine(weights: str):
    """The engine alone with the node's weights: what the node's labels must equal."""
    from seg_perception.engine import EngineConfig, SegmentationEngine

    return SegmentationEngine(EngineConfig(device="cpu", precision="fp32", weights=weights))


@pytest.fixture(scope="module")
def ros():
    """One ROS context with an executor thread for the module's nodes (see ros_harness.py)."""
    from ros_harness import RosHarness

    harness = RosHarness()
    yield harness
    harness.close()


# -- the ROS 2 launch system's sources (test_launch.py) ---------------------------------------------
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests that need the launch sources skip before any setup when they are missing (fail under
    CI=true); raised here rather than in a fixture, every such test folds into one summary line."""
    if "launch_sources" in getattr(item, "fixturenames", ()):
        from ros_native_support import launch_pythonpath

        launch_pythonpath()


@pytest.fixture(scope="module")
def launch_sources() -> list[str]:
    """PYTHONPATH folders of the ROS 2 launch system (see ros_native_support.launch_pythonpath)."""
    from ros_native_support import launch_pythonpath

    return launch_pythonpath()


# -- networks that are not in the registry, exported to ONNX once per session (byo_support.py) ------
@pytest.fixture(scope="session")
def byo_networks(tmp_path_factory: pytest.TempPathFactory):
    """torchvision's LR-ASPP MobileNetV3 exported at a fixed 256x256 and DeepLabV3-MobileNetV3 with
    dynamic size (random weights), with the PyTorch modules the reference labels come from."""
    from types import SimpleNamespace

    from byo_support import export, torchvision_network

    folder = tmp_path_factory.mktemp("byo")
    lraspp, deeplabv3 = torchvision_network("lraspp"), torchvision_network("deeplabv3", seed=1)
    return SimpleNamespace(
        folder=folder, lraspp=lraspp, deeplabv3=deeplabv3,
        lraspp_path=export(lraspp, folder / "lraspp_256.onnx", (256, 256), dynamic=False),
        deeplabv3_path=export(deeplabv3, folder / "deeplabv3_dynamic.onnx", (64, 96), dynamic=True),
    )

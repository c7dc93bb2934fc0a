"""Checkpoints: safe unpickling (pickled code never runs), a distinct error for each way a file
can be wrong, and what the node does with a bad weights file at startup and at runtime."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rclpy.parameter import Parameter
from reliability_support import NodeHarness, image_msg

from seg_perception.diagnostics import ERROR, OK, WARN
from seg_perception.models import build_model, load_checkpoint
from seg_perception.models.checkpoint import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    ClassCountMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
)


class _PlantsMarker:
    """Unpickling this creates a file: proof that code in a checkpoint ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def regseg_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("regseg", 19).state_dict()


def test_pickled_code_is_refused_and_never_runs(tmp_path: Path, regseg_state) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": regseg_state, "extra": _PlantsMarker(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="would run pickled code") as info:
        load_checkpoint(build_model("regseg", 19), path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    # Control: the file really is dangerous; an unsafe load runs the code.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_plain_metadata_with_numpy_scalars_loads(tmp_path: Path, regseg_state) -> None:
    path = tmp_path / "public.pth"
    torch.save({"model_state": regseg_state, "best_iou": np.float64(0.78), "epoch": np.int64(12),
                "names": ["road", "sidewalk"]}, path)
    model = load_checkpoint(build_model("regseg", 19), path)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in regseg_state.items())


def test_each_bad_file_gives_its_own_error(tmp_path: Path, regseg_state) -> None:
    good = tmp_path / "regseg19.pth"
    torch.save(regseg_state, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:1000])
    errors = {}
    cases = {
        "missing": (lambda: build_model("regseg", 19), tmp_path / "nope.pth"),
        "truncated": (lambda: build_model("regseg", 19), truncated),
        "architecture": (lambda: build_model("regseg", 19, "exp53_decoder29"), good),
        "classes": (lambda: build_model("regseg", 7), good),
    }
    for name, (model, path) in cases.items():
        with pytest.raises(Exception) as info:  # the exact type is the assertion
            load_checkpoint(model(), path)
        errors[name] = info.value
    assert type(errors["missing"]) is CheckpointNotFoundError
    assert isinstance(errors["missing"], FileNotFoundError)
    assert type(errors["truncated"]) is CorruptCheckpointError and "not a readable" in str(errors["truncated"])
    assert type(errors["architecture"]) is CheckpointMismatchError
    assert type(errors["classes"]) is ClassCountMismatchError
    assert (errors["classes"].checkpoint_classes, errors["classes"].model_classes) == (19, 7)
    assert len({type(e) for e in errors.values()}) == 4


def test_fail_fast_exits_non_zero_naming_the_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent_weights.pth"
    proc = subprocess.run(
        [sys.executable, "-m", "seg_perception.process", "--ros-args", "-p", "device:=cpu",
         "-p", "precision:=fp32", "-p", f"weights:={missing}"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )
    assert proc.returncode == 1
    assert "CheckpointNotFoundError" in proc.stderr and str(missing) in proc.stderr


def test_without_fail_fast_the_node_stays_up_reports_error_and_recovers(tmp_path: Path, regseg_state) -> None:
    good, wrong_classes = tmp_path / "good.pth", tmp_path / "seven_classes.pth"
    torch.save(regseg_state, good)
    broken = tmp_path / "partial_download.pth"
    broken.write_bytes(good.read_bytes()[:4096])
    torch.save(build_model("regseg", 7).state_dict(), wrong_classes)
    with NodeHarness({"fail_fast": False, "weights": str(broken)}) as h:
        assert h.node.scheduler.engine is None
        error = h.wait_level(ERROR)
        assert "model not loaded" in error.message and "CorruptCheckpointError" in error.message
        assert str(broken) in error.message
        h.publisher.publish(image_msg(np.zeros((16, 16, 3), np.uint8), frame_id="no_model"))
        h.wait_received(1)
        assert h.wait_settled()["dropped"] == {"model_not_loaded": 1}

        # Fixing the parameter at runtime loads the model: serving and OK again.
        assert h.node.set_parameters([Parameter("weights", value=str(good))])[0].successful
        h.wait_for(lambda: h.node.scheduler.engine is not None, 60.0, "model load")
        h.publisher.publish(image_msg(np.zeros((16, 16, 3), np.uint8), frame_id="served"))
        h.wait_labels("served")
        assert h.wait_level(OK).values["weights"] == str(good)

        # A checkpoint for another class count: refused, old model kept, the reason reported.
        serving = h.node.scheduler.engine
        assert h.node.set_parameters([Parameter("weights", value=str(wrong_classes))])[0].successful
        h.wait_for(lambda: h.node.scheduler.loading is None, 60.0, "load attempt")
        assert h.node.scheduler.engine is serving and h.node.get_parameter("weights").value == str(good)
        warn = h.wait_level(WARN)
        assert "ClassCountMismatchError" in warn.message and "7 classes" in warn.message

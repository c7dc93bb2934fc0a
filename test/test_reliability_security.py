"""No file oracle over DDS: a runtime ``weights`` change may only load from ``weights_dirs``, a
refusal says nothing about files outside them, and no byte of a refused file is ever echoed (on
the log, in a set result, on ``/diagnostics``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from seg_perception import params as P
from seg_perception.models.checkpoint import (
    SHIPPED_WEIGHTS_DIR,
    CheckpointError,
    read_checkpoint,
)
from seg_perception.weights_access import allowed_weights_dirs, runtime_weights_problem

SECRET = "root:x:0:0:SECRET-4711"


class SecretClassName:
    """Unpickling this needs code: the weights-only loader names the class when it refuses."""


def _error(path: Path) -> str:
    """The loader's message about ``path``, without the path itself."""
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    return str(info.value).replace(str(path), "<path>")


def test_no_byte_of_a_refused_file_is_echoed(tmp_path: Path) -> None:
    text = tmp_path / "passwd"
    text.write_text(SECRET + "\n")
    message = _error(text)
    assert "not a torch checkpoint" in message and "root" not in message and "SECRET" not in message

    bad_pickle = tmp_path / "bad.pt"
    bad_pickle.write_bytes(b"\x80\x02\xffSECRET-4711")
    message = _error(bad_pickle)
    assert "SECRET" not in message and "\\xff" not in message and "load key" not in message

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": {}, "hook": SecretClassName()}, unsafe, pickle_protocol=2)  # names the class
    message = _error(unsafe)
    assert "pickled code" in message and "SecretClassName" not in message and "GLOBAL" not in message

    cut = tmp_path / "cut.pt"
    torch.save({"SECRET_KEY_NAME": torch.zeros(4)}, cut)
    cut.write_bytes(cut.read_bytes()[:200])
    message = _error(cut)
    assert "not a readable torch checkpoint" in message and "SECRET" not in message


def test_default_dirs_are_the_startup_weights_folder_and_the_shipped_weights(tmp_path: Path) -> None:
    startup = tmp_path / "models" / "a.pt"
    assert allowed_weights_dirs(str(startup), []) == (str(SHIPPED_WEIGHTS_DIR), str(tmp_path / "models"))
    assert allowed_weights_dirs("", []) == (str(SHIPPED_WEIGHTS_DIR),)
    assert allowed_weights_dirs("synthetic_street", []) == (str(SHIPPED_WEIGHTS_DIR),)
    assert allowed_weights_dirs(str(startup), [str(tmp_path / "x"), "~/w"]) == (
        str(tmp_path / "x"), os.path.realpath(os.path.expanduser("~/w")))


def test_runtime_weights_must_be_inside_the_allowed_folders(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "w.pt").write_bytes(b"x")
    dirs = allowed_weights_dirs("", [str(allowed)])
    assert runtime_weights_problem(str(allowed / "w.pt"), dirs) is None
    assert runtime_weights_problem(str(allowed / "missing.pt"), dirs) is None  # the loader says so
    assert runtime_weights_problem("", dirs) is None  # random weights read no file
    (allowed / "escape").symlink_to(tmp_path)
    outside = tmp_path / "secret.pt"
    outside.write_text(SECRET)
    for value in (str(allowed / ".." / "secret.pt"), str(allowed / "escape" / "secret.pt"),
                  str(tmp_path / "allowedX" / "w.pt"), "/etc/passwd", "x\x00y", "/" * 100_000):
        assert "outside weights_dirs" in runtime_weights_problem(value, dirs), value
    assert runtime_weights_problem("synthetic_street", allowed_weights_dirs("", [])) is None


def test_a_refusal_is_the_same_whether_the_path_exists_or_not(tmp_path: Path) -> None:
    dirs = allowed_weights_dirs("", [str(tmp_path / "allowed")])
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text(SECRET)
    os.mkfifo(tmp_path / "a_fifo")
    answers = {runtime_weights_problem(str(tmp_path / name), dirs).replace(name, "<name>")
               for name in ("a_folder", "a_file", "a_fifo", "nothing_here")}
    assert len(answers) == 1
    (answer,) = answers
    assert "exist" not in answer and "directory" not in answer and "SECRET" not in answer


def test_weights_dirs_are_absolute_folders() -> None:
    values = {**P.defaults(), "device": "cpu", "precision": "fp32"}
    assert P.validate_params({**values, "weights_dirs": ["/opt/models", "~/models"]}) == []
    assert "absolute" in P.validate_params({**values, "weights_dirs": ["models"]})[0]
    assert "at most 32" in P.validate_params({**values, "weights_dirs": ["/a"] * 33})[0]


@pytest.mark.ros
def test_a_participant_cannot_probe_or_read_files_through_the_node(tmp_path: Path, capfd) -> None:
    from functools import partial

    from rclpy.parameter import Parameter
    from reliability_support import FakeEngine
    from ros_harness import RosHarness, wait_for

    from seg_perception.node import SegmentationNode

    def factory(config):  # the real checkpoint reader, a fake network
        if config.weights:
            read_checkpoint(config.weights)
        return FakeEngine(config)

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "passwd").write_text(SECRET + "\n")
    (tmp_path / "shadow").write_text(SECRET + "\n")
    ros = RosHarness()
    try:
        node = ros.add(partial(SegmentationNode, engine_factory=factory), device="cpu", precision="fp32",
                       weights_dirs=[str(allowed)])
        reasons = {}
        for name in ("shadow", "no_such_file", "."):
            (result,) = node.set_parameters([Parameter("weights", value=str(tmp_path / name))])
            assert not result.successful
            reasons[name] = result.reason.replace(repr(str(tmp_path / name)), "<path>")
        assert len(set(reasons.values())) == 1, reasons  # exists, missing, a folder: one answer
        assert node.scheduler.loading is None and node.values["weights"] == ""
        (restart,) = node.set_parameters([Parameter("weights_dirs", value=[str(tmp_path)])])
        assert not restart.successful and "restart" in restart.reason  # a participant cannot widen it
        # A file inside the allowed folder is tried, and refused without echoing a byte of it.
        (result,) = node.set_parameters([Parameter("weights", value=str(allowed / "passwd"))])
        assert result.successful
        assert wait_for(lambda: node.scheduler.reload_error is not None, timeout=30.0)
        assert wait_for(lambda: node.values["weights"] == "", timeout=10.0)  # reverted
        (status,) = node.diagnostics().status
        shown = (status.message + " ".join(kv.value for kv in status.values)).replace(str(allowed), "<allowed>")
        assert "not a torch checkpoint" in shown
        assert "SECRET" not in shown and "root" not in shown
    finally:
        ros.close()
    assert "SECRET" not in capfd.readouterr().err

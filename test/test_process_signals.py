"""The seg_node process under signals and bad startup input: exit 0 on SIGINT/SIGTERM at any
moment (model loading, a long inference, twice in a row), books logged, nothing aborts; a bad
params file is one line; typos in parameter names and duplicate node names are warned about."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from reliability_support import CPU_PARAMS, FakeEngine, image_msg
from sensor_msgs.msg import Image

from seg_perception import process
from seg_perception.node import SegmentationNode
from seg_perception.params import params_file_problem, unknown_parameter_message
from seg_perception.shutdown import ShutdownRequested, ShutdownSignals

pytestmark = pytest.mark.ros

BAD_OUTPUT = ("Traceback", "terminate called", "Failed to publish log message", "Segmentation fault")


class NodeProcess:
    """``python -m seg_perception.process`` (the console entry) with its output read line by line."""

    def __init__(self, *params: str) -> None:
        args = [a for p in ("device:=cpu", "qos_reliability:=reliable", "max_age_ms:=0.0", *params)
                for a in ("-p", p)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seg_perception.process", "--ros-args", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None or not self._queue.empty(), "".join(self.lines)
            assert time.monotonic() < deadline, f"no {text!r} in:\n" + "".join(self.lines)
            try:
                self.lines.append(self._queue.get(timeout=0.1))
            except queue.Empty:
                pass

    def signal_and_wait(self, sig: signal.Signals, again_after: float | None = None) -> tuple[int, float, str]:
        """Send ``sig`` (and once more after ``again_after`` s); exit code, seconds to exit, output."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        if again_after is not None:
            time.sleep(again_after)
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        elapsed = time.monotonic() - sent
        time.sleep(0.2)  # let the reader drain the pipe
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return code, elapsed, "".join(self.lines)


def test_signals_during_model_loading_exit_zero_without_a_traceback() -> None:
    # the warm-up at a large inference size keeps the node in startup for many seconds
    node = NodeProcess("inference_size:=[1024, 2048]")
    node.wait_for("RANDOM weights", timeout=120)  # logged as the model is built, before warm-up
    time.sleep(0.5)
    code, elapsed, output = node.signal_and_wait(signal.SIGTERM, again_after=0.2)
    assert code == 0, output
    assert elapsed < 5.0, output
    assert "SIGTERM during startup, stopped before serving" in output
    assert not any(bad in output for bad in BAD_OUTPUT), output


def test_signal_during_a_long_inference_exits_zero_with_the_books_logged() -> None:
    # warm-up runs at 64x64 (inference_size follows the frames); the frame below takes seconds
    node = NodeProcess()
    context = rclpy.Context()
    context.init()
    driver = Node("signal_driver", context=context)
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
    publisher = driver.create_publisher(Image, "camera/image_raw", qos)
    try:
        node.wait_for("segmenting /camera/image_raw", timeout=120)
        deadline = time.monotonic() + 30
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        frame = np.zeros((1024, 2048, 3), np.uint8)
        publisher.publish(image_msg(frame, frame_id="big"))
        time.sleep(1.5)  # received and inside the model by now (it runs for seconds on this CPU)
        code, elapsed, output = node.signal_and_wait(signal.SIGINT, again_after=0.3)
    finally:
        driver.destroy_node()
        context.try_shutdown()
    assert code == 0, output
    assert elapsed < 3.0, output
    assert "stopped in" in output and "1 frames received" in output, output
    assert not any(bad in output for bad in BAD_OUTPUT), output


def test_a_managed_node_waits_unconfigured_and_exits_zero_on_a_signal() -> None:
    node = NodeProcess("lifecycle:=true")
    node.wait_for("is unconfigured", timeout=120)  # logged just before the node starts spinning
    time.sleep(1.0)
    code, elapsed, output = node.signal_and_wait(signal.SIGINT)
    assert code == 0, output
    assert elapsed < 3.0, output
    assert "stopped in" in output and "0 frames received" in output, output
    assert "segmenting" not in output and "one model for" not in output  # nothing built, nothing taken
    assert not any(bad in output for bad in BAD_OUTPUT), output


def test_a_signal_during_a_long_configure_exits_zero_without_waiting_for_the_model() -> None:
    # the warm-up at a large inference size keeps configure busy for many seconds
    node = NodeProcess("lifecycle:=true", "inference_size:=[1024, 2048]")
    context = rclpy.Context()
    context.init()
    driver = Node("configure_driver", context=context)
    client = driver.create_client(ChangeState, "/seg_node/change_state")
    try:
        node.wait_for("is unconfigured", timeout=120)
        assert client.wait_for_service(timeout_sec=30.0)
        client.call_async(ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE)))
        node.wait_for("RANDOM weights", timeout=60)  # logged as the model is built, before warm-up
        time.sleep(0.5)
        code, elapsed, output = node.signal_and_wait(signal.SIGTERM)
    finally:
        driver.destroy_node()
        context.try_shutdown()
    assert code == 0, output
    assert elapsed < 5.0, output
    assert "SIGTERM during startup, stopped before serving" in output
    assert "lifecycle state: inactive" not in output  # it did not wait for configure to finish
    assert not any(bad in output for bad in BAD_OUTPUT), output


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        ("seg_node:\n  ros__parameters:\n    device: [cpu\n", "is not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("dir", "is a directory"),
    ],
    ids=["missing", "malformed", "not_a_mapping", "directory"],
)
def test_bad_params_file_is_one_line_and_exit_2(tmp_path: Path, content: str | None, expected: str,
                                                capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "params.yaml"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    argv = ["--ros-args", "-p", "device:=cpu", "--params-file", str(path)]
    assert expected in params_file_problem(argv)
    assert process.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seg_node: params file") and expected in err and "\n" not in err


def test_good_params_file_passes_the_check(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("/**:\n  ros__parameters:\n    device: cpu\n")
    assert params_file_problem(["--ros-args", "--params-file", str(path)]) is None
    assert params_file_problem(["--ros-args", "-p", "device:=cpu"]) is None


def test_unknown_parameter_names_are_warned_with_the_closest_known(capfd: pytest.CaptureFixture) -> None:
    assert unknown_parameter_message("devise", ["device", "model"]) == \
        "unknown parameter 'devise' is ignored; did you mean 'device'?"
    assert "did you mean" not in unknown_parameter_message("zzzzzz", ["device", "model"])
    context = rclpy.Context()
    context.init()
    params = {**CPU_PARAMS, "max_age": 3.0, "publish_colour": True}
    try:
        node = SegmentationNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
                                context=context, engine_factory=FakeEngine)
        node.destroy_node()
    finally:
        context.try_shutdown()
    err = capfd.readouterr().err
    assert "unknown parameter 'max_age' is ignored; did you mean 'max_age_ms'?" in err
    assert "unknown parameter 'publish_colour' is ignored; did you mean 'publish_color'?" in err
    assert "unknown parameter 'device'" not in err


def test_a_camera_section_for_a_camera_not_in_cameras_is_named(capfd: pytest.CaptureFixture) -> None:
    context = rclpy.Context()
    context.init()
    params = {**CPU_PARAMS, "cameras": ["front"], "frnt.image_topic": "/cams/front", "b.max_age_ms": 3.0}
    try:
        node = SegmentationNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
                                context=context, engine_factory=FakeEngine)
        node.destroy_node()
    finally:
        context.try_shutdown()
    err = capfd.readouterr().err
    assert ("parameter 'frnt.image_topic' is ignored: camera 'frnt' is not in cameras (cameras: front); "
            "did you mean 'front'?") in err
    assert "camera 'b' is not in cameras" in err
    assert "did you mean 'image_topic'" not in err and "did you mean 'max_age_ms'" not in err


def test_two_nodes_with_one_name_are_warned_about() -> None:
    context = rclpy.Context()
    context.init()
    overrides = [Parameter(k, value=v) for k, v in CPU_PARAMS.items()]
    nodes = [SegmentationNode(parameter_overrides=overrides, context=context, engine_factory=FakeEngine)
             for _ in range(2)]
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not nodes[0]._duplicate_seen:
            nodes[0]._check_duplicate_name()
            time.sleep(0.05)
        assert nodes[0]._duplicate_seen
        nodes[1].destroy_node()
        nodes.pop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and nodes[0]._duplicate_seen:
            nodes[0]._check_duplicate_name()
            time.sleep(0.05)
        assert not nodes[0]._duplicate_seen  # the warning is re-armed once the other one is gone
    finally:
        for node in nodes:
            node.destroy_node()
        context.try_shutdown()


def test_process_module_imports_nothing_heavy() -> None:
    # the console entry installs its signal handlers before torch and rclpy are imported
    code = "import sys, seg_perception.process; print('torch' in sys.modules, 'rclpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ}).stdout
    assert out.split() == ["False", "False"]


def test_interruptible_steps_raise_on_a_signal_and_the_rest_of_running_only_requests() -> None:
    signals = ShutdownSignals()  # not installed: the handler is called as the signal would call it
    signals.running()
    with signals.interruptible():
        pass
    assert signals.phase == "running"
    signals._handle(signal.SIGINT, None)  # running, outside: a request the spin loop polls
    assert signals.requested.is_set() and signals.phase == "running"
    signals = ShutdownSignals()
    signals.running()
    with pytest.raises(ShutdownRequested, match="SIGTERM"), signals.interruptible():
        signals._handle(signal.SIGTERM, None)
    assert signals.phase == "stopping"  # a second signal while unwinding does not raise again
    signals._handle(signal.SIGTERM, None)

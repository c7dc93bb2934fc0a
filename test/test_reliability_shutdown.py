"""Shutdown: the ``seg_node`` process exits cleanly within 2 s of SIGINT, SIGTERM or SIGHUP while
frames are in flight, with its worker thread stopped and its books closed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
import torch
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from reliability_support import image_msg
from sensor_msgs.msg import Image

pytestmark = pytest.mark.ros

SHUTDOWN_LIMIT_S = 2.0


def _seg_node_command() -> list[str]:
    script = shutil.which("seg_node", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "seg_perception.process"]


# SIGHUP: the terminal the node runs in was closed; it stops like SIGTERM (not 129, books logged).
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_seg_node_stops_within_two_seconds_with_frames_in_flight(sig: signal.Signals) -> None:
    device, precision = ("cuda", "fp16") if torch.cuda.is_available() else ("cpu", "fp32")
    proc = subprocess.Popen(
        _seg_node_command() + ["--ros-args", "-p", f"device:={device}", "-p", f"precision:={precision}",
                               "-p", "qos_reliability:=reliable", "-p", "max_age_ms:=0.0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    context = rclpy.Context()
    context.init()
    driver = Node("shutdown_driver", context=context)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
    publisher = driver.create_publisher(Image, "camera/image_raw", qos)
    labels: list[str] = []
    driver.create_subscription(Image, "segmentation/labels", lambda m: labels.append(m.header.frame_id), qos)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(driver)
    frame = np.random.default_rng(0).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    try:
        deadline = time.monotonic() + 60.0
        sent = 0
        # Flood faster than the node segments, until it has served a few frames: from then on
        # there is always a frame being inferred and one waiting.
        while len(labels) < 3:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "seg_node never served a frame"
            publisher.publish(image_msg(frame, frame_id=f"f{sent}"))
            sent += 1
            executor.spin_once(timeout_sec=0.01)
        for _ in range(5):
            publisher.publish(image_msg(frame, frame_id=f"f{sent}"))
            sent += 1
        signalled = time.monotonic()
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10.0)
        finally:
            elapsed = time.monotonic() - signalled
        output = proc.communicate()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        executor.shutdown()
        driver.destroy_node()
        context.try_shutdown()
    print(f"\n{sig.name}: exited in {elapsed * 1e3:.0f} ms, rc {proc.returncode}\n{output[-600:]}")
    assert elapsed < SHUTDOWN_LIMIT_S, output
    assert proc.returncode == 0, output
    for bad in ("Traceback", "terminate called", "Segmentation fault", "CUDA error", "still busy"):
        assert bad not in output, output
    stopped = re.search(r"stopped in (\d+) ms: (\d+) frames received, (\d+) processed", output)
    assert stopped, output
    assert int(stopped.group(3)) >= 3 and int(stopped.group(2)) > int(stopped.group(3))

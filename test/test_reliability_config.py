"""Configuration: invalid values are refused at startup or on set with the reason, the node is
never half-configured, and model changes load in the background with the old model serving
until the swap (or for good, when the load fails)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from reliability_support import CPU_PARAMS, FakeEngine, NodeHarness, image_msg

from seg_perception.diagnostics import OK, WARN
from seg_perception.engine import EngineConfig
from seg_perception.models.checkpoint import CheckpointNotFoundError
from seg_perception.node import SegmentationNode
from seg_perception.parameter_state import plain_value

pytestmark = pytest.mark.ros


@pytest.fixture
def context():
    ctx = rclpy.Context()
    ctx.init()
    yield ctx
    ctx.try_shutdown()


def _fake(config: EngineConfig) -> FakeEngine:
    return FakeEngine(config)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"num_classes": -1}, "num_classes out of range"),
        ({"inference_size": [-4, 8]}, "inference_size must be [height, width]"),
        ({"precision": "fp8"}, "precision must be one of auto, fp16, fp32"),
        ({"overlay_alpha": 1.5}, "overlay_alpha out of range"),
        ({"model": "no_such_net"}, "'no_such_net' is not a registered model"),
        ({"variant": "no_such_variant"}, "unknown variant 'no_such_variant'"),
        ({"model_options": "{no_such_option: 1}"}, "unknown option(s) no_such_option"),
        ({"model_options": "[1, 2]"}, "model_options must be a YAML mapping"),
        ({"precision": "fp16"}, "precision fp16 needs device cuda"),
        ({"drop_warn_ratio": 0.9}, "drop_warn_ratio must not exceed drop_error_ratio"),
        ({"failure_error_count": 0}, "failure_error_count out of range"),
    ],
)
def test_invalid_startup_values_are_refused_with_the_reason(context, overrides, reason) -> None:
    params = {**CPU_PARAMS, **overrides}
    built = []
    with pytest.raises(Exception) as info:  # rclpy's or ours, the reason is what matters
        built.append(SegmentationNode(
            parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
            context=context, engine_factory=lambda c: built.append(c) or FakeEngine(c),
        ))
    assert reason in str(info.value)
    assert built == []  # refused before any engine was built
    # Nothing half-made is left behind: the same name starts cleanly in the same context.
    node = SegmentationNode(parameter_overrides=[Parameter(k, value=v) for k, v in CPU_PARAMS.items()],
                            context=context, engine_factory=_fake)
    assert node.scheduler.engine is not None
    node.destroy_node()


def test_seg_node_exits_non_zero_with_the_reason_on_invalid_parameters() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "seg_perception.process", "--ros-args", "-p", "device:=cpu",
         "-p", "precision:=fp32", "-p", "model:=no_such_net"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert "'no_such_net' is not a registered model" in proc.stderr


@pytest.fixture
def fake_harness():
    with NodeHarness(engine_factory=_fake) as h:
        yield h


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("overlay_alpha", -0.1, "out of range"),
        ("precision", "int4", "precision must be one of auto, fp16, fp32, int8"),
        ("model", "no_such_net", "not a registered model"),
        ("inference_size", [0, 64], "inference_size must be"),
        ("num_classes", "nineteen", "type"),
        ("image_topic", "other/topic", "image_topic takes effect only on restart"),
        ("latency_warn_ms", 900.0, "latency_warn_ms must not exceed latency_error_ms"),
    ],
)
def test_invalid_runtime_values_are_refused_and_change_nothing(fake_harness, name, value, reason) -> None:
    node = fake_harness.node
    before_values, before_engine = dict(node.values), node.scheduler.engine
    result = node.set_parameters([Parameter(name, value=value)])[0]
    assert not result.successful and reason in result.reason
    assert node.values == before_values and node.scheduler.engine is before_engine
    assert plain_value(node.get_parameter(name).value) == before_values[name]


def test_an_atomic_set_with_one_bad_value_applies_none(fake_harness) -> None:
    node = fake_harness.node
    result = node.set_parameters_atomically(
        [Parameter("overlay_alpha", value=0.25), Parameter("precision", value="fp8")]
    )
    assert not result.successful and "precision" in result.reason
    assert node.values["overlay_alpha"] == 0.5 and node.get_parameter("overlay_alpha").value == 0.5


def _label_of(harness: NodeHarness, frame_id: str, red: int = 10) -> int:
    harness.publisher.publish(image_msg(np.full((8, 8, 3), red, np.uint8), frame_id=frame_id))
    return int(harness.wait_labels(frame_id).labels[0, 0]) - red


#: Runtime ``weights`` changes below name files relative to the working folder.
HERE = {"weights_dirs": [os.getcwd()]}


def test_model_swap_loads_in_background_while_the_old_model_serves() -> None:
    gate = threading.Event()
    loading = threading.Event()

    def factory(config: EngineConfig) -> FakeEngine:
        if config.weights == "new.pth":
            loading.set()
            assert gate.wait(20.0)
            return FakeEngine(config, label_offset=100)
        return FakeEngine(config)

    with NodeHarness(HERE, engine_factory=factory) as h:
        old = h.node.scheduler.engine
        result = h.node.set_parameters([Parameter("weights", value="new.pth")])[0]
        assert result.successful
        assert loading.wait(10.0)
        # Loading: the old engine still answers every frame, diagnostics say what is loading.
        assert [_label_of(h, f"during{i}") for i in range(3)] == [0, 0, 0]
        assert h.node.scheduler.engine is old
        assert "new.pth" in h.next_diagnostic().values["model_loading"]
        busy = h.node.set_parameters([Parameter("variant", value="exp53_decoder29")])[0]
        assert not busy.successful and "still loading" in busy.reason
        gate.set()
        h.wait_for(lambda: h.node.scheduler.engine is not old, 10.0, "swap")
        assert _label_of(h, "after") == 100
        assert h.node.values["weights"] == "new.pth" and h.node.get_parameter("weights").value == "new.pth"
        diagnostic = h.next_diagnostic()
        assert diagnostic.level == OK and "model_loading" not in diagnostic.values
        books = h.wait_settled()
        assert books["processed"] == 4 and books["dropped_total"] == 0


def test_a_failed_load_keeps_the_old_model_reverts_and_reports_why() -> None:
    def factory(config: EngineConfig) -> FakeEngine:
        if config.weights == "missing.pth":
            raise CheckpointNotFoundError("weights file 'missing.pth' does not exist")
        return FakeEngine(config, label_offset=len(config.weights))

    with NodeHarness(HERE, engine_factory=factory) as h:
        old = h.node.scheduler.engine
        assert h.node.set_parameters([Parameter("weights", value="missing.pth"),
                                      Parameter("num_classes", value=7)])[0].successful
        h.wait_for(lambda: h.node.scheduler.loading is None, 10.0, "load attempt")
        assert h.node.scheduler.engine is old
        assert h.node.values["weights"] == "" and h.node.get_parameter("weights").value == ""
        assert h.node.values["num_classes"] == 19 and h.node.get_parameter("num_classes").value == 19
        warn = h.wait_level(WARN)
        assert "missing.pth" in warn.message and "CheckpointNotFoundError" in warn.message
        assert "previous model still serving" in warn.message
        assert _label_of(h, "still_old") == 0
        # A later good load clears the warning.
        assert h.node.set_parameters([Parameter("weights", value="good.pth")])[0].successful
        h.wait_for(lambda: h.node.scheduler.engine is not old, 10.0, "swap")
        assert _label_of(h, "new") == len("good.pth")
        assert h.wait_level(OK).values.get("reload_error") is None

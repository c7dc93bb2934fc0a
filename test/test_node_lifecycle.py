"""seg_node as a managed (lifecycle) node over real DDS: driven through its lifecycle services as a
lifecycle manager drives it. Every transition and its failure path, no labels unless active,
/diagnostics in every state with the state, the engine (and its memory) released on cleanup,
runtime reloads while inactive and active, and a plain node that stays what it was."""

from __future__ import annotations

import gc
import itertools
import weakref
from typing import Any

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.parameter import Parameter
from reliability_support import CPU_PARAMS, FakeEngine, image_msg
from ros_harness import RosHarness, wait_for
from sensor_msgs.msg import Image

from seg_perception.engine import EngineConfig, SegmentationEngine
from seg_perception.node import SegmentationNode

pytestmark = pytest.mark.ros

#: Seconds a transition (a model build) may take on a loaded machine.
TRANSITION_TIMEOUT_S = 120.0
_namespaces = (f"managed{i}" for i in itertools.count())


class ClosingEngine(FakeEngine):
    """The fake engine with a ``close`` that is counted, and a failure for ``num_classes: 7``."""

    built: list[ClosingEngine] = []

    def __init__(self, config: EngineConfig | None = None) -> None:
        if config is not None and config.num_classes == 7:
            raise ValueError("checkpoint has 19 classes, num_classes is 7")
        super().__init__(config)
        self.closes = 0
        ClosingEngine.built.append(self)

    def close(self) -> None:
        self.closes += 1


class Managed:
    """A managed seg_node in its own namespace, with the probe's clients, publisher and collectors."""

    def __init__(self, ros: RosHarness, factory: Any = ClosingEngine, **params: Any) -> None:
        self.ros, self.namespace = ros, next(_namespaces)
        self.node: SegmentationNode = ros.add(
            lambda **kw: SegmentationNode(namespace=self.namespace, engine_factory=factory, **kw),
            lifecycle=True, diagnostics_period=0.2, **{**CPU_PARAMS, **params})
        self.fqn = f"/{self.namespace}/seg_node"
        self.change_client = ros.probe.create_client(ChangeState, f"{self.fqn}/change_state")
        self.state_client = ros.probe.create_client(GetState, f"{self.fqn}/get_state")
        self.labels: list[Image] = ros.collect(Image, f"{self.fqn.rsplit('/', 1)[0]}/segmentation/labels")
        self.diagnostics: list[DiagnosticArray] = ros.collect(DiagnosticArray, "/diagnostics")
        self.camera = ros.publisher(f"/{self.namespace}/camera/image_raw")
        self.sent = 0

    def _call(self, client: Any, request: Any) -> Any:
        assert client.wait_for_service(timeout_sec=10.0), client.srv_name
        future = client.call_async(request)
        assert wait_for(future.done, TRANSITION_TIMEOUT_S), f"no answer from {client.srv_name}"
        return future.result()

    def change(self, transition: int) -> bool:
        return self._call(self.change_client, ChangeState.Request(transition=Transition(id=transition))).success

    def state(self) -> str:
        return self._call(self.state_client, GetState.Request()).current_state.label

    def send(self) -> Image:
        msg = image_msg(np.full((8, 12, 3), 40 + self.sent % 100, np.uint8), frame_id=f"f{self.sent}")
        self.sent += 1
        self.camera.publish(msg)
        return msg

    def status(self) -> Any:
        """The latest /diagnostics status of this node."""
        def mine() -> list:
            return [s for array in self.diagnostics for s in array.status if self.fqn in s.name]
        assert wait_for(lambda: bool(mine()), 10.0)
        return mine()[-1]

    def status_values(self) -> dict[str, str]:
        return {kv.key: kv.value for kv in self.status().values}

    def close(self) -> None:
        self.ros.remove(self.node)


@pytest.fixture
def managed(ros: RosHarness) -> Managed:
    ClosingEngine.built.clear()
    managed = Managed(ros)
    yield managed
    managed.close()


def _diagnostics_state(managed: Managed, state: str) -> dict[str, str]:
    count = len(managed.diagnostics)
    assert wait_for(lambda: len(managed.diagnostics) > count + 1, 10.0)
    values = managed.status_values()
    assert values["lifecycle_state"] == state, values
    return values


def test_unconfigured_at_start_with_nothing_loaded_and_nothing_taken(managed: Managed) -> None:
    node = managed.node
    assert managed.state() == "unconfigured" and node.serving.state == "unconfigured"
    assert ClosingEngine.built == [] and node.scheduler.engine is None
    assert node.subscription is None and node.labels_pub is None and node.camera_io == {}
    assert managed.camera.get_subscription_count() == 0  # no input taken
    assert managed.ros.probe.count_publishers(f"/{managed.namespace}/segmentation/labels") == 0
    _diagnostics_state(managed, "unconfigured")
    assert managed.status().level == b"\x00" and managed.status().message == "unconfigured: not serving"


def test_configure_builds_the_engine_and_outputs_but_serves_nothing(managed: Managed) -> None:
    assert managed.change(Transition.TRANSITION_CONFIGURE)
    assert managed.state() == "inactive"
    (engine,) = ClosingEngine.built
    assert managed.node.scheduler.engine is engine and engine.warmed_up == [(64, 64)]
    assert managed.ros.probe.count_publishers(f"/{managed.namespace}/segmentation/labels") == 1
    assert managed.camera.get_subscription_count() == 0  # no input until activate
    _diagnostics_state(managed, "inactive")
    managed.send()
    assert not wait_for(lambda: bool(managed.labels), 1.0)


def test_activate_serves_deactivate_stops_taking_frames_and_keeps_the_engine(managed: Managed) -> None:
    node = managed.node
    assert managed.change(Transition.TRANSITION_CONFIGURE)
    assert managed.change(Transition.TRANSITION_ACTIVATE)
    assert managed.state() == "active"
    assert wait_for(lambda: managed.camera.get_subscription_count() > 0)
    assert wait_for(lambda: node.labels_pub.get_subscription_count() > 0)
    managed.send()
    assert wait_for(lambda: bool(managed.labels), 10.0), "no labels while active"
    _diagnostics_state(managed, "active")
    engine = node.scheduler.engine

    assert managed.change(Transition.TRANSITION_DEACTIVATE)
    assert managed.state() == "inactive" and node.scheduler.engine is engine and engine.closes == 0
    assert node.subscription is None and wait_for(lambda: managed.camera.get_subscription_count() == 0)
    received = len(managed.labels)
    managed.send()
    assert not wait_for(lambda: len(managed.labels) > received, 1.0), "labels while inactive"
    values = _diagnostics_state(managed, "inactive")
    assert managed.status().message == "inactive: not serving"
    assert int(values["frames_processed"]) == 1

    assert managed.change(Transition.TRANSITION_ACTIVATE)  # serving again, same engine
    assert wait_for(lambda: managed.camera.get_subscription_count() > 0)
    assert wait_for(lambda: _resend_until(managed, received + 1), 15.0)
    assert node.scheduler.engine is engine and len(ClosingEngine.built) == 1


def _resend_until(managed: Managed, count: int) -> bool:
    managed.send()
    return wait_for(lambda: len(managed.labels) >= count, 0.5)


def test_frames_waiting_at_deactivate_are_booked_inactive(managed: Managed) -> None:
    node = managed.node
    assert managed.change(Transition.TRANSITION_CONFIGURE)
    assert managed.change(Transition.TRANSITION_ACTIVATE)
    node.scheduler.pause("inactive", timeout=0.0)  # what deactivate does first, to catch frames in the act
    assert wait_for(lambda: managed.camera.get_subscription_count() > 0)
    managed.send()
    assert wait_for(lambda: node.scheduler.accounting.snapshot()["dropped"].get("inactive", 0) == 1, 10.0)
    assert managed.change(Transition.TRANSITION_DEACTIVATE)
    assert managed.labels == []


def test_cleanup_releases_the_engine_and_the_outputs(managed: Managed) -> None:
    node = managed.node
    assert managed.change(Transition.TRANSITION_CONFIGURE)
    (engine,) = ClosingEngine.built
    freed = weakref.ref(engine)
    ClosingEngine.built.clear()
    assert managed.change(Transition.TRANSITION_CLEANUP)
    assert managed.state() == "unconfigured" and node.scheduler.engine is None and engine.closes == 1
    del engine
    gc.collect()
    assert freed() is None, "something still holds the released engine"
    assert node.camera_io == {}
    assert wait_for(lambda: managed.ros.probe.count_publishers(f"/{managed.namespace}/segmentation/labels") == 0)
    _diagnostics_state(managed, "unconfigured")
    assert managed.change(Transition.TRANSITION_CONFIGURE)  # and up again
    assert len(ClosingEngine.built) == 1 and node.scheduler.engine is ClosingEngine.built[0]


def test_a_failed_configure_fails_the_transition_and_says_why(ros: RosHarness) -> None:
    ClosingEngine.built.clear()
    managed = Managed(ros, num_classes=7)
    try:
        assert not managed.change(Transition.TRANSITION_CONFIGURE)
        assert managed.state() == "unconfigured" and managed.node.scheduler.engine is None
        assert managed.node.serving.state == "unconfigured"
        status = managed.status()
        assert status.level == b"\x02" and "checkpoint has 19 classes" in status.message
        assert {kv.key: kv.value for kv in status.values}["lifecycle_state"] == "unconfigured"
        # fixed while unconfigured (a model parameter, accepted without a load), configure succeeds
        (result,) = managed.node.set_parameters([Parameter("num_classes", value=19)])
        assert result.successful and managed.node.scheduler.loading is None
        assert managed.change(Transition.TRANSITION_CONFIGURE)
        assert managed.state() == "inactive" and managed.node.scheduler.startup_error is None
        assert managed.status().level == b"\x00"
    finally:
        managed.close()


def test_a_transition_that_raises_is_logged_and_ends_unconfigured(managed: Managed,
                                                                   capfd: pytest.CaptureFixture) -> None:
    assert managed.change(Transition.TRANSITION_CONFIGURE)
    engine = managed.node.scheduler.engine

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug in activate")

    managed.node.serving.activate = broken
    assert not managed.change(Transition.TRANSITION_ACTIVATE)
    assert managed.state() == "unconfigured" and managed.node.scheduler.engine is None and engine.closes == 1
    assert "on_activate raised RuntimeError: a bug in activate" in capfd.readouterr().err


@pytest.mark.parametrize(("steps", "transition"), [
    ((), Transition.TRANSITION_UNCONFIGURED_SHUTDOWN),
    ((Transition.TRANSITION_CONFIGURE,), Transition.TRANSITION_INACTIVE_SHUTDOWN),
    ((Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE), Transition.TRANSITION_ACTIVE_SHUTDOWN),
], ids=["unconfigured", "inactive", "active"])
def test_shutdown_from_any_state_releases_everything(managed: Managed, steps: tuple[int, ...],
                                                      transition: int) -> None:
    for step in steps:
        assert managed.change(step)
    assert managed.change(transition)
    assert managed.state() == "finalized" and managed.node.serving.state == "finalized"
    assert managed.node.scheduler.engine is None and all(e.closes == 1 for e in ClosingEngine.built)
    assert managed.node.camera_io == {} and managed.camera.get_subscription_count() == 0
    _diagnostics_state(managed, "finalized")


def test_runtime_reloads_work_while_inactive_and_active(managed: Managed) -> None:
    node = managed.node
    assert managed.change(Transition.TRANSITION_CONFIGURE)
    (result,) = node.set_parameters([Parameter("model", value="deeplabv3plus")])
    assert result.successful, result.reason
    assert wait_for(lambda: node.scheduler.loading is None and len(ClosingEngine.built) == 2, 30.0)
    assert node.scheduler.engine.config.model == "deeplabv3plus" and ClosingEngine.built[0].closes == 1
    assert managed.change(Transition.TRANSITION_ACTIVATE)
    (result,) = node.set_parameters([Parameter("model", value="regseg")])
    assert result.successful, result.reason
    assert wait_for(lambda: node.scheduler.loading is None and len(ClosingEngine.built) == 3, 30.0)
    assert node.scheduler.engine.config.model == "regseg"
    assert wait_for(lambda: _resend_until(managed, 1), 15.0)


def test_cleanup_frees_a_real_engine(ros: RosHarness) -> None:
    """The real engine (RegSeg on the CPU): after cleanup nothing refers to it or its model."""
    managed = Managed(ros, factory=SegmentationEngine, backend="torch")
    try:
        assert managed.change(Transition.TRANSITION_CONFIGURE)
        engine = managed.node.scheduler.engine
        assert isinstance(engine, SegmentationEngine)
        weights = next(p for p in engine.model.parameters())
        freed_engine, freed_weights = weakref.ref(engine), weakref.ref(weights)
        del engine, weights
        assert managed.change(Transition.TRANSITION_CLEANUP)
        assert freed_engine() is None and freed_weights() is None, "the released model is still referenced"
    finally:
        managed.close()


def test_a_plain_node_has_no_lifecycle_services_and_serves_at_once(ros: RosHarness) -> None:
    node = ros.add(lambda **kw: SegmentationNode(namespace="plain", engine_factory=ClosingEngine, **kw), **CPU_PARAMS)
    try:
        assert node.serving.state == "active" and node.subscription is not None
        services = dict(ros.probe.get_service_names_and_types())
        assert "/plain/seg_node/get_parameters" in services
        assert not any(name.startswith("/plain/seg_node/") and "state" in name for name in services)
        assert "lifecycle_state" not in {kv.key for status in node.diagnostics().status for kv in status.values}
    finally:
        ros.remove(node)

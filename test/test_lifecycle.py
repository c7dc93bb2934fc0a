"""The lifecycle transitions' serving side without ROS: what configure, activate, deactivate,
cleanup, shutdown and error processing do to the scheduler and the engine, and each failure
path. The node's ROS side (services, subscriptions, publishers) is test_node_lifecycle.py."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from polling import wait_until

from seg_perception import params as P
from seg_perception.cityscapes import CLASS_NAMES, PALETTE
from seg_perception.engine import EngineConfig, OutputRequest, SegmentationResult
from seg_perception.lifecycle import ACTIVE, FINALIZED, INACTIVE, UNCONFIGURED, ServingLifecycle
from seg_perception.parameter_state import ParameterState
from seg_perception.reload import ReloadController, build_engine
from seg_perception.scheduler import Frame, Scheduler


class _Done:
    def __init__(self, result: SegmentationResult) -> None:
        self._result = result

    def result(self) -> SegmentationResult:
        return self._result


class GatedEngine:
    """Labels = red channel. ``gate`` (when set) holds each batch until released; ``entered`` is
    set when a batch starts. Counts warm-ups and closes."""

    asynchronous = False
    device = torch.device("cpu")
    class_names = CLASS_NAMES
    palette = PALETTE
    instances: list[GatedEngine] = []

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.warmups = self.closes = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.description = {"model": config.model, "weights": config.weights, "device": "cpu"}
        self.own = self  # a reference cycle, as a real engine has: only the cyclic collector frees it
        GatedEngine.instances.append(self)

    def warmup(self, height: int, width: int) -> None:
        self.warmups += 1

    def memory_allocated_mb(self) -> None:
        return None

    def close(self) -> None:
        self.closes += 1

    def prepare(self, sizes: Any, outputs: Any) -> None:
        pass

    def recent_batches(self) -> list[Any]:
        return []

    def recover_from_failure(self, exc: BaseException) -> str:
        return "inference_error"

    def submit_batch(self, frames: list[np.ndarray], outputs: list[OutputRequest]) -> list[_Done]:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10.0)
        return [_Done(SegmentationResult(labels=f[:, :, 0].copy(), timings_ms={})) for f in frames]


class Rig:
    """Scheduler, parameters, reload controller and lifecycle wired as the node wires them."""

    def __init__(self, factory: Callable[[EngineConfig], Any] = GatedEngine, **values: Any) -> None:
        GatedEngine.instances.clear()
        self.parameters = ParameterState({**P.defaults(), "device": "cpu", "precision": "fp32", **values}, {}, ["/"])
        self.published: list[int] = []
        self.scheduler = Scheduler([""], convert=lambda frame: frame.payload, publish=self._publish)
        self.reload = ReloadController(self.scheduler, self.parameters, lambda v: build_engine(factory, v),
                                       set_parameters=self.request)
        self.serving = ServingLifecycle(self.scheduler, self.reload)
        self.scheduler.start()

    def _publish(self, frame: Frame, result: SegmentationResult) -> None:
        self.published.append(int(result.labels[0, 0]))

    def request(self, changes: dict[str, Any]) -> None:
        with self.reload.lock:
            self.parameters.apply(changes.items())
            self.reload.parameters_applied()

    def put(self, red: int) -> None:
        self.scheduler.put("", np.full((4, 4, 3), red, np.uint8), time.time_ns())

    def books(self) -> dict[str, Any]:
        return self.scheduler.accounting.snapshot()

    def settled(self, received: int) -> dict[str, Any]:
        wait_until(lambda: self.books()["received"] == received and self.books()["in_flight"] == 0)
        return self.books()


@pytest.fixture
def rig() -> Rig:
    rig = Rig()
    yield rig
    rig.scheduler.stop(1.0)


def test_unconfigured_holds_no_engine_and_serves_nothing(rig: Rig) -> None:
    assert rig.serving.state == UNCONFIGURED
    assert rig.scheduler.engine is None and GatedEngine.instances == []
    rig.put(1)
    assert rig.settled(1)["dropped"] == {"inactive": 1} and rig.published == []


def test_configure_builds_and_warms_the_engine_and_still_serves_nothing(rig: Rig) -> None:
    assert rig.serving.configure() is None
    assert rig.serving.state == INACTIVE
    (engine,) = GatedEngine.instances
    assert rig.scheduler.engine is engine and engine.warmups == 1
    rig.put(2)
    assert rig.settled(1)["dropped"] == {"inactive": 1} and rig.published == []


def test_activate_serves_and_deactivate_stops_and_keeps_the_engine(rig: Rig) -> None:
    rig.serving.configure()
    rig.serving.activate()
    assert rig.serving.state == ACTIVE
    rig.put(3)
    wait_until(lambda: rig.published == [3])
    engine = rig.scheduler.engine
    rig.serving.deactivate()
    assert rig.serving.state == INACTIVE and rig.scheduler.engine is engine and engine.closes == 0
    rig.put(4)
    books = rig.settled(2)
    assert books["processed"] == 1 and books["dropped"] == {"inactive": 1} and rig.published == [3]
    rig.serving.activate()  # and again
    rig.put(5)
    wait_until(lambda: rig.published == [3, 5])


def test_deactivate_drops_the_result_of_the_batch_in_flight(rig: Rig) -> None:
    rig.serving.configure()
    rig.serving.activate()
    engine = rig.scheduler.engine
    engine.gate = threading.Event()
    rig.put(6)
    assert engine.entered.wait(5.0)
    threading.Timer(0.3, engine.gate.set).start()
    rig.serving.deactivate()  # waits for the batch; its result comes after the pause
    assert rig.books()["in_flight"] == 0
    assert rig.books()["dropped"] == {"inactive": 1} and rig.published == []


def test_cleanup_closes_and_frees_the_engine(rig: Rig) -> None:
    for cycle in range(10):  # the worker idles and serves around each release: no reference survives
        rig.serving.configure()
        rig.serving.activate()
        rig.put(7)
        wait_until(lambda n=cycle: rig.published == [7] * (n + 1))
        engine = rig.scheduler.engine
        freed = weakref.ref(engine)
        del engine
        GatedEngine.instances.clear()
        rig.serving.deactivate()
        rig.serving.cleanup()
        assert rig.serving.state == UNCONFIGURED and rig.scheduler.engine is None
        assert freed() is None, gc.get_referrers(freed())  # nothing holds it at once: its memory is gone
    rig.request({"weights": "/w/other.pt"})  # unconfigured: remembered for the next configure
    assert rig.scheduler.loading is None and GatedEngine.instances == []
    assert rig.serving.configure() is None
    assert rig.scheduler.engine.config.weights == "/w/other.pt"


def test_cleanup_closes_the_engine(rig: Rig) -> None:
    rig.serving.configure()
    engine = rig.scheduler.engine
    rig.serving.cleanup()
    assert engine.closes == 1


def test_a_failed_configure_leaves_nothing_loaded_and_says_why() -> None:
    def factory(config: EngineConfig) -> GatedEngine:
        if config.num_classes == 7:
            raise ValueError("checkpoint has 19 classes")
        return GatedEngine(config)

    rig = Rig(factory, num_classes=7)
    try:
        failure = rig.serving.configure()
        assert isinstance(failure, ValueError)
        assert rig.serving.state == UNCONFIGURED and rig.scheduler.engine is None
        assert "ValueError: checkpoint has 19 classes" in rig.scheduler.startup_error
        assert not rig.reload.active  # a model change now loads nothing
        rig.request({"num_classes": 19})
        assert rig.scheduler.loading is None
        assert rig.serving.configure() is None  # the next configure builds the fixed model
        assert rig.scheduler.startup_error is None and rig.scheduler.engine.config.num_classes == 19
    finally:
        rig.scheduler.stop(1.0)


def test_a_plain_node_without_fail_fast_stays_up_and_loads_the_next_model() -> None:
    def factory(config: EngineConfig) -> GatedEngine:
        if config.weights == "/w/broken.pt":
            raise ValueError("broken")
        return GatedEngine(config)

    rig = Rig(factory, weights="/w/broken.pt")
    try:
        assert isinstance(rig.serving.configure(stay_configured=True), ValueError)
        rig.serving.activate()
        assert rig.serving.state == ACTIVE and rig.scheduler.engine is None
        rig.put(1)
        assert rig.settled(1)["dropped"] == {"model_not_loaded": 1}
        rig.request({"weights": "/w/good.pt"})
        wait_until(lambda: rig.scheduler.engine is not None)
        rig.put(2)
        wait_until(lambda: rig.published == [2])
    finally:
        rig.scheduler.stop(1.0)


@pytest.mark.parametrize("steps", [(), ("configure",), ("configure", "activate")],
                         ids=["unconfigured", "inactive", "active"])
def test_shutdown_from_any_state_releases_everything(rig: Rig, steps: tuple[str, ...]) -> None:
    for step in steps:
        getattr(rig.serving, step)()
    rig.serving.shutdown()
    assert rig.serving.state == FINALIZED and rig.scheduler.engine is None
    assert all(engine.closes == 1 for engine in GatedEngine.instances)
    rig.put(1)
    assert rig.settled(1)["dropped"] == {"inactive": 1} and rig.published == []


def test_error_processing_releases_everything_and_returns_to_unconfigured(rig: Rig) -> None:
    rig.serving.configure()
    rig.serving.activate()
    engine = rig.scheduler.engine
    rig.serving.error()
    assert rig.serving.state == UNCONFIGURED and rig.scheduler.engine is None and engine.closes == 1
    assert rig.scheduler.paused == "inactive"


def test_a_model_loading_during_cleanup_is_discarded(rig: Rig) -> None:
    rig.serving.configure()
    rig.serving.activate()
    gate = threading.Event()
    original = rig.reload.build

    def slow(values: dict[str, Any]) -> Any:
        assert gate.wait(10.0)
        return original(values)

    rig.reload.build = slow
    rig.request({"weights": "/w/slow.pt"})
    wait_until(lambda: rig.scheduler.loading is not None)
    rig.serving.deactivate()
    rig.serving.cleanup()
    gate.set()
    wait_until(lambda: rig.scheduler.loading is None)
    late = GatedEngine.instances[-1]
    assert late.config.weights == "/w/slow.pt" and late.closes == 1  # built, then closed
    assert rig.scheduler.engine is None and rig.scheduler.reload_error is None

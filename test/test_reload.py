"""Runtime model changes without ROS: background load and swap, the revert after a failed load
(a set request from the loader thread that must not start another load), and a busy loader."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from polling import wait_until

from seg_perception import params as P
from seg_perception.cityscapes import CLASS_NAMES, PALETTE
from seg_perception.engine import EngineConfig, OutputRequest, SegmentationResult
from seg_perception.parameter_state import ParameterState
from seg_perception.reload import WARMUP_SIZE, ReloadController, build_engine
from seg_perception.scheduler import Scheduler


class _Done:
    def __init__(self, result: SegmentationResult) -> None:
        self._result = result

    def result(self) -> SegmentationResult:
        return self._result


class TinyEngine:
    """A complete engine stand-in: labels = red channel; remembers its config and warm-up."""

    asynchronous = False
    device = torch.device("cpu")
    class_names = CLASS_NAMES
    palette = PALETTE

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.warmed_up: tuple[int, int] | None = None

    @property
    def description(self) -> dict[str, Any]:
        return {"model": self.config.model, "weights": self.config.weights, "device": "cpu"}

    def warmup(self, height: int, width: int) -> None:
        self.warmed_up = (height, width)

    def memory_allocated_mb(self) -> None:
        return None

    def recent_batches(self) -> list[Any]:
        return []

    def prepare(self, sizes: Any, outputs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def recover_from_failure(self, exc: BaseException) -> str:
        return "inference_error"

    def submit_batch(self, frames: list[np.ndarray], outputs: list[OutputRequest]) -> list[_Done]:
        return [_Done(SegmentationResult(labels=f[:, :, 0].copy(), timings_ms={})) for f in frames]


class Rig:
    """A scheduler, parameter state and reload controller wired as the node wires them; the
    ``set_parameters`` callback plays the node's set request (check skipped while reverting,
    then apply and ``parameters_applied``)."""

    def __init__(self, factory: Callable[[EngineConfig], Any]) -> None:
        values = {**P.defaults(), "device": "cpu", "precision": "fp32"}
        self.parameters = ParameterState(values, {}, ["/"])
        self.scheduler = Scheduler([""], convert=lambda frame: frame.payload, publish=lambda f, r: None)
        self.logged: list[tuple[int, str]] = []
        self.loaded = 0
        self.reverts: list[tuple[dict[str, Any], bool, str]] = []
        self.controller = ReloadController(
            self.scheduler, self.parameters, lambda values: build_engine(factory, values),
            set_parameters=self._set, on_loaded=self._on_loaded,
            log=lambda level, message: self.logged.append((level, message)))

    def _on_loaded(self) -> None:
        self.loaded += 1

    def _set(self, changes: dict[str, Any]) -> None:
        self.reverts.append((dict(changes), self.controller.reverting(), threading.current_thread().name))
        self.request(changes)

    def request(self, changes: dict[str, Any]) -> None:
        with self.controller.lock:
            self.parameters.apply(changes.items())
            self.controller.parameters_applied()


def test_build_engine_warms_up_at_the_inference_size_or_a_small_default() -> None:
    config_values = {**P.defaults(), "device": "cpu", "precision": "fp32"}
    assert build_engine(TinyEngine, config_values).warmed_up == WARMUP_SIZE
    sized = build_engine(TinyEngine, {**config_values, "inference_size": [32, 48]})
    assert sized.warmed_up == (32, 48)


def test_a_model_change_loads_in_the_background_and_swaps_in() -> None:
    rig = Rig(TinyEngine)
    rig.controller.start()
    first = rig.scheduler.engine
    assert first is not None and first.config.weights == ""
    rig.request({"weights": "/w/new.pt"})
    wait_until(lambda: rig.scheduler.engine is not first and rig.scheduler.loading is None)
    assert rig.scheduler.engine.config.weights == "/w/new.pt"
    assert rig.controller.serving["weights"] == "/w/new.pt" and rig.loaded == 1
    rig.request({"overlay_alpha": 0.1})  # not a model change: nothing loads
    assert rig.scheduler.loading is None and rig.loaded == 1


def test_a_failed_load_reverts_the_parameters_from_the_loader_without_another_load() -> None:
    builds: list[str] = []

    def factory(config: EngineConfig) -> TinyEngine:
        builds.append(config.weights)
        if config.weights == "/w/broken.pt":
            raise ValueError("broken checkpoint")
        return TinyEngine(config)

    rig = Rig(factory)
    rig.controller.start()
    serving = rig.scheduler.engine
    rig.request({"weights": "/w/broken.pt", "num_classes": 7})
    wait_until(lambda: rig.reverts and rig.scheduler.loading is None)
    (changes, reverting, thread), = rig.reverts
    assert changes == {"weights": "", "num_classes": 19}  # back to what serves
    assert reverting and thread == "seg_model_loader"
    assert rig.parameters.values["weights"] == "" and rig.parameters.values["num_classes"] == 19
    assert rig.scheduler.engine is serving and "broken checkpoint" in rig.scheduler.reload_error
    assert builds == ["", "/w/broken.pt"]  # the revert started no load
    assert any(level == logging.ERROR and "still serving regseg (random init)" in message
               for level, message in rig.logged)
    assert not rig.controller.reverting()  # only inside the revert's own set request


def test_a_second_change_while_loading_is_reported_not_lost_silently() -> None:
    gate = threading.Event()

    def factory(config: EngineConfig) -> TinyEngine:
        if config.weights == "/w/slow.pt":
            assert gate.wait(10.0)
        return TinyEngine(config)

    rig = Rig(factory)
    rig.controller.start()
    rig.request({"weights": "/w/slow.pt"})
    wait_until(lambda: rig.scheduler.loading is not None)
    rig.request({"weights": "/w/other.pt"})
    gate.set()
    wait_until(lambda: rig.scheduler.loading is None and rig.loaded == 1)
    assert any("a model load is already running" in message for _, message in rig.logged)
    rig.scheduler.stop(1.0)

"""The parity gate in the ROS-free layer: at startup a refused engine is replaced by the fp32
reference and /diagnostics warns with the figure; at runtime a refused (or badly calibrated)
engine is a failed load, the previous engine keeps serving and the parameters go back; a reload
measured only on the synthetic frame is measured again on the live frames."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from polling import wait_until
from reliability_support import FakeEngine

from seg_perception import params as P
from seg_perception.backends.parity import HELD_OUT, LIVE, SYNTHETIC, ParityReport
from seg_perception.diagnostics import OK, WARN
from seg_perception.engine import SegmentationEngine
from seg_perception.engine_api import EngineConfig, ParityError
from seg_perception.health import HealthReporter
from seg_perception.parameter_state import ParameterState
from seg_perception.reload import ReloadController, build_engine, check_live_parity, reference_values
from seg_perception.scheduler import Scheduler

REFUSED = ParityError("the int8 engine (onnxruntime int8) is refused by the parity gate: label agreement 97.25 %, "
                      "mIoU 90.0 % on 4 held-out calibration frames", 0.9725, 0.99)


class GatedEngine(FakeEngine):
    """A stand-in with a parity gate: measured on ``source`` at build; ``check_parity`` records
    the frames it is given and refuses them when ``refuse_live``."""

    def __init__(self, config: EngineConfig, source: str = SYNTHETIC, refuse_live: bool = False) -> None:
        super().__init__(config)
        self.parity = ParityReport(0.999, 0.99, 100, source=source)
        self.refuse_live = refuse_live
        self.checked: list[list[Any]] = []

    def check_parity(self, frames: list[Any], source: str = LIVE) -> ParityReport:
        self.checked.append(list(frames))
        if self.refuse_live:
            raise ParityError(f"refused on {len(frames)} {source}: label agreement 12.50 %", 0.125, 0.99)
        self.parity = ParityReport(0.998, 0.99, 100, frames=len(frames), source=source)
        return self.parity


class Rig:
    """Scheduler, parameters and reload controller wired as the node wires them."""

    def __init__(self, factory: Callable[[EngineConfig], Any], **values: Any) -> None:
        self.parameters = ParameterState({**P.defaults(), "device": "cpu", "precision": "fp32", **values}, {}, ["/"])
        self.published: list[Any] = []
        self.scheduler = Scheduler([""], convert=lambda frame: frame.payload,
                                   publish=lambda frame, result: self.published.append(result))
        self.logged: list[tuple[int, str]] = []
        self.controller = ReloadController(
            self.scheduler, self.parameters, lambda v: build_engine(factory, v), set_parameters=self.request,
            log=lambda level, message: self.logged.append((level, message)))

    def request(self, changes: dict[str, Any]) -> None:
        with self.controller.lock:
            self.parameters.apply(changes.items())
            self.controller.parameters_applied()

    def engine_report(self) -> Any:
        return HealthReporter(self.scheduler).engine()

    def settle(self) -> None:
        wait_until(lambda: self.scheduler.loading is None)


def refuse_int8(config: EngineConfig) -> FakeEngine:
    if config.precision == "int8":
        raise REFUSED
    return FakeEngine(config)


def test_at_startup_a_refused_engine_is_replaced_by_the_fp32_reference_and_diagnostics_warn() -> None:
    rig = Rig(refuse_int8, precision="int8", backend="auto", calibration="/data/calib")
    rig.controller.start()
    serving = rig.scheduler.engine
    assert serving.config.precision == "fp32" and serving.config.backend == "torch"
    assert serving.config.calibration == "/data/calib"  # the same model, only precision and backend differ
    report = rig.engine_report()
    assert report.level == WARN and "label agreement 97.25 %" in report.message
    assert "serving the fp32 reference" in report.message and "97.25 %" in report.values["parity_fallback"]
    assert rig.parameters.values["precision"] == "int8"  # what was asked for stays visible
    assert any(level == logging.WARNING and "97.25 %" in message for level, message in rig.logged)
    rig.request({"parity_min_agreement": 0.5, "precision": "fp32"})  # a later model change that serves
    rig.settle()
    assert rig.scheduler.parity_fallback is None and rig.engine_report().level == OK


def test_reference_values_keep_the_model_and_change_precision_and_backend_only() -> None:
    values = {**P.defaults(), "precision": "int8", "backend": "onnxruntime", "weights": "/w.pt"}
    reference = reference_values(values)
    assert {k for k in values if values[k] != reference[k]} == {"precision", "backend"}
    assert (reference["precision"], reference["backend"]) == ("fp32", "torch")


def test_at_runtime_a_refused_engine_is_a_failed_load_the_old_one_serves_and_parameters_revert() -> None:
    rig = Rig(refuse_int8)
    rig.controller.start()
    first = rig.scheduler.engine
    rig.request({"precision": "int8", "calibration": "/data/calib"})
    rig.settle()
    wait_until(lambda: rig.parameters.values["precision"] == "fp32")
    assert rig.scheduler.engine is first
    report = rig.engine_report()
    assert report.level == WARN and "previous model still serving" in report.message
    assert "label agreement 97.25 %" in report.message
    assert rig.parameters.values["calibration"] == ""


def _serve_frames(rig: Rig, count: int) -> list[np.ndarray]:
    frames = [np.full((4, 6, 3), i, np.uint8) for i in range(count)]
    rig.scheduler.start()
    for i, frame in enumerate(frames):
        rig.scheduler.put("", frame, stamp_ns=1_000 + i, received_ns=1_000 + i)
        wait_until(lambda n=i: len(rig.published) > n)
    return frames


def test_a_reload_measured_on_the_synthetic_frame_is_measured_again_on_live_frames() -> None:
    built: list[GatedEngine] = []

    def factory(config: EngineConfig) -> FakeEngine:
        if config.precision != "int8":
            return FakeEngine(config)
        built.append(GatedEngine(config, SYNTHETIC, refuse_live=config.parity_min_agreement > 0.9))
        return built[-1]

    rig = Rig(factory)
    rig.controller.start()
    first = rig.scheduler.engine
    try:
        frames = _serve_frames(rig, 5)
        rig.request({"precision": "int8", "calibration": "/data/calib"})  # default threshold 0.99: refused live
        rig.settle()
        assert rig.scheduler.engine is first and "12.50 %" in rig.scheduler.reload_error
        assert [len(c) for c in built[0].checked] == [3]  # the three latest frames, as converted
        assert all(np.array_equal(a, b) for a, b in zip(built[0].checked[0], frames[-3:], strict=True))
        wait_until(lambda: rig.parameters.values["precision"] == "fp32")
        rig.request({"precision": "int8", "calibration": "/data/calib", "parity_min_agreement": 0.5})
        rig.settle()
        assert rig.scheduler.engine is built[1] and built[1].parity.source == LIVE
    finally:
        rig.scheduler.stop(1.0)


def test_held_out_calibration_frames_are_not_replaced_by_live_ones() -> None:
    engine = GatedEngine(EngineConfig(), HELD_OUT, refuse_live=True)
    assert check_live_parity(engine, [np.zeros((2, 2, 3), np.uint8)]) is engine and engine.checked == []
    plain = FakeEngine()
    assert check_live_parity(plain, [np.zeros((2, 2, 3), np.uint8)]) is plain  # no gate: nothing to run
    synthetic = GatedEngine(EngineConfig(), SYNTHETIC)
    assert check_live_parity(synthetic, []) is synthetic and synthetic.checked == []  # no live frames yet


def test_a_reload_with_bad_calibration_data_keeps_the_old_engine(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")

    def factory(config: EngineConfig) -> Any:
        return SegmentationEngine(config) if config.precision == "int8" else FakeEngine(config)

    rig = Rig(factory)
    rig.controller.start()
    first = rig.scheduler.engine
    rig.request({"precision": "int8", "calibration": str(tmp_path)})
    rig.settle()
    assert rig.scheduler.engine is first
    assert "CalibrationError" in rig.scheduler.reload_error and "cannot be read: 'broken.jpg'" in \
        rig.scheduler.reload_error
    assert rig.engine_report().level == WARN

"""The node's parameter checks without ROS: what a set request would change, why it is refused,
and that applying it changes exactly what was checked."""

from __future__ import annotations

import array
from pathlib import Path

import pytest

from seg_perception import params as P
from seg_perception.parameter_state import RELOAD_PARAMS, ParameterState, model_label, plain_value


def _state(tmp_path: Path | None = None, cameras: tuple[str, ...] = ()) -> ParameterState:
    values = {**P.defaults(), "device": "cpu", "precision": "fp32", "cameras": list(cameras)}
    camera_values = {c: {spec.name: None for spec in P.CAMERA_PARAMS} for c in cameras}
    for camera in cameras:
        camera_values[camera]["image_topic"] = P.default_camera_topic(camera)
    return ParameterState(values, camera_values, [str(tmp_path)] if tmp_path else [])


def test_plain_value_turns_ros_arrays_into_lists() -> None:
    assert plain_value(array.array("q", [1, 2])) == [1, 2]
    assert plain_value("abc") == "abc" and plain_value(3) == 3


def test_dynamic_change_is_accepted_and_applied() -> None:
    state = _state()
    assert state.check([("overlay_alpha", 0.25)]).successful
    assert state.values["overlay_alpha"] == 0.5  # checking changes nothing
    change = state.apply([("overlay_alpha", 0.25)])
    assert not change.reload and state.values["overlay_alpha"] == 0.25


def test_restart_only_parameters_are_refused_unless_unchanged() -> None:
    state = _state()
    check = state.check([("image_topic", "other")])
    assert not check.successful and check.reason == "image_topic takes effect only on restart"
    assert state.check([("image_topic", "camera/image_raw")]).successful  # same value: no change
    assert state.check([("use_sim_time", True)]).successful  # not ours


def test_invalid_values_and_combinations_are_refused_with_the_reason() -> None:
    state = _state()
    check = state.check([("overlay_alpha", 0.25), ("precision", "fp8")])
    assert not check.successful and "precision must be one of" in check.reason
    check = state.check([("latency_warn_ms", 900.0)])
    assert not check.successful and "latency_warn_ms must not exceed latency_error_ms" in check.reason


def test_model_changes_reload_and_wait_for_a_running_load() -> None:
    state = _state()
    change = state.diff([("variant", "exp53_decoder29")])
    assert change.reload and "variant" in RELOAD_PARAMS
    accepted = state.check([("variant", "exp53_decoder29")])
    assert accepted.successful and "loading regseg/exp53_decoder29 (random init) in the background" in accepted.reason
    busy = state.check([("variant", "exp53_decoder29")], loading="regseg (a.pt)")
    assert not busy.successful and "model regseg (a.pt) is still loading" in busy.reason
    assert state.check([("overlay_alpha", 0.1)], loading="regseg (a.pt)").successful  # not a model change


def test_per_camera_overrides_validate_and_apply() -> None:
    state = _state(cameras=("left", "right"))
    assert not state.check([("left.max_age_ms", -3.0)]).successful
    restart = state.check([("left.image_topic", "/elsewhere")])
    assert not restart.successful and "restart" in restart.reason
    state.apply([("left.max_age_ms", 250.0)])
    assert state.camera_value("left", "max_age_ms") == 250.0
    assert state.camera_value("right", "max_age_ms") == state.values["max_age_ms"]  # follows the node


def test_runtime_weights_outside_weights_dirs_are_refused_before_any_look(tmp_path: Path) -> None:
    state = _state(tmp_path / "allowed")
    (tmp_path / "allowed").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    check = state.check([("weights", str(outside))])  # a folder: validation would say "a directory"
    assert not check.successful and "outside weights_dirs" in check.reason
    assert "directory" not in check.reason
    inside = state.check([("weights", str(tmp_path / "allowed" / "w.pt"))])
    assert inside.successful  # a missing file inside is the loader's to report


def test_model_label_names_model_variant_and_weights() -> None:
    assert model_label({"model": "regseg", "variant": "", "weights": ""}) == "regseg (random init)"
    assert model_label({"model": "hrnet_ocr", "variant": "w48", "weights": "a.pt"}) == "hrnet_ocr/w48 (a.pt)"


@pytest.mark.parametrize("name", ["class_names", "palette"])
def test_read_only_parameters_cannot_be_set(name: str) -> None:
    state = _state()
    assert not state.check([(name, ["x"] if name == "class_names" else [1, 2, 3])]).successful

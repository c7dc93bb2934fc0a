"""The node's parameter values and the checks of a set request, without ROS.

ROS 2 applies a set request in two steps, and so does the node (as demo_nodes_py and
image_pipeline do): the *set callback* only validates (:meth:`ParameterState.check`: refused with
the reason, nothing changes), the *post-set callback* applies what ROS accepted
(:meth:`ParameterState.apply`). Both see the same :meth:`ParameterState.diff` of the request
against the current values, so what was checked is what is applied.

A request is refused when it changes a restart-only parameter, names a runtime ``weights`` file
outside ``weights_dirs`` or ``calibration`` data outside ``calibration_dirs``
(:mod:`~seg_perception.weights_access`; checked before anything looks at the path), gives an
invalid value or combination (:func:`~seg_perception.params.validate_params`), or changes the
model while another model is still loading.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import params as P
from .text import bounded
from .weights_access import allowed_calibration_dirs, runtime_calibration_problem, runtime_weights_problem

#: The parameters whose change rebuilds the engine (in the background, see :mod:`~seg_perception.reload`).
RELOAD_PARAMS: tuple[str, ...] = tuple(spec.name for spec in P.PARAMS if spec.reload)

#: Longest reason a refused set request carries (several problems may be listed).
MAX_REASON_CHARS = 2000


def plain_value(value: Any) -> Any:
    """ROS array parameters arrive as ``array.array``; keep lists so values compare equal."""
    return list(value) if hasattr(value, "__len__") and not isinstance(value, (str, bytes)) else value


def _calibration_dirs(configured: str, calibration_dirs: Iterable[str]) -> tuple[str, ...]:
    return allowed_calibration_dirs(configured, list(calibration_dirs))


def model_label(values: Mapping[str, Any]) -> str:
    """How a model is named in logs and diagnostics: ``model/variant (weights)``."""
    variant = f"/{values['variant']}" if values["variant"] else ""
    return f"{values['model']}{variant} ({values['weights'] or 'random init'})"


@dataclass(frozen=True)
class ParameterChange:
    """The values a set request would leave (node-wide and per camera), whether the model must be
    rebuilt, and why the request is refused ("" when it is not refused for a restart-only name)."""

    values: dict[str, Any]
    camera_values: dict[str, dict[str, Any]]
    reload: bool
    refused: str = ""


@dataclass(frozen=True)
class SetCheck:
    """The answer to a set request: accepted or not, and the reason shown to the caller."""

    successful: bool
    reason: str = ""


class ParameterState:
    """Node-wide values (``values``), per-camera overrides (``camera_values``: None = follows the
    node-wide value) and the folders a runtime ``weights`` change may load from."""

    def __init__(self, values: Mapping[str, Any], camera_values: Mapping[str, Mapping[str, Any]],
                 allowed_weights_dirs: Iterable[str] = (),
                 allowed_calibration_dirs: Iterable[str] | None = None) -> None:
        self.values: dict[str, Any] = dict(values)
        self.camera_values: dict[str, dict[str, Any]] = {c: dict(v) for c, v in camera_values.items()}
        self.allowed_weights_dirs: tuple[str, ...] = tuple(allowed_weights_dirs)
        #: Where a runtime ``calibration`` change may read (default: from the startup values).
        self.allowed_calibration_dirs: tuple[str, ...] = tuple(
            allowed_calibration_dirs if allowed_calibration_dirs is not None else
            _calibration_dirs(self.values.get("calibration", ""), self.values.get("calibration_dirs", [])))

    def camera_value(self, camera: str, name: str) -> Any:
        """A camera's setting: its own override when set, else the node-wide parameter."""
        value = self.camera_values.get(camera, {}).get(name)
        return self.values[name] if value is None else value

    def model_values(self) -> dict[str, Any]:
        """The values that define the model (a change of any rebuilds it)."""
        return {name: self.values[name] for name in RELOAD_PARAMS}

    def diff(self, changes: Iterable[tuple[str, Any]]) -> ParameterChange:
        """The values after ``changes`` (name, value pairs). Names that are not ours (e.g.
        ``use_sim_time``) are ignored; values equal to the current ones change nothing."""
        values = dict(self.values)
        cameras = {camera: dict(v) for camera, v in self.camera_values.items()}
        reload = False
        for name, raw in changes:
            value = plain_value(raw)
            spec = P.PARAMS_BY_NAME.get(name)
            camera, _, camera_param = name.partition(".")
            if spec is not None:
                if value == values[name]:
                    continue
                if not (spec.dynamic or spec.reload):
                    return ParameterChange(values, cameras, reload, f"{name} takes effect only on restart")
                reload |= spec.reload
                values[name] = value
            elif camera in cameras and camera_param in P.CAMERA_PARAMS_BY_NAME:
                if value == cameras[camera][camera_param]:
                    continue
                if not P.CAMERA_PARAMS_BY_NAME[camera_param].dynamic:
                    return ParameterChange(values, cameras, reload, f"{name} takes effect only on restart")
                cameras[camera][camera_param] = value
        return ParameterChange(values, cameras, reload)

    def check(self, changes: Iterable[tuple[str, Any]], loading: str | None = None) -> SetCheck:
        """Validate a set request; nothing changes here. ``loading`` names the model a background
        load is building (None when none is): a model change must wait for it."""
        change = self.diff(changes)
        if change.refused:
            return SetCheck(False, bounded(change.refused))
        if change.values["weights"] != self.values["weights"]:
            problem = runtime_weights_problem(change.values["weights"], self.allowed_weights_dirs)
            if problem:  # before validation, which would look at the path
                return SetCheck(False, bounded(problem, MAX_REASON_CHARS))
        if change.values.get("calibration") != self.values.get("calibration"):
            problem = runtime_calibration_problem(change.values["calibration"], self.allowed_calibration_dirs)
            if problem:  # before validation, which would look at the path
                return SetCheck(False, bounded(problem, MAX_REASON_CHARS))
        problems = P.validate_params(change.values)
        for camera, overrides in change.camera_values.items():
            problems += P.camera_param_problems(camera, overrides)
        if problems:
            return SetCheck(False, bounded("; ".join(problems), MAX_REASON_CHARS))
        if change.reload and loading is not None:
            return SetCheck(False, f"model {loading} is still loading; retry when it is done")
        if change.reload:
            return SetCheck(True, bounded(f"loading {model_label(change.values)} in the background; the "
                                          "current model serves until then"))
        return SetCheck(True)

    def apply(self, changes: Iterable[tuple[str, Any]]) -> ParameterChange:
        """Take the values of an accepted request; returns the change."""
        change = self.diff(changes)
        self.values, self.camera_values = change.values, change.camera_values
        return change

"""The node's parameters: names, defaults, descriptions and validation, without ROS.

One table drives the node's declarations (with descriptors), runtime set requests, the shipped
``config/seg.yaml`` (tested to match), the launch file check and the evaluator, so a parameter
cannot exist in one place and be missing in another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from .cityscapes import CLASS_NAMES, PALETTE
from .engine import DEVICES, PRECISIONS, EngineConfig
from .image_conversion import DEFAULT_MAX_PIXELS

Validator = Callable[[Any], str | None]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter. ``dynamic`` ones may change at runtime; the others need a restart."""

    name: str
    default: Any
    description: str
    dynamic: bool = False
    read_only: bool = False
    validate: Validator | None = None
    #: Numeric range shown in the ROS descriptor (min, max).
    range: tuple[float, float] | None = None


def _choice(*choices: str) -> Validator:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"


def _in_range(low: float, high: float) -> Validator:
    return lambda v: None if low <= v <= high else f"must be in [{low}, {high}], got {v}"


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v}"


def _size(v: Any) -> str | None:
    if len(v) != 2 or any(int(x) < 0 for x in v) or (0 in v and tuple(v) != (0, 0)):
        return f"must be [height, width] with both > 0, or [0, 0] for the frame size; got {list(v)}"
    return None


def _yaml_mapping(v: str) -> str | None:
    try:
        parsed = yaml.safe_load(v) if v.strip() else {}
    except yaml.YAMLError as exc:
        return f"is not valid YAML: {exc}"
    return None if isinstance(parsed, dict) else f"must be a YAML mapping like '{{key: value}}', got {v!r}"


def _model_name(v: str) -> str | None:
    from .models import list_models

    models = list_models()
    return None if v in models else f"unknown model {v!r}; valid models: {', '.join(models)}"


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("model", "regseg", "Architecture name from the registry (`seg-perception models`).",
              validate=_model_name),
    ParamSpec("variant", "", "Architecture variant; empty = the model's default variant."),
    ParamSpec("weights", "", "Checkpoint file; empty = random weights (labels meaningless, logged loudly)."),
    ParamSpec("num_classes", 19, "Number of classes the model predicts (19 = Cityscapes train ids).",
              validate=_positive, range=(1, 255)),
    ParamSpec("model_options", "{}",
              "Builder options as a YAML mapping, e.g. '{scales: [0.5, 1.0], align_corners: false}'.",
              validate=_yaml_mapping),
    ParamSpec("device", "auto", "auto | cuda | cpu.", validate=_choice(*DEVICES)),
    ParamSpec("precision", "fp16", "fp16 | fp32 (fp16 only on CUDA; the CPU runs fp32).",
              validate=_choice(*PRECISIONS)),
    ParamSpec("inference_size", [0, 0],
              "[height, width] the model runs at; [0, 0] = each frame's own size.", validate=_size),
    ParamSpec("crf", "none", "Dense CRF post-processing: none | cpu | gpu.",
              validate=_choice("none", "cpu", "gpu")),
    ParamSpec("crf_options", "{}", "CRF parameters as a YAML mapping (see docs/MODELS.md).",
              validate=_yaml_mapping),
    ParamSpec("image_topic", "camera/image_raw", "Input sensor_msgs/Image topic (relative, remappable)."),
    ParamSpec("qos_reliability", "best_effort",
              "Input QoS reliability: best_effort (sensor data) | reliable.",
              validate=_choice("best_effort", "reliable")),
    ParamSpec("qos_depth", 5, "Input QoS history depth (keep last N).", validate=_positive, range=(1, 1000)),
    ParamSpec("max_pixels", DEFAULT_MAX_PIXELS,
              "Frames with width*height above this are rejected before any allocation.",
              dynamic=True, validate=_positive, range=(1, 2**31 - 1)),
    ParamSpec("publish_color", False, "Publish the colour mask on segmentation/color.", dynamic=True),
    ParamSpec("publish_overlay", False, "Publish the image/colour blend on segmentation/overlay.", dynamic=True),
    ParamSpec("publish_confidence", False, "Publish max-softmax confidence (mono8) on segmentation/confidence.",
              dynamic=True),
    ParamSpec("overlay_alpha", 0.5, "Weight of the colour mask in the overlay, in [0, 1].", dynamic=True,
              validate=_in_range(0.0, 1.0), range=(0.0, 1.0)),
    ParamSpec("max_age_ms", 500.0,
              "Frames older than this (header stamp to inference start) are dropped; 0 = never.",
              dynamic=True, validate=_non_negative, range=(0.0, 60000.0)),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", validate=_positive,
              range=(0.01, 3600.0)),
    ParamSpec("latency_window", 300, "Number of frames in the latency percentile window.",
              validate=_positive, range=(1, 100000)),
    ParamSpec("latency_warn_ms", 100.0, "End-to-end p90 latency above this raises WARN.", dynamic=True,
              validate=_positive, range=(0.0, 60000.0)),
    ParamSpec("latency_error_ms", 500.0, "End-to-end p90 latency above this raises ERROR.", dynamic=True,
              validate=_positive, range=(0.0, 60000.0)),
    ParamSpec("drop_warn_ratio", 0.2,
              "Fraction of frames dropped or rejected since the last report above which WARN.",
              dynamic=True, validate=_in_range(0.0, 1.0), range=(0.0, 1.0)),
    ParamSpec("drop_error_ratio", 0.8,
              "Fraction of frames dropped or rejected since the last report above which ERROR.",
              dynamic=True, validate=_in_range(0.0, 1.0), range=(0.0, 1.0)),
    ParamSpec("fail_fast", True,
              "Exit non-zero when the model cannot be loaded at startup; false = stay up and report "
              "ERROR on /diagnostics."),
    ParamSpec("class_names", list(CLASS_NAMES), "Class name of each label id (read-only).", read_only=True),
    ParamSpec("palette", [int(c) for c in PALETTE.reshape(-1)],
              "Colour of each label id as flat [r0, g0, b0, r1, ...] (read-only).", read_only=True),
)

PARAMS_BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMS}


def validate_param(name: str, value: Any) -> str | None:
    """The reason ``value`` is not acceptable for ``name``, or None when it is."""
    spec = PARAMS_BY_NAME.get(name)
    if spec is None:
        return f"unknown parameter {name!r}"
    if spec.validate is None:
        return None
    reason = spec.validate(value)
    return f"{name} {reason}" if reason else None


def validate_params(values: Mapping[str, Any]) -> list[str]:
    """Every problem in a full parameter set (empty list when all are valid)."""
    problems = [r for name, value in values.items() if (r := validate_param(name, value))]
    if values.get("latency_warn_ms", 0) > values.get("latency_error_ms", float("inf")):
        problems.append("latency_warn_ms must not exceed latency_error_ms")
    return problems


def parse_yaml_mapping(text: str) -> dict[str, Any]:
    """``model_options``/``crf_options`` string -> dict (validated beforehand)."""
    return dict(yaml.safe_load(text) or {}) if text.strip() else {}


def defaults() -> dict[str, Any]:
    return {p.name: p.default for p in PARAMS}


def load_params_file(path: str, node_name: str = "seg_node") -> dict[str, Any]:
    """Read a ROS 2 parameters YAML (``<node>: {ros__parameters: {...}}``) into a flat dict,
    merged over the defaults. ``/**`` and the node's own section are both honoured."""
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f) or {}
    merged = defaults()
    for key in ("/**", node_name, f"/{node_name}"):
        section = document.get(key, {})
        merged.update(section.get("ros__parameters", {}) if isinstance(section, dict) else {})
    return merged


def engine_config(values: Mapping[str, Any]) -> EngineConfig:
    """The engine settings inside a (validated) parameter set."""
    size = tuple(int(v) for v in values.get("inference_size", (0, 0)))
    return EngineConfig(
        model=values["model"],
        variant=values.get("variant") or None,
        weights=values.get("weights", ""),
        num_classes=int(values.get("num_classes", 19)),
        model_options=parse_yaml_mapping(values.get("model_options", "{}")),
        device=values.get("device", "auto"),
        precision=values.get("precision", "fp16"),
        inference_size=None if size == (0, 0) else size,
        crf=values.get("crf", "none"),
        crf_options=parse_yaml_mapping(values.get("crf_options", "{}")),
    )

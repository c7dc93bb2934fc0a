"""The node's parameters: names, defaults, descriptions and validation, without ROS.

One table drives the node's declarations (with descriptors), runtime set requests, the shipped
``config/seg.yaml`` (tested to match), the launch file's arguments (tested to name parameters of
this table) and the evaluator, so a parameter cannot exist in one place and be missing in another.
:func:`validate_config` is the node's startup check of a whole configuration (cameras and their
topics included), and works on a params file as well.

Three kinds of parameter: ``dynamic`` ones take effect on the next frame, ``reload`` ones (the
model and how it runs) rebuild the engine in the background while the old one keeps serving, and
the rest need a restart. :func:`validate_params` checks single values and the combinations
(model/variant/options against the registry, device/precision), so a set request that could only
fail later is refused up front with the reason.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from .choices import (
    BACKENDS,
    COMPILE_MODES,
    DEFAULT_CACHE_MAX_MB,
    DEFAULT_CALIBRATION_FRAMES,
    DEFAULT_PARITY_MIN_AGREEMENT,
    DEVICES,
    MAX_CALIBRATION_FRAMES,
    ONNX_MODEL,
    PRECISIONS,
)
from .cityscapes import CLASS_NAMES, PALETTE
from .engine_api import DEFAULT_MAX_INFERENCE_PIXELS, MIN_INFERENCE_PIXELS, EngineConfig, EngineConfigError
from .image_conversion import DEFAULT_MAX_PIXELS
from .text import ECHO_LIMIT, bounded, bounded_repr, one_line
from .topics import Resolver, camera_topics, topic_problems

Validator = Callable[[Any], str | None]

#: Longest string any parameter accepts (a path is at most 4096 bytes on Linux); checked before a
#: validator or a YAML parser sees the value.
MAX_STRING_CHARS = 4096
#: Largest side of ``inference_size``: beyond this no camera exists and the tensors would not fit.
MAX_INFERENCE_SIDE = 8192
#: Labels are published as mono8: class ids must fit in a byte.
MAX_CLASSES = 255
#: Bounds of a ``model_options``/``crf_options`` mapping: flat options with scalar or short-list values.
MAX_OPTION_KEYS = 32
MAX_OPTION_LIST = 64
#: ``model: onnx``'s ``classes`` and ``palette`` (flat r, g, b) lists: up to 255 classes.
LABEL_OPTIONS = ("classes", "palette")
MAX_LABEL_OPTION_LIST = 3 * MAX_CLASSES
MAX_OPTION_STRING = 256
#: Most folders ``weights_dirs`` may list.
MAX_WEIGHTS_DIRS = 32


class OptionsError(ValueError):
    """A ``model_options``/``crf_options`` string that is not an acceptable options mapping."""


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases: a few hundred bytes of aliases expand to
    gigabytes (the "billion laughs"), and no option needs them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise OptionsError("YAML anchors and aliases (&, *) are not allowed in option values")
        return super().compose_node(parent, index)


@dataclass(frozen=True)
class ParamSpec:
    """One parameter. ``dynamic`` ones may change at runtime; the others need a restart."""

    name: str
    default: Any
    description: str
    dynamic: bool = False
    #: Changing it at runtime rebuilds the engine in the background (implies runtime-settable).
    reload: bool = False
    read_only: bool = False
    validate: Validator | None = None
    #: Numeric range shown in the ROS descriptor (min, max).
    range: tuple[float, float] | None = None


def _choice(*choices: str) -> Validator:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {bounded_repr(v)}"


def _in_range(low: float, high: float) -> Validator:
    return lambda v: None if low <= v <= high else f"must be in [{low}, {high}], got {v}"


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v}"


def _size(v: Any) -> str | None:
    if len(v) != 2 or any(int(x) < 0 for x in v) or (0 in v and tuple(v) != (0, 0)):
        return (f"must be [height, width] with both > 0, or [0, 0] for the frame size; "
                f"got {bounded_repr(list(v)[:4])}")
    if any(int(x) > MAX_INFERENCE_SIDE for x in v):
        return f"sides must be at most {MAX_INFERENCE_SIDE}; got {list(v)}"
    return None


def _option_value_problem(key: str, value: Any) -> str | None:
    """Options are scalars or short flat lists of scalars; anything else is refused unexpanded."""
    def scalar(x: Any) -> bool:
        return x is None or isinstance(x, (bool, int, float)) or (isinstance(x, str) and len(x) <= MAX_OPTION_STRING)

    if scalar(value):
        return None
    limit = MAX_LABEL_OPTION_LIST if key in LABEL_OPTIONS else MAX_OPTION_LIST
    if isinstance(value, list) and len(value) <= limit and all(scalar(x) for x in value):
        return None
    return (f"option {bounded_repr(key, 60)} must be a number, bool, short string or a flat list of at most "
            f"{limit} of them")


def parse_options(text: str) -> dict[str, Any]:
    """``model_options``/``crf_options`` string -> dict, or :class:`OptionsError` saying why not.

    The text is size-checked before it is parsed, the parser refuses aliases, and the result must
    be a small flat mapping, so nothing downstream ever expands or echoes a large structure.
    """
    if len(text) > MAX_STRING_CHARS:
        raise OptionsError(f"is {len(text)} characters long; at most {MAX_STRING_CHARS}")
    if not text.strip():
        return {}
    try:
        parsed = yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as exc:
        raise OptionsError(f"is not valid YAML: {bounded(exc, 200)}") from None
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise OptionsError(f"must be a YAML mapping like '{{key: value}}', got {bounded_repr(text)}")
    if len(parsed) > MAX_OPTION_KEYS:
        raise OptionsError(f"has {len(parsed)} keys; at most {MAX_OPTION_KEYS}")
    for key, value in parsed.items():
        if not isinstance(key, str):
            raise OptionsError(f"keys must be option names (strings), got {bounded_repr(key, 60)}")
        problem = _option_value_problem(key, value)
        if problem:
            raise OptionsError(problem)
    return parsed


def _yaml_mapping(v: str) -> str | None:
    try:
        parse_options(v)
    except OptionsError as exc:
        return str(exc)
    return None


def _weights(v: str) -> str | None:
    from .models.checkpoint import weights_path_problem

    if "\x00" in v:
        return "must be a file path (it contains a NUL byte)"
    return weights_path_problem(v) if v else None


def _calibration(v: str) -> str | None:
    """Empty, or data the quantizer can read: a drive bag, a Cityscapes folder or a folder of
    images (checked by kind here; the frames themselves when the engine is built)."""
    if not v:
        return None
    if "\x00" in v:
        return "must be a folder path (it contains a NUL byte)"
    from .backends.calibration import CalibrationError, calibration_kind

    try:
        calibration_kind(v)
    except CalibrationError as exc:
        return str(exc).removeprefix("calibration ")
    return None


def _weights_dirs(v: Any) -> str | None:
    """Absolute folder paths (``~`` expanded), a few of them: where runtime ``weights`` may load from."""
    if len(v) > MAX_WEIGHTS_DIRS:
        return f"must list at most {MAX_WEIGHTS_DIRS} folders, got {len(v)}"
    for folder in v:
        if not isinstance(folder, str) or not folder or len(folder) > 1024 or any(ord(c) < 32 for c in folder):
            return f"must be folder paths of at most 1024 printable characters, got {bounded_repr(folder, 80)}"
        if not os.path.isabs(os.path.expanduser(folder)):
            return f"must be absolute folder paths (or start with ~), got {bounded_repr(folder, 80)}"
    return None


def _topic(v: str) -> str | None:
    """ROS topic names: letters, digits, ``_``, ``/``, ``~``, ``{}`` (substitutions); not empty."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_/~{}")
    if not v or len(v) > 256 or not set(v) <= allowed or v[0].isdigit():
        return f"must be a ROS topic name (letters, digits, _ and /, at most 256 chars), got {bounded_repr(v)}"
    return None


def _cache_dir(v: str) -> str | None:
    """Empty (the default location), or an absolute folder path (``~`` expanded): a relative one
    would depend on the directory the node happened to be started from."""
    if not v:
        return None
    if len(v) > 1024 or any(ord(c) < 32 for c in v):
        return f"must be a folder path of at most 1024 printable characters, got {bounded_repr(v)}"
    path = os.path.expanduser(v)
    if not os.path.isabs(path):
        return f"must be an absolute folder path (or start with ~), got {bounded_repr(v)}"
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{bounded_repr(v)} exists and is not a folder"
    return None


def _model_name(v: str) -> str | None:
    from .models import list_models

    models = list_models()
    if v in models or v == ONNX_MODEL:
        return None
    return (f"{bounded_repr(v)} is not a registered model; valid models: {', '.join(models)}, or {ONNX_MODEL} "
            "(weights: an .onnx file)")


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("model", "regseg", "Architecture name from the registry (`seg-perception models`), or onnx: "
              "serve the ONNX file given as weights (see 'Bring your own network' in the README).",
              validate=_model_name, reload=True),
    ParamSpec("variant", "", "Architecture variant; empty = the model's default variant.", reload=True),
    ParamSpec("weights", "", "Checkpoint file (the .onnx file with model onnx); empty = random weights "
              "(labels meaningless, logged loudly).",
              validate=_weights, reload=True),
    ParamSpec("weights_dirs", [],
              "Folders a runtime change of weights may load checkpoints from (set at launch only); empty = "
              "the folder of the startup weights and the package's shipped weights. See 'Security' in the "
              "README.", validate=_weights_dirs),
    ParamSpec("num_classes", 19, "Number of classes the model predicts (19 = Cityscapes train ids; at most 255: "
              "labels are mono8).", validate=_in_range(1, MAX_CLASSES), range=(1, MAX_CLASSES), reload=True),
    ParamSpec("model_options", "{}",
              "Builder options as a YAML mapping, e.g. '{scales: [0.5, 1.0], align_corners: false}'; with model "
              "onnx the file's contract: mean, std, channel_order, input_size, output, classes, palette.",
              validate=_yaml_mapping, reload=True),
    ParamSpec("device", "auto", "auto | cuda | cpu.", validate=_choice(*DEVICES), reload=True),
    ParamSpec("precision", "auto", "auto | fp16 | fp32 | int8: auto = fp16 on CUDA, fp32 on the CPU; fp16 needs "
              "CUDA; int8 needs calibration (ONNX Runtime on the CPU, TensorRT on CUDA; docs/BACKENDS.md).",
              validate=_choice(*PRECISIONS), reload=True),
    ParamSpec("calibration", "",
              "precision int8: frames like the camera's to calibrate on: a drive bag folder (any camera, raw or "
              "compressed), a Cityscapes folder or a folder of images. At runtime only data inside "
              "calibration_dirs can be named.", validate=_calibration, reload=True),
    ParamSpec("calibration_frames", DEFAULT_CALIBRATION_FRAMES,
              "precision int8: how many frames of calibration the quantizer measures, spread over the data "
              "(a few more are held out for the parity gate).",
              validate=_in_range(1, MAX_CALIBRATION_FRAMES), range=(1, MAX_CALIBRATION_FRAMES), reload=True),
    ParamSpec("calibration_dirs", [],
              "Folders a runtime change of calibration may read from (set at launch only); empty = the folder "
              "holding the startup calibration data. See 'Security' in the README.", validate=_weights_dirs),
    ParamSpec("parity_min_agreement", DEFAULT_PARITY_MIN_AGREEMENT,
              "Parity gate: an engine that is not the fp32 reference (fp16, int8, ONNX Runtime, TensorRT) is "
              "served only when at least this fraction of its labels equals the reference's on held-out "
              "calibration frames, live frames or a synthetic frame; below it the previous engine keeps serving "
              "(at startup: the fp32 reference) and /diagnostics warns with the figure. 0 = off.",
              validate=_in_range(0.0, 1.0), range=(0.0, 1.0), reload=True),
    ParamSpec("inference_size", [0, 0],
              "[height, width] the model runs at; [0, 0] = each frame's own size.",
              validate=_size, reload=True),
    ParamSpec("crf", "none", "Dense CRF post-processing: none | cpu | gpu.",
              validate=_choice("none", "cpu", "gpu"), reload=True),
    ParamSpec("crf_options", "{}", "CRF parameters as a YAML mapping (see docs/MODELS.md).",
              validate=_yaml_mapping, reload=True),
    ParamSpec("compile", "none",
              "none | torch_compile | cuda_graph (CUDA only): capture/compile per camera resolution.",
              validate=_choice(*COMPILE_MODES), reload=True),
    ParamSpec("backend", "auto",
              "What runs the network: auto (onnxruntime on the CPU, torch on CUDA) | torch | onnxruntime | "
              "tensorrt (ONNX Runtime's TensorRT provider, CUDA). See docs/BACKENDS.md.",
              validate=_choice(*BACKENDS), reload=True),
    ParamSpec("cache_dir", "",
              "Folder of exported ONNX models and TensorRT engines; empty = $XDG_CACHE_HOME/seg_perception. "
              "Set by the operator at launch: a folder other participants could choose would let them pick "
              "what the node loads and where it writes.",
              validate=_cache_dir),
    ParamSpec("cache_max_mb", DEFAULT_CACHE_MAX_MB,
              "Size cap of the export cache folder in MB; the least recently used artifacts are evicted past "
              "it. 0 = write nothing (exports are rebuilt in memory at each start).",
              validate=_non_negative, range=(0, 1 << 20), reload=True),
    ParamSpec("max_inference_pixels", DEFAULT_MAX_INFERENCE_PIXELS,
              "With inference_size [0, 0]: a frame with more pixels than this runs through the network scaled "
              "down to this many (aspect kept) and its labels come back at its own size, so no frame costs more "
              "than this size does. Default 2097152 = 1024x2048.",
              validate=_in_range(MIN_INFERENCE_PIXELS, 2**31 - 1), range=(MIN_INFERENCE_PIXELS, 2**31 - 1),
              reload=True),
    ParamSpec("cameras", [],
              "Camera names, one node serving them all with one model (see 'Many cameras' in the README); "
              "each camera reads <camera>.image_topic and publishes <camera>/segmentation/*. "
              "Empty = one camera on image_topic.",
              validate=lambda v: "; ".join(camera_name_problems(v)) or None),
    ParamSpec("image_topic", "camera/image_raw",
              "Input sensor_msgs/Image topic (relative, remappable); single-camera mode only.", validate=_topic),
    ParamSpec("image_transport", "raw",
              "raw: sensor_msgs/Image on the image topic | compressed: sensor_msgs/CompressedImage (JPEG/PNG) "
              "on <image topic>/compressed, as image_transport's compressed plugin publishes it.",
              validate=_choice("raw", "compressed")),
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
    ParamSpec("clock_mismatch_s", 5.0,
              "Stamps further than this from the node clock (past or future), or zero, are taken as another "
              "clock (a replayed bag, an unsynchronised camera): those frames are aged from their arrival, not "
              "dropped as stale, and /diagnostics warns with the offset and the fix.",
              dynamic=True, validate=_positive, range=(0.001, 3.2e7)),
    ParamSpec("batch_wait_ms", 2.0,
              "Once one camera's frame is pending, wait up to this long for the other cameras' frames "
              "to batch them together: more throughput, at most this much more latency.",
              dynamic=True, validate=_non_negative, range=(0.0, 1000.0)),
    ParamSpec("max_batch_size", 0,
              "Most frames (cameras) run together; 0 = all cameras, 1 = no batching (round-robin).",
              dynamic=True, validate=_non_negative, range=(0, 1024)),
    ParamSpec("silence_warn_s", 3.0,
              "A camera that delivered frames and then none for this long is WARN; 0 = never.",
              dynamic=True, validate=_non_negative, range=(0.0, 86400.0)),
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
    ParamSpec("failure_error_count", 5,
              "This many inference failures in a row, within failure_window_s, raise ERROR.",
              dynamic=True, validate=_positive, range=(1, 10000)),
    ParamSpec("failure_window_s", 10.0,
              "Seconds a burst of failures stays relevant; a successful frame clears it at once.",
              dynamic=True, validate=_positive, range=(0.001, 86400.0)),
    ParamSpec("fail_fast", True,
              "Exit non-zero when the model cannot be loaded at startup; false = stay up and report "
              "ERROR on /diagnostics."),
    # Managed node, output QoS and lazy serving (see 'Lifecycle, output QoS and lazy serving' in the README).
    ParamSpec("lifecycle", False,
              "true: a managed (lifecycle) node that starts unconfigured: configure loads the model, activate "
              "serves, deactivate pauses, cleanup releases the model; false: a plain node that serves at once."),
    ParamSpec("output_qos_reliability", "reliable",
              "Output QoS reliability (labels, color, overlay, confidence): reliable | best_effort (a reliable "
              "subscriber gets nothing from best_effort outputs).",
              validate=_choice("reliable", "best_effort")),
    ParamSpec("output_qos_depth", 5, "Output QoS history depth (keep last N).", validate=_positive,
              range=(1, 1000)),
    ParamSpec("lazy", False,
              "true: a camera's frames are skipped (dropped as no_subscribers) while nobody subscribes to any "
              "output it publishes; the first frame after a subscriber appears is served.", dynamic=True),
    ParamSpec("class_names", list(CLASS_NAMES), "Class name of each label id (read-only).", read_only=True),
    ParamSpec("palette", [int(c) for c in PALETTE.reshape(-1)],
              "Colour of each label id as flat [r0, g0, b0, r1, ...] (read-only).", read_only=True),
)

PARAMS_BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMS}
#: Parameters that take free text: each is tested with hostile values (test_params_hostile.py).
STRING_PARAMS: tuple[str, ...] = tuple(p.name for p in PARAMS if isinstance(p.default, str))


@dataclass(frozen=True)
class CameraParamSpec:
    """A per-camera parameter ``<camera>.<name>``. Unset, it follows the node-wide parameter of
    the same name (``image_topic`` instead defaults to ``<camera>/camera/image_raw``, the topic a
    per-camera node in namespace ``<camera>`` would read); type, validation and whether it may
    change at runtime are the node-wide parameter's."""

    name: str
    description: str

    @property
    def dynamic(self) -> bool:
        return PARAMS_BY_NAME[self.name].dynamic


CAMERA_PARAMS: tuple[CameraParamSpec, ...] = (
    CameraParamSpec("image_topic", "This camera's input topic; default <camera>/camera/image_raw."),
    CameraParamSpec("image_transport", "This camera's transport (raw | compressed); default: image_transport."),
    CameraParamSpec("qos_reliability", "This camera's input QoS reliability; default: qos_reliability."),
    CameraParamSpec("max_age_ms", "This camera's frame age limit; default: max_age_ms."),
    CameraParamSpec("publish_color", "Publish <camera>/segmentation/color; default: publish_color."),
    CameraParamSpec("publish_overlay", "Publish <camera>/segmentation/overlay; default: publish_overlay."),
    CameraParamSpec("publish_confidence", "Publish <camera>/segmentation/confidence; default: publish_confidence."),
    CameraParamSpec("output_qos_reliability", "This camera's output QoS reliability; default: output_qos_reliability."),
    CameraParamSpec("output_qos_depth", "This camera's output QoS history depth; default: output_qos_depth."),
    CameraParamSpec("lazy", "Skip this camera's frames while nobody subscribes to its outputs; default: lazy."),
)
CAMERA_PARAMS_BY_NAME: dict[str, CameraParamSpec] = {p.name: p for p in CAMERA_PARAMS}
#: Camera names: one ROS name token (it becomes a topic namespace and a parameter prefix).
CAMERA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}\Z")
MAX_CAMERAS = 64



def camera_name_problems(cameras: Any) -> list[str]:
    """Why a ``cameras`` list is not acceptable (empty when it is)."""
    if isinstance(cameras, (str, bytes)) or not hasattr(cameras, "__len__"):
        return [f"must be a list of camera names, got {bounded_repr(cameras, 40)}"]
    if len(cameras) > MAX_CAMERAS:
        return [f"at most {MAX_CAMERAS} cameras, got {len(cameras)}"]
    problems, seen = [], set()
    for name in cameras:
        if not isinstance(name, str) or not CAMERA_NAME.match(name):
            problems.append(f"camera name {bounded_repr(name, 40)} is not a valid ROS name token "
                            "(a letter, then letters, digits or _; at most 63 characters)")
        elif name in PARAMS_BY_NAME:
            problems.append(f"camera name {name!r} is also a node parameter; choose another name")
        elif name in seen:
            problems.append(f"camera {name!r} is listed twice")
        seen.add(name)
    return problems


def default_camera_topic(camera: str) -> str:
    return f"{camera}/camera/image_raw"


def camera_param_problems(camera: str, values: Mapping[str, Any]) -> list[str]:
    """Problems in one camera's set overrides (``None`` = not set, follows the node-wide value)."""
    problems = []
    for name, value in values.items():
        if name not in CAMERA_PARAMS_BY_NAME:
            problems.append(f"{camera}.{name}: unknown per-camera parameter; valid: "
                            f"{', '.join(CAMERA_PARAMS_BY_NAME)}")
        elif value is not None and (reason := validate_param(name, value)):
            problems.append(f"{camera}.{reason}")
    return problems


def split_camera_params(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Separate a params file's node-wide values from its per-camera sections.

    A camera's parameters arrive as a nested mapping (``front: {image_topic: ...}``, as YAML
    files write them) or as dotted names (``front.image_topic``, as the node sees them).
    """
    node_wide: dict[str, Any] = {}
    cameras: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            cameras.setdefault(key, {}).update(value)
        elif "." in key:
            camera, _, name = key.partition(".")
            cameras.setdefault(camera, {})[name] = value
        else:
            node_wide[key] = value
    return node_wide, cameras


def validate_config(values: Mapping[str, Any], resolve: Resolver | None = None) -> list[str]:
    """Every problem of a whole configuration: :func:`validate_params`, the camera names, each
    camera's section, sections for cameras that are not in ``cameras``, and the topics (two
    cameras on one subscribed topic, a camera reading the node's own output; see
    :mod:`~seg_perception.topics`). The node runs it at startup with its topic resolver (names
    compared in its namespace, with remapping); without ``resolve`` names are compared as written.
    ``values`` is a params file's mapping (:func:`load_params_file`): per-camera values as
    nested sections or dotted names."""
    node_wide, sections = split_camera_params(values)
    problems = validate_params(node_wide)
    cameras = list(node_wide.get("cameras") or [])
    for camera in sorted(set(sections) - set(cameras)):
        problems.append(f"camera {bounded_repr(camera, 40)} is not in cameras: its parameters are ignored")
    if camera_name_problems(cameras):
        return problems
    for camera in dict.fromkeys(cameras):
        problems += camera_param_problems(camera, sections.get(camera, {}))

    def setting(camera: str, name: str) -> Any:
        value = sections.get(camera, {}).get(name)
        if value is None and camera and name == "image_topic":
            return default_camera_topic(camera)
        return node_wide.get(name, PARAMS_BY_NAME[name].default) if value is None else value

    topics, unresolved = camera_topics(cameras or [""], setting, resolve or (lambda topic: topic))
    problems += unresolved
    if not problems:
        problems += topic_problems(topics, resolve or (lambda topic: topic))
    return problems


def validate_param(name: str, value: Any) -> str | None:
    """The reason ``value`` is not acceptable for ``name``, or None when it is."""
    spec = PARAMS_BY_NAME.get(name)
    if spec is None:
        return f"unknown parameter {bounded_repr(name, 80)}"
    if spec.default is not None and not _same_kind(value, spec.default):
        return (f"{name} must be of type {type(spec.default).__name__}, got {type(value).__name__} "
                f"{bounded_repr(value)}")
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        return f"{name} is {len(value)} characters long; at most {MAX_STRING_CHARS}"
    if spec.validate is None:
        return None
    try:
        reason = spec.validate(value)
    except (TypeError, ValueError) as exc:
        reason = f"is not a valid value ({bounded(exc, 200)}), got {bounded_repr(value)}"
    return bounded(f"{name} {reason}") if reason else None


def _same_kind(value: Any, default: Any) -> bool:
    """ROS types: bool is not an int, an int is an acceptable float, arrays are sequences."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, list):
        return not isinstance(value, (str, bytes)) and hasattr(value, "__len__")
    return isinstance(value, type(default))


def validate_params(values: Mapping[str, Any]) -> list[str]:
    """Every problem in a (full or partial) parameter set; empty when all are valid.

    Single values first; the combinations only when their parts are individually valid, so each
    problem is reported once, at its root.
    """
    problems = [r for name, value in values.items() if (r := validate_param(name, value))]
    bad = {name for name in values if validate_param(name, values[name])}
    for low, high in (("latency_warn_ms", "latency_error_ms"), ("drop_warn_ratio", "drop_error_ratio")):
        if low in values and high in values and not {low, high} & bad and values[low] > values[high]:
            problems.append(f"{low} must not exceed {high}")
    engine_keys = {"model", "variant", "model_options", "num_classes", "device", "precision",
                   "inference_size", "crf", "crf_options", "compile", "backend"}
    if engine_keys <= set(values) and not engine_keys & bad:
        problems += _engine_problems(values)
    return problems


def _engine_problems(values: Mapping[str, Any]) -> list[str]:
    """Model/variant/options against the registry (or the ONNX contract's options), and
    device/precision/size combinations."""
    from .crf import CRFConfig, CRFConfigError

    problems = _onnx_model_problems(values) if values["model"] == ONNX_MODEL else _registry_problems(values)
    if problems:
        return problems
    try:
        CRFConfig(mode=values["crf"], **parse_options(values["crf_options"])).validate()
    except TypeError as exc:  # an unknown option name
        return [bounded(f"crf_options: {exc}".replace("CRFConfig.__init__() ", ""))]
    except CRFConfigError as exc:
        return [bounded(f"crf_options: {exc}")]
    try:
        engine_config(values).validate()
    except EngineConfigError as exc:
        return [bounded(exc)]
    return []


def _onnx_model_problems(values: Mapping[str, Any]) -> list[str]:
    """``model: onnx``: a file to serve and the contract's options (the file itself is read when
    the engine loads: a set request does not open files)."""
    from .backends.onnx_contract import options_problem

    if not values["weights"]:
        return [f"model {ONNX_MODEL} needs weights: the path of the network's .onnx file"]
    problem = options_problem(parse_options(values["model_options"]))
    return [bounded(f"model_options: {problem}")] if problem else []


def _registry_problems(values: Mapping[str, Any]) -> list[str]:
    """A registered model: name, variant and builder options (names and value kinds)."""
    from .models.registry import ModelConfigError, model_option_defaults, resolve

    try:
        resolve(values["model"], values["variant"] or None)
        defaults_ = model_option_defaults(values["model"], values["variant"] or None)
    except ModelConfigError as exc:
        return [bounded(exc)]
    options = parse_options(values["model_options"])
    unknown = sorted(set(options) - set(defaults_))
    if unknown:
        return [bounded(f"model_options: unknown option(s) {', '.join(unknown)} for model {values['model']!r}; "
                        f"valid options: {', '.join(defaults_) or 'none'}")]
    for key, value in options.items():
        problem = _option_type_problem(value, defaults_[key])
        if problem:
            return [bounded(f"model_options: {key} {problem}")]
    return []


def _option_type_problem(value: Any, default: Any) -> str | None:
    """A builder option's value against the kind of its default (None defaults take anything)."""
    if default is None:
        return None
    if isinstance(default, (list, tuple)):
        kind, ok = "a list", isinstance(value, list)
        if ok and default and isinstance(default[0], (int, float)):
            kind, ok = "a list of numbers", all(_same_kind(x, float(default[0])) for x in value)
    else:
        kind, ok = type(default).__name__, _same_kind(value, default)
    return None if ok else f"must be {kind}, got {bounded_repr(value, 80)}"


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
        model_options=parse_options(values.get("model_options", "{}")),
        device=values.get("device", "auto"),
        precision=values.get("precision", "auto"),
        inference_size=None if size == (0, 0) else size,
        crf=values.get("crf", "none"),
        crf_options=parse_options(values.get("crf_options", "{}")),
        compile=values.get("compile", "none"),
        backend=values.get("backend", "auto"),
        cache_dir=values.get("cache_dir", ""),
        cache_max_mb=int(values.get("cache_max_mb", DEFAULT_CACHE_MAX_MB)),
        max_inference_pixels=int(values.get("max_inference_pixels", DEFAULT_MAX_INFERENCE_PIXELS)),
        calibration=values.get("calibration", ""),
        calibration_frames=int(values.get("calibration_frames", DEFAULT_CALIBRATION_FRAMES)),
        parity_min_agreement=float(values.get("parity_min_agreement", DEFAULT_PARITY_MIN_AGREEMENT)),
    )



def params_files(argv: list[str]) -> list[str]:
    """The ``--params-file`` paths among ROS command-line arguments."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--params-file"]


def params_file_problem(argv: list[str]) -> str | None:
    """Why a ``--params-file`` in ``argv`` cannot be used, as one line; None when all are fine.

    Checked before ROS parses them: rcl's own failure is a multi-line error with parser
    internals, and a missing file deserves to be named as such.
    """
    for path in params_files(argv):
        shown = one_line(repr(path), ECHO_LIMIT)
        if not os.path.exists(path):
            return f"params file {shown} does not exist"
        if os.path.isdir(path):
            return f"params file {shown} is a directory, not a YAML file"
        try:
            with open(path, encoding="utf-8") as f:
                document = yaml.safe_load(f)
        except OSError as exc:
            return f"params file {shown} cannot be read: {one_line(exc.strerror or str(exc), ECHO_LIMIT)}"
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            return f"params file {shown} is not valid YAML: {one_line(str(exc), ECHO_LIMIT)}"
        if document is not None and not isinstance(document, dict):
            return (f"params file {shown} must be a mapping '<node name>: {{ros__parameters: {{...}}}}', "
                    f"got a {type(document).__name__}")
    return None


def unknown_parameter_message(name: str, known: list[str], cameras: tuple[str, ...] = ()) -> str:
    """A warning for a parameter nobody declared (a typo in a params file or a ``-p``),
    naming the closest known parameter; for a per-camera parameter of a camera that is not in
    ``cameras``, saying so (and naming the closest camera)."""
    camera, dot, camera_param = name.partition(".")
    if dot and camera_param in CAMERA_PARAMS_BY_NAME and camera not in cameras:
        close = difflib.get_close_matches(camera, cameras, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(cameras) if cameras else "none"
        return (f"parameter {one_line(repr(name), 80)} is ignored: camera {one_line(repr(camera), 80)} is not "
                f"in cameras (cameras: {one_line(listed, 200)}){hint}")
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown parameter {one_line(repr(name), 80)} is ignored{hint}"

"""The contract of a segmentation network given as an ONNX file (``model: onnx``): how to feed
it and how to read its answer, read from the file and checked before anything runs.

Any exported segmentation network can be served (mmsegmentation/mmdeploy, PaddleSeg, torchvision,
one's own PyTorch code) as long as it takes one image and answers per pixel. What the engine must
know comes from, in this order:

1. the file's ``metadata_props``: ``mean``, ``std``, ``channel_order``, ``input_size``, ``output``,
   ``classes``, ``palette`` (``seg-perception export`` writes the first ones, so our own exports need
   nothing else);
2. ``model_options``: the same keys, for what the file does not record (mean/std per channel for
   0..1 input in the network's channel order; ``input_size`` as ``[H, W]``; ``palette`` as a flat
   ``[r0, g0, b0, r1, ...]``). A value the file records wins; a different one given here is named
   in a warning, never silently dropped;
3. defaults a user would expect (ImageNet mean/std, rgb, logits - labels for an integer output -,
   Cityscapes names and colours for 19 classes), each named in the notes logged at load.

The graph itself is the authority on shapes: one float32/float16 input ``(N, 3, H, W)``; fixed
H and W make a fixed-size network (frames are resized to it, labels come back at the frame size),
symbolic ones a dynamic network (frames run at their own size or ``inference_size``); a fixed N
makes the frames of several cameras run in groups of N. The first output is read: ``logits`` or
``probabilities`` ``(N, C, h, w)`` at any resolution, or ``labels`` ``(N, h, w)`` or
``(N, 1, h, w)`` (argmax inside the graph). Its class count C comes from the output's shape as
ONNX Runtime computes it on a check run at load (:mod:`.onnx_model`), so a symbolic channel
dimension is fine.

This module reads the file with ``onnx`` only (no torch, no session); anything wrong is one
:class:`OnnxContractError` naming what and why, bounded, never quoting the file's content.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..choices import CHANNEL_ORDERS, ONNX_MODEL, ONNX_OUTPUTS
from ..cityscapes import CLASS_NAMES, palette_for
from ..normalization import IMAGENET, Normalization, NormalizationError
from ..text import bounded, bounded_repr

#: The ``model_options`` keys of ``model: onnx`` (and the ``metadata_props`` keys read).
CONTRACT_OPTIONS = ("mean", "std", "channel_order", "input_size", "output", "classes", "palette")
#: Labels are published as mono8, so class ids must fit in a byte (255 stays "no class").
MAX_CLASSES = 255
#: Longest class name kept (names are published as a parameter and shown in reports).
MAX_CLASS_NAME = 64
#: Largest side of a network input accepted.
MAX_SIDE = 8192
#: Longest metadata value read; longer ones are treated as unreadable (no class list is this long).
MAX_METADATA_CHARS = 64 * 1024
#: ONNX element types of the input the engine can feed (it normalises in float).
INPUT_TYPES = {1: "float32", 10: "float16"}
#: ONNX element types and the numpy names used in messages.
_ELEMENT_NAMES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
                  10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}
_FLOAT_OUTPUTS = {"float32", "float16", "float64", "bfloat16"}


class OnnxContractError(ValueError):
    """An ONNX file or ``model_options`` that cannot serve as a segmentation network (the message
    says what and why)."""


@dataclass(frozen=True)
class OnnxGraph:
    """What the file declares about its input and output (``None``: a symbolic dimension)."""

    path: str
    input_name: str
    input_type: str  # "float32" or "float16"
    batch: int | None
    height: int | None
    width: int | None
    output_name: str
    output_type: str
    output_dims: tuple[int | None, ...] | None  # None: rank not recorded
    other_outputs: tuple[str, ...]
    opsets: dict[str, int]
    parameters: int
    metadata: dict[str, str]

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        return (self.height, self.width) if self.height and self.width else None


@dataclass(frozen=True)
class InputContract:
    """How frames are fed: normalisation and the size the network runs at (None: each frame's
    own size, or ``inference_size``)."""

    normalization: Normalization
    run_size: tuple[int, int] | None
    #: Defaults taken for what neither the file nor the options say.
    defaults: tuple[str, ...] = ()
    #: Options the file's metadata overrode.
    conflicts: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class OnnxContract:
    """Everything the engine needs to serve the file; ``defaults`` say which defaults were taken,
    ``conflicts`` which options the file overrode (both logged once at load)."""

    graph: OnnxGraph
    input: InputContract
    #: logits | probabilities | labels
    output: str
    class_names: tuple[str, ...]
    palette: np.ndarray  # (classes, 3) uint8
    defaults: tuple[str, ...] = field(default=())
    conflicts: tuple[str, ...] = field(default=())

    @property
    def path(self) -> str:
        return self.graph.path

    @property
    def normalization(self) -> Normalization:
        return self.input.normalization

    @property
    def run_size(self) -> tuple[int, int] | None:
        return self.input.run_size

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> str:
        """One line for logs and diagnostics."""
        norm = self.normalization
        size = f"{self.run_size[0]}x{self.run_size[1]}" if self.run_size else "frame size"
        batch = f"batch {self.graph.batch}" if self.graph.batch else "dynamic batch"
        return (f"{Path(self.path).name}: input {self.graph.input_name} {self.graph.input_type} "
                f"{norm.channel_order} at {size}, {batch}, mean {list(norm.mean)} std {list(norm.std)}; "
                f"output {self.graph.output_name} = {self.output}, {self.num_classes} classes")


# -- model_options ------------------------------------------------------------------------------------
def _numbers(value: Any, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def options_problem(options: Mapping[str, Any]) -> str | None:
    """Why ``options`` is not an acceptable ``model_options`` for ``model: onnx`` (None when it
    is): unknown keys and values of the wrong kind, checked without opening the file."""
    unknown = sorted(set(options) - set(CONTRACT_OPTIONS))
    if unknown:
        return (f"unknown option(s) {bounded(', '.join(map(str, unknown)), 200)} for model {ONNX_MODEL}; "
                f"valid options: {', '.join(CONTRACT_OPTIONS)}")
    for name in ("mean", "std"):
        if name in options and not _numbers(options[name], 3):
            return (f"{name} must be 3 finite numbers (one per channel, for 0..1 input), "
                    f"got {bounded_repr(options[name], 80)}")
    if "std" in options and any(v <= 0 for v in options["std"]):
        return f"std must be > 0 per channel, got {options['std']}"
    if "mean" in options and any(not -1.0 <= v <= 1.0 for v in options["mean"]):
        return (f"mean {options['mean']} is not for 0..1 input; mean and std are per channel on pixel values "
                "scaled to 0..1 (divide 0..255 values, e.g. mmsegmentation's, by 255)")
    if "std" in options and any(v > 1.0 for v in options["std"]):
        return (f"std {options['std']} is not for 0..1 input; mean and std are per channel on pixel values "
                "scaled to 0..1 (divide 0..255 values, e.g. mmsegmentation's, by 255)")
    if "channel_order" in options and options["channel_order"] not in CHANNEL_ORDERS:
        return (f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, "
                f"got {bounded_repr(options['channel_order'], 40)}")
    if "input_size" in options and not _size(options["input_size"]):
        return (f"input_size must be [height, width] with 1..{MAX_SIDE} each, "
                f"got {bounded_repr(options['input_size'], 80)}")
    if "output" in options and options["output"] not in ONNX_OUTPUTS:
        return f"output must be one of {', '.join(ONNX_OUTPUTS)}, got {bounded_repr(options['output'], 40)}"
    if "classes" in options:
        try:
            _class_names(options["classes"], "classes")
        except OnnxContractError as exc:
            return str(exc)
    if "palette" in options:
        try:
            _palette(options["palette"], "palette")
        except OnnxContractError as exc:
            return str(exc)
    return None


def _size(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE for v in value))


def _class_names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_CLASSES:
        raise OnnxContractError(f"{where} must be a list of 1..{MAX_CLASSES} class names")
    names = []
    for name in value:
        if not isinstance(name, (str, int)) or isinstance(name, bool):
            raise OnnxContractError(f"{where} must be a list of class names (strings)")
        text = str(name)
        if not text or len(text) > MAX_CLASS_NAME or not text.isprintable():
            raise OnnxContractError(f"{where}: class names must be 1..{MAX_CLASS_NAME} printable characters")
        names.append(text)
    return tuple(names)


def _palette(value: Any, where: str) -> np.ndarray:
    """A flat ``[r0, g0, b0, ...]`` or nested ``[[r, g, b], ...]`` list -> (N, 3) uint8."""
    flat = [v for row in value for v in row] if isinstance(value, list) and value and all(
        isinstance(row, list) for row in value) else value
    if (not isinstance(flat, list) or not flat or len(flat) % 3 or len(flat) > 3 * MAX_CLASSES
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in flat)):
        raise OnnxContractError(f"{where} must be colours as [r0, g0, b0, r1, ...] with integers 0..255, "
                                f"at most {MAX_CLASSES} colours")
    return np.asarray(flat, np.uint8).reshape(-1, 3)


# -- the graph ----------------------------------------------------------------------------------------
def read_graph(path: str | os.PathLike[str]) -> OnnxGraph:
    """Read and check the file's declared input and output (no weights are loaded).

    Refused: a path that is not a file, a file that is not an ONNX model, more than one input,
    an input that is not a 4-D float tensor with 3 channels (NCHW), external weights outside the
    file's folder.
    """
    import onnx

    path = os.fspath(path)
    shown = bounded_repr(path, 300)
    if not os.path.isfile(path):
        what = "does not exist" if not os.path.exists(path) else "is not a regular file"
        raise OnnxContractError(f"the ONNX file {shown} {what}")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # protobuf's DecodeError and others: the bytes are not a model (never echoed)
        raise OnnxContractError(f"{shown} is not an ONNX model (it does not parse as one)") from None
    graph = proto.graph
    if proto.ir_version <= 0 or not graph.node or not graph.output:
        raise OnnxContractError(f"{shown} is not an ONNX model (it holds no graph with outputs)")
    _check_external_data(graph, path, shown)
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(bounded_repr(i.name, 40) for i in inputs[:4]) + (", ..." if len(inputs) > 4 else "")
        raise OnnxContractError(f"the network has {len(inputs)} inputs ({names}); a segmentation network "
                                "takes one image tensor (N, 3, H, W)")
    image = inputs[0]
    input_type, dims = _tensor(image)
    if input_type not in INPUT_TYPES.values():
        raise OnnxContractError(f"the network's input {bounded_repr(image.name, 40)} is {input_type}, not a float "
                                "tensor: the engine feeds normalised float32 or float16 images")
    if dims is None or len(dims) != 4:
        rank = "of unknown rank" if dims is None else f"{len(dims)}-D"
        raise OnnxContractError(f"the network's input {bounded_repr(image.name, 40)} is {rank}; a segmentation "
                                "network takes a 4-D image tensor (N, 3, H, W)")
    batch, channels, height, width = dims
    if channels is not None and channels != 3:
        hint = " (channels last? export it channels first: N, 3, H, W)" if width == 3 else ""
        raise OnnxContractError(f"the network's input has {channels} channels in dimension 1; it must take 3 "
                                f"(N, 3, H, W){hint}")
    if any(d is not None and d > MAX_SIDE for d in (height, width)):
        raise OnnxContractError(f"the network's input size {height}x{width} is larger than {MAX_SIDE}")
    output = graph.output[0]
    output_type, output_dims = _tensor(output)
    metadata = {p.key: p.value for p in proto.metadata_props if p.key in CONTRACT_OPTIONS or p.key == "num_classes"}
    return OnnxGraph(
        path=path, input_name=image.name, input_type=input_type, batch=batch, height=height, width=width,
        output_name=output.name, output_type=output_type, output_dims=output_dims,
        other_outputs=tuple(o.name for o in graph.output[1:]),
        opsets={o.domain or "ai.onnx": int(o.version) for o in proto.opset_import},
        parameters=sum(int(np.prod(init.dims, dtype=np.int64)) for init in graph.initializer),
        metadata=metadata,
    )


def _tensor(value: Any) -> tuple[str, tuple[int | None, ...] | None]:
    """(element type name, dims with None for symbolic ones, or None when no shape is recorded)."""
    if not value.type.HasField("tensor_type"):
        return "not a tensor", None
    tensor = value.type.tensor_type
    kind = _ELEMENT_NAMES.get(tensor.elem_type, f"type {tensor.elem_type}")
    if not tensor.HasField("shape"):
        return kind, None
    return kind, tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                       for d in tensor.shape.dim)


def _check_external_data(graph: Any, path: str, shown: str) -> None:
    """Weights stored beside the file must lie in its folder: ONNX Runtime would read whatever
    file a ``location`` names, and the file is not trusted to name one elsewhere."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for init in graph.initializer:
        if init.data_location != 1:  # TensorProto.EXTERNAL
            continue
        location = next((e.value for e in init.external_data if e.key == "location"), "")
        target = os.path.realpath(os.path.join(folder, location))
        if not location or os.path.isabs(location) or not target.startswith(folder + os.sep):
            raise OnnxContractError(f"{shown} keeps weights in a file outside its own folder; external "
                                    "weights must lie beside the ONNX file")


# -- the input ----------------------------------------------------------------------------------------
def _metadata_json(graph: OnnxGraph, key: str) -> Any:
    text = graph.metadata[key]
    try:
        if len(text) > MAX_METADATA_CHARS:
            raise ValueError
        return json.loads(text)
    except ValueError:
        raise OnnxContractError(f"the file's metadata {key!r} is unreadable (expected JSON)") from None


def _pick(options: Mapping[str, Any], key: str, from_file: Any, conflicts: list[str]) -> tuple[Any, str]:
    """(value, where from) of ``key``: the file's when it records one (a different option named in
    ``conflicts``), else the option's; (None, "") when neither says."""
    if from_file is not None:
        if key in options and options[key] != from_file:
            conflicts.append(f"model_options {key} {bounded_repr(options[key], 80)} ignored: the file records "
                         f"{bounded_repr(from_file, 80)}")
        return from_file, "file"
    if key in options:
        return options[key], "model_options"
    return None, ""


def resolve_input(graph: OnnxGraph, options: Mapping[str, Any],
                  inference_size: Sequence[int] | None = None) -> InputContract:
    """Normalisation (file, then options, then ImageNet RGB) and the size the network runs at."""
    problem = options_problem(options)
    if problem:
        raise OnnxContractError(f"model_options: {problem}")
    defaults: list[str] = []
    conflicts: list[str] = []
    meta = graph.metadata
    file_mean = [float(v) for v in _metadata_json(graph, "mean")] if "mean" in meta else None
    file_std = [float(v) for v in _metadata_json(graph, "std")] if "std" in meta else None
    mean, _ = _pick(options, "mean", file_mean, conflicts)
    std, _ = _pick(options, "std", file_std, conflicts)
    order, _ = _pick(options, "channel_order", meta.get("channel_order"), conflicts)
    for name, value in (("mean", mean), ("std", std)):
        if value is None:
            defaults.append(f"{name} ImageNet's {list(getattr(IMAGENET, name))}")
    if order is None:
        defaults.append("channel_order rgb")
    try:
        normalization = Normalization(tuple(mean or IMAGENET.mean), tuple(std or IMAGENET.std),  # type: ignore[arg-type]
                                      order or "rgb").validate()
    except (NormalizationError, TypeError, ValueError) as exc:
        raise OnnxContractError(f"the file's normalisation is unusable: {bounded(exc, 200)}") from None
    size = _run_size(graph, options, inference_size, conflicts)
    return InputContract(normalization, size, tuple(defaults), tuple(conflicts))


def _run_size(graph: OnnxGraph, options: Mapping[str, Any], inference_size: Sequence[int] | None,
              conflicts: list[str]) -> tuple[int, int] | None:
    """The network's own size: fixed in the graph, else the file's or the options' ``input_size``;
    None for a dynamic network. A size that ``inference_size`` contradicts is refused."""
    fixed = graph.fixed_size
    declared = None
    text = graph.metadata.get("input_size", "dynamic")
    if text != "dynamic":
        try:
            h, w = (int(v) for v in text.lower().split("x"))
            declared = [h, w]
        except ValueError:
            raise OnnxContractError("the file's metadata 'input_size' is unreadable (HxW or dynamic expected)") \
                from None
    size, _ = _pick(options, "input_size", list(fixed) if fixed else declared, conflicts)
    wanted = tuple(int(v) for v in inference_size) if inference_size else None
    if size is None:
        if graph.height is None and graph.width is None:
            return None  # dynamic: frames run at their own size, or inference_size
        if wanted is None:
            raise OnnxContractError(
                f"the network's input is {graph.height or '?'}x{graph.width or '?'} (one side dynamic) and no "
                "size to run at is given: set model_options input_size [H, W] or inference_size")
        size = list(wanted)
    size_t = (int(size[0]), int(size[1]))
    for got, need, side in ((size_t[0], graph.height, "height"), (size_t[1], graph.width, "width")):
        if need is not None and got != need:
            raise OnnxContractError(f"the network's input {side} is fixed at {need}; input_size "
                                    f"{size_t[0]}x{size_t[1]} does not fit it")
    if wanted is not None and wanted != size_t:
        raise OnnxContractError(f"inference_size {wanted[0]}x{wanted[1]} does not fit the network, which runs at "
                                f"{size_t[0]}x{size_t[1]}: set inference_size [0, 0] (frames are resized to the "
                                "network's size and labels come back at the frame's size)")
    return size_t


# -- the output ---------------------------------------------------------------------------------------
def resolve_contract(graph: OnnxGraph, options: Mapping[str, Any], inputs: InputContract,
                     output_shape: Sequence[int], output_type: str, num_classes: int = 19) -> OnnxContract:
    """The whole contract, from the output ONNX Runtime produced on a check run (``output_shape``,
    ``output_type``: numpy dtype name). ``num_classes`` (the parameter) is the class count of a
    labels output that records none (no ``classes``)."""
    defaults, conflicts = list(inputs.defaults), list(inputs.conflicts)
    kind, _ = _pick(options, "output", graph.metadata.get("output"), conflicts)
    integer = output_type not in _FLOAT_OUTPUTS
    if kind is None:
        kind = "labels" if integer or len(output_shape) == 3 else "logits"
        defaults.append(f"output {kind}" + (" (its values are integers)" if integer else ""))
    if kind not in ONNX_OUTPUTS:
        raise OnnxContractError(f"the file's metadata output must be one of {', '.join(ONNX_OUTPUTS)}")
    shape = tuple(int(v) for v in output_shape)
    batch = graph.batch or 1
    if kind != "labels":
        if integer:
            raise OnnxContractError(f"the output {bounded_repr(graph.output_name, 40)} holds {output_type} values, "
                                    f"not {kind}: give model_options output: labels if it holds class ids")
        if len(shape) != 4 or shape[0] != batch:
            raise OnnxContractError(f"the output {bounded_repr(graph.output_name, 40)} has shape {list(shape)[:6]}; "
                                    f"{kind} must be (N, classes, H, W)")
        classes = shape[1]
        if classes < 2:
            raise OnnxContractError(f"the output has {classes} channel; {kind} need one channel per class "
                                    "(give model_options output: labels if it holds class ids)")
    else:
        if not (len(shape) == 3 or (len(shape) == 4 and shape[1] == 1)) or shape[0] != batch:
            raise OnnxContractError(f"the output {bounded_repr(graph.output_name, 40)} has shape {list(shape)[:6]}; "
                                    "labels must be (N, H, W) or (N, 1, H, W)")
        classes = 0
    names, name_source = _names_from(graph, options, conflicts)
    if kind == "labels":
        classes = len(names) if names else _int_metadata(graph, "num_classes") or num_classes
    if classes > MAX_CLASSES:
        raise OnnxContractError(f"the network predicts {classes} classes; at most {MAX_CLASSES} fit in the "
                                "mono8 labels")
    if names is not None and len(names) != classes:
        raise OnnxContractError(f"classes ({name_source}) names {len(names)} classes but the network predicts "
                                f"{classes}")
    if names is None:
        names = tuple(CLASS_NAMES) if classes == len(CLASS_NAMES) else tuple(f"class_{i}" for i in range(classes))
        defaults.append(f"classes {'Cityscapes names' if classes == len(CLASS_NAMES) else 'class_<i>'}")
    palette_value, palette_source = _pick(options, "palette",
                                          _metadata_json(graph, "palette") if "palette" in graph.metadata else None,
                                          conflicts)
    if palette_value is None:
        palette = palette_for(classes)
        defaults.append("palette Cityscapes colours" + (" (extended)" if classes > len(CLASS_NAMES) else ""))
    else:
        palette = _palette(palette_value, f"palette ({palette_source})")
        if len(palette) != classes:
            raise OnnxContractError(f"palette ({palette_source}) has {len(palette)} colours but the network "
                                    f"predicts {classes} classes")
    if graph.other_outputs:
        defaults.append(f"the first output {graph.output_name!r} ({len(graph.other_outputs)} other output(s) "
                        "not used)")
    return OnnxContract(graph, inputs, kind, names, palette, tuple(defaults), tuple(conflicts))


def _names_from(graph: OnnxGraph, options: Mapping[str, Any],
                conflicts: list[str]) -> tuple[tuple[str, ...] | None, str]:
    from_file = _class_names(_metadata_json(graph, "classes"), "the file's metadata classes") \
        if "classes" in graph.metadata else None
    value, source = _pick(options, "classes", list(from_file) if from_file else None, conflicts)
    return (None, "") if value is None else (_class_names(value, f"classes ({source})"), source)


def _int_metadata(graph: OnnxGraph, key: str) -> int | None:
    try:
        value = int(graph.metadata.get(key, ""))
    except ValueError:
        return None
    return value if 1 <= value <= MAX_CLASSES else None

"""INT8: static post-training quantization of an ONNX network, calibrated on real frames.

The quantizer takes an ONNX model (bytes or a file: our own fp32 export, or any segmentation ONNX
file) and normalised calibration inputs, and returns the quantized model. Everything it does is
ONNX Runtime's own tooling (``onnxruntime.quantization``):

1. ``quant_pre_process``: ONNX shape inference and ONNX Runtime's graph optimisations (BatchNorm
   folded into the convolutions), so the ranges are measured on the graph that is quantized;
2. calibration: every calibration input runs through the network with every activation exposed,
   **one frame at a time** (the activations of one frame are held, never of all frames), and the
   ranges are taken with the :data:`SETTINGS` method;
3. ``quantize_static`` from those ranges: QDQ format, per-channel int8 weights, uint8 activations.

Why these settings (measured on this package's CPU, docs/BACKENDS.md "INT8"): uint8 activations
with int8 weights (U8S8) is what ONNX Runtime's x86 kernels run fast (1.8-1.9x fp32 for RegSeg);
int8 activations (S8S8) were *not* faster than fp32 here. QDQ was as fast as or faster than the
QOperator format at the same agreement and is the format TensorRT and other runtimes read.
Per-channel weights cost nothing in speed. The percentile method (99.999th percentile of |x|)
kept the most labels equal to fp32 of MinMax, Entropy and Percentile.

The same ranges, taken on the fp32 graph itself, make TensorRT's INT8 calibration table
(:func:`write_tensorrt_table`): TensorRT quantizes the fp32 ONNX file with those ranges.

Cache: a quantized model is stored like an export, keyed additionally by the calibration inputs'
digest and the settings (:func:`int8_key`); random weights stay in memory, as their exports do.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import BackendError
from .cache import ArtifactCache, CacheKey
from .export import ExportSpec, OnnxArtifact, metadata_problem, onnx_artifact

LOG = logging.getLogger(__name__)

#: Calibration inputs of a shape-dynamic network larger than this are scaled down (aspect kept):
#: calibration holds every activation of one frame at a time, which at 1024x2048 is gigabytes,
#: and activation ranges do not depend on the resolution much (measured: docs/BACKENDS.md).
CALIBRATION_MAX_PIXELS = 512 * 1024
#: The file name of the TensorRT calibration table in an engine folder (ONNX Runtime's format).
TENSORRT_TABLE = "calibration.flatbuffers"


@dataclass(frozen=True)
class QuantizationSettings:
    """How the network is quantized (part of the cache key and of the engine's description)."""

    method: str = "percentile"  # minmax | entropy | percentile (onnxruntime's CalibrationMethod)
    format: str = "qdq"  # qdq | qoperator
    per_channel: bool = True
    activations: str = "uint8"  # uint8 | int8
    weights: str = "int8"
    percentile: float = 99.999

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        channel = "per-channel" if self.per_channel else "per-tensor"
        method = f"{self.method} {self.percentile}" if self.method == "percentile" else self.method
        return f"{self.format.upper()}, {channel} {self.weights} weights, {self.activations} activations, {method}"


#: The settings every int8 network uses (chosen by measurement, see the module docstring).
SETTINGS = QuantizationSettings()


@dataclass(frozen=True)
class CalibrationSet:
    """Normalised network inputs ``(1, 3, H, W)`` float32 to calibrate on, their digest (the
    cache key's part: other frames, another size or normalisation is another model) and where
    they came from, in words."""

    inputs: tuple[np.ndarray, ...]
    digest: str
    description: str

    @classmethod
    def of(cls, inputs: Sequence[np.ndarray], description: str) -> CalibrationSet:
        digest = hashlib.sha256()
        arrays = tuple(np.ascontiguousarray(x, dtype=np.float32) for x in inputs)
        for x in arrays:
            digest.update(str(x.shape).encode())
            digest.update(x.data)
        return cls(arrays, digest.hexdigest(), description)


class _QuantizerNoise(logging.Filter):
    """Drops onnxruntime.quantization's root-logger warnings that say nothing to a user: the
    per-channel axis of BatchNorm weights it leaves in float, and the pre-processing advice (we
    pre-process)."""

    NOISE = ("Axis ", "Please consider to run pre-processing")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and str(record.msg).startswith(self.NOISE))


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization's noise off the console: its root-logger warnings filtered, its
    progress ``print``s (calibration, QOperator shapes) sent to the debug log instead of stdout."""
    noise = _QuantizerNoise()
    root = logging.getLogger()
    root.addFilter(noise)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        root.removeFilter(noise)
        if printed.getvalue():
            LOG.debug("onnxruntime.quantization printed: %s", printed.getvalue()[:2000])


def _ort() -> Any:
    import onnxruntime.quantization as quantization

    return quantization


def _method(name: str) -> Any:
    methods = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
    return getattr(_ort().CalibrationMethod, methods[name])


def _load(model: bytes | Path) -> Any:
    import onnx

    return onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))


def _input_name_and_size(proto: Any) -> tuple[str, tuple[int, int] | None]:
    """The network's (only) input name and its fixed (H, W), None when height/width are dynamic."""
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise BackendError(f"the network has {len(inputs)} inputs; calibration needs one (N, 3, H, W) image input")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) == 4 and dims[2].dim_value > 0 and dims[3].dim_value > 0:
        return inputs[0].name, (int(dims[2].dim_value), int(dims[3].dim_value))
    return inputs[0].name, None


def calibration_inputs(inputs: Sequence[np.ndarray], fixed: tuple[int, int] | None) -> list[np.ndarray]:
    """The inputs at the size calibration runs them: a fixed-size network's size, else their own,
    at most :data:`CALIBRATION_MAX_PIXELS` (bilinear, aspect kept)."""
    out = []
    for x in inputs:
        h, w = x.shape[-2:]
        size = fixed
        if size is None and h * w > CALIBRATION_MAX_PIXELS:
            scale = (CALIBRATION_MAX_PIXELS / (h * w)) ** 0.5
            size = (max(1, int(h * scale)), max(1, int(w * scale)))
        if size is not None and tuple(size) != (h, w):
            x = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(x)), size=size, mode="bilinear",
                                                align_corners=False, antialias=True).numpy()
        out.append(np.ascontiguousarray(x, dtype=np.float32))
    return out


class _OneFrame:
    """A calibration data reader over one input: the calibrator keeps one frame's activations."""

    def __init__(self, name: str, x: np.ndarray) -> None:
        self._items = [{name: x}]

    def get_next(self) -> dict[str, np.ndarray] | None:
        return self._items.pop() if self._items else None


def measure_ranges(model: Path, inputs: Sequence[np.ndarray], settings: QuantizationSettings, work: Path) -> Any:
    """Activation ranges of ``model`` (a file) over ``inputs``, frame by frame: onnxruntime's
    ``TensorsData`` (what ``quantize_static`` and the TensorRT table are made from)."""
    q = _ort()
    proto = _load(model)
    name, fixed = _input_name_and_size(proto)
    options: dict[str, Any] = {"percentile": settings.percentile} if settings.method == "percentile" else {}
    calibrator = q.create_calibrator(model, None, augmented_model_path=str(work / "augmented.onnx"),
                                     calibrate_method=_method(settings.method), extra_options=options)
    for x in calibration_inputs(inputs, fixed):
        calibrator.collect_data(_OneFrame(name, x))
    ranges = calibrator.compute_data()
    del calibrator
    return ranges


def quantize_int8(model: bytes | Path, inputs: Sequence[np.ndarray], settings: QuantizationSettings = SETTINGS,
                  metadata: dict[str, str] | None = None) -> bytes:
    """The int8 model of ``model`` (an fp32 ONNX file or its bytes) calibrated on ``inputs``
    (normalised ``(1, 3, H, W)`` float32 arrays, as the network takes them), with ``metadata``
    added to the file's ``metadata_props`` over those it had."""
    if not inputs:
        raise BackendError("no calibration inputs")
    q = _ort()
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="seg-int8-") as folder, _quiet_quantizer():
        work = Path(folder)
        source = work / "fp32.onnx"
        if isinstance(model, bytes):
            source.write_bytes(model)
        else:
            source.write_bytes(Path(model).read_bytes())
        prepared = work / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        try:
            ranges = measure_ranges(prepared, inputs, settings, work)
        except ValueError as exc:
            if settings.method == "minmax":
                raise BackendError(f"int8 calibration failed: {str(exc)[:300]}") from None
            # onnxruntime's histograms are float32: a tensor whose values differ only in their last
            # bits (a saturated gate, a near-constant scale) has no room for its 2048 bins
            LOG.warning("%s calibration failed on a tensor with almost no range (%s); calibrating with minmax "
                        "instead (the parity gate still measures the result)", settings.method, str(exc)[:200])
            settings = replace(settings, method="minmax")
            ranges = measure_ranges(prepared, inputs, settings, work)
            metadata = {**(metadata or {}), "quantization": settings.describe()}
        save_tensors_data(ranges, work / "ranges.json")
        out = work / "int8.onnx"
        kinds = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
        q.quantize_static(
            str(prepared), str(out), None, calibration_cache_path=str(work / "ranges.json"),
            quant_format=q.QuantFormat.QDQ if settings.format == "qdq" else q.QuantFormat.QOperator,
            per_channel=settings.per_channel, activation_type=kinds[settings.activations],
            weight_type=kinds[settings.weights], calibrate_method=_method(settings.method),
        )
        data = _with_metadata(out, _load(source), metadata or {})
    LOG.info("quantized the network to int8 in %.1f s (%s, %d calibration frames)", time.monotonic() - started,
             settings.describe(), len(inputs))
    return data


def _with_metadata(path: Path, original: Any, extra: dict[str, str]) -> bytes:
    """The quantized file's bytes with the original's ``metadata_props`` plus ``extra``."""
    proto = _load(path)
    values = {p.key: p.value for p in original.metadata_props}
    values.update(extra)
    del proto.metadata_props[:]
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return bytes(proto.SerializeToString())


def write_tensorrt_table(model: bytes | Path, inputs: Sequence[np.ndarray], folder: Path,
                         settings: QuantizationSettings = SETTINGS) -> Path:
    """TensorRT's INT8 calibration table for ``model`` (the fp32 ONNX file TensorRT builds from,
    not pre-processed: the table names its tensors) in ``folder``, in ONNX Runtime's flatbuffers
    format (``trt_int8_use_native_calibration_table: false``); returns its path."""
    from onnxruntime.quantization.quant_utils import write_calibration_table

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seg-int8-table-") as tmp, _quiet_quantizer():
        work = Path(tmp)
        source = work / "fp32.onnx"
        source.write_bytes(model if isinstance(model, bytes) else Path(model).read_bytes())
        ranges = measure_ranges(source, inputs, settings, work)
        write_calibration_table({name: data for name, data in ranges.items()}, dir=str(work))
        table = folder / TENSORRT_TABLE
        table.write_bytes((work / TENSORRT_TABLE).read_bytes())
    return table


def int8_key(fp32: CacheKey, calibration: CalibrationSet, settings: QuantizationSettings = SETTINGS) -> CacheKey:
    """The quantized model's cache key: its fp32 export's, plus the calibration and the settings."""
    import onnxruntime as ort

    return CacheKey(
        kind="onnx_int8", model=fp32.model, variant=fp32.variant, num_classes=fp32.num_classes,
        options=fp32.options, weights=fp32.weights, input_size=fp32.input_size,
        versions=f"{fp32.versions}; onnxruntime {ort.__version__}",
        extra=f"onnx={fp32.digest()}; calibration={calibration.digest}; quantization={settings.to_json()}",
    )


def int8_artifact(spec: ExportSpec, model: nn.Module, cache: ArtifactCache, calibration: CalibrationSet,
                  settings: QuantizationSettings = SETTINGS) -> OnnxArtifact:
    """The int8 model of ``spec``: a trusted cache entry (key, digest, metadata checked), else
    quantized now from the fp32 export and stored when that export is (weights from a file)."""
    fp32 = onnx_artifact(spec, model, cache)
    key = int8_key(fp32.key, calibration, settings)
    if fp32.path is not None:
        path = cache.lookup(key, ".onnx")
        if path is not None:
            problem = metadata_problem(path, spec, key)
            if problem is None:
                return OnnxArtifact(path, key, hit=True)
            cache.evict(path, problem)
    metadata = {"precision": "int8", "cache_key": key.digest(), "quantization": settings.describe(),
                "calibration": calibration.description[:1000], "calibration_digest": calibration.digest}
    data = quantize_int8(fp32.source, calibration.inputs, settings, metadata)
    if fp32.path is None:
        return OnnxArtifact(data, key, hit=False, in_memory_reason=fp32.in_memory_reason)
    if len(data) > cache.max_bytes:
        return OnnxArtifact(data, key, hit=False,
                            in_memory_reason=f"{len(data) >> 20} MB is more than cache_max_mb {cache.max_bytes >> 20}")
    return OnnxArtifact(cache.store(key, ".onnx", lambda tmp: tmp.write_bytes(data)), key, hit=False)


def build_int8_network(model: nn.Module, spec: ExportSpec, device: torch.device, cache: ArtifactCache,
                       calibration: CalibrationSet) -> Any:
    """The int8 network on ONNX Runtime's CPU provider (cached like exports; a cache hit is
    checked by the load-time probe as every cached artifact is, a fresh one by the parity gate)."""
    from .onnxruntime_backend import build_onnxruntime_network

    if device.type != "cpu":
        raise BackendError("int8 with ONNX Runtime runs on the CPU; on CUDA int8 runs through TensorRT "
                           "(backend tensorrt or auto)")
    network = build_onnxruntime_network(model, spec, device, cache,
                                        artifact=lambda: int8_artifact(spec, model, cache, calibration),
                                        fresh_probe_min=0.0)
    network.name = f"onnxruntime int8 ({network.providers[0]})"
    used = network.metadata.get("quantization", SETTINGS.describe())  # the file says: settings may fall back
    network.quantization = f"{used}; calibrated on {calibration.description}"
    return network

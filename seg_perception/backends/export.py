"""Export a registered model to ONNX, with metadata and a check that ONNX Runtime agrees.

Dynamic batch, height and width where the model allows it: the model is traced at one size,
then the file is run by ONNX Runtime at two other sizes (and batch 2) and compared with PyTorch;
if that fails the model baked a shape into the graph and is exported again at the fixed size
given. The TorchScript exporter is used (opset 17) because the dynamo exporter needs
``onnxscript``; RegSeg splits channels with static slices, so the graph has plain ``Slice``
nodes that TensorRT supports (no ``SplitToSequence``).

Random weights are exported in memory only (:func:`onnx_artifact`): they are never written to
the cache, whose entries are keyed by a weights file's digest. A cached file is served only after
:class:`~seg_perception.backends.cache.ArtifactCache` has checked its sidecar key and content
digest and :func:`metadata_problem` its own metadata (model, variant, classes, size and the cache
key it was exported under); the ONNX Runtime backend then runs the parity probe.

Only the network is exported. The CRF is a separate stage the engine applies to the logits in
its postprocess (in PyTorch), so it cannot be exported, and does not need to be: an engine with
``crf: gpu`` or ``cpu`` runs its network through ONNX Runtime and the CRF after it.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__ as PACKAGE_VERSION
from ..cityscapes import CLASS_NAMES
from ..models.checkpoint import resolve_weights
from ..normalization import IMAGENET, Normalization
from .base import ExportError
from .cache import ArtifactCache, CacheKey, file_sha256, state_dict_sha256
from .ort_errors import ort_errors

LOG = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"
#: Sizes (H, W) the dynamic-shape check runs at (batch 1, then 2): small, not a traced size.
CHECK_SIZES = ((40, 72), (56, 88))
#: Logit agreement required by the export check: |onnx - torch| <= ATOL + RTOL * max|torch|.
ATOL, RTOL = 1e-3, 1e-3


@dataclass(frozen=True)
class ExportSpec:
    """What is exported: the model's identity (for metadata and the cache key) and the size."""

    model: str
    variant: str
    num_classes: int
    options: dict[str, Any]
    weights: str  # checkpoint path; "" = the in-memory (random) weights
    size: tuple[int, int]  # traced (and, if the model is not dynamic, fixed) input size
    #: How the input is normalised (the model registry entry's); recorded in the file.
    normalization: Normalization = IMAGENET

    def weights_digest(self, model: nn.Module) -> str:
        if self.weights:
            return "file:" + file_sha256(resolve_weights(self.weights))  # a shipped name hashes its file
        return "state:" + state_dict_sha256(model)


def onnx_key(spec: ExportSpec, model: nn.Module, input_size: str) -> CacheKey:
    return CacheKey(
        kind="onnx", model=spec.model, variant=spec.variant, num_classes=spec.num_classes,
        options=json.dumps(spec.options, sort_keys=True, default=str), weights=spec.weights_digest(model),
        input_size=input_size, versions=f"torch {torch.__version__}; opset {OPSET}; seg_perception {PACKAGE_VERSION}",
        extra="normalization=" + json.dumps(spec.normalization.to_metadata(), sort_keys=True),
    )


@dataclass
class OnnxArtifact:
    """An exported network: a checked cache file, or bytes that exist in memory only."""

    source: Path | bytes
    key: CacheKey
    #: True when it came from the cache (key, digest and metadata checked).
    hit: bool
    #: Why it is not on disk ("" when it is): random weights, a disabled cache, or its size.
    in_memory_reason: str = ""

    @property
    def path(self) -> Path | None:
        return self.source if isinstance(self.source, Path) else None


def onnx_artifact(spec: ExportSpec, model: nn.Module, cache: ArtifactCache) -> OnnxArtifact:
    """The ONNX export of ``model``: a trusted cache entry, else exported now (and stored when
    the weights come from a file and the cache takes it; random weights stay in memory).

    A fixed-size export (model not dynamic) is looked up under its size as well, so a model that
    failed the dynamic check is not re-checked on every start. A cache entry whose own metadata
    does not describe ``spec`` is evicted with the reason.
    """
    cacheable = bool(spec.weights) and cache.enabled
    if cacheable:
        for input_size in ("dynamic", f"{spec.size[0]}x{spec.size[1]}"):
            key = onnx_key(spec, model, input_size)
            path = cache.lookup(key, ".onnx")
            if path is None:
                continue
            problem = metadata_problem(path, spec, key)
            if problem is None:
                return OnnxArtifact(path, key, hit=True)
            cache.evict(path, problem)
    data, key = export_onnx_bytes(model, spec)
    if not spec.weights:
        return OnnxArtifact(data, key, hit=False, in_memory_reason="random weights are never cached")
    if not cache.enabled:
        return OnnxArtifact(data, key, hit=False, in_memory_reason="cache_max_mb is 0")
    if len(data) > cache.max_bytes:
        return OnnxArtifact(data, key, hit=False,
                            in_memory_reason=f"{len(data) >> 20} MB is more than cache_max_mb {cache.max_bytes >> 20}")
    return OnnxArtifact(cache.store(key, ".onnx", lambda tmp: tmp.write_bytes(data)), key, hit=False)


def cached_onnx(spec: ExportSpec, model: nn.Module, cache: ArtifactCache) -> tuple[Path, bool]:
    """The ONNX file for ``spec`` in the cache (exported on a miss); returns (path, cache hit).
    Only weights from a file are cached: random weights raise :class:`ExportError`."""
    if not spec.weights:
        raise ExportError("random weights are never cached on disk; export them to a file of your choice "
                          "(seg-perception export --out FILE) or pass --weights")
    artifact = onnx_artifact(spec, model, cache)
    if artifact.path is None:
        raise ExportError(f"the export of {spec.model} was not cached: {artifact.in_memory_reason}")
    return artifact.path, artifact.hit


def metadata_problem(path: Path, spec: ExportSpec, key: CacheKey) -> str | None:
    """Why the ONNX file at ``path`` is not the export of ``spec`` under ``key``; None when its
    metadata says it is (a file that does not parse is not)."""
    try:
        metadata = read_metadata(path)
    except Exception as exc:  # onnx raises protobuf's DecodeError and others for a foreign file
        return f"it is not a readable ONNX file ({type(exc).__name__})"
    expected = {"model": spec.model, "variant": spec.variant, "num_classes": str(spec.num_classes),
                "input_size": key.input_size, "cache_key": key.digest()}
    wrong = sorted(name for name, value in expected.items() if metadata.get(name) != value)
    if wrong:
        return f"its ONNX metadata does not match ({', '.join(wrong)})"
    return None


def export_onnx_bytes(model: nn.Module, spec: ExportSpec) -> tuple[bytes, CacheKey]:
    """Serialized ONNX of ``model`` (fp32, CPU) and its cache key, whose ``input_size`` says
    whether H/W/batch are dynamic (``dynamic``) or fixed (``HxW``)."""
    model = _fp32_cpu(model)
    LOG.info("exporting %s %s to ONNX (traced at %dx%d)", spec.model, spec.variant, *spec.size)
    data = _trace(model, spec, dynamic=True)
    problem = _dynamic_problem(model, data)
    if problem is None:
        key = onnx_key(spec, model, "dynamic")
        return _with_metadata(data, spec, key), key
    LOG.warning("%s %s is not shape-dynamic in ONNX (%s); exporting at the fixed size %dx%d",
                spec.model, spec.variant, problem[:200], *spec.size)
    fixed = _trace(model, spec, dynamic=False)
    key = onnx_key(spec, model, f"{spec.size[0]}x{spec.size[1]}")
    return _with_metadata(fixed, spec, key), key


def _fp32_cpu(model: nn.Module) -> nn.Module:
    """The model as exported: fp32 on the CPU (a copy when the engine's lives elsewhere)."""
    params = list(model.parameters())
    if params and (params[0].device.type != "cpu" or params[0].dtype != torch.float32):
        model = copy.deepcopy(model).float().cpu()
    return model.eval()


def _trace(model: nn.Module, spec: ExportSpec, dynamic: bool) -> bytes:
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    buffer = io.BytesIO()
    sample = torch.randn(1, 3, *spec.size)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow, deprecation
            torch.onnx.export(
                model, (sample,), buffer, dynamo=False, opset_version=OPSET, do_constant_folding=True,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            )
    except Exception as exc:  # the exporter raises many types; all mean "this model does not export"
        raise ExportError(f"model {spec.model!r} variant {spec.variant!r} cannot be exported to ONNX: "
                          f"{type(exc).__name__}: {str(exc)[:400]}") from exc
    return buffer.getvalue()


def _dynamic_problem(model: nn.Module, data: bytes) -> str | None:
    """Why the dynamic export disagrees with PyTorch at other sizes, or None when it agrees."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        generator = torch.Generator().manual_seed(0)
        for batch, (h, w) in zip((1, 2), CHECK_SIZES, strict=True):
            x = torch.randn(batch, 3, h, w, generator=generator)
            with torch.no_grad():
                expected = model(x).numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
            if got.shape != expected.shape:
                return f"output shape {got.shape} != {expected.shape} at {batch}x3x{h}x{w}"
            error = float(np.abs(got - expected).max())
            if error > ATOL + RTOL * float(np.abs(expected).max()):
                return f"max abs difference {error:.3g} at {batch}x3x{h}x{w}"
    except ort_errors() as exc:  # ONNX Runtime failing on another shape is the same finding
        return f"{type(exc).__name__}: {exc}"
    return None


def _with_metadata(data: bytes, spec: ExportSpec, key: CacheKey) -> bytes:
    """Record model, variant, classes, input size and normalisation in the file
    (``metadata_props``), and the cache key and weights digest it was exported under."""
    import onnx

    proto = onnx.load_from_string(data)
    classes = list(CLASS_NAMES) if spec.num_classes == len(CLASS_NAMES) else [str(i) for i in range(spec.num_classes)]
    norm = spec.normalization
    metadata = {
        "model": spec.model, "variant": spec.variant, "num_classes": str(spec.num_classes),
        "classes": json.dumps(classes), "input_size": key.input_size,
        "input_layout": (f"NCHW float32, {norm.channel_order.upper()}, (x/255 - mean) / std per channel"),
        **norm.to_metadata(),
        "model_options": json.dumps(spec.options, sort_keys=True, default=str),
        "weights": Path(spec.weights).name if spec.weights else "(random init)",
        "weights_digest": key.weights, "cache_key": key.digest(),
        "exporter": f"torch {torch.__version__} opset {OPSET}", "seg_perception": PACKAGE_VERSION,
    }
    for name, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = name, value
    proto.producer_name = "seg_perception"
    return proto.SerializeToString()


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an exported file (without loading the weights)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def check_crf_not_exported(crf: str) -> None:
    """The CRF is not a network; say so instead of silently dropping it."""
    if crf != "none":
        raise ExportError(
            f"crf {crf!r} cannot be exported: the dense CRF is not part of the network; the engine applies "
            "it in PyTorch after the network (postprocess). Export without --crf; an engine configured with "
            "a CRF still runs its network with backend onnxruntime/tensorrt and the CRF after it."
        )


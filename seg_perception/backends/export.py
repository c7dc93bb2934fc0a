"""Export a registered model to ONNX, with metadata and a check that ONNX Runtime agrees.

Dynamic batch, height and width where the model allows it: the model is traced at one size,
then the file is run by ONNX Runtime at two other sizes (and batch 2) and compared with PyTorch;
if that fails the model baked a shape into the graph and is exported again at the fixed size
given. The TorchScript exporter is used (opset 17) because the dynamo exporter needs
``onnxscript``; RegSeg splits channels with static slices, so the graph has plain ``Slice``
nodes that TensorRT supports (no ``SplitToSequence``).

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
from .base import ExportError
from .cache import ArtifactCache, CacheKey, file_sha256, state_dict_sha256

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

    def weights_digest(self, model: nn.Module) -> str:
        if self.weights:
            return "file:" + file_sha256(resolve_weights(self.weights))  # a shipped name hashes its file
        return "state:" + state_dict_sha256(model)


def onnx_key(spec: ExportSpec, model: nn.Module, input_size: str) -> CacheKey:
    return CacheKey(
        kind="onnx", model=spec.model, variant=spec.variant, num_classes=spec.num_classes,
        options=json.dumps(spec.options, sort_keys=True, default=str), weights=spec.weights_digest(model),
        input_size=input_size, versions=f"torch {torch.__version__}; opset {OPSET}; seg_perception {PACKAGE_VERSION}",
    )


def cached_onnx(spec: ExportSpec, model: nn.Module, cache: ArtifactCache) -> tuple[Path, bool]:
    """The ONNX file for ``spec`` from the cache, exported on a miss; returns (path, cache hit).

    A fixed-size export (model not dynamic) is looked up under its size as well, so a model that
    failed the dynamic check is not re-checked on every start.
    """
    for input_size in ("dynamic", f"{spec.size[0]}x{spec.size[1]}"):
        path = cache.lookup(onnx_key(spec, model, input_size), ".onnx")
        if path is not None:
            return path, True
    data, dynamic = export_onnx_bytes(model, spec)
    key = onnx_key(spec, model, "dynamic" if dynamic else f"{spec.size[0]}x{spec.size[1]}")
    return cache.store(key, ".onnx", lambda tmp: tmp.write_bytes(data)), False


def export_onnx_bytes(model: nn.Module, spec: ExportSpec) -> tuple[bytes, bool]:
    """Serialized ONNX of ``model`` (fp32, CPU) and whether H/W/batch are dynamic."""
    model = _fp32_cpu(model)
    LOG.info("exporting %s %s to ONNX (traced at %dx%d)", spec.model, spec.variant, *spec.size)
    data = _trace(model, spec, dynamic=True)
    problem = _dynamic_problem(model, data)
    if problem is None:
        return _with_metadata(data, spec, "dynamic"), True
    LOG.warning("%s %s is not shape-dynamic in ONNX (%s); exporting at the fixed size %dx%d",
                spec.model, spec.variant, problem[:200], *spec.size)
    fixed = _trace(model, spec, dynamic=False)
    return _with_metadata(fixed, spec, f"{spec.size[0]}x{spec.size[1]}"), False


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

    from .onnxruntime_backend import ort_errors

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


def _with_metadata(data: bytes, spec: ExportSpec, input_size: str) -> bytes:
    """Record model, variant, classes and input size in the file (``metadata_props``)."""
    import onnx

    proto = onnx.load_from_string(data)
    classes = list(CLASS_NAMES) if spec.num_classes == len(CLASS_NAMES) else [str(i) for i in range(spec.num_classes)]
    metadata = {
        "model": spec.model, "variant": spec.variant, "num_classes": str(spec.num_classes),
        "classes": json.dumps(classes), "input_size": input_size,
        "input_layout": "NCHW float32, RGB normalised with ImageNet mean/std",
        "model_options": json.dumps(spec.options, sort_keys=True, default=str),
        "weights": Path(spec.weights).name if spec.weights else "(random init)",
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


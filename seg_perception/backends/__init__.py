"""Deployment backends for the network: PyTorch, ONNX Runtime, TensorRT (docs/BACKENDS.md).

The engine calls three functions and keeps everything else (pre/post-processing, timings):

* :func:`backend_problem` at configuration time: the reason a backend cannot run here (unknown
  name, package not installed - naming the package -, device or compile mode it cannot serve).
* :func:`resolve_backend`: what ``auto`` means on this machine.
* :func:`build_network`: the network as a callable ``(N, 3, H, W) -> (N, C, H, W)``, exported and
  cached on first use; a cached artifact is served only once it is proven to be this network
  (:mod:`.cache`, :mod:`.parity`).

``auto`` resolves to ``onnxruntime`` on the CPU (measured faster than eager PyTorch with the same
labels, bench/backends.py) for models the engine builds from the registry with ``compile: none``,
and to ``torch`` on CUDA (fp16 with CUDA graphs needs no export) and for a model object handed to
the engine directly (tests and tools that hook into the torch module). If the automatic export
fails, ``auto`` logs why and runs PyTorch; an explicit backend fails instead.

``model: onnx`` (a network given as an ONNX file, :mod:`.onnx_model`) has no PyTorch model:
``auto`` is ``onnxruntime`` on every device, nothing is exported, and there is no fallback.

``precision: int8`` (:mod:`.quantize`, calibrated on :mod:`.calibration` data) runs on ONNX
Runtime's CPU provider, or on CUDA through TensorRT; ``auto`` picks those, and nothing falls back
to PyTorch (it has no int8 path): a failure is an error.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch
from torch import nn

from ..choices import ONNX_MODEL
from ..normalization import Normalization
from .base import BACKENDS, BackendError, ExportError, Network
from .cache import ArtifactCache, default_cache_dir
from .export import ExportSpec
from .quantize import CalibrationSet

LOG = logging.getLogger(__name__)

__all__ = ["BACKENDS", "ArtifactCache", "BackendError", "ExportError", "Network", "backend_problem",
           "build_network", "default_cache_dir", "resolve_backend"]

#: What to install for each backend (the message names it).
INSTALL_HINT = {
    "onnxruntime": "pip install onnxruntime (CPU) or onnxruntime-gpu (NVIDIA)",
    "onnxruntime-cuda": "pip install onnxruntime-gpu (pip install 'seg_perception[gpu]'), which provides "
                        "ONNX Runtime's CUDA provider",
    "tensorrt": "pip install onnxruntime-gpu tensorrt (pip install 'seg_perception[tensorrt]'), which "
                "provide ONNX Runtime's TensorRT provider",
}


def _ort_providers() -> list[str] | None:
    """ONNX Runtime's available providers, or None when the package is not importable."""
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError:
        return None
    return list(ort.get_available_providers())


def backend_problem(backend: str, device: str, compile_mode: str, precision: str = "auto") -> str | None:
    """Why ``backend`` cannot run with this device (auto/cuda/cpu), compile mode and precision, or None."""
    if backend not in BACKENDS:
        return f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}"[:300]
    if precision == "int8" and backend in ("auto", "onnxruntime", "tensorrt"):
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if backend == "onnxruntime" and cuda:
            return ("precision int8 on CUDA runs through TensorRT: use backend tensorrt (or auto); ONNX Runtime's "
                    "int8 kernels are CPU kernels")
        if backend == "auto":
            backend = "tensorrt" if cuda else "onnxruntime"
    if backend in ("auto", "torch"):
        return None
    if compile_mode != "none":
        return (f"compile {compile_mode} applies to the torch backend; use compile none with backend {backend} "
                "(ONNX Runtime and TensorRT optimise the graph themselves)")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if backend == "tensorrt" and not cuda:
        return "backend tensorrt needs a CUDA device; use onnxruntime on the CPU"
    providers = _ort_providers()
    if providers is None:
        return f"backend {backend} needs the onnxruntime package, which is not installed: {INSTALL_HINT['onnxruntime']}"
    if backend == "tensorrt" and "TensorrtExecutionProvider" not in providers:
        return ("backend tensorrt needs ONNX Runtime's TensorRT provider, which is not installed: "
                f"{INSTALL_HINT['tensorrt']}")
    if backend == "onnxruntime" and cuda and "CUDAExecutionProvider" not in providers:
        return (f"backend onnxruntime on CUDA needs ONNX Runtime's CUDA provider (installed: "
                f"{', '.join(providers)}): {INSTALL_HINT['onnxruntime-cuda']}")
    return None


def resolve_backend(backend: str, device: torch.device, compile_mode: str, injected_model: bool,
                    model: str = "", precision: str = "fp32") -> str:
    """The concrete backend for ``auto`` (see the module docstring); others unchanged."""
    if backend != "auto":
        return backend
    if precision == "int8":
        return "onnxruntime" if device.type == "cpu" else "tensorrt"
    if model == ONNX_MODEL:
        return "onnxruntime"
    if device.type != "cpu" or compile_mode != "none" or injected_model or _ort_providers() is None:
        return "torch"
    return "onnxruntime"


def build_network(
    backend: str, requested: str, model: nn.Module, config: Any, device: torch.device, precision: str,
    normalization: Normalization, calibration: CalibrationSet | None = None,
) -> tuple[str, Network | nn.Module]:
    """``(backend actually used, network)`` for a resolved, non-torch backend.

    ``config`` is the engine's configuration (model, variant, num_classes, model_options, weights,
    inference_size, cache_dir, cache_max_mb); ``normalization`` the input normalisation the engine
    applies (recorded in the export); ``calibration`` the int8 calibration inputs. With
    ``requested == "auto"`` a failed export falls back to the torch model with a warning (not for
    int8, which PyTorch cannot run); an explicit backend raises :class:`BackendError`/:class:`ExportError`.
    """
    if config.model == ONNX_MODEL:  # the file is the network: nothing to export, nothing to fall back to
        from .onnx_model import build_onnx_file_network

        return backend, build_onnx_file_network(model, config, device, precision, backend,  # type: ignore[arg-type]
                                                 calibration)
    spec = ExportSpec(
        model=getattr(model, "model_name", config.model), variant=getattr(model, "variant", config.variant or ""),
        num_classes=config.num_classes, options=dict(config.model_options),
        weights=config.weights, size=tuple(config.inference_size or (128, 256)), normalization=normalization,
    )
    cache = ArtifactCache(config.cache_dir or None, config.cache_max_mb)
    try:
        if backend == "tensorrt":
            from .tensorrt_backend import build_tensorrt_network

            return backend, build_tensorrt_network(model, spec, device, cache, precision == "fp16",
                                                   config.inference_size, calibration)
        if precision == "int8":
            from .quantize import build_int8_network

            if calibration is None:
                raise BackendError("precision int8 needs calibration inputs")
            return backend, build_int8_network(model, spec, device, cache, calibration)
        from .onnxruntime_backend import build_onnxruntime_network

        return backend, build_onnxruntime_network(model, spec, device, cache)
    except (BackendError, ExportError, OSError) as exc:
        if requested != "auto" or precision == "int8":
            raise
        LOG.warning("backend auto: %s could not be used (%s); running the network in PyTorch", backend,
                    str(exc)[:300])
        return "torch", model

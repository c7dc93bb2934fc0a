"""ONNX Runtime backend: the exported network in an ``InferenceSession``.

Providers are chosen by device: the CPU provider on the CPU; on CUDA the CUDA provider (with
the TensorRT provider in front of it for ``backend: tensorrt``), and the CPU provider last for
the nodes the GPU providers do not take. On the CPU the session uses torch's intra-op thread
count, so a ``--threads`` setting means the same for both backends.

On CUDA the input and output stay on the GPU (I/O binding on the engine's tensors). ONNX Runtime
runs on its own CUDA stream, so the engine's current stream is synchronised before the run; the
run returns when the logits are written. Inputs are fp32 (the fp16 engine casts; TensorRT's fp16
mode lowers precision inside the engine instead).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import BackendError
from .cache import ArtifactCache
from .export import INPUT_NAME, OUTPUT_NAME, ExportSpec, cached_onnx

LOG = logging.getLogger(__name__)


def ort_errors() -> tuple[type[BaseException], ...]:
    """What a failing session creation or run raises: ONNX Runtime's own exception types (Fail,
    InvalidProtobuf, ...; plain ``Exception`` subclasses) plus the Python ones it maps to."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    own = tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))
    return (*own, RuntimeError, ValueError, OSError)


class OnnxRuntimeNetwork:
    """An ONNX file run by ONNX Runtime, called like the torch model (NCHW in, logits out)."""

    def __init__(self, path: Path, device: torch.device, num_classes: int, providers: list[Any]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about provider node placement are noise here
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.device, self.num_classes, self.path = device, num_classes, path
        self.providers = self.session.get_providers()
        self.name = f"onnxruntime ({self.providers[0]})"
        #: True when the ONNX file came from the cache (set by the builder).
        self.cache_hit = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            out = self.session.run([OUTPUT_NAME], {INPUT_NAME: x.float().contiguous().numpy()})[0]
            return torch.from_numpy(out)
        return self._run_cuda(x)

    def _run_cuda(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-copy run on device tensors; the logits are (N, C, H, W) at the input size."""
        x = x.float().contiguous()
        n, _, h, w = x.shape
        out = torch.empty((n, self.num_classes, h, w), device=x.device, dtype=torch.float32)
        index = x.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(INPUT_NAME, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(x.device).synchronize()
        self.session.run_with_iobinding(binding)
        return out


def cuda_providers(device: torch.device, tensorrt: list[Any] | None) -> list[Any]:
    """TensorRT (when given), CUDA, then CPU for whatever neither supports."""
    cuda = ("CUDAExecutionProvider", {"device_id": device.index or 0})
    return [*(tensorrt or []), cuda, "CPUExecutionProvider"]


def build_onnxruntime_network(
    model: nn.Module, spec: ExportSpec, device: torch.device, cache: ArtifactCache,
    tensorrt: list[Any] | None = None,
) -> OnnxRuntimeNetwork:
    """Export (or reuse the cached export) and open a session; a cached file that does not load
    is deleted and exported again."""
    providers = ["CPUExecutionProvider"] if device.type == "cpu" else cuda_providers(device, tensorrt)
    path, hit = cached_onnx(spec, model, cache)
    try:
        network = OnnxRuntimeNetwork(path, device, spec.num_classes, providers)
    except ort_errors() as exc:
        if not hit:
            raise BackendError(f"ONNX Runtime cannot load the exported {spec.model}: {str(exc)[:400]}") from exc
        cache.evict(path, f"{type(exc).__name__}: {exc}")
        path, hit = cached_onnx(spec, model, cache)
        network = OnnxRuntimeNetwork(path, device, spec.num_classes, providers)
    network.cache_hit = hit
    LOG.info("%s %s runs on %s from %s (%s)", spec.model, spec.variant, network.name, path,
             "cached" if hit else "exported now")
    return network

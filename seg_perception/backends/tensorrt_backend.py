"""TensorRT through ONNX Runtime's TensorRT execution provider, with an on-disk engine cache.

Why this route rather than the TensorRT Python API or torch-tensorrt (docs/BACKENDS.md): it runs
the same ONNX file as the other backends, nodes TensorRT cannot take fall back to the CUDA
provider instead of failing the build, and the engine cache and fp16 are provider options, so
there is no second set of CUDA buffers, streams and bindings to maintain.

A TensorRT engine is specific to the GPU, the TensorRT version, the precision and the input
shape, so all of those are in its cache key. With a known input size the engine is built ahead of
time into a temporary folder (one dummy run) and renamed into place, which makes the cache
atomic; ``seg-perception export --format tensorrt`` does exactly that, the way production stacks
build engines at install time. Without a fixed ``inference_size`` the provider builds on the
first frame of each new shape and writes into the cache folder itself.

Random weights (and ``cache_max_mb: 0``) write nothing: the provider builds the engine in memory
with its engine cache off. The network the provider builds passes the same parity probe as every
ONNX Runtime network before it is served (on the CPU for an engine without a fixed size, whose
provider would otherwise build an engine for the probe's shape).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import BackendError
from .cache import ArtifactCache, CacheKey
from .export import INPUT_NAME, ExportSpec, OnnxArtifact, onnx_artifact
from .onnxruntime_backend import OnnxRuntimeNetwork, build_onnxruntime_network, cuda_providers
from .ort_errors import ort_errors

LOG = logging.getLogger(__name__)
#: Seconds between "still building" log lines while TensorRT builds an engine.
HEARTBEAT_S = 30.0
WORKSPACE_BYTES = 4 << 30


def tensorrt_version() -> str:
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:  # the provider may bundle its own libraries
        return "unknown"


def tensorrt_provider(engine_dir: Path | None, fp16: bool, size: tuple[int, int] | None) -> list[Any]:
    """The TensorRT provider entry with its engine and timing caches in ``engine_dir`` (None:
    no caches, nothing written to disk)."""
    options: dict[str, Any] = {"trt_fp16_enable": fp16, "trt_max_workspace_size": WORKSPACE_BYTES}
    if engine_dir is not None:
        options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(engine_dir),
                       trt_timing_cache_enable=True, trt_timing_cache_path=str(engine_dir))
    else:
        options.update(trt_engine_cache_enable=False, trt_timing_cache_enable=False)
    if size is not None:  # one optimisation profile at exactly the inference size
        shape = f"{INPUT_NAME}:1x3x{size[0]}x{size[1]}"
        options.update(trt_profile_min_shapes=shape, trt_profile_opt_shapes=shape, trt_profile_max_shapes=shape)
    return [("TensorrtExecutionProvider", options)]


def tensorrt_key(onnx: OnnxArtifact, device: torch.device, fp16: bool, size: tuple[int, int] | None) -> CacheKey:
    import onnxruntime as ort

    base = onnx.key
    gpu = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no-gpu"
    return CacheKey(
        kind="tensorrt", model=base.model, variant=base.variant, num_classes=base.num_classes,
        options=base.options, weights=base.weights, input_size=f"{size[0]}x{size[1]}" if size else "dynamic",
        versions=f"onnxruntime {ort.__version__}; tensorrt {tensorrt_version()}; gpu {gpu}",
        extra=f"fp16={fp16}; onnx={base.digest()}",
    )


def build_tensorrt_network(
    model: nn.Module, spec: ExportSpec, device: torch.device, cache: ArtifactCache, fp16: bool,
    size: tuple[int, int] | None,
) -> OnnxRuntimeNetwork:
    """The network on ONNX Runtime's TensorRT provider, its engine from the cache or built now."""
    onnx = onnx_artifact(spec, model, cache)
    if onnx.path is None:  # random weights or no disk cache: the engine is built in memory too
        providers = tensorrt_provider(None, fp16, size)
        network = build_onnxruntime_network(model, spec, device, cache, tensorrt=providers, probe_size=size,
                                            probe_on_cpu=size is None)
        return _checked(network, fp16, size)
    key = tensorrt_key(onnx, device, fp16, size)
    engine_dir = cache.lookup(key, "")
    if engine_dir is None:
        if size is None:
            engine_dir = cache.store(key, "", lambda tmp: tmp.mkdir())  # the provider fills it per shape
            LOG.warning("backend tensorrt without a fixed inference_size: TensorRT builds an engine on the "
                        "first frame of each new size (minutes); set inference_size to build it at start-up")
        else:
            engine_dir = cache.store(key, "", lambda tmp: _build_engine(onnx.source, tmp, device, fp16, size, spec))
    providers = tensorrt_provider(engine_dir, fp16, size)
    try:
        network = build_onnxruntime_network(model, spec, device, cache, tensorrt=providers, probe_size=size,
                                            probe_on_cpu=size is None)
    except (BackendError, *ort_errors()) as exc:  # a stale, corrupt or foreign engine: rebuild once
        if size is None:
            raise BackendError(f"TensorRT session failed: {str(exc)[:400]}") from exc
        cache.evict(engine_dir, f"{type(exc).__name__}: {exc}")
        engine_dir = cache.store(key, "", lambda tmp: _build_engine(onnx.source, tmp, device, fp16, size, spec))
        providers = tensorrt_provider(engine_dir, fp16, size)
        network = build_onnxruntime_network(model, spec, device, cache, tensorrt=providers, probe_size=size)
    return _checked(network, fp16, size)


def _checked(network: OnnxRuntimeNetwork, fp16: bool, size: tuple[int, int] | None) -> OnnxRuntimeNetwork:
    """Name the network; its arena-shrinking run uses the profile's one shape (when fixed)."""
    _require_tensorrt_provider(network)
    network.name = f"tensorrt via onnxruntime ({'fp16' if fp16 else 'fp32'})"
    if size is not None:  # the engine's optimisation profile accepts only this shape
        network.release_size = size
    return network


def _require_tensorrt_provider(network: OnnxRuntimeNetwork) -> None:
    """Refuse a session on which ONNX Runtime quietly dropped the TensorRT provider."""
    if "TensorrtExecutionProvider" not in network.providers:
        raise BackendError("ONNX Runtime did not enable the TensorRT provider (check the TensorRT libraries "
                           "are on the library path); refusing to fall back silently")


def _build_engine(onnx: Path | bytes, engine_dir: Path, device: torch.device, fp16: bool,
                  size: tuple[int, int], spec: ExportSpec) -> None:
    """Build the engine into ``engine_dir`` by one dummy run, logging progress while it takes."""
    engine_dir.mkdir(parents=True)
    LOG.warning("building the TensorRT engine for %s %s at %dx%d (%s); this takes minutes and is cached in %s",
                spec.model, spec.variant, size[0], size[1], "fp16" if fp16 else "fp32", engine_dir.parent)
    providers = cuda_providers(device, tensorrt_provider(engine_dir, fp16, size))
    start = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(HEARTBEAT_S):
            LOG.warning("still building the TensorRT engine (%.0f s so far)", time.monotonic() - start)

    threading.Thread(target=heartbeat, name="tensorrt-build-progress", daemon=True).start()
    try:
        network = OnnxRuntimeNetwork(onnx, device, spec.num_classes, providers)
        network(torch.zeros(1, 3, *size, device=device))
    finally:
        done.set()
    LOG.warning("TensorRT engine built in %.0f s", time.monotonic() - start)

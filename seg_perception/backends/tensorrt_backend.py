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

INT8 (``precision: int8``): TensorRT quantizes the fp32 ONNX file itself, with the activation
ranges of a calibration table in the engine folder (:func:`~.quantize.write_tensorrt_table`:
the same calibration frames and method as the CPU's int8, measured on the fp32 graph), fp16 for
the layers it keeps in floating point. The calibration's digest is part of the engine's key.
Unmeasured on a GPU: the options and the table are unit-tested on the CPU.
"""

from __future__ import annotations

import logging
import tempfile
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
from .parity import CACHE_MIN_AGREEMENT
from .quantize import TENSORRT_TABLE, CalibrationSet, write_tensorrt_table

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


def tensorrt_provider(engine_dir: Path | None, fp16: bool, size: tuple[int, int] | None,
                      int8_dir: Path | None = None) -> list[Any]:
    """The TensorRT provider entry with its engine and timing caches in ``engine_dir`` (None:
    no caches, nothing written to disk). ``int8_dir``: INT8 with the calibration table
    :data:`~.quantize.TENSORRT_TABLE` found there (the provider reads it from its cache path),
    fp16 for the layers TensorRT keeps in floating point."""
    options: dict[str, Any] = {"trt_fp16_enable": fp16 or int8_dir is not None,
                               "trt_max_workspace_size": WORKSPACE_BYTES}
    if engine_dir is not None:
        options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(engine_dir),
                       trt_timing_cache_enable=True, trt_timing_cache_path=str(engine_dir))
    else:
        options.update(trt_engine_cache_enable=False, trt_timing_cache_enable=False)
    if int8_dir is not None:
        options.update(trt_int8_enable=True, trt_int8_calibration_table_name=TENSORRT_TABLE,
                       trt_int8_use_native_calibration_table=False, trt_engine_cache_path=str(int8_dir))
    if size is not None:  # one optimisation profile at exactly the inference size
        shape = f"{INPUT_NAME}:1x3x{size[0]}x{size[1]}"
        options.update(trt_profile_min_shapes=shape, trt_profile_opt_shapes=shape, trt_profile_max_shapes=shape)
    return [("TensorrtExecutionProvider", options)]


def tensorrt_key(onnx: OnnxArtifact, device: torch.device, fp16: bool, size: tuple[int, int] | None,
                 calibration: CalibrationSet | None = None) -> CacheKey:
    import onnxruntime as ort

    base = onnx.key
    gpu = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no-gpu"
    return CacheKey(
        kind="tensorrt", model=base.model, variant=base.variant, num_classes=base.num_classes,
        options=base.options, weights=base.weights, input_size=f"{size[0]}x{size[1]}" if size else "dynamic",
        versions=f"onnxruntime {ort.__version__}; tensorrt {tensorrt_version()}; gpu {gpu}",
        extra=f"fp16={fp16}; onnx={base.digest()}" + (f"; int8={calibration.digest}" if calibration else ""),
    )


def build_tensorrt_network(
    model: nn.Module, spec: ExportSpec, device: torch.device, cache: ArtifactCache, fp16: bool,
    size: tuple[int, int] | None, calibration: CalibrationSet | None = None,
) -> OnnxRuntimeNetwork:
    """The network on ONNX Runtime's TensorRT provider, its engine from the cache or built now;
    INT8 with ``calibration`` (its table written into the engine folder first)."""
    onnx = onnx_artifact(spec, model, cache)
    probe_min = 0.0 if calibration is not None else CACHE_MIN_AGREEMENT  # int8: the parity gate judges
    if onnx.path is None:  # random weights or no disk cache: the engine is built in memory too
        table_dir = None
        if calibration is not None:  # the provider reads the table from a folder: a temporary one
            table_dir = tempfile.TemporaryDirectory(prefix="seg-tensorrt-int8-")
            write_tensorrt_table(onnx.source, calibration.inputs, Path(table_dir.name))
        providers = tensorrt_provider(None, fp16, size, Path(table_dir.name) if table_dir else None)
        network = build_onnxruntime_network(model, spec, device, cache, tensorrt=providers, probe_size=size,
                                            probe_on_cpu=size is None, fresh_probe_min=probe_min)
        network.keep_alive = table_dir
        return _checked(network, fp16, size, calibration)
    key = tensorrt_key(onnx, device, fp16, size, calibration)

    def build(tmp: Path) -> None:
        if size is None:
            tmp.mkdir()  # the provider fills it per shape
            if calibration is not None:
                write_tensorrt_table(onnx.source, calibration.inputs, tmp)
        else:
            _build_engine(onnx.source, tmp, device, fp16, size, spec, calibration)

    engine_dir = cache.lookup(key, "")
    if engine_dir is None:
        if size is None:
            LOG.warning("backend tensorrt without a fixed inference_size: TensorRT builds an engine on the "
                        "first frame of each new size (minutes); set inference_size to build it at start-up")
        engine_dir = cache.store(key, "", build)
    int8_dir = engine_dir if calibration is not None else None
    providers = tensorrt_provider(engine_dir, fp16, size, int8_dir)
    try:
        network = build_onnxruntime_network(model, spec, device, cache, tensorrt=providers, probe_size=size,
                                            probe_on_cpu=size is None, fresh_probe_min=probe_min)
    except (BackendError, *ort_errors()) as exc:  # a stale, corrupt or foreign engine: rebuild once
        if size is None:
            raise BackendError(f"TensorRT session failed: {str(exc)[:400]}") from exc
        cache.evict(engine_dir, f"{type(exc).__name__}: {exc}")
        engine_dir = cache.store(key, "", build)
        providers = tensorrt_provider(engine_dir, fp16, size, engine_dir if calibration is not None else None)
        network = build_onnxruntime_network(model, spec, device, cache, tensorrt=providers, probe_size=size,
                                            fresh_probe_min=probe_min)
    return _checked(network, fp16, size, calibration)


def _checked(network: OnnxRuntimeNetwork, fp16: bool, size: tuple[int, int] | None,
             calibration: CalibrationSet | None = None) -> OnnxRuntimeNetwork:
    """Name the network; its arena-shrinking run uses the profile's one shape (when fixed)."""
    _require_tensorrt_provider(network)
    precision = "int8" if calibration is not None else ("fp16" if fp16 else "fp32")
    network.name = f"tensorrt via onnxruntime ({precision})"
    if calibration is not None:
        network.quantization = f"TensorRT INT8 from a calibration table; calibrated on {calibration.description}"
    if size is not None:  # the engine's optimisation profile accepts only this shape
        network.release_size = size
    return network


def _require_tensorrt_provider(network: OnnxRuntimeNetwork) -> None:
    """Refuse a session on which ONNX Runtime quietly dropped the TensorRT provider."""
    if "TensorrtExecutionProvider" not in network.providers:
        raise BackendError("ONNX Runtime did not enable the TensorRT provider (check the TensorRT libraries "
                           "are on the library path); refusing to fall back silently")


def _build_engine(onnx: Path | bytes, engine_dir: Path, device: torch.device, fp16: bool,
                  size: tuple[int, int], spec: ExportSpec, calibration: CalibrationSet | None = None) -> None:
    """Build the engine into ``engine_dir`` by one dummy run, logging progress while it takes
    (INT8: the calibration table is written there first)."""
    engine_dir.mkdir(parents=True)
    if calibration is not None:
        write_tensorrt_table(onnx, calibration.inputs, engine_dir)
    precision = "int8" if calibration is not None else ("fp16" if fp16 else "fp32")
    LOG.warning("building the TensorRT engine for %s %s at %dx%d (%s); this takes minutes and is cached in %s",
                spec.model, spec.variant, size[0], size[1], precision, engine_dir.parent)
    providers = cuda_providers(device, tensorrt_provider(engine_dir, fp16, size,
                                                         engine_dir if calibration is not None else None))
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

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import BackendError
from .cache import ArtifactCache
from .export import INPUT_NAME, OUTPUT_NAME, ExportSpec, OnnxArtifact, onnx_artifact
from .ort_errors import ort_errors
from .parity import CACHE_MIN_AGREEMENT, PROBE_SIZE, ParityReport, parity_probe, probe_input

LOG = logging.getLogger(__name__)


class OnnxRuntimeNetwork:
    """An ONNX file (or in-memory export) run by ONNX Runtime, called like the torch model
    (NCHW in, logits out)."""

    def __init__(self, source: Path | bytes, device: torch.device, num_classes: int, providers: list[Any]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about provider node placement are noise here
        self.session = ort.InferenceSession(source if isinstance(source, bytes) else str(source),
                                            sess_options=options, providers=providers)
        self.device, self.num_classes = device, num_classes
        #: The file it runs, None for an export that lives in memory only.
        self.path: Path | None = None if isinstance(source, bytes) else source
        #: The file's ``metadata_props`` (what ``seg-perception export`` records).
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.providers = self.session.get_providers()
        self.name = f"onnxruntime ({self.providers[0]})"
        #: True when the ONNX file came from the cache; ``origin`` says so in words (set by the builder).
        self.cache_hit = False
        self.origin = ""
        #: The load-time probe's parity with the fp32 reference when it ran on this session (the
        #: parity gate's measurement on the synthetic frame); None when it ran elsewhere.
        self.probe_report: ParityReport | None = None
        #: How an int8 network was quantized and calibrated, in words ("" for fp32).
        self.quantization = ""
        #: Whatever must live as long as the session (e.g. the folder of a TensorRT calibration table).
        self.keep_alive: Any = None
        #: (H, W) of the small run that shrinks the arenas: the size the session accepts (a
        #: TensorRT profile fixes it; the builder sets it then).
        self.release_size: tuple[int, int] = self.fixed_size or PROBE_SIZE
        arenas = "cpu:0" if device.type == "cpu" else f"cpu:0;gpu:{device.index or 0}"
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", arenas)

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """(H, W) of a fixed-size export, None for a shape-dynamic one."""
        size = self.metadata.get("input_size", "dynamic")
        if size == "dynamic" or "x" not in size:
            return None
        h, w = size.split("x", 1)
        return int(h), int(w)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            out = torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: x.float().contiguous().numpy()})[0])
        else:
            out = self._run_cuda(x)
        if out.ndim != 4:
            raise BackendError(f"the ONNX network outputs shape {tuple(out.shape)}, not (N, classes, H, W)")
        if out.shape[1] != self.num_classes:
            raise BackendError(f"the ONNX network outputs {out.shape[1]} classes, expected {self.num_classes}")
        return out

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

    def release_memory(self) -> None:
        """Shrink ONNX Runtime's memory arenas back to what a small run needs.

        The arena keeps every block it ever allocated, sized for the largest input so far; a run
        with ``memory.enable_memory_arena_shrinkage`` returns the free blocks when it ends, so one
        tiny run after an oversize frame gives that memory back.
        """
        h, w = self.release_size
        try:
            self.session.run([OUTPUT_NAME], {INPUT_NAME: np.zeros((1, 3, h, w), np.float32)}, self._shrink)
        except ort_errors() as exc:  # memory stays held; the frames were served all the same
            LOG.warning("could not shrink ONNX Runtime's memory arenas: %s", str(exc)[:200])


def cuda_providers(device: torch.device, tensorrt: list[Any] | None) -> list[Any]:
    """TensorRT (when given), CUDA, then CPU for whatever neither supports."""
    cuda = ("CUDAExecutionProvider", {"device_id": device.index or 0})
    return [*(tensorrt or []), cuda, "CPUExecutionProvider"]


def probe(network: OnnxRuntimeNetwork, model: nn.Module, spec: ExportSpec,
          size: tuple[int, int] | None = None) -> ParityReport:
    """The parity probe of a loaded network against the PyTorch model, on one small frame (at
    ``size``, the network's fixed size, or :data:`~seg_perception.backends.parity.PROBE_SIZE`)."""
    x = probe_input(size or network.fixed_size or PROBE_SIZE, spec.normalization)
    return parity_probe(network, model, x, network.device)


def build_onnxruntime_network(
    model: nn.Module, spec: ExportSpec, device: torch.device, cache: ArtifactCache,
    tensorrt: list[Any] | None = None, probe_size: tuple[int, int] | None = None, probe_on_cpu: bool = False,
    artifact: Callable[[], OnnxArtifact] | None = None, fresh_probe_min: float = CACHE_MIN_AGREEMENT,
) -> OnnxRuntimeNetwork:
    """Export (or take the checked cache entry), open a session and run the parity probe.

    A cached file that does not load, or whose labels on the probe frame disagree with the
    PyTorch model's (agreement under :data:`~seg_perception.backends.parity.CACHE_MIN_AGREEMENT`),
    is evicted with the reason and exported again; a fresh export that fails the probe (under
    ``fresh_probe_min``: 0 for a freshly quantized network, which the parity gate judges) raises
    :class:`BackendError`. ``probe_on_cpu`` probes the file on a CPU session instead of the
    serving one (TensorRT without a fixed size would build an engine for the probe's shape).
    ``artifact`` makes the file (default: the fp32 export of ``spec``; the int8 quantizer passes its own).
    """
    providers = ["CPUExecutionProvider"] if device.type == "cpu" else cuda_providers(device, tensorrt)
    make = artifact or (lambda: onnx_artifact(spec, model, cache))
    made = make()
    network, report = _open_and_probe(made, model, spec, device, providers, cache, probe_size, probe_on_cpu,
                                      CACHE_MIN_AGREEMENT if made.hit else fresh_probe_min)
    if network is None and made.hit:
        assert made.path is not None
        cache.evict(made.path, report)
        made = make()
        network, report = _open_and_probe(made, model, spec, device, providers, cache, probe_size, probe_on_cpu,
                                          fresh_probe_min)
    artifact_made = made
    if network is None:
        raise BackendError(f"ONNX Runtime cannot serve the exported {spec.model}: {report}"[:600])
    network.cache_hit = artifact_made.hit
    network.origin = _origin(artifact_made, report, cache)
    LOG.info("%s %s runs on %s from %s (%s)", spec.model, spec.variant, network.name,
             artifact_made.path or "memory", network.origin)
    return network


def _open_and_probe(artifact: OnnxArtifact, model: nn.Module, spec: ExportSpec, device: torch.device,
                    providers: list[Any], cache: ArtifactCache, probe_size: tuple[int, int] | None,
                    probe_on_cpu: bool, min_agreement: float) -> tuple[OnnxRuntimeNetwork | None, str]:
    """(network, probe summary) when the artifact loads and passes the probe, else (None, why)."""
    try:
        network = OnnxRuntimeNetwork(artifact.source, device, spec.num_classes, providers)
        checked = (OnnxRuntimeNetwork(artifact.source, torch.device("cpu"), spec.num_classes, ["CPUExecutionProvider"])
                   if probe_on_cpu else network)
    except ort_errors() as exc:
        return None, f"ONNX Runtime cannot load it: {type(exc).__name__}: {str(exc)[:300]}"
    report = probe(checked, model, spec, probe_size)
    if report.problem:
        return None, f"it failed the parity probe against PyTorch ({report.problem})"
    if not report.passed(min_agreement):
        return None, (f"it failed the parity probe against PyTorch ({report.summary()}; at least "
                      f"{100 * min_agreement:.0f} % agreement required)")
    if checked is network:
        network.probe_report = report
    return network, report.summary()


def _origin(artifact: OnnxArtifact, probe_summary: str, cache: ArtifactCache) -> str:
    """Where the network came from, in one line for diagnostics."""
    made = "quantized now" if artifact.key.kind == "onnx_int8" else "exported now"
    if artifact.hit:
        origin = f"cache hit, verified (key, sha256, metadata; probe {probe_summary})"
    elif artifact.path is not None:
        origin = f"{made}, cached"
    else:
        origin = f"{made}, in memory only ({artifact.in_memory_reason})"
    if cache.evictions:
        origin = f"{origin}; rebuilt after evicting {'; '.join(cache.evictions)}"
    return origin[:600]

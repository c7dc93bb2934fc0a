"""ROS-free inference engine: uint8 RGB frames in, uint8 labels (and optional colour, overlay,
confidence) out, one frame or a batch of frames (several cameras) at a time.

The engine owns everything between host (or device) frames and host results: the device, the
precision, the model, pinned host buffers, CUDA streams, pre/post-processing and per-stage
timings. The scheduler, the benchmarks and the evaluator all drive it the same way, so a number
measured by ``bench`` is the number the node gets.

API (see the methods for details)::

    engine = SegmentationEngine(EngineConfig(...))
    pending = engine.submit_batch(frames, outputs)   # one PendingResult per frame, in order
    results = [p.result() for p in pending]          # SegmentationResult, with .batch_size
    engine.submit(frame, outputs)                    # == submit_batch([frame], [outputs])[0]
    engine.warmup(h, w) / engine.prepare(sizes, outputs)   # prepare a batch shape now
    engine.close()

Batching: frames that can run through the model together form one *group*: with
``inference_size`` set every frame of the call (each resized in preprocessing), otherwise the
frames of one (H, W). Each group is one forward pass; each frame keeps its own output request.

On CUDA a group goes through two streams:

* the *upload* stream copies each uint8 frame from a pinned buffer to the GPU (non-blocking) and,
  eagerly, preprocesses it there (to float, ImageNet mean/std, resize to the inference size). A
  frame that is already a uint8 HxWx3 tensor on the engine's device (GPU JPEG decoding) is used
  in place: no upload;
* the *compute* stream waits for that (CUDA event), runs the model in FP16 with channels_last,
  takes argmax/colour/overlay on the GPU and copies only uint8 results back into pinned buffers.

:meth:`SegmentationEngine.submit_batch` returns as soon as the work is queued, so a caller that
submits batch N+1 before collecting batch N overlaps N+1's upload with N's inference. On the CPU
the same API runs synchronously.

``EngineConfig.compile`` removes per-kernel launch cost: ``cuda_graph`` captures preprocess, model
and postprocess as CUDA graphs per batch shape and output flags (not the overlay alpha, which is
a device tensor) and replays them; ``torch_compile`` fuses the model's kernels with TorchInductor
per input shape. Either is prepared per shape *off the hot path*
(:mod:`seg_perception.preparation`): a new shape is served eagerly while a background thread
compiles or captures it, and the next batch of that shape uses the result.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backends import build_network, resolve_backend
from .backends.calibration import CalibrationData, read_calibration
from .backends.parity import HELD_OUT, LIVE, PROBE_SIZE, SYNTHETIC, ParityReport, parity_check, probe_frame
from .backends.quantize import CalibrationSet
from .choices import COMPILE_MODES, DEVICES, ONNX_MODEL, PRECISIONS
from .cityscapes import CLASS_NAMES, palette_for
from .engine_api import (
    QUEUE,
    STAGES,
    BatchShape,
    EngineConfig,
    EngineConfigError,
    FrameError,
    OutputRequest,
    ParityError,
    SegmentationResult,
)
from .models import build_model, count_parameters, load_checkpoint, normalization_for
from .models.checkpoint import checkpoint_labels
from .normalization import IMAGENET_MEAN, IMAGENET_STD, Normalization
from .preparation import CAPTURE_LOCK, SERVING, PreparedCache, Preparer, yielding_to_serving

#: The interface types live in :mod:`seg_perception.engine_api` (no torch); importing them from
#: here keeps working.
__all__ = [
    "COMPILE_MODES", "DEVICES", "IMAGENET_MEAN", "IMAGENET_STD", "PRECISIONS", "QUEUE", "STAGES", "EngineConfig",
    "EngineConfigError", "FrameError", "OutputRequest", "PendingResult", "SegmentationEngine", "SegmentationResult",
    "as_frame_tensor", "recover_from_failure", "resolve_device", "resolve_precision", "working_size",
]

LOG = logging.getLogger(__name__)
#: Captured CUDA graph sets kept (one per batch shape and output flags), least recent evicted.
MAX_CAPTURED_PIPELINES = 8
#: Input shapes kept marked as compiled (torch.compile's own cache is bounded by dynamo's
#: ``cache_size_limit``; past it dynamo runs the model eagerly, which is still correct).
MAX_COMPILED_SHAPES = 8
#: Batch shapes remembered by :meth:`SegmentationEngine.recent_batches` for a reload to prepare.
MAX_RECENT_BATCHES = 8


#: The default request: labels only.
_NO_EXTRAS = OutputRequest()
#: Rows per band when an oversize frame's overlay is blended (bounded float temporaries).
BLEND_BAND_ROWS = 256


def working_size(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """A frame's size when it has at most ``max_pixels`` pixels, else the largest size with the
    same aspect ratio (each side at least 1) that has at most ``max_pixels``."""
    if height * width <= max_pixels:
        return height, width
    scale = math.sqrt(max_pixels / (height * width))
    h, w = max(1, int(height * scale)), max(1, int(width * scale))
    while h * w > max_pixels:  # float rounding; only an extreme aspect ratio gets here
        if h >= w:
            h -= 1
        else:
            w -= 1
    return h, w


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when torch sees a device, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto`` is fp16 on CUDA and fp32 elsewhere; fp16 (CUDA-only) falls back to fp32 on a CPU
    that ``device: auto`` picked (an explicit ``device: cpu`` with fp16 is refused by validate);
    int8 is int8 everywhere (ONNX Runtime on the CPU, TensorRT on CUDA)."""
    if requested == "int8":
        return "int8"
    if device.type != "cuda":
        return "fp32"
    return "fp16" if requested == "auto" else requested


def as_frame_tensor(frame: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Check a frame is uint8 HxWx3 and return it as a tensor (no copy for contiguous numpy).

    Read-only arrays (frames viewed straight from a message or a bag) are shared as they are: the
    engine never writes into its input, so torch's non-writable-array warning does not apply.
    """
    if isinstance(frame, np.ndarray):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensor = torch.from_numpy(np.ascontiguousarray(frame))
    else:
        tensor = frame
    if not isinstance(tensor, torch.Tensor):
        raise FrameError(f"frame must be a numpy array or torch tensor, got {type(frame).__name__}")
    if tensor.dtype != torch.uint8:
        raise FrameError(f"frame must be uint8, got {tensor.dtype}")
    if tensor.ndim != 3 or tensor.shape[2] != 3:
        raise FrameError(f"frame must be HxWx3 RGB, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise FrameError(f"frame has zero size {tuple(tensor.shape)}")
    return tensor


def recover_from_failure(exc: BaseException) -> str:
    """Classify a failed frame for the books and undo what it can: after a CUDA out-of-memory
    error the allocator's cached blocks are returned so the next frame has room (under the
    process-wide capture lock: emptying the cache during another thread's capture asserts)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        if torch.cuda.is_available():
            with CAPTURE_LOCK:
                torch.cuda.empty_cache()
        return "out_of_memory"
    return "inference_error"


def _pinned_empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """Page-locked host memory, so copies to and from the device can be asynchronous.

    Pinned blocks come from torch's caching host allocator, which reuses a block only after the
    copies recorded on it have finished, so frames in flight never share one.
    """
    return torch.empty(tuple(shape), dtype=dtype, pin_memory=True)


def _keep_for(tensor: torch.Tensor, stream: Any) -> None:
    """Tell the caching allocator ``tensor`` is used on ``stream`` (freed only after that work)."""
    tensor.record_stream(stream)


def _completion_event() -> torch.cuda.Event:
    """The event a caller waits on: ``blocking`` so the wait sleeps instead of spinning a core."""
    return torch.cuda.Event(enable_timing=True, blocking=True)


#: Which marks bound each figure, per path. Marks: start/upload on the upload stream;
#: ``compute`` is recorded on the compute stream once it has waited for the upload stream, so
#: (handoff, compute) is the queueing and every stage after it is the stage's own time.
_EAGER_SPANS = {
    "upload": ("start", "upload"), "preprocess": ("upload", "preprocess"), QUEUE: ("preprocess", "compute"),
    "inference": ("compute", "inference"), "postprocess": ("inference", "postprocess"),
    "download": ("postprocess", "download"),
}
_GRAPH_SPANS = {
    "upload": ("start", "upload"), QUEUE: ("upload", "compute"), "preprocess": ("compute", "preprocess"),
    "inference": ("preprocess", "inference"), "postprocess": ("inference", "postprocess"),
    "download": ("postprocess", "download"),
}


class _Timer:
    """Stage marks: CUDA events on the GPU (device time), perf_counter on the CPU."""

    def __init__(self, cuda: bool, spans: dict[str, tuple[str, str]] = _EAGER_SPANS) -> None:
        self.cuda, self.spans = cuda, spans
        self.marks: dict[str, Any] = {}

    def mark(self, name: str, stream: Any = None, *, done: bool = False) -> None:
        if self.cuda:
            event = _completion_event() if done else torch.cuda.Event(enable_timing=True)
            event.record(stream)
            self.marks[name] = event
        else:
            self.marks[name] = time.perf_counter()
            if name == "preprocess":  # nothing to wait for on the CPU: the compute starts now
                self.marks["compute"] = self.marks[name]

    def elapsed_ms(self) -> tuple[dict[str, float], float]:
        """Per-stage milliseconds and the queueing; call only after the last event completed."""

        def span(first: str, last: str) -> float:
            a, b = self.marks[first], self.marks[last]
            return max(0.0, a.elapsed_time(b) if self.cuda else (b - a) * 1e3)

        return {s: span(*self.spans[s]) for s in STAGES}, span(*self.spans[QUEUE])


class _GroupDone:
    """What the frames of one group share: the timer, the completion event, one result read."""

    def __init__(self, timer: _Timer, done: Any, size: int) -> None:
        self.timer, self.done, self.size = timer, done, size
        self._timings: tuple[dict[str, float], float] | None = None

    def ready(self) -> bool:
        return self.done is None or self.done.query()

    def wait(self) -> tuple[dict[str, float], float]:
        if self._timings is None:
            if self.done is not None:
                self.done.synchronize()
            self._timings = self.timer.elapsed_ms()
        return self._timings


class PendingResult:
    """A submitted frame; :meth:`result` waits for the device and returns host arrays."""

    def __init__(self, group: _GroupDone, host: dict[str, torch.Tensor]) -> None:
        self._group, self._host = group, host
        self._result: SegmentationResult | None = None

    def ready(self) -> bool:
        return self._group.ready()

    def result(self) -> SegmentationResult:
        if self._result is None:
            timings, queue_ms = self._group.wait()
            arrays = {k: v.numpy() for k, v in self._host.items()}
            self._result = SegmentationResult(
                timings_ms=dict(timings), queue_ms=queue_ms, batch_size=self._group.size, **arrays
            )
        return self._result


@dataclass(frozen=True)
class _Group:
    """Frames that run through the model together: their positions in the call, sizes, flags."""

    indices: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]
    flags: tuple[tuple[bool, bool, bool], ...]

    @property
    def graph_key(self) -> tuple[Any, ...]:
        """What a captured graph depends on: every frame's size and output flags, nothing else."""
        return tuple(zip(self.sizes, self.flags, strict=True))


class SegmentationEngine:
    """Builds the configured model on the chosen device and segments frames (one or a batch)."""

    def __init__(self, config: EngineConfig, model: nn.Module | None = None) -> None:
        config.validate()
        self.config = config
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        if config.precision != "auto" and self.precision != config.precision:
            LOG.warning("precision %s is CUDA-only; running fp32 on %s", config.precision, self.device)
        self.dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self._cuda = self.device.type == "cuda"
        self.model = model if model is not None else self._build_model(config)
        self.model.eval().to(self.device, self.dtype)
        if self._cuda:
            self.model.to(memory_format=torch.channels_last)
        # model: onnx - what the file's contract fixes: the size it runs at, what its output holds.
        if (run_size := getattr(self.model, "run_size", None)) is not None:
            self.config = config = replace(config, inference_size=run_size)
        #: What the network outputs: logits (every registered model), probabilities or labels.
        self.output_kind: str = getattr(self.model, "output_kind", "logits")
        self.num_parameters = int(getattr(self.model, "parameter_count", None) or count_parameters(self.model))
        self.crf = self._build_crf(config)
        #: How frames are normalised for the network: given in the configuration, else the model
        #: registry entry's (the data its weights were trained with).
        self.normalization: Normalization = config.normalization or (
            self.model.normalization if config.model == ONNX_MODEL else normalization_for(config.model, config.variant))
        self._bgr = self.normalization.channel_order == "bgr"
        self._mean = torch.tensor(self.normalization.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(self.normalization.std, device=self.device).view(1, 3, 1, 1) * 255.0
        labels = checkpoint_labels(self.model)
        #: Class names and colours of the label ids: those recorded in the checkpoint (a model
        #: trained on a custom class set), else Cityscapes'. The node publishes them.
        self.class_names, self.palette = labels or (_class_names_for(config.num_classes),
                                                    palette_for(config.num_classes))
        # 256 rows: a label output's ids outside the classes are 255, drawn black.
        self._palette = torch.zeros((256, 3), dtype=torch.uint8)
        self._palette[: len(self.palette)] = torch.from_numpy(self.palette[:256])
        self._palette = self._palette.to(self.device)
        if self._cuda:
            self._upload_stream = torch.cuda.Stream(self.device)
            self._compute_stream = torch.cuda.Stream(self.device)
        self.backend = resolve_backend(config.backend, self.device, config.compile, model is not None,
                                       config.model, self.precision)
        #: int8: the frames read from ``calibration`` (calibrated on, and held out for the parity gate).
        self.calibration: CalibrationData | None = None
        self._forward = self._compiled_model(config)
        self._preparer = Preparer(f"seg-engine-prepare-{id(self):x}")
        self._compiled_shapes = PreparedCache(
            self._compile_shape, MAX_COMPILED_SHAPES, what="torch.compile", retry_after=100,
        )
        self._captured = PreparedCache(
            self._capture_group, MAX_CAPTURED_PIPELINES, before_evict=self._wait_for_frames_in_flight,
            what="CUDA graph capture", retry_after=100,
        )
        self._recent: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        #: The parity gate's measurement against the fp32 reference (None: this is the reference).
        self.parity: ParityReport | None = None
        try:
            self._parity_gate()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _build_model(config: EngineConfig) -> nn.Module:
        if config.model == ONNX_MODEL:
            from .backends.onnx_model import load_onnx_model

            return load_onnx_model(config)
        model = build_model(config.model, config.num_classes, config.variant or None, **config.model_options)
        if config.weights:
            load_checkpoint(model, config.weights)
        else:
            LOG.warning(
                "NO WEIGHTS CONFIGURED: model %s runs with RANDOM weights; labels are meaningless. "
                "Set 'weights' to a checkpoint file.", config.model,
            )
        return model

    def _build_crf(self, config: EngineConfig) -> Any:
        """The configured dense CRF (None for ``none``); fails here, not on the first frame."""
        from .crf import CRFConfig, build_crf

        try:
            crf_config = CRFConfig(mode=config.crf, **config.crf_options)
        except TypeError as exc:
            raise EngineConfigError(f"invalid crf_options {config.crf_options}: {exc}") from exc
        return build_crf(crf_config, device=self.device)

    @property
    def description(self) -> dict[str, Any]:
        """What is running, for diagnostics and reports; with an exported network, where its
        artifact came from (a verified cache hit, exported now, or rebuilt and why)."""
        artifact = {} if self.backend == "torch" else {"artifact": self._forward.origin}
        if getattr(self._forward, "quantization", ""):
            artifact["quantization"] = self._forward.quantization
        return {
            "model": getattr(self.model, "model_name", type(self.model).__name__),
            "variant": getattr(self.model, "variant", ""),
            "device": str(self.device) if not self._cuda else torch.cuda.get_device_name(self.device),
            "precision": self.precision,
            "parameters": self.num_parameters,
            "weights": self.config.weights or "(random init)",
            "classes": len(self.class_names),
            "crf": self.config.crf,
            "compile": self.config.compile,
            "backend": self.backend if self.backend == "torch" else self._forward.name,
            **artifact,
            **self._contract_description(),
            **self._parity_description(),
        }

    def _contract_description(self) -> dict[str, Any]:
        """model: onnx - the file's contract, and why no confidence comes from a labels output."""
        contract = getattr(self.model, "contract", None)
        if contract is None:
            return {}
        extra = {"contract": contract.summary(), "output": self.output_kind}
        if self.output_kind == "labels":
            extra["confidence"] = "not available: the network outputs labels"
        return extra

    @property
    def network(self) -> Any:
        """What runs the network: the torch model, or the backend's network (``name``, ``path``
        of its file, ``origin``); ``seg-perception export`` copies an int8 network's file."""
        return self._forward

    @property
    def asynchronous(self) -> bool:
        """True when :meth:`submit_batch` returns before the work is done: CUDA streams and no
        CRF (both CRFs read their lattice size or the whole frame on the host, which waits)."""
        return self._cuda and self.crf is None

    def memory_allocated_mb(self) -> float | None:
        """GPU memory held by tensors (None on the CPU)."""
        return torch.cuda.memory_allocated(self.device) / 2**20 if self._cuda else None

    def recover_from_failure(self, exc: BaseException) -> str:
        """The books' reason for a failed frame (see :func:`recover_from_failure`)."""
        return recover_from_failure(exc)

    # -- public API ------------------------------------------------------------------------------
    def infer(
        self, frame: np.ndarray | torch.Tensor, outputs: OutputRequest = _NO_EXTRAS
    ) -> SegmentationResult:
        """Segment one frame and wait for the result."""
        return self.submit(frame, outputs).result()

    def infer_batch(
        self, frames: Sequence[np.ndarray | torch.Tensor], outputs: Sequence[OutputRequest]
    ) -> list[SegmentationResult]:
        """Segment frames together and wait for every result (in the order given)."""
        return [p.result() for p in self.submit_batch(frames, outputs)]

    def submit(self, frame: np.ndarray | torch.Tensor, outputs: OutputRequest = _NO_EXTRAS) -> PendingResult:
        """Queue one uint8 HxWx3 RGB frame; returns before the GPU finishes (CUDA)."""
        return self.submit_batch([frame], [outputs])[0]

    @torch.inference_mode()
    def submit_batch(
        self, frames: Sequence[np.ndarray | torch.Tensor], outputs: Sequence[OutputRequest]
    ) -> list[PendingResult]:
        """Queue frames (numpy or torch, host or already on the engine's device) with one output
        request each; returns one :class:`PendingResult` per frame, in order.

        Every frame is checked before any work is queued, so one bad frame raises
        :class:`FrameError` (or ``ValueError`` for a bad request) and nothing of the call runs.
        """
        if len(frames) != len(outputs):
            raise ValueError(f"got {len(frames)} frames but {len(outputs)} output requests")
        if not frames:
            return []
        tensors = [as_frame_tensor(f) for f in frames]
        for request in outputs:
            if not 0.0 <= request.overlay_alpha <= 1.0:
                raise ValueError(f"overlay_alpha must be in [0, 1], got {request.overlay_alpha}")
        results: list[PendingResult | None] = [None] * len(tensors)
        oversize = False
        with SERVING.serving():
            for group in self._groups(tensors, outputs):
                self._remember(group)
                members = [tensors[i] for i in group.indices]
                requests = [outputs[i] for i in group.indices]
                run = self._run_cuda if self._cuda else self._run_cpu
                for i, pending in zip(group.indices, run(group, members, requests), strict=True):
                    results[i] = pending
                oversize |= any(self._oversize(h, w) for h, w in group.sizes)
        if oversize:
            self._release_memory()
        return results  # type: ignore[return-value]

    def _oversize(self, height: int, width: int) -> bool:
        """More pixels than ``max_inference_pixels``: the frame's work runs at its working size."""
        return height * width > self.config.max_inference_pixels

    def _network_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) the network runs a frame of this size at: ``inference_size``, else the frame's
        own size capped at ``max_inference_pixels`` (:func:`working_size`)."""
        if self.config.inference_size is not None:
            h, w = self.config.inference_size
            return int(h), int(w)
        return working_size(height, width, self.config.max_inference_pixels)

    def _release_memory(self) -> None:
        """After an oversize frame: give back what the backend and the allocators keep sized for
        it, so one huge frame does not raise the process's memory for good. Never fails the
        frames it follows: they are already served."""
        try:
            if self.backend != "torch":
                self._forward.release_memory()
            if self._cuda:
                with CAPTURE_LOCK:
                    torch.cuda.empty_cache()
            else:
                _trim_heap()
        except Exception as exc:  # memory stays held until the next oversize frame; nothing else changes
            LOG.warning("could not give back the memory of an oversize frame: %s", str(exc)[:200])

    def warmup(self, height: int, width: int, iterations: int = 2, batch_size: int = 1) -> None:
        """Prepare batches of ``batch_size`` frames of ``height`` x ``width`` now (compile or
        capture included, in the calling thread, yielding to frames being served) and run a few,
        so cuDNN picks algorithms and buffers exist before real traffic."""
        sizes = [(height, width)] * batch_size
        self.prepare(sizes, [OutputRequest()] * batch_size)
        frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        for _ in range(iterations):
            self.infer_batch([frame] * batch_size, [OutputRequest()] * batch_size)

    def prepare(self, sizes: Sequence[tuple[int, int]], outputs: Sequence[OutputRequest]) -> None:
        """Compile or capture, in the calling thread, what a ``submit_batch`` of frames of these
        (H, W) sizes with these requests will use, so its first batch runs at full speed. Meant
        for a loader thread before an engine is swapped in; holds the interpreter in short pieces
        while frames are served (:func:`~seg_perception.preparation.yielding_to_serving`)."""
        frames = [torch.zeros((h, w, 3), dtype=torch.uint8) for h, w in sizes]
        with yielding_to_serving():
            for group in self._groups(frames, outputs):
                self._prepare_group(group, schedule=None)

    def recent_batches(self) -> list[BatchShape]:
        """The (sizes, outputs) of the latest distinct batches served (at most
        :data:`MAX_RECENT_BATCHES`): a reload passes each to the new engine's :meth:`prepare`."""
        return [(sizes, outputs) for sizes, outputs in self._recent]

    def wait_prepared(self, timeout: float | None = None) -> bool:
        """Block until background preparation has finished (benchmarks and tests)."""
        return self._preparer.wait(timeout)

    def close(self) -> None:
        """Stop the background preparation thread (after its current job)."""
        self._preparer.close()

    # -- grouping and preparation ------------------------------------------------------------------
    def _groups(self, tensors: Sequence[torch.Tensor], outputs: Sequence[OutputRequest]) -> list[_Group]:
        """One group for everything with an inference size; per network size (the frame size,
        capped at ``max_inference_pixels``) without."""
        by_key: dict[Hashable, list[int]] = {}
        for i, tensor in enumerate(tensors):
            key = None if self.config.inference_size is not None else \
                self._network_size(int(tensor.shape[0]), int(tensor.shape[1]))
            by_key.setdefault(key, []).append(i)
        return [
            _Group(
                indices=tuple(idx),
                sizes=tuple((int(tensors[i].shape[0]), int(tensors[i].shape[1])) for i in idx),
                flags=tuple(outputs[i].flags for i in idx),
            )
            for idx in by_key.values()
        ]

    def _remember(self, group: _Group) -> None:
        key = (group.sizes, tuple(OutputRequest(*f) for f in group.flags))
        self._recent[key] = None
        self._recent.move_to_end(key)
        while len(self._recent) > MAX_RECENT_BATCHES:
            self._recent.popitem(last=False)

    def _input_shape(self, group: _Group) -> tuple[int, int, int, int]:
        h, w = self._network_size(*group.sizes[0])
        return (len(group.sizes), 3, h, w)

    def _schedule(self) -> Callable[[Callable[[], None]], None] | None:
        return self._preparer.schedule if self.config.background_prepare else None

    def _prepare_group(self, group: _Group, schedule: Callable[[Callable[[], None]], None] | None) -> Any:
        """The prepared form of this group (graphs, or True for a compiled shape), or None to
        serve it eagerly (being prepared, failed, or nothing to prepare)."""
        if self.config.compile == "cuda_graph":
            return self._captured.lookup(group.graph_key, schedule)
        if self.config.compile == "torch_compile":
            return self._compiled_shapes.lookup(self._input_shape(group), schedule)
        return None

    def _compiled_model(self, config: EngineConfig) -> Any:
        """The model as the submit path calls it: eager, compiled once by TorchInductor, or the
        network exported to another backend (seg_perception.backends)."""
        if self.backend != "torch":
            self.backend, network = build_network(self.backend, config.backend, self.model, config,
                                                  self.device, self.precision, self.normalization,
                                                  self._calibration_set(config))
            return network
        if config.compile != "torch_compile":
            return self.model
        # Inductor's default mode: fused kernels without autotuning (minutes per frame shape)
        # and without its own CUDA graphs, whose private stream and memory pool do not mix with
        # the upload/compute streams here; ``cuda_graph`` is the mode that removes launch cost.
        return torch.compile(self.model, dynamic=False)

    def _calibration_set(self, config: EngineConfig) -> CalibrationSet | None:
        """int8: the calibration frames of ``calibration`` as the network takes them (normalised,
        at the network size), with the held-out ones kept for the parity gate; None otherwise."""
        if self.precision != "int8":
            return None
        self.calibration = read_calibration(config.calibration, config.calibration_frames,
                                            max_pixels=config.max_inference_pixels)
        with torch.inference_mode():
            inputs = [self._preprocess(as_frame_tensor(rgb).to(self.device)).float().cpu().numpy()
                      for rgb in self.calibration.calibration]
        return CalibrationSet.of(inputs, self.calibration.describe())

    # -- the parity gate ---------------------------------------------------------------------------
    @property
    def is_reference(self) -> bool:
        """True for the fp32 reference itself, which every other engine (fp16, int8, another
        backend) is compared with by the parity gate: a registered model's PyTorch module in fp32
        (any compile mode); for ``model: onnx`` the file in fp32 on ONNX Runtime's CPU provider."""
        if self.config.model == ONNX_MODEL:
            return self.backend == "onnxruntime" and self.device.type == "cpu" and self.precision == "fp32"
        return self.backend == "torch" and self.precision == "fp32"

    @property
    def reference_name(self) -> str:
        """What the gate compares with, in words."""
        if self.config.model == ONNX_MODEL:
            return "fp32 ONNX Runtime reference (CPU)"
        return "fp32 PyTorch reference"

    def _parity_reference(self) -> nn.Module:
        """The reference network: the model, which the gate runs in fp32 on its device."""
        return self.model

    def _parity_gate(self) -> None:
        """Measure this engine against the fp32 reference at build time and refuse it below
        ``parity_min_agreement``: on the held-out calibration frames (int8), else on the
        synthetic probe frame (whose measurement the load-time probe already made when it ran
        on this session). A reload with live frames runs :meth:`check_parity` on them."""
        if self.is_reference:
            return
        if self.calibration is not None and self.calibration.holdout:
            self.check_parity(self.calibration.holdout, HELD_OUT)
            return
        probe = getattr(self._forward, "probe_report", None) if self.backend != "torch" else None
        if isinstance(probe, ParityReport) and self.config.inference_size is None:
            self._judge(probe)
            return
        size = self.config.inference_size or getattr(self._forward, "fixed_size", None) or PROBE_SIZE
        self.check_parity([probe_frame(*size)], SYNTHETIC)

    def check_parity(self, frames: Sequence[np.ndarray | torch.Tensor], source: str = LIVE) -> ParityReport:
        """Run ``frames`` (uint8 RGB, e.g. the live input) through this engine's network and the
        fp32 reference, keep the figure (:attr:`parity`, on the description) and raise
        :class:`~seg_perception.engine_api.ParityError` when it is below ``parity_min_agreement``.
        Frames are preprocessed as served (normalised, at the network size)."""
        with torch.inference_mode():
            inputs = [self._preprocess_batch([as_frame_tensor(f).to(self.device)]) for f in frames]
            candidate = self.model if self.backend == "torch" else self._forward
            report = parity_check(candidate, self._parity_reference(), inputs, self.device, source)
        self._judge(report)
        return report

    def _judge(self, report: ParityReport) -> None:
        """Keep the figure; refuse the engine (:class:`ParityError`, with the figure) below the
        threshold or when it could not be measured; a threshold of 0 refuses nothing."""
        self.parity = report
        threshold = self.config.parity_min_agreement
        if threshold <= 0 or report.passed(threshold):
            return
        backend = self.backend if self.backend == "torch" else self._forward.name
        raise ParityError(f"the {self.precision} engine ({backend}) is refused by the parity gate: "
                          f"{report.summary()} against the {self.reference_name}, below parity_min_agreement "
                          f"{100 * threshold:.2f} %", report.agreement, threshold)

    def _parity_description(self) -> dict[str, Any]:
        """The gate's figure for diagnostics and reports."""
        if self.parity is None:
            return {"parity": f"this is the {self.reference_name}"}
        threshold = self.config.parity_min_agreement
        gate_text = f"gate {100 * threshold:.2f} %" if threshold > 0 else "gate off"
        return {"parity": f"{self.parity.summary()} vs the {self.reference_name}; {gate_text}",
                "parity_agreement": f"{self.parity.agreement:.6f}"}

    def _compile_shape(self, shape: Hashable) -> bool:
        """Trace and compile the model for one input shape (dynamo caches it for later calls)."""
        LOG.info("compiling the model for input %s", shape)
        # An inference tensor, as served frames are: dynamo guards on the dispatch keys.
        with torch.inference_mode(), self._side_stream():
            x = torch.zeros(shape, dtype=self.dtype, device=self.device)  # type: ignore[arg-type]
            if self._cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            self._forward(x)
        return True

    def _capture_group(self, key: Hashable) -> _CapturedPipeline:
        LOG.info("capturing CUDA graphs for %s", key)
        with CAPTURE_LOCK, torch.inference_mode():
            return _CapturedPipeline(self, key)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def _side_stream(self) -> Iterator[None]:
        """Preparation work on its own stream, never on the streams serving frames."""
        if not self._cuda:
            yield
            return
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))  # buffers made on this thread's stream
        with torch.cuda.stream(side):
            yield
        side.synchronize()

    def _wait_for_frames_in_flight(self) -> None:
        """Before graphs are freed: frames in flight may still replay them."""
        if self._cuda:
            self._compute_stream.synchronize()

    def _network(self, prepared: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        """What runs a group's forward pass: the compiled or exported network, except while a
        ``torch_compile`` shape is still being prepared, which is served by the eager model."""
        if self.config.compile != "none" and not prepared:
            return self.model
        return self._forward

    # -- the CPU path ----------------------------------------------------------------------------------
    def _run_cpu(
        self, group: _Group, frames: list[torch.Tensor], requests: list[OutputRequest]
    ) -> list[PendingResult]:
        prepared = self._prepare_group(group, self._schedule())
        forward = self._network(prepared)
        timer = _Timer(cuda=False)
        timer.mark("start")
        rgbs = [f.to(self.device) for f in frames]
        timer.mark("upload")
        x = self._preprocess_batch(rgbs)
        timer.mark("preprocess")
        logits = forward(x)
        timer.mark("inference")
        alphas = torch.tensor([r.overlay_alpha for r in requests], device=self.device)
        device_out = [
            self._postprocess(logits[i : i + 1], rgb, r.flags, alphas[i])
            for i, (rgb, r) in enumerate(zip(rgbs, requests, strict=True))
        ]
        timer.mark("postprocess")
        hosts = [{k: v.cpu() for k, v in out.items()} for out in device_out]
        timer.mark("download")
        done = _GroupDone(timer, None, len(frames))
        return [PendingResult(done, host) for host in hosts]

    # -- the CUDA paths -------------------------------------------------------------------------------
    def _run_cuda(
        self, group: _Group, frames: list[torch.Tensor], requests: list[OutputRequest]
    ) -> list[PendingResult]:
        prepared = self._prepare_group(group, self._schedule())
        if self.config.compile == "cuda_graph" and prepared is not None:
            return self._run_graphs(prepared, frames, requests)
        forward = self._network(prepared)
        timer = _Timer(cuda=True, spans=_EAGER_SPANS)
        caller = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._upload_stream):
            rgbs = self._upload(frames, timer, caller)
            x = self._preprocess_batch(rgbs)
            timer.mark("preprocess", self._upload_stream)
        self._compute_stream.wait_event(timer.marks["preprocess"])
        for tensor in (*rgbs, x):
            _keep_for(tensor, self._compute_stream)
        with torch.cuda.stream(self._compute_stream):
            timer.mark("compute", self._compute_stream)
            logits = forward(x)
            timer.mark("inference", self._compute_stream)
            alphas = self._alphas(requests)
            device_out = [
                self._postprocess(logits[i : i + 1], rgb, r.flags, alphas[i])
                for i, (rgb, r) in enumerate(zip(rgbs, requests, strict=True))
            ]
            timer.mark("postprocess", self._compute_stream)
            hosts = self._download(device_out, timer)
        done = _GroupDone(timer, timer.marks["download"], len(frames))
        return [PendingResult(done, host) for host in hosts]

    def _run_graphs(
        self, pipeline: _CapturedPipeline, frames: list[torch.Tensor], requests: list[OutputRequest]
    ) -> list[PendingResult]:
        """Like the eager path, with the device work replayed from captured CUDA graphs."""
        timer = _Timer(cuda=True, spans=_GRAPH_SPANS)
        caller = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._upload_stream):
            rgbs = self._upload(frames, timer, caller)
        self._compute_stream.wait_event(timer.marks["upload"])
        for rgb in rgbs:
            _keep_for(rgb, self._compute_stream)
        with torch.cuda.stream(self._compute_stream):
            timer.mark("compute", self._compute_stream)
            # The graphs read static input buffers; filling them on the compute stream orders it
            # after the previous batch's replay, so a batch in flight is never overwritten.
            for static, rgb in zip(pipeline.rgbs, rgbs, strict=True):
                static.copy_(rgb, non_blocking=True)
            pipeline.alphas.copy_(self._alphas(requests), non_blocking=True)
            pipeline.preprocess.replay()
            timer.mark("preprocess", self._compute_stream)
            pipeline.inference.replay()
            timer.mark("inference", self._compute_stream)
            if pipeline.postprocess is not None:
                pipeline.postprocess.replay()
                device_out = pipeline.outputs
            else:
                device_out = [
                    self._postprocess(pipeline.logits[i : i + 1], static, r.flags, pipeline.alphas[i])
                    for i, (static, r) in enumerate(zip(pipeline.rgbs, requests, strict=True))
                ]
            timer.mark("postprocess", self._compute_stream)
            hosts = self._download(device_out, timer)
        done = _GroupDone(timer, timer.marks["download"], len(frames))
        return [PendingResult(done, host) for host in hosts]

    def _alphas(self, requests: Sequence[OutputRequest]) -> torch.Tensor:
        """Overlay alphas as a device tensor (data, not part of any graph or compile key)."""
        return torch.tensor([r.overlay_alpha for r in requests], dtype=torch.float32).to(
            self.device, non_blocking=True
        )

    def _upload(self, frames: Sequence[torch.Tensor], timer: _Timer, caller: Any) -> list[torch.Tensor]:
        """Queue each uint8 frame's host -> device copy on the upload stream; frames already on
        the device are used in place (the upload stream first waits for the caller's stream,
        where their producer, e.g. a GPU JPEG decoder, queued them: ``caller``)."""
        pinned = [None if f.device.type == self.device.type else _pinned_empty(f.shape, torch.uint8) for f in frames]
        for buffer, frame in zip(pinned, frames, strict=True):
            if buffer is not None:
                buffer.copy_(frame)
        if any(buffer is None for buffer in pinned):
            self._upload_stream.wait_stream(caller)
        timer.mark("start", self._upload_stream)
        rgbs = []
        for buffer, frame in zip(pinned, frames, strict=True):
            if buffer is None:
                _keep_for(frame, self._upload_stream)
                rgbs.append(frame)
            else:
                rgbs.append(buffer.to(self.device, non_blocking=True))
        timer.mark("upload", self._upload_stream)
        return rgbs

    def _download(self, device_out: Sequence[dict[str, torch.Tensor]], timer: _Timer) -> list[dict[str, torch.Tensor]]:
        """Queue device -> pinned host copies of each frame's results on the compute stream; the
        last mark is the blocking completion event the results wait on."""
        hosts = []
        for out in device_out:
            host = {}
            for name, tensor in out.items():
                host[name] = _pinned_empty(tensor.shape, tensor.dtype)
                host[name].copy_(tensor, non_blocking=True)
            hosts.append(host)
        timer.mark("download", self._compute_stream, done=True)
        return hosts

    # -- device work shared by every path ------------------------------------------------------------------
    def _preprocess_batch(self, rgbs: Sequence[torch.Tensor]) -> torch.Tensor:
        """uint8 HxWx3 frames -> one normalised Nx3xhxw batch in the model's dtype."""
        xs = [self._preprocess(rgb) for rgb in rgbs]
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        # One fixed layout: compiled code is specialised (guarded) on strides.
        return x.contiguous(memory_format=torch.channels_last if self._cuda else torch.contiguous_format)

    def _preprocess(self, rgb: torch.Tensor) -> torch.Tensor:
        """uint8 HxWx3 -> normalised 1x3xhxw in the model's dtype at the network size.

        An oversize frame is resized first, in uint8 on the CPU, so no float copy of it at its
        full size ever exists; the others are normalised, then resized (when an inference size
        is set), exactly as before the working size existed.
        """
        height, width = int(rgb.shape[0]), int(rgb.shape[1])
        size = self._network_size(height, width)
        x = rgb.permute(2, 0, 1).unsqueeze(0)
        if self._oversize(height, width) and not self._cuda:
            x = _resize_uint8(x, size).float()
        else:
            x = x.float()
        if self._bgr:
            x = x.flip(1)
        x = (x - self._mean) / self._std
        if size != tuple(x.shape[-2:]):
            downscale = size[0] < x.shape[-2] or size[1] < x.shape[-1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=downscale)
        return x.to(self.dtype)

    def _postprocess(
        self, logits: torch.Tensor, rgb: torch.Tensor, flags: tuple[bool, bool, bool], alpha: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One frame's logits at the network size -> uint8 labels (and extras) at the frame size.

        The logits are upsampled to the frame size and the labels taken there. For an oversize
        frame that would hold (classes x frame pixels) floats, so its labels (and confidence, and
        the CRF) are computed at its working size and resized (nearest) to the frame size: the
        memory of a frame is bounded by ``max_inference_pixels``, not by what a message declares.
        """
        want_color, want_overlay, want_confidence = flags
        height, width = int(rgb.shape[0]), int(rgb.shape[1])
        oversize = self._oversize(height, width)
        out: dict[str, torch.Tensor] = {}
        if self.output_kind == "labels":
            # model: onnx with the argmax in the graph: class ids, resized nearest; an id outside
            # the classes becomes 255 (no class). No scores: no confidence, no CRF.
            ids = logits[:, 0]
            labels = torch.where((ids >= 0) & (ids < len(self.class_names)), ids, 255)
        else:
            labels = self._score_labels(logits, rgb, oversize, want_confidence, out)
        labels = _nearest(labels[0].to(torch.uint8), height, width)
        out["labels"] = labels
        if want_color or want_overlay:
            color = self._palette[labels.long()]
            if want_color:
                out["color"] = color
            if want_overlay:
                out["overlay"] = _blend(rgb, color, alpha, BLEND_BAND_ROWS if oversize else height)
        return out

    def _score_labels(self, scores: torch.Tensor, rgb: torch.Tensor, oversize: bool, want_confidence: bool,
                      out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Labels (1 x h x w at the working size) from class scores - logits, or probabilities
        (``model: onnx``) - after the CRF; the confidence goes into ``out`` when wanted."""
        height, width = int(rgb.shape[0]), int(rgb.shape[1])
        post = working_size(height, width, self.config.max_inference_pixels)
        if tuple(scores.shape[-2:]) != post:
            scores = F.interpolate(scores, size=post, mode="bilinear", align_corners=False)
        if self.crf is not None:
            crf_rgb = _resize_uint8(rgb.permute(2, 0, 1).unsqueeze(0), post)[0].permute(1, 2, 0) if oversize else rgb
            # The CRF takes logits; log-probabilities are logits of the same softmax.
            logits = scores if self.output_kind == "logits" else scores.float().clamp_min(1e-12).log()
            probs = self.crf(logits, crf_rgb.contiguous())  # refined marginals, already normalised
        elif want_confidence:
            probs = torch.softmax(scores.float(), dim=1) if self.output_kind == "logits" else scores.float()
        else:
            probs = None
        if probs is None:
            # max().indices equals argmax (first maximum wins) and is ~5x faster on the CPU,
            # where argmax over the channel dim of NCHW is not vectorised.
            return scores.max(dim=1).indices
        confidence, labels = probs.max(dim=1)
        if want_confidence:
            out["confidence"] = _nearest(((confidence[0] * 255.0).round().to(torch.uint8)), height, width)
        return labels


def _capture_graph(fn: Callable[[], Any], pool: Any) -> tuple[Any, Any]:
    """Capture ``fn``'s kernels as one CUDA graph; returns (graph, fn's static outputs).

    ``thread_local``: another thread's CUDA calls (frames served eagerly while this captures)
    must not invalidate the capture; only this thread is restricted.
    """
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        out = fn()
    return graph, out


class _CapturedPipeline:
    """CUDA graphs of preprocess, model and postprocess for one group key (every frame's size
    and output flags).

    Replaying three graphs replaces launching hundreds of small kernels from Python, which is
    what bounds a network like RegSeg at small batches. The graphs work on static device buffers
    (``rgbs`` and ``alphas`` in; ``x``, ``logits``, ``outputs``); three graphs rather than one
    keep the per-stage timings. They share one memory pool, which is safe because they are always
    replayed in capture order on one stream. A CRF may leave the device, so with one the
    postprocess runs eagerly on the captured logits. Built under :data:`CAPTURE_LOCK`.
    """

    def __init__(self, engine: SegmentationEngine, key: tuple[tuple[Any, Any], ...]) -> None:
        sizes = [size for size, _ in key]
        flags = [f for _, f in key]
        self.rgbs = [torch.zeros((h, w, 3), dtype=torch.uint8, device=engine.device) for h, w in sizes]
        self.alphas = torch.full((len(key),), 0.5, dtype=torch.float32, device=engine.device)

        def preprocess() -> torch.Tensor:
            return engine._preprocess_batch(self.rgbs)

        def postprocess(logits: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            return [engine._postprocess(logits[i : i + 1], rgb, f, self.alphas[i])
                    for i, (rgb, f) in enumerate(zip(self.rgbs, flags, strict=True))]

        # Warm up outside the capture, on a side stream as CUDA graphs require, so lazy set-up
        # (cuDNN algorithm choice, workspaces) is not recorded into the graphs.
        with engine._side_stream():
            for _ in range(2):
                postprocess(engine.model(preprocess()))
        self.preprocess, self.x = _capture_graph(preprocess, None)
        pool = self.preprocess.pool()
        self.inference, self.logits = _capture_graph(lambda: engine.model(self.x), pool)
        self.postprocess: Any = None
        self.outputs: list[dict[str, torch.Tensor]] = []
        if engine.crf is None:
            self.postprocess, self.outputs = _capture_graph(lambda: postprocess(self.logits), pool)


def _resize_uint8(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A uint8 1x3xHxW image resized (antialiased bilinear, as the float path) to uint8: in
    uint8 on the CPU (no float copy at the input size); through float on CUDA."""
    if x.device.type == "cpu":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    resized = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return resized.round().clamp_(0, 255).to(torch.uint8)


def _nearest(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """An HxW map resized to (height, width) by nearest neighbour; unchanged when it has that size."""
    if tuple(image.shape) == (height, width):
        return image
    rows = torch.arange(height, device=image.device) * image.shape[0] // height
    cols = torch.arange(width, device=image.device) * image.shape[1] // width
    return image.index_select(0, rows).index_select(1, cols)


def _blend(rgb: torch.Tensor, color: torch.Tensor, alpha: torch.Tensor, band_rows: int) -> torch.Tensor:
    """``rgb * (1 - alpha) + color * alpha`` in uint8, computed in bands of rows so the float
    temporaries stay bounded for an oversize frame (the same values either way)."""
    out = torch.empty_like(color)
    for top in range(0, rgb.shape[0], max(1, band_rows)):
        rows = slice(top, top + band_rows)
        blended = rgb[rows].float() * (1.0 - alpha) + color[rows].float() * alpha
        out[rows] = blended.round().clamp_(0, 255).to(torch.uint8)
    return out


def _trim_heap() -> None:
    """Hand the C heap's free memory back to the operating system (glibc ``malloc_trim``).

    Large blocks are returned when freed, but the many medium ones a huge frame allocates stay in
    the heap's arenas and keep the resident size up; elsewhere (no glibc) this does nothing.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        _MALLOC_TRIM = libc.malloc_trim if libc is not None and hasattr(libc, "malloc_trim") else False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def _class_names_for(num_classes: int) -> tuple[str, ...]:
    """Cityscapes' names for 19 classes; ``class_<i>`` beyond them."""
    return tuple(CLASS_NAMES[i] if i < len(CLASS_NAMES) else f"class_{i}" for i in range(num_classes))

"""ROS-free inference engine: uint8 RGB frame in, uint8 labels (and optional colour, overlay,
confidence) out.

The engine owns everything between a host frame and host results: the device, the precision, the
model, pinned host buffers, CUDA streams, pre/post-processing and per-stage timings. The node,
the benchmarks and the evaluator all drive it the same way, so a number measured by ``bench`` is
the number the node gets.

On CUDA a frame goes through two streams:

* the *upload* stream copies the uint8 frame from a pinned buffer to the GPU (non-blocking) and
  preprocesses it there (to float, ImageNet mean/std, resize to the inference size);
* the *compute* stream waits for that (CUDA event), runs the model in FP16 with channels_last,
  takes argmax/colour/overlay on the GPU and copies only uint8 results back into pinned buffers.

:meth:`SegmentationEngine.submit` returns as soon as the work is queued, so a caller that submits
frame N+1 before collecting frame N overlaps N+1's upload with N's inference. On the CPU the same
API runs synchronously.

``EngineConfig.compile`` removes per-kernel launch cost, which bounds a small network at batch 1:
``cuda_graph`` captures preprocess, model and postprocess as CUDA graphs per (frame shape, output
request) on first use and replays them; ``torch_compile`` fuses the model's kernels with
TorchInductor.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cityscapes import CLASS_NAMES, PALETTE
from .models import build_model, count_parameters, load_checkpoint
from .models.checkpoint import checkpoint_labels

LOG = logging.getLogger(__name__)

#: ImageNet statistics (RGB), which every supported model was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

STAGES = ("upload", "preprocess", "inference", "postprocess", "download")
DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("fp16", "fp32")
COMPILE_MODES = ("none", "torch_compile", "cuda_graph")
#: Captured CUDA graph sets kept (one per frame shape and output request), least recent evicted.
MAX_CAPTURED_PIPELINES = 4


class EngineConfigError(ValueError):
    """An engine setting that cannot work; raised at configuration time, never per frame."""


class FrameError(ValueError):
    """A frame that is not a uint8 HxWx3 RGB image."""


@dataclass
class EngineConfig:
    """Everything needed to build an engine. ``validate`` names the first bad field."""

    model: str = "regseg"
    variant: str | None = None
    weights: str = ""
    num_classes: int = 19
    model_options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    precision: str = "fp16"
    #: (height, width) the model runs at; ``None`` runs at each frame's own size.
    inference_size: tuple[int, int] | None = None
    crf: str = "none"
    crf_options: dict[str, Any] = field(default_factory=dict)
    #: none | torch_compile (TorchInductor, once per frame shape) | cuda_graph (CUDA only).
    compile: str = "none"

    def validate(self) -> None:
        if self.device not in DEVICES:
            raise EngineConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise EngineConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.device == "cpu" and self.precision == "fp16":
            raise EngineConfigError("precision fp16 needs device cuda (or auto); use fp32 on the CPU")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise EngineConfigError("device cuda requested but torch sees no CUDA device")
        if self.inference_size is not None:
            h, w = self.inference_size
            if h <= 0 or w <= 0:
                raise EngineConfigError(f"inference_size must be positive (H, W), got {self.inference_size}")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise EngineConfigError(f"num_classes must be a positive integer, got {self.num_classes!r}")
        if self.compile not in COMPILE_MODES:
            raise EngineConfigError(
                f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}"
            )
        if self.compile == "cuda_graph" and (self.device == "cpu" or not torch.cuda.is_available()):
            raise EngineConfigError("compile cuda_graph needs a CUDA device; use none or torch_compile on the CPU")


@dataclass
class SegmentationResult:
    """Host results of one frame; optional outputs are ``None`` unless requested."""

    labels: np.ndarray
    color: np.ndarray | None = None
    overlay: np.ndarray | None = None
    confidence: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: How many frames ran through the model together with this one.
    batch_size: int = 1

    @property
    def total_ms(self) -> float:
        return sum(self.timings_ms.values())


@dataclass(frozen=True)
class OutputRequest:
    """Which optional outputs to compute for a frame (each costs GPU time and a download)."""

    color: bool = False
    overlay: bool = False
    confidence: bool = False
    overlay_alpha: float = 0.5


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when torch sees a device, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


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
    error the allocator's cached blocks are returned so the next frame has room."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return "out_of_memory"
    return "inference_error"


def _pinned_copy(host_frame: torch.Tensor) -> torch.Tensor:
    """The frame in page-locked memory, so its upload can be asynchronous.

    Pinned blocks come from torch's caching host allocator, which reuses a block only after the
    copies recorded on it have finished, so frames in flight never share one.
    """
    pinned = torch.empty(host_frame.shape, dtype=torch.uint8, pin_memory=True)
    pinned.copy_(host_frame)
    return pinned


class _Timer:
    """Stage timestamps: CUDA events on the GPU (device time), perf_counter on the CPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.marks: dict[str, Any] = {}

    def mark(self, name: str, stream: torch.cuda.Stream | None = None) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(stream)
            self.marks[name] = event
        else:
            self.marks[name] = time.perf_counter()

    def elapsed_ms(self) -> dict[str, float]:
        """Per-stage milliseconds; call only after the last event has completed."""
        names = ("start",) + STAGES
        out = {}
        for prev, stage in zip(names, names[1:]):
            a, b = self.marks[prev], self.marks[stage]
            out[stage] = a.elapsed_time(b) if self.cuda else (b - a) * 1e3
        return out


class PendingResult:
    """A submitted frame; :meth:`result` waits for the GPU and returns host arrays."""

    def __init__(self, timer: _Timer, host: dict[str, torch.Tensor], done: torch.cuda.Event | None) -> None:
        self._timer, self._host, self._done = timer, host, done
        self._result: SegmentationResult | None = None

    def ready(self) -> bool:
        return self._done is None or self._done.query()

    def result(self) -> SegmentationResult:
        if self._result is None:
            if self._done is not None:
                self._done.synchronize()
            arrays = {k: v.numpy() for k, v in self._host.items()}
            self._result = SegmentationResult(timings_ms=self._timer.elapsed_ms(), **arrays)
        return self._result


class SegmentationEngine:
    """Builds the configured model on the chosen device and segments frames."""

    def __init__(self, config: EngineConfig, model: nn.Module | None = None) -> None:
        config.validate()
        self.config = config
        self.device = resolve_device(config.device)
        self.precision = config.precision if self.device.type == "cuda" else "fp32"
        if self.precision != config.precision:
            LOG.warning("precision %s is CUDA-only; running fp32 on %s", config.precision, self.device)
        self.dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self.model = model if model is not None else self._build_model(config)
        self.model.eval().to(self.device, self.dtype)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.num_parameters = count_parameters(self.model)
        self.crf = self._build_crf(config)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255.0
        labels = checkpoint_labels(self.model)
        #: Class names and colours of the label ids: those recorded in the checkpoint (a model
        #: trained on a custom class set), else Cityscapes'. The node publishes them.
        self.class_names, self.palette = labels or (_class_names_for(config.num_classes),
                                                    _palette_for(config.num_classes))
        self._palette = torch.from_numpy(self.palette).to(self.device)
        self._cuda = self.device.type == "cuda"
        if self._cuda:
            self._upload_stream = torch.cuda.Stream(self.device)
            self._compute_stream = torch.cuda.Stream(self.device)
        self._forward = self._compiled_model(config)
        self._captured: OrderedDict[tuple[Any, ...], _CapturedPipeline] = OrderedDict()

    @staticmethod
    def _build_model(config: EngineConfig) -> nn.Module:
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
        """What is running, for diagnostics and reports."""
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
        }

    @property
    def asynchronous(self) -> bool:
        """True when :meth:`submit` returns before the work is done (CUDA streams)."""
        return self._cuda

    def memory_allocated_mb(self) -> float | None:
        """GPU memory held by tensors (None on the CPU)."""
        return torch.cuda.memory_allocated(self.device) / 2**20 if self._cuda else None

    def infer(
        self, frame: np.ndarray | torch.Tensor, outputs: OutputRequest = OutputRequest()
    ) -> SegmentationResult:
        """Segment one frame and wait for the result."""
        return self.submit(frame, outputs).result()

    @torch.inference_mode()
    def submit(self, frame: np.ndarray | torch.Tensor, outputs: OutputRequest = OutputRequest()) -> PendingResult:
        """Queue one uint8 HxWx3 RGB frame; returns before the GPU finishes (CUDA)."""
        host_frame = as_frame_tensor(frame)
        if not 0.0 <= outputs.overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {outputs.overlay_alpha}")
        if self._cuda:
            return self._submit_cuda(host_frame, outputs)
        timer = _Timer(cuda=False)
        timer.mark("start")
        rgb = host_frame.to(self.device)
        timer.mark("upload")
        x = self._preprocess(rgb)
        timer.mark("preprocess")
        logits = self._forward(x)
        timer.mark("inference")
        device_out = self._postprocess(logits, rgb, outputs)
        timer.mark("postprocess")
        host = {k: v.cpu() for k, v in device_out.items()}
        timer.mark("download")
        return PendingResult(timer, host, None)

    def submit_batch(
        self, frames: Sequence[np.ndarray | torch.Tensor], outputs: Sequence[OutputRequest]
    ) -> list[PendingResult]:
        """Queue several frames (one output request each); one pending result per frame, in
        order. This version submits them one by one (each result has ``batch_size`` 1)."""
        if len(frames) != len(outputs):
            raise ValueError(f"{len(frames)} frames but {len(outputs)} output requests")
        return [self.submit(frame, out) for frame, out in zip(frames, outputs, strict=True)]

    def _submit_cuda(self, host_frame: torch.Tensor, outputs: OutputRequest) -> PendingResult:
        if self.config.compile == "cuda_graph":
            return self._submit_cuda_graph(host_frame, outputs)
        timer = _Timer(cuda=True)
        with torch.cuda.stream(self._upload_stream):
            rgb = self._upload(host_frame, timer)
            x = self._preprocess(rgb)
            timer.mark("preprocess", self._upload_stream)
        self._compute_stream.wait_event(timer.marks["preprocess"])
        rgb.record_stream(self._compute_stream)
        x.record_stream(self._compute_stream)
        with torch.cuda.stream(self._compute_stream):
            logits = self._forward(x)
            timer.mark("inference", self._compute_stream)
            device_out = self._postprocess(logits, rgb, outputs)
            timer.mark("postprocess", self._compute_stream)
            host = self._download(device_out, timer)
        return PendingResult(timer, host, timer.marks["download"])

    def _upload(self, host_frame: torch.Tensor, timer: _Timer) -> torch.Tensor:
        """Queue the uint8 frame's host -> device copy on the current (upload) stream."""
        pinned = _pinned_copy(host_frame)
        timer.mark("start", self._upload_stream)
        rgb = pinned.to(self.device, non_blocking=True)
        timer.mark("upload", self._upload_stream)
        return rgb

    def _download(self, device_out: dict[str, torch.Tensor], timer: _Timer) -> dict[str, torch.Tensor]:
        """Queue device -> pinned host copies of the results on the compute stream."""
        host = {}
        for name, tensor in device_out.items():
            host[name] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host[name].copy_(tensor, non_blocking=True)
        timer.mark("download", self._compute_stream)
        return host

    def _compiled_model(self, config: EngineConfig) -> Callable[[torch.Tensor], torch.Tensor]:
        """The model as the submit path calls it: eager, or compiled once by TorchInductor."""
        if config.compile != "torch_compile":
            return self.model
        # Inductor's default mode: fused kernels without autotuning (minutes per frame shape)
        # and without its own CUDA graphs, whose private stream and memory pool do not mix with
        # the upload/compute streams here; ``cuda_graph`` is the mode that removes launch cost.
        return torch.compile(self.model, dynamic=False)

    def _submit_cuda_graph(self, host_frame: torch.Tensor, outputs: OutputRequest) -> PendingResult:
        """Like :meth:`_submit_cuda`, with the device work replayed from captured CUDA graphs."""
        pipeline = self._captured_pipeline(tuple(host_frame.shape), outputs)
        timer = _Timer(cuda=True)
        with torch.cuda.stream(self._upload_stream):
            rgb = self._upload(host_frame, timer)
        self._compute_stream.wait_event(timer.marks["upload"])
        rgb.record_stream(self._compute_stream)
        with torch.cuda.stream(self._compute_stream):
            # The graphs read one static input buffer; filling it on the compute stream orders
            # it after the previous frame's replay, so a frame in flight is never overwritten.
            pipeline.rgb.copy_(rgb, non_blocking=True)
            pipeline.preprocess.replay()
            timer.mark("preprocess", self._compute_stream)
            pipeline.inference.replay()
            timer.mark("inference", self._compute_stream)
            if pipeline.postprocess is not None:
                pipeline.postprocess.replay()
                device_out = pipeline.outputs
            else:
                device_out = self._postprocess(pipeline.logits, pipeline.rgb, outputs)
            timer.mark("postprocess", self._compute_stream)
            host = self._download(device_out, timer)
        return PendingResult(timer, host, timer.marks["download"])

    def _captured_pipeline(self, shape: tuple[int, ...], outputs: OutputRequest) -> _CapturedPipeline:
        """The graphs for this frame shape and output request, captured on first use."""
        key = (shape, outputs)
        pipeline = self._captured.get(key)
        if pipeline is not None:
            self._captured.move_to_end(key)
            return pipeline
        if len(self._captured) >= MAX_CAPTURED_PIPELINES:
            # Frames in flight may still replay the graphs about to be freed.
            self._compute_stream.synchronize()
            self._captured.popitem(last=False)
        LOG.info("capturing CUDA graphs for frames %s, outputs %s", shape, outputs)
        pipeline = self._captured[key] = _CapturedPipeline(self, shape, outputs)
        return pipeline

    def _preprocess(self, rgb: torch.Tensor) -> torch.Tensor:
        """uint8 HxWx3 -> normalised 1x3xhxw in the model's dtype at the inference size."""
        x = rgb.permute(2, 0, 1).unsqueeze(0).float()
        x = (x - self._mean) / self._std
        size = self.config.inference_size
        if size is not None and tuple(size) != tuple(x.shape[-2:]):
            downscale = size[0] < x.shape[-2] or size[1] < x.shape[-1]
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=downscale)
        x = x.to(self.dtype)
        if self._cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _postprocess(
        self, logits: torch.Tensor, rgb: torch.Tensor, outputs: OutputRequest
    ) -> dict[str, torch.Tensor]:
        """Logits at inference size -> uint8 labels (and extras) at the frame size, on device."""
        height, width = rgb.shape[:2]
        if tuple(logits.shape[-2:]) != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        out: dict[str, torch.Tensor] = {}
        if self.crf is not None:
            probs = self.crf(logits, rgb)  # refined marginals, already normalised
        elif outputs.confidence:
            probs = torch.softmax(logits.float(), dim=1)
        else:
            probs = None
        if probs is None:
            # max().indices equals argmax (first maximum wins) and is ~5x faster on the CPU,
            # where argmax over the channel dim of NCHW is not vectorised.
            labels = logits.max(dim=1).indices
        else:
            confidence, labels = probs.max(dim=1)
            if outputs.confidence:
                out["confidence"] = (confidence[0] * 255.0).round().to(torch.uint8)
        labels = labels[0].to(torch.uint8)
        out["labels"] = labels
        if outputs.color or outputs.overlay:
            color = self._palette[labels.long()]
            if outputs.color:
                out["color"] = color
            if outputs.overlay:
                a = outputs.overlay_alpha
                blended = rgb.float() * (1.0 - a) + color.float() * a
                out["overlay"] = blended.round().clamp_(0, 255).to(torch.uint8)
        return out

    def warmup(self, height: int, width: int, iterations: int = 2) -> None:
        """Run a few frames so cuDNN picks algorithms and buffers exist before real traffic."""
        frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        for _ in range(iterations):
            self.infer(frame)


class _CapturedPipeline:
    """CUDA graphs of preprocess, model and postprocess for one frame shape and output request.

    Replaying three graphs replaces launching hundreds of small kernels from Python, which is
    what bounds a network like RegSeg at batch 1. The graphs work on static device buffers
    (``rgb`` in; ``x``, ``logits``, ``outputs``); three graphs rather than one keep the per-stage
    timings. They share one memory pool, which is safe because they are always replayed in
    capture order on one stream. A CRF may leave the device, so with one the postprocess runs
    eagerly on the captured logits.
    """

    def __init__(self, engine: SegmentationEngine, shape: tuple[int, ...], outputs: OutputRequest) -> None:
        self.rgb = torch.zeros(shape, dtype=torch.uint8, device=engine.device)
        # Warm up outside the capture, on a side stream as CUDA graphs require, so lazy set-up
        # (cuDNN algorithm choice, workspaces) is not recorded into the graphs.
        side = torch.cuda.Stream(engine.device)
        side.wait_stream(torch.cuda.current_stream(engine.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                engine._postprocess(engine.model(engine._preprocess(self.rgb)), self.rgb, outputs)
        torch.cuda.current_stream(engine.device).wait_stream(side)
        # thread_local: another thread's CUDA calls (the node building a new engine while this
        # one serves) must not invalidate the capture; only this thread is restricted.
        self.preprocess = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.preprocess, capture_error_mode="thread_local"):
            self.x = engine._preprocess(self.rgb)
        pool = self.preprocess.pool()
        self.inference = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.inference, pool=pool, capture_error_mode="thread_local"):
            self.logits = engine.model(self.x)
        self.postprocess: torch.cuda.CUDAGraph | None = None
        self.outputs: dict[str, torch.Tensor] = {}
        if engine.crf is None:
            self.postprocess = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.postprocess, pool=pool, capture_error_mode="thread_local"):
                self.outputs = engine._postprocess(self.logits, self.rgb, outputs)


def _class_names_for(num_classes: int) -> tuple[str, ...]:
    """Cityscapes' names for 19 classes; ``class_<i>`` beyond them."""
    return tuple(CLASS_NAMES[i] if i < len(CLASS_NAMES) else f"class_{i}" for i in range(num_classes))


def _palette_for(num_classes: int) -> np.ndarray:
    """The Cityscapes palette for 19 classes; a deterministic extension for other counts."""
    if num_classes <= len(PALETTE):
        return PALETTE[:num_classes]
    extra = np.random.default_rng(0).integers(0, 256, (num_classes - len(PALETTE), 3), dtype=np.uint8)
    return np.concatenate([PALETTE, extra])

"""The engine's interface, without torch: its configuration, what a caller asks for, what it gets
back, and the one :class:`Engine` protocol that every engine (and every test stand-in) implements.

The scheduler and the node import only this module, so they load without torch, and a stand-in
engine that lacks a member is refused when it is installed (:func:`check_engine`) instead of
silently skipping a feature. :class:`seg_perception.engine.SegmentationEngine` is the real one.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .choices import (
    BACKENDS,
    COMPILE_MODES,
    DEFAULT_CACHE_MAX_MB,
    DEFAULT_CALIBRATION_FRAMES,
    DEFAULT_PARITY_MIN_AGREEMENT,
    DEVICES,
    MAX_CALIBRATION_FRAMES,
    ONNX_MODEL,
    PRECISIONS,
)
from .normalization import Normalization, NormalizationError

#: Work stages in pipeline order. Each figure is the stage's own time, waiting excluded:
#: upload = host -> device copy of the frames (0 for frames already on the device);
#: preprocess = to float, normalise, resize, batch; inference = the model's forward pass;
#: postprocess = upsampling, argmax, CRF, colour/overlay/confidence; download = device -> host.
#: Waiting for the compute stream (the previous batch still running) is ``SegmentationResult.queue_ms``.
STAGES = ("upload", "preprocess", "inference", "postprocess", "download")
QUEUE = "queue"

#: Largest number of pixels the network runs at when ``inference_size`` is not set: a larger
#: frame is scaled down (aspect kept) for the network and its outputs come back at its own size.
#: 1024 x 2048 is Cityscapes' full resolution, the largest size the shipped models are evaluated
#: at and a common automotive camera size, so no real camera frame is changed by the default,
#: while a frame that merely *declares* 4096 x 4096 costs what a 2-megapixel frame costs.
DEFAULT_MAX_INFERENCE_PIXELS = 1024 * 2048
#: Smallest accepted ``max_inference_pixels`` (32 x 32): below it no network has a feature map.
MIN_INFERENCE_PIXELS = 1024


class EngineConfigError(ValueError):
    """An engine setting that cannot work; raised at configuration time, never per frame."""


class FrameError(ValueError):
    """A frame that is not a uint8 HxWx3 RGB image."""


class EngineInterfaceError(TypeError):
    """An object used as an engine lacks members of :class:`Engine`."""


class ParityError(RuntimeError):
    """An engine that is not the fp32 reference (fp16, int8, another backend) whose labels agree
    with the reference's on fewer pixels than ``parity_min_agreement`` requires: refused by the
    parity gate. The message carries the measured figure; the CLI exits non-zero with it, the node
    keeps serving its previous engine (at startup: the fp32 reference) and reports it."""

    def __init__(self, message: str, agreement: float, threshold: float) -> None:
        super().__init__(message)
        self.agreement, self.threshold = agreement, threshold


@dataclass
class EngineConfig:
    """Everything needed to build an engine. ``validate`` names the first bad field."""

    model: str = "regseg"
    variant: str | None = None
    weights: str = ""
    num_classes: int = 19
    model_options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    precision: str = "auto"
    #: (height, width) the model runs at; ``None`` runs at each frame's own size, up to
    #: ``max_inference_pixels``.
    inference_size: tuple[int, int] | None = None
    crf: str = "none"
    crf_options: dict[str, Any] = field(default_factory=dict)
    #: none | torch_compile (TorchInductor, once per input shape) | cuda_graph (CUDA only).
    compile: str = "none"
    #: True: a new shape is compiled/captured in a background thread while it is served eagerly.
    #: False: on the serving thread, before that batch runs (benchmarks of the old behaviour).
    background_prepare: bool = True
    #: auto | torch | onnxruntime | tensorrt: what runs the network (seg_perception.backends).
    backend: str = "auto"
    #: Exported-model / TensorRT engine cache folder; "" = $XDG_CACHE_HOME/seg_perception.
    cache_dir: str = ""
    #: Size cap of the cache folder in MB (least recently used evicted); 0 = never write to disk.
    cache_max_mb: int = DEFAULT_CACHE_MAX_MB
    #: Frames with more pixels than this run through the network scaled down to it (aspect kept)
    #: when ``inference_size`` is not set; outputs come back at the frame's size.
    max_inference_pixels: int = DEFAULT_MAX_INFERENCE_PIXELS
    #: Input normalisation; ``None`` = the model registry entry's (data the engine receives).
    normalization: Normalization | None = None
    #: ``precision: int8``: the data the network is calibrated on, a drive bag folder, a
    #: Cityscapes folder or a folder of images (:mod:`seg_perception.backends.calibration`).
    calibration: str = ""
    #: How many frames of ``calibration`` the quantizer measures, spread over the data; a few more
    #: are held out as the parity gate's frames.
    calibration_frames: int = DEFAULT_CALIBRATION_FRAMES
    #: The parity gate: an engine that is not the fp32 reference is refused (:class:`ParityError`)
    #: when fewer of its labels than this fraction equal the reference's; 0 disables the gate.
    parity_min_agreement: float = DEFAULT_PARITY_MIN_AGREEMENT

    def validate(self) -> None:
        """Check every field, then what this machine can run (CUDA, backend packages)."""
        if self.device not in DEVICES:
            raise EngineConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise EngineConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.device == "cpu" and self.precision == "fp16":
            raise EngineConfigError("precision fp16 needs device cuda (or auto); use fp32 on the CPU")
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
        if self.backend not in BACKENDS:
            raise EngineConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"[:300])
        if not isinstance(self.max_inference_pixels, int) or self.max_inference_pixels < MIN_INFERENCE_PIXELS:
            raise EngineConfigError(f"max_inference_pixels must be an integer >= {MIN_INFERENCE_PIXELS}, "
                                    f"got {self.max_inference_pixels!r}")
        if not isinstance(self.cache_max_mb, int) or self.cache_max_mb < 0:
            raise EngineConfigError(f"cache_max_mb must be an integer >= 0, got {self.cache_max_mb!r}")
        self._check_int8()
        if self.normalization is not None:
            try:
                self.normalization.validate()
            except NormalizationError as exc:
                raise EngineConfigError(f"normalization: {exc}") from None
        if self.model == ONNX_MODEL:
            self._check_onnx_model()
        self._check_machine()

    def _check_onnx_model(self) -> None:
        """``model: onnx``: a file to serve, a backend that runs ONNX, the contract's options."""
        from .backends.onnx_contract import options_problem

        if not self.weights:
            raise EngineConfigError("model onnx needs weights: the path of the network's .onnx file")
        if self.backend == "torch":
            raise EngineConfigError("backend torch cannot run model onnx: an ONNX file runs on ONNX Runtime; use "
                                    "backend onnxruntime (CPU or CUDA), tensorrt (CUDA) or auto")
        if self.compile != "none":
            raise EngineConfigError(f"compile {self.compile} compiles PyTorch models; model onnx runs on ONNX "
                                    "Runtime, which optimises the graph itself: use compile none")
        if (problem := options_problem(self.model_options)) is not None:
            raise EngineConfigError(f"model_options: {problem}")

    def _check_int8(self) -> None:
        """INT8 and the parity gate: what they need, before anything is built."""
        if not isinstance(self.calibration_frames, int) or not 1 <= self.calibration_frames <= MAX_CALIBRATION_FRAMES:
            raise EngineConfigError(f"calibration_frames must be an integer in [1, {MAX_CALIBRATION_FRAMES}], "
                                    f"got {self.calibration_frames!r}"[:300])
        if not isinstance(self.parity_min_agreement, (int, float)) or not 0.0 <= self.parity_min_agreement <= 1.0:
            raise EngineConfigError(f"parity_min_agreement must be in [0, 1] (0 disables the gate), "
                                    f"got {self.parity_min_agreement!r}"[:300])
        if self.precision != "int8":
            return
        if not self.calibration:
            raise EngineConfigError(
                "precision int8 needs calibration data: set calibration to a drive bag, a Cityscapes folder or "
                "a folder of images like the camera's (the quantizer measures the network's activation ranges on "
                "them; without them int8 ranges are guesses)")
        if self.backend == "torch":
            raise EngineConfigError("precision int8 runs on backend onnxruntime (CPU) or tensorrt (CUDA), or auto; "
                                    "the torch backend has no int8 path")
        if self.compile != "none":
            raise EngineConfigError(f"compile {self.compile} applies to the torch backend; precision int8 needs "
                                    "compile none (ONNX Runtime and TensorRT optimise the quantized graph themselves)")

    def _check_machine(self) -> None:
        """What depends on this machine: a CUDA device, the backend's packages and providers."""
        import torch

        from .backends import backend_problem

        if self.device == "cuda" and not torch.cuda.is_available():
            raise EngineConfigError("device cuda requested but torch sees no CUDA device")
        if self.compile == "cuda_graph" and (self.device == "cpu" or not torch.cuda.is_available()):
            raise EngineConfigError("compile cuda_graph needs a CUDA device; use none or torch_compile on the CPU")
        if (problem := backend_problem(self.backend, self.device, self.compile, self.precision)) is not None:
            raise EngineConfigError(problem)


@dataclass
class SegmentationResult:
    """Host results of one frame; optional outputs are ``None`` unless requested.

    ``timings_ms`` holds the :data:`STAGES` of the group the frame ran in (a batch is one
    forward pass, so its frames share the figures); ``queue_ms`` is the time that group waited
    for the compute stream before its own work started; ``batch_size`` is how many frames ran
    together in that group.
    """

    labels: np.ndarray
    color: np.ndarray | None = None
    overlay: np.ndarray | None = None
    confidence: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    queue_ms: float = 0.0
    batch_size: int = 1

    @property
    def total_ms(self) -> float:
        """Device time from the start of the upload to the end of the download, waiting included."""
        return sum(self.timings_ms.values()) + self.queue_ms


@dataclass(frozen=True)
class OutputRequest:
    """Which optional outputs to compute for a frame (each costs GPU time and a download)."""

    color: bool = False
    overlay: bool = False
    confidence: bool = False
    overlay_alpha: float = 0.5

    @property
    def flags(self) -> tuple[bool, bool, bool]:
        """What changes the computation (and a captured graph); the alpha is only data."""
        return (self.color, self.overlay, self.confidence)


#: A batch shape as :meth:`Engine.recent_batches` reports it: each frame's (H, W) and request.
BatchShape = tuple[tuple[tuple[int, int], ...], tuple[OutputRequest, ...]]


class DeviceLike(Protocol):
    """Where an engine runs; ``torch.device`` is one. ``type`` is ``"cpu"`` or ``"cuda"``."""

    type: str


class PendingFrame(Protocol):
    """One submitted frame; ``result`` waits for it (and raises its failure)."""

    def result(self) -> SegmentationResult: ...


@runtime_checkable
class Engine(Protocol):
    """Everything the scheduler and the node use of an engine: ``SegmentationEngine`` or a test
    stand-in, which must implement every member (:func:`check_engine`)."""

    #: Where it runs: the node decodes JPEGs on the GPU for a CUDA engine.
    device: DeviceLike
    #: Class name of each label id, and its colour (N x 3 uint8): the node publishes them.
    class_names: Sequence[str]
    palette: np.ndarray

    @property
    def asynchronous(self) -> bool:
        """True when ``submit_batch`` returns before the work is done (CUDA streams)."""
        ...

    @property
    def description(self) -> dict[str, Any]:
        """What is running (model, device, precision, backend, cache, ...), for diagnostics."""
        ...

    def submit_batch(self, frames: Sequence[Any], outputs: Sequence[OutputRequest]) -> list[PendingFrame]:
        """Queue uint8 HxWx3 RGB frames; one pending result per frame, in order."""
        ...

    def memory_allocated_mb(self) -> float | None:
        """GPU memory held by tensors, None on the CPU."""
        ...

    def warmup(self, height: int, width: int) -> None:
        """Prepare and run frames of this size now, before real traffic (the node's startup)."""
        ...

    def prepare(self, sizes: Sequence[tuple[int, int]], outputs: Sequence[OutputRequest]) -> None:
        """Compile/capture what a batch of these frame sizes and requests will use (a reload)."""
        ...

    def recent_batches(self) -> list[BatchShape]:
        """The latest distinct batch shapes served: a reload prepares the new engine for them."""
        ...

    def recover_from_failure(self, exc: BaseException) -> str:
        """The books' reason for a frame that failed with ``exc`` (``out_of_memory`` or
        ``inference_error``), after undoing what can be undone (e.g. freeing cached GPU memory)."""
        ...

    def close(self) -> None:
        """Stop background work (an engine being replaced); frames in flight still complete."""
        ...


@runtime_checkable
class ParityGated(Protocol):
    """An engine with a parity gate (:class:`~seg_perception.engine.SegmentationEngine`; not a
    member of :class:`Engine`, which stand-ins implement): ``parity`` is its measurement against
    the fp32 reference (None for the reference itself), ``check_parity`` measures again on given
    frames (a reload's live input) and raises :class:`ParityError` below the threshold."""

    parity: Any

    def check_parity(self, frames: Sequence[Any], source: str = ...) -> Any:
        """Re-measure on ``frames`` (uint8 RGB) and refuse below ``parity_min_agreement``."""
        ...


def _protocol_members(protocol: type) -> tuple[str, ...]:
    names = set(vars(protocol).get("__annotations__", {}))
    names |= {n for n, v in vars(protocol).items()
              if not n.startswith("_") and (inspect.isfunction(v) or isinstance(v, property))}
    return tuple(sorted(names))


#: Every member of :class:`Engine`, attributes and methods.
ENGINE_MEMBERS: tuple[str, ...] = _protocol_members(Engine)


def missing_engine_members(engine: object) -> list[str]:
    """The :data:`ENGINE_MEMBERS` that ``engine`` lacks (properties are not evaluated)."""
    missing = []
    for name in ENGINE_MEMBERS:
        try:
            inspect.getattr_static(engine, name)
        except AttributeError:
            missing.append(name)
    return missing


def check_engine(engine: Any) -> Engine:
    """``engine`` itself when it implements every member of :class:`Engine`, else
    :class:`EngineInterfaceError` naming what is missing."""
    missing = missing_engine_members(engine)
    if missing:
        raise EngineInterfaceError(f"{type(engine).__name__} is not a complete engine: it lacks "
                                   f"{', '.join(missing)} (see seg_perception.engine_api.Engine)")
    return engine  # type: ignore[no-any-return]

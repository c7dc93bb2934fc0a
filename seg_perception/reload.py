"""Model changes at runtime, without ROS: build in the background, swap, or put the parameters back.

A set request that changes the model (``model``, ``weights``, ``device``, ...) is accepted at
once; :class:`ReloadController` then has the scheduler build the new engine in a loader thread
while the current one keeps serving (:meth:`~seg_perception.scheduler.Scheduler.load`). Two
outcomes:

* the load succeeds: the scheduler swaps the engine in between two batches, and the controller
  records what is serving now and calls ``on_loaded`` (the node publishes the new class names);
* the load fails: the old engine keeps serving, and the controller puts the model parameters
  back to the serving values through ``set_parameters`` (the node's ``set_parameters``), so the
  parameters never describe a model that is not running. That set request comes from the loader
  thread and is accepted without checks (:meth:`ReloadController.reverting`); it must not start
  another load.

:attr:`ReloadController.lock` is held by a whole set request and by a finishing load, so a load
never completes halfway through a request of several parameters (each is checked against the
same loading state).

A lifecycle node builds its engine on configure (:meth:`ReloadController.start`) and lets it go on
cleanup (:meth:`ReloadController.release`, which also hands the freed device memory back); in
between, model changes load in the background as above, and while no engine is wanted they only
change the parameters the next configure builds from.

The parity gate (an engine that is not the fp32 reference must agree with it,
:class:`~seg_perception.engine_api.ParityError` otherwise) fits both outcomes: a reload refused
by it is a failed load (the previous engine keeps serving, ``/diagnostics`` WARNs with the
figure), and a reload whose engine could only be measured on the synthetic frame is measured
again on the latest live frames (:func:`check_live_parity`). At startup there is no previous
engine: :meth:`ReloadController.start` serves the fp32 reference instead
(:func:`reference_values`) and the scheduler reports why (``parity_fallback``, WARN).
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import params as P
from .choices import LIVE, ONNX_MODEL, SYNTHETIC
from .engine_api import EngineConfig, ParityError, ParityGated
from .parameter_state import ParameterState, model_label
from .scheduler import PAUSE_TIMEOUT_S, Engine, Scheduler
from .text import bounded

#: Builds an engine from its configuration; tests pass a fake one to make long runs fast.
EngineFactory = Callable[[EngineConfig], Engine]

#: Frame size (H, W) used to warm an engine up when ``inference_size`` follows the frames.
WARMUP_SIZE = (64, 64)


def default_engine_factory(config: EngineConfig) -> Engine:
    """The real engine. Imported here, when the first model is built, so the node and this
    module load without torch (and a signal during start-up is not stuck behind its import)."""
    from .engine import SegmentationEngine

    return SegmentationEngine(config)


def build_engine(factory: EngineFactory, values: Mapping[str, Any]) -> Engine:
    """Build and warm up an engine, so its first real frame is not the one paying for lazy
    initialisation (seconds on a cold CPU, cuDNN autotuning on a GPU)."""
    config = P.engine_config(values)
    engine = factory(config)
    engine.warmup(*(config.inference_size or WARMUP_SIZE))
    return engine


def free_device_memory() -> None:
    """Hand back the memory of engines nobody refers to any more: collect the reference cycles
    that may still hold their tensors, then return CUDA's cached blocks to the driver (what
    ``nvidia-smi`` and other processes see). On the CPU the collection alone frees them."""
    gc.collect()
    torch = sys.modules.get("torch")  # no engine was ever built without it
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def reference_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The fp32 reference of a parameter set: what serves when the parity gate refuses the
    requested engine at startup. A registered model's reference is its PyTorch module in fp32
    (a network that exists only as an ONNX file, ``model: onnx``, has fp32 ONNX Runtime on the
    CPU as its reference)."""
    if values.get("model") == ONNX_MODEL:
        return {**values, "precision": "fp32", "backend": "onnxruntime", "device": "cpu"}
    return {**values, "precision": "fp32", "backend": "torch"}


def check_live_parity(engine: Engine, frames: Sequence[Any]) -> Engine:
    """``engine`` after its parity gate ran again on ``frames`` (the live input) when it could
    only be measured on the synthetic frame at build time (held-out calibration frames are
    better evidence and stay); raises :class:`~seg_perception.engine_api.ParityError` below the
    threshold. Engines without a gate, and the fp32 reference, pass unchanged."""
    if frames and isinstance(engine, ParityGated) and engine.parity is not None \
            and engine.parity.source == SYNTHETIC:
        engine.check_parity(frames, LIVE)
    return engine


class ReloadController:
    """Starts background loads for accepted model changes and reverts the parameters after a
    failed one.

    ``build(values)`` builds an engine for a parameter set; ``set_parameters({name: value})``
    sets parameters the way a caller would (the node passes its ``set_parameters``);
    ``on_loaded()`` runs after a swap; ``log(level, message)`` reports.
    """

    def __init__(self, scheduler: Scheduler, parameters: ParameterState,
                 build: Callable[[Mapping[str, Any]], Engine],
                 set_parameters: Callable[[dict[str, Any]], Any],
                 on_loaded: Callable[[], None] = lambda: None,
                 log: Callable[[int, str], None] = lambda level, message: None) -> None:
        self.scheduler, self.parameters = scheduler, parameters
        self.build, self.set_parameters, self.on_loaded, self.log = build, set_parameters, on_loaded, log
        #: Held for a whole set request and while a finishing load applies its outcome.
        self.lock = threading.RLock()
        #: The model values of the engine serving now, and of the latest requested one.
        self.serving = parameters.model_values()
        self.requested = dict(self.serving)
        self._reverting: threading.Thread | None = None
        #: Whether an engine is wanted (between :meth:`start` and :meth:`release`): only then do
        #: model changes load one.
        self.active = False

    def reverting(self) -> bool:
        """True inside the set request that puts the parameters back after a failed load."""
        return self._reverting is threading.current_thread()

    def start(self) -> None:
        """Build the engine for the current parameters in this thread and install it (raises what
        the build raises). From now on accepted model changes load in the background, also after
        a failed build (a plain node without ``fail_fast`` recovers with the next good model).
        An engine the parity gate refuses is replaced by the fp32 reference, and the scheduler
        reports why until another engine is installed (``parity_fallback``: WARN on
        ``/diagnostics`` with the measured figure); the parameters keep the requested values."""
        self.active = True
        self.serving = self.parameters.model_values()
        self.requested = dict(self.serving)
        try:
            engine = self.build(self.parameters.values)
        except ParityError as exc:
            reference = reference_values(self.parameters.values)
            self.log(logging.WARNING, f"{exc}; starting with the fp32 reference instead"[:600])
            self.scheduler.install(self.build(reference))
            self.scheduler.parity_fallback = bounded(
                f"{exc}; serving the fp32 reference (precision fp32, backend {reference['backend']}) instead", 1000)
            return
        self.scheduler.install(engine)

    def release(self, timeout: float = PAUSE_TIMEOUT_S) -> bool:
        """Let the engine go (the scheduler should be paused): the scheduler drops and closes it,
        a load still running is discarded, and the freed device memory is handed back. Model
        changes then wait for the next :meth:`start`. False when the worker was still busy."""
        self.active = False
        released = self.scheduler.release(timeout)
        free_device_memory()
        return released

    def parameters_applied(self) -> None:
        """After an accepted set request: when the model values differ from the latest requested
        ones, start loading that model in the background."""
        wanted = self.parameters.model_values()
        if not self.active or wanted == self.requested:  # also the revert's own request
            return
        self.requested = wanted
        snapshot = dict(self.parameters.values)
        live = self.scheduler.recent_frames()

        def loaded() -> None:
            self.serving = wanted
            self.on_loaded()

        if not self.scheduler.load(model_label(snapshot), lambda: check_live_parity(self.build(snapshot), live),
                                   on_loaded=loaded,
                                   on_failed=self._revert, completion_lock=self.lock):
            self.log(logging.ERROR, "a model load is already running; the new model parameters "
                                    "take effect with the next model change")

    def _revert(self, reason: str) -> None:
        """After a failed load (in the loader thread): put the model parameters back to what is
        serving, so they never describe a model that is not running."""
        serving = model_label(self.serving) if self.scheduler.engine is not None else "nothing"
        self.log(logging.ERROR, f"still serving {serving} ({reason[:300]})")
        self.requested = dict(self.serving)
        revert = {n: v for n, v in self.serving.items() if self.parameters.values[n] != v}
        self._reverting = threading.current_thread()
        try:
            if revert:
                self.set_parameters(revert)
        finally:
            self._reverting = None

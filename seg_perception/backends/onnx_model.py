"""``model: onnx``: a segmentation network given as an ONNX file, served like a registered model.

The engine asks two things of this module, nothing else changes for it:

* :func:`load_onnx_model` (instead of building a registered architecture): reads the file's
  contract (:mod:`.onnx_contract`), opens the file in ONNX Runtime on the CPU in fp32 and runs it
  once on a probe frame at the size it will run at. That *check run* proves at load, not on the
  first camera frame, that ONNX Runtime can run the file's opset and operators, and gives the
  output's real shape (its class count, even when the graph leaves it symbolic). It returns an
  :class:`OnnxFileModel`: the torch-side stand-in the engine keeps as its ``model`` (class names,
  palette, normalisation, run size, output kind), whose ``forward`` is that fp32 CPU session:
  the reference any other engine of the same file is compared with.
* :func:`build_onnx_file_network` (instead of exporting): the network the engine runs, an
  :class:`OnnxFileNetwork`: on the CPU the checked session itself; on CUDA a session with the
  CUDA provider, or the TensorRT provider with its engine cached under the file's SHA-256
  (``backend: tensorrt``), each compared with the CPU reference on the probe frame before it
  serves. With ``precision: int8`` (CPU) the file is quantized statically on the calibration
  frames (:func:`seg_perception.backends.quantize.quantize_int8`, the same quantizer as a
  registered model's) and the quantized copy is cached under the file's SHA-256, the
  calibration's digest and the quantization settings; the engine's parity gate then compares it
  with the fp32 CPU session on held-out calibration frames.

The reference for a parity check of any other engine of the same file (another precision, a
quantized copy, TensorRT) is :func:`onnx_reference_config`: the same configuration on ONNX
Runtime, CPU, fp32. A quantized copy of the file has the same input and output, so
``OnnxFileNetwork(quantized_path, model.contract.graph, device, providers, ...)`` serves it under
the same contract.

``backend: torch`` cannot run an ONNX file (refused in :class:`~seg_perception.engine_api.
EngineConfig`), and neither ``compile`` mode applies (they compile PyTorch code).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..choices import ONNX_MODEL
from ..models.checkpoint import resolve_weights
from .base import BackendError
from .cache import ArtifactCache, CacheKey, file_sha256
from .onnx_contract import OnnxContract, OnnxContractError, OnnxGraph, read_graph, resolve_contract, resolve_input
from .onnxruntime_backend import OnnxRuntimeNetwork, cuda_providers
from .ort_errors import ort_errors, ort_message
from .parity import CACHE_MIN_AGREEMENT, PROBE_SIZE, ParityReport, label_parity, probe_input

LOG = logging.getLogger(__name__)

__all__ = ["OnnxFileModel", "OnnxFileNetwork", "build_onnx_file_network", "load_onnx_model",
           "network_labels", "onnx_reference_config"]

#: Longest ONNX Runtime message kept in an error (it may name the file's nodes).
MAX_ORT_MESSAGE = 400
_NUMPY_INPUT = {"float32": np.float32, "float16": np.float16}
_TORCH_INPUT = {"float32": torch.float32, "float16": torch.float16}


class OnnxFileNetwork(OnnxRuntimeNetwork):
    """The file in an ONNX Runtime session, called as the engine calls every network: a
    normalised ``(N, 3, H, W)`` batch in; ``(N, C, h, w)`` float32 scores (logits or
    probabilities) or ``(N, 1, h, w)`` int64 labels out, at whatever resolution the network
    answers (the engine resizes). A network with a fixed batch runs the frames in groups of that
    batch (the last group padded)."""

    def __init__(self, source: Path | str | bytes, graph: OnnxGraph, device: torch.device, providers: list[Any],
                 output: str = "logits", run_size: tuple[int, int] | None = None) -> None:
        self.graph, self.output, self.run_size = graph, output, run_size
        super().__init__(Path(source) if isinstance(source, str) else source, device, 0, providers)
        self._numpy_type = _NUMPY_INPUT[graph.input_type]
        self._torch_type = _TORCH_INPUT[graph.input_type]

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """The size every input has (a fixed-size network, or a declared ``input_size``)."""
        return self.run_size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        count = int(x.shape[0])
        step = self.graph.batch or count
        outputs = []
        for start in range(0, count, step):
            chunk = x[start:start + step]
            if chunk.shape[0] < step:  # a fixed batch: pad the last group
                chunk = torch.cat([chunk, chunk.new_zeros((step - chunk.shape[0], *chunk.shape[1:]))])
            outputs.append(self.run_raw(chunk)[: min(step, count - start)])
        return _engine_output(outputs[0] if len(outputs) == 1 else torch.cat(outputs), self.output)

    def run_raw(self, x: torch.Tensor) -> torch.Tensor:
        """One run of exactly the input's batch: the output as ONNX Runtime returns it."""
        if x.device.type == "cpu":
            feed = {self.graph.input_name: x.to(self._torch_type).contiguous().numpy()}
            return torch.from_numpy(np.ascontiguousarray(self.session.run([self.graph.output_name], feed)[0]))
        return self.run_bound(x)

    def run_bound(self, x: torch.Tensor) -> torch.Tensor:
        """A run on the tensors' own memory (I/O binding; CUDA, or the CPU in tests): the input is
        bound in place and the output, allocated by ONNX Runtime on the same device (its shape is
        the network's business), is handed to torch without a copy (DLPack)."""
        x = x.to(self._torch_type).contiguous()
        index = x.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(self.graph.input_name, x.device.type, index, self._numpy_type, tuple(x.shape),
                           x.data_ptr())
        binding.bind_output(self.graph.output_name, x.device.type, index)
        if x.device.type == "cuda":
            torch.cuda.current_stream(x.device).synchronize()
        self.session.run_with_iobinding(binding)
        value = binding.get_outputs()[0]
        try:
            return torch.from_dlpack(value._ortvalue)
        except (AttributeError, TypeError, RuntimeError, BufferError):  # a build without DLPack: copy
            return torch.from_numpy(np.ascontiguousarray(value.numpy())).to(x.device)

    def release_memory(self) -> None:
        """Shrink ONNX Runtime's arenas with one small run (see the base class)."""
        h, w = self.release_size
        zeros = np.zeros((self.graph.batch or 1, 3, h, w), self._numpy_type)
        try:
            self.session.run([self.graph.output_name], {self.graph.input_name: zeros}, self._shrink)
        except ort_errors() as exc:
            LOG.warning("could not shrink ONNX Runtime's memory arenas: %s", str(exc)[:200])


def _engine_output(out: torch.Tensor, output: str) -> torch.Tensor:
    """Scores as float32; labels as int64 ``(N, 1, h, w)`` (a float label map is rounded)."""
    if output != "labels":
        return out.float()
    if out.ndim == 3:
        out = out.unsqueeze(1)
    return (out.round() if out.is_floating_point() else out).long()


def network_labels(output: torch.Tensor, kind: str) -> torch.Tensor:
    """``(N, h, w)`` class ids of a network's output (:class:`OnnxFileNetwork`'s form): the
    argmax of scores (first maximum wins), or the labels themselves."""
    return output[:, 0] if kind == "labels" else output.float().argmax(1)


class OnnxFileModel(nn.Module):
    """The engine's ``model`` for ``model: onnx``: no torch weights, only the contract and the
    attributes the engine reads of every model (name, variant, classes, normalisation, the
    labels it publishes). Calling it runs the file in fp32 on the CPU, the reference."""

    def __init__(self, contract: OnnxContract, reference: OnnxFileNetwork | None = None) -> None:
        super().__init__()
        self.contract = contract
        self.model_name = ONNX_MODEL
        self.variant = Path(contract.path).name
        self.num_classes = contract.num_classes
        self.normalization = contract.normalization
        self.output_kind = contract.output
        self.run_size = contract.run_size
        self.parameter_count = contract.graph.parameters
        #: Read by the engine like a trained checkpoint's labels: names and colours of the ids.
        self.checkpoint_meta = {"labels": {"class_names": list(contract.class_names),
                                           "palette": contract.palette.tolist()}}
        self._reference = reference

    def reference(self) -> OnnxFileNetwork:
        """The file in fp32 on ONNX Runtime's CPU provider (opened again after :meth:`drop_reference`)."""
        if self._reference is None:
            self._reference = _cpu_network(self.contract.path, self.contract.graph, self.contract.output,
                                           self.run_size)
        return self._reference

    def drop_reference(self) -> None:
        """Free the CPU session while another device serves (it reopens when asked for)."""
        self._reference = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reference()(x.float().cpu()).to(x.device)


def _cpu_network(path: str, graph: OnnxGraph, output: str, run_size: tuple[int, int] | None) -> OnnxFileNetwork:
    try:
        return OnnxFileNetwork(path, graph, torch.device("cpu"), ["CPUExecutionProvider"], output, run_size)
    except ort_errors() as exc:
        raise OnnxContractError(_ort_message("cannot load", exc)) from None


def _ort_message(what: str, exc: BaseException) -> str:
    return f"ONNX Runtime {what} the network: {ort_message(exc, MAX_ORT_MESSAGE)}"


def load_onnx_model(config: Any) -> OnnxFileModel:
    """Read, open and check the ONNX file of ``config`` (an :class:`~seg_perception.engine_api.
    EngineConfig` with ``model: onnx``). Raises :class:`OnnxContractError` naming what is wrong."""
    path = resolve_weights(config.weights)
    graph = read_graph(path)
    inputs = resolve_input(graph, config.model_options, config.inference_size)
    network = _cpu_network(path, graph, "logits", inputs.run_size)
    size = inputs.run_size or (tuple(config.inference_size) if config.inference_size else PROBE_SIZE)
    x = probe_input(size, inputs.normalization).repeat(graph.batch or 1, 1, 1, 1)
    try:
        out = network.run_raw(x)
    except ort_errors() as exc:
        raise OnnxContractError(_ort_message(f"cannot run (on a {size[0]}x{size[1]} probe frame)", exc)) from None
    contract = resolve_contract(graph, config.model_options, inputs, tuple(out.shape), str(out.numpy().dtype),
                                config.num_classes)
    network.output = contract.output
    if contract.output == "labels" and config.crf != "none":
        raise OnnxContractError(f"crf {config.crf} refines class scores, and this network outputs labels; "
                                "use crf none (or export the network's logits)")
    if contract.output != "labels" and contract.num_classes != config.num_classes:
        LOG.info("the network predicts %d classes (num_classes %d is not used for model onnx)",
                 contract.num_classes, config.num_classes)
    name = Path(path).name
    LOG.info("ONNX network %s", contract.summary())
    if contract.defaults:
        LOG.info("ONNX network %s: not in the file or model_options, so defaults: %s", name,
                 "; ".join(contract.defaults))
    for conflict in contract.conflicts:
        LOG.warning("ONNX network %s: %s", name, conflict)
    if contract.output == "labels":
        LOG.warning("ONNX network %s outputs labels: confidence is not available (segmentation/confidence is "
                    "not published) and no CRF applies", name)
    return OnnxFileModel(contract, network)


def onnx_reference_config(config: Any) -> Any:
    """The configuration whose engine is the fp32 reference of ``config``'s ONNX file: ONNX
    Runtime on the CPU in fp32 (what a parity check of another precision or backend compares
    with)."""
    return dataclasses.replace(config, backend="onnxruntime", device="cpu", precision="fp32", compile="none")


def build_onnx_file_network(model: OnnxFileModel, config: Any, device: torch.device, precision: str,
                            backend: str, calibration: Any = None) -> OnnxFileNetwork:
    """The network that serves ``model``'s file on ``device`` with ``backend`` (onnxruntime or
    tensorrt). Not CPU: the session is compared with the CPU reference on the probe frame first.
    ``precision == "int8"``: the file quantized on ``calibration`` (a
    :class:`~seg_perception.backends.quantize.CalibrationSet`), on the CPU."""
    contract = model.contract
    digest = file_sha256(contract.path)
    if precision == "int8":
        return _int8_network(model, config, device, backend, calibration, digest)
    if backend == "onnxruntime" and device.type == "cpu":
        network = model.reference()
        network.origin = f"the ONNX file {contract.path} (sha256 {digest[:16]}), served in place"
        return network
    if backend == "tensorrt":
        network = _tensorrt_network(model, config, device, precision == "fp16", digest)
    else:
        network = _open(contract, device, cuda_providers(device, None))
        report = _probe(network, model)
        if not report.passed(CACHE_MIN_AGREEMENT):
            raise BackendError(f"ONNX Runtime on {device} disagrees with the CPU on the probe frame: "
                               f"{report.summary()}")
        network.origin = (f"the ONNX file {contract.path} (sha256 {digest[:16]}), served in place; probe vs CPU "
                          f"fp32: {report.summary()}")
    model.drop_reference()
    return network


def int8_key(contract: OnnxContract, options: dict[str, Any], digest: str, calibration: Any) -> CacheKey:
    """The cache key of the int8 copy of an ONNX file: its content, the contract's options, the
    calibration frames' digest, the quantization settings and ONNX Runtime's version."""
    from .quantize import SETTINGS

    return _file_key(contract, options, digest, "onnx_int8", "",
                     f"calibration={calibration.digest}; quantization={SETTINGS.to_json()}")


def _file_key(contract: OnnxContract, options: dict[str, Any], digest: str, kind: str, versions: str,
              extra: str) -> CacheKey:
    """The cache key of an artifact built from an ONNX file: the file's content, name, contract
    options, size and batch, ONNX Runtime's version, and what else shapes the artifact."""
    import onnxruntime as ort

    size = contract.run_size
    return CacheKey(
        kind=kind, model=ONNX_MODEL, variant=re.sub(r"[^A-Za-z0-9_.-]", "_", Path(contract.path).stem)[:64],
        num_classes=contract.num_classes, options=json.dumps(options, sort_keys=True, default=str),
        weights=f"file:{digest}", input_size=f"{size[0]}x{size[1]}" if size else "dynamic",
        versions=f"onnxruntime {ort.__version__}{versions}", extra=f"{extra}; batch={contract.graph.batch or 1}",
    )


def _int8_network(model: OnnxFileModel, config: Any, device: torch.device, backend: str, calibration: Any,
                  digest: str) -> OnnxFileNetwork:
    """The file quantized to int8 on ``calibration``, served by ONNX Runtime on the CPU under the
    file's contract (quantization keeps the graph's input and output). Cached like exports:
    a hit is served only when its sidecar key and content digest match (the engine's parity gate
    measures it against the fp32 session either way)."""
    from .quantize import SETTINGS, quantize_int8

    contract = model.contract
    if backend != "onnxruntime" or device.type != "cpu":
        raise BackendError("precision int8 with model onnx runs on ONNX Runtime's CPU provider (device cpu); on "
                           "CUDA serve the file with backend tensorrt in fp16, or quantize it yourself and serve the "
                           "quantized file as model onnx in fp32")
    if contract.graph.input_type != "float32":
        raise BackendError(f"precision int8 quantizes a network with a float32 input; this file's input is "
                           f"{contract.graph.input_type} (serve it in fp32, or export it with a float32 input)")
    if calibration is None or not calibration.inputs:
        raise BackendError("precision int8 needs calibration inputs")
    batch = contract.graph.batch or 1
    inputs = [np.repeat(x, batch, axis=0) if batch > 1 else x for x in calibration.inputs]
    cache = ArtifactCache(config.cache_dir or None, config.cache_max_mb)
    key = int8_key(contract, dict(config.model_options), digest, calibration)
    path = cache.lookup(key, ".onnx")
    origin = "cached"
    if path is None:
        metadata = {"precision": "int8", "cache_key": key.digest(), "quantization": SETTINGS.describe(),
                    "calibration": calibration.description[:1000], "calibration_digest": calibration.digest,
                    "source_sha256": digest}
        data = quantize_int8(Path(contract.path), inputs, SETTINGS, metadata)
        origin = "quantized now"
        if cache.enabled and len(data) <= cache.max_bytes:
            path = cache.store(key, ".onnx", lambda tmp: tmp.write_bytes(data))
            origin = "quantized now, cached"
    network = _open_source(path if path is not None else data, contract, device)
    network.name = f"onnxruntime int8 ({network.providers[0]})"
    used = network.metadata.get("quantization", SETTINGS.describe())  # the file says: settings may fall back
    network.quantization = f"{used}; calibrated on {calibration.description}"
    network.origin = f"the ONNX file {contract.path} (sha256 {digest[:16]}) quantized to int8, {origin}"
    return network


def _open_source(source: Path | bytes, contract: OnnxContract, device: torch.device) -> OnnxFileNetwork:
    try:
        return OnnxFileNetwork(source, contract.graph, device, ["CPUExecutionProvider"], contract.output,
                               contract.run_size)
    except ort_errors() as exc:
        raise BackendError(_ort_message("cannot load the int8 copy of", exc)) from None


def _open(contract: OnnxContract, device: torch.device, providers: list[Any]) -> OnnxFileNetwork:
    try:
        return OnnxFileNetwork(contract.path, contract.graph, device, providers, contract.output, contract.run_size)
    except ort_errors() as exc:
        raise BackendError(_ort_message(f"on {device} cannot load", exc)) from None


def _probe(network: OnnxFileNetwork, model: OnnxFileModel) -> ParityReport:
    """Labels of ``network`` against the CPU fp32 reference on the probe frame."""
    contract = model.contract
    x = probe_input(contract.run_size or PROBE_SIZE, contract.normalization)
    with torch.inference_mode():
        expected = network_labels(model(x), contract.output)
        try:
            got = network_labels(network(x.to(network.device)), contract.output).cpu()
        except Exception as exc:  # a session that cannot run the probe cannot serve
            return ParityReport(0.0, 0.0, int(expected.numel()), f"it failed on the probe frame: "
                                f"{type(exc).__name__}: {str(exc)[:200]}")
    return label_parity(got.numpy(), expected.numpy())


def tensorrt_key(contract: OnnxContract, options: dict[str, Any], digest: str, device: torch.device,
                 fp16: bool) -> CacheKey:
    """The cache key of the TensorRT engine of an ONNX file: its content, the size, the GPU and
    the versions (a changed file, GPU or TensorRT is a miss)."""
    from .tensorrt_backend import tensorrt_version

    gpu = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no-gpu"
    return _file_key(contract, options, digest, "tensorrt", f"; tensorrt {tensorrt_version()}; gpu {gpu}",
                     f"fp16={fp16}")


def tensorrt_providers(contract: OnnxContract, engine_dir: Path | None, fp16: bool) -> list[Any]:
    """The TensorRT provider for the file: engine and timing caches in ``engine_dir`` and, for a
    known size, one optimisation profile at exactly the file's input name and shape."""
    from .tensorrt_backend import tensorrt_provider

    providers = tensorrt_provider(engine_dir, fp16, None)
    if contract.run_size is not None:
        h, w = contract.run_size
        shape = f"{contract.graph.input_name}:{contract.graph.batch or 1}x3x{h}x{w}"
        providers[0][1].update(trt_profile_min_shapes=shape, trt_profile_opt_shapes=shape, trt_profile_max_shapes=shape)
    return providers


def _tensorrt_network(model: OnnxFileModel, config: Any, device: torch.device, fp16: bool,
                      digest: str) -> OnnxFileNetwork:
    """TensorRT through ONNX Runtime, its engine built once per file, size, GPU and precision and
    cached (built ahead at start-up when the size is known; per new shape otherwise)."""
    contract = model.contract
    cache = ArtifactCache(config.cache_dir or None, config.cache_max_mb)

    def serve(engine_dir: Path | None) -> OnnxFileNetwork:
        providers = cuda_providers(device, tensorrt_providers(contract, engine_dir, fp16))
        return _checked_tensorrt(_open(contract, device, providers), model, fp16)

    if not cache.enabled:
        return serve(None)
    key = tensorrt_key(contract, dict(config.model_options), digest, device, fp16)

    def build(folder: Path) -> None:
        folder.mkdir(parents=True)
        if contract.run_size is not None:
            LOG.warning("building the TensorRT engine of %s at %dx%d; this takes minutes and is cached in %s",
                        contract.path, *contract.run_size, cache.root)
            built = _open(contract, device, cuda_providers(device, tensorrt_providers(contract, folder, fp16)))
            built(torch.zeros(contract.graph.batch or 1, 3, *contract.run_size, device=device))

    engine_dir = cache.lookup(key, "") or cache.store(key, "", build)
    try:
        return serve(engine_dir)
    except BackendError as exc:
        if contract.run_size is None:
            raise
        cache.evict(engine_dir, str(exc))  # a stale or foreign engine: rebuild once
    return serve(cache.store(key, "", build))


def _checked_tensorrt(network: OnnxFileNetwork, model: OnnxFileModel, fp16: bool) -> OnnxFileNetwork:
    """The TensorRT provider really in use, and (for a fixed size) labels that agree with the CPU."""
    from .tensorrt_backend import _checked

    contract = model.contract
    _checked(network, fp16, contract.run_size)
    if contract.run_size is not None:  # without a fixed size the probe would build an engine for its shape
        report = _probe(network, model)
        if not report.passed(CACHE_MIN_AGREEMENT):
            raise BackendError(f"the TensorRT engine disagrees with ONNX Runtime fp32 on the CPU: {report.summary()}")
        network.origin = f"the ONNX file {contract.path} on TensorRT; probe vs CPU fp32: {report.summary()}"
    else:
        network.origin = f"the ONNX file {contract.path} on TensorRT (engines built per input shape)"
    return network

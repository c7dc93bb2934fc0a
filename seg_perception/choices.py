"""The accepted values and defaults of the engine's settings, in one module without heavy imports.

The parameter table (:mod:`seg_perception.params`), the engine's configuration
(:mod:`seg_perception.engine_api`) and the backends all read these tuples, so a node can check a
parameter without importing torch, and no module has to import the engine for a list of names.
"""

from __future__ import annotations

DEVICES = ("auto", "cuda", "cpu")
#: ``auto`` runs fp16 on CUDA and fp32 on the CPU, so the default works on every device.
PRECISIONS = ("auto", "fp16", "fp32")
COMPILE_MODES = ("none", "torch_compile", "cuda_graph")
#: What runs the network; ``auto`` resolves per machine (:func:`seg_perception.backends.resolve_backend`).
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
#: Order of the colour channels a network takes.
CHANNEL_ORDERS = ("rgb", "bgr")

#: Size cap of the export cache folder (least recently used artifacts are evicted past it): room
#: for every registered model's ONNX export (RegSeg 13 MB ... HRNet-OCR 280 MB) at a few sizes and
#: their TensorRT engines. 0 = nothing is written to disk (exports are rebuilt in memory per start).
DEFAULT_CACHE_MAX_MB = 2048

#: ``model: onnx``: serve a segmentation network given as an ONNX file (``weights``) instead of a
#: registered architecture; its contract is read by :mod:`seg_perception.backends.onnx_contract`.
ONNX_MODEL = "onnx"
#: What the output of such a network holds: class scores, class probabilities, or class ids.
ONNX_OUTPUTS = ("logits", "probabilities", "labels")

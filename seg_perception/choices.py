"""The accepted values and defaults of the engine's settings, in one module without heavy imports.

The parameter table (:mod:`seg_perception.params`), the engine's configuration
(:mod:`seg_perception.engine_api`) and the backends all read these tuples, so a node can check a
parameter without importing torch, and no module has to import the engine for a list of names.
"""

from __future__ import annotations

DEVICES = ("auto", "cuda", "cpu")
#: ``auto`` runs fp16 on CUDA and fp32 on the CPU, so the default works on every device. ``int8``
#: runs a statically quantized network (ONNX Runtime on the CPU, TensorRT on CUDA) calibrated on
#: the ``calibration`` data (:mod:`seg_perception.backends.quantize`).
PRECISIONS = ("auto", "fp16", "fp32", "int8")
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

#: Frames of the ``calibration`` data an int8 network is calibrated on, spread over the data: 16
#: gave the same label agreement as 64 on the measured drives at a quarter of the calibration time
#: (docs/BACKENDS.md, "INT8").
DEFAULT_CALIBRATION_FRAMES = 16
#: Most calibration frames accepted (each is a forward pass holding every activation of the network).
MAX_CALIBRATION_FRAMES = 1024
#: The parity gate's default: an engine that is not the fp32 reference is served only when at
#: least this fraction of its labels equals the reference's on the parity frames. A 1 % budget
#: keeps mIoU within about a point of the reference's; measured (docs/BACKENDS.md, "The parity
#: gate"): ONNX Runtime fp32 >= 99.99 %, int8 99.8-99.9 %, OpenVINO bf16 99.97 %, while an engine
#: collapsed to a few classes agrees on far less. 0 disables the gate.
DEFAULT_PARITY_MIN_AGREEMENT = 0.99

#: What a parity gate measured on, in the gate's order of preference (shown with the figure).
HELD_OUT = "held-out calibration frames"
LIVE = "live input frames"
SYNTHETIC = "the synthetic probe frame"

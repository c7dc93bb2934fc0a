"""Networks that are not in the registry, exported to ONNX here, and the labels they must give.

* torchvision's LR-ASPP MobileNetV3 exported at a fixed 1x3x256x256 and DeepLabV3-MobileNetV3
  with dynamic batch, height and width: random weights (no download), with batch-norm statistics
  taken from two street-like frames so their labels vary over a frame instead of being one class;
* :class:`TinySeg`: a few-hundred-parameter conv net answering at half resolution, exported with
  the argmax inside the graph (``labels``), a softmax (``probabilities``) or plain ``logits``;
* :func:`identity_network`: the input itself as 3-class logits, so the label of a pixel is the
  channel with the largest normalised value: which mean, std and channel order the engine applied
  can be read off the labels;
* :func:`graph_file`: hand-made graphs (``onnx.helper``) for the files that must be refused.

:func:`reference_labels` computes what the engine must publish, independently of the engine:
normalise the frame in the network's channel order, resize it to the network's size (bilinear,
antialiased when shrinking), run the PyTorch module, resize the scores to the frame (bilinear)
and take the argmax.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

from seg_perception.backends.parity import probe_frame

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TorchvisionOut(nn.Module):
    """torchvision's segmentation models return a dict; the exported network returns ``out``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def torchvision_network(name: str, seed: int = 0) -> nn.Module:
    """``lraspp`` or ``deeplabv3`` (MobileNetV3-Large), 19 classes, random weights whose batch-norm
    statistics come from two street-like frames."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large

    builder = {"lraspp": lraspp_mobilenet_v3_large, "deeplabv3": deeplabv3_mobilenet_v3_large}[name]
    torch.manual_seed(seed)
    model = TorchvisionOut(builder(weights=None, weights_backbone=None, num_classes=19))
    frames = torch.cat([normalise(probe_frame(96, 160)), normalise(probe_frame(96, 160)[:, ::-1].copy())])
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over what it sees
    model.train()
    with torch.no_grad():
        model(frames)
    return model.eval()


class TinySeg(nn.Module):
    """A small conv net that answers at half resolution: ``logits``, ``probabilities`` (softmax in
    the graph) or ``labels`` (argmax in the graph, ``keepdim`` for (N, 1, H, W))."""

    def __init__(self, classes: int = 5, output: str = "logits", keepdim: bool = False, seed: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, classes, 3, padding=1))
        self.output, self.keepdim = output, keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.output == "probabilities":
            return y.softmax(1)
        if self.output == "labels":
            return y.argmax(1, keepdim=self.keepdim)
        return y


def export(model: nn.Module, path: Path, size: tuple[int, int], dynamic: bool, *, input_name: str = "image",
           output_name: str = "out", metadata: dict[str, str] | None = None, batch: int = 1) -> Path:
    """``torch.onnx.export`` as a user would run it (opset 17); ``dynamic``: batch, H, W symbolic."""
    axes = {input_name: {0: "n", 2: "h", 3: "w"}, output_name: {0: "n"}} if dynamic else None
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(batch, 3, *size),), buffer, dynamo=False, opset_version=17,
                          input_names=[input_name], output_names=[output_name], dynamic_axes=axes)
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    path.write_bytes(proto.SerializeToString())
    return path


def normalise(frame: np.ndarray, mean: Sequence[float] = MEAN, std: Sequence[float] = STD,
              channel_order: str = "rgb") -> torch.Tensor:
    """uint8 HxWx3 RGB -> (1, 3, H, W) float, channels in ``channel_order``, (x/255 - mean) / std."""
    rgb = frame[..., ::-1] if channel_order == "bgr" else frame
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def reference_labels(model: nn.Module, frame: np.ndarray, size: tuple[int, int] | None = None, *,
                     mean: Sequence[float] = MEAN, std: Sequence[float] = STD,
                     channel_order: str = "rgb") -> np.ndarray:
    """The labels a network must give for ``frame`` when run at ``size`` (None: the frame's)."""
    x = normalise(frame, mean, std, channel_order)
    height, width = frame.shape[:2]
    if size is not None and tuple(size) != (height, width):
        shrink = size[0] < height or size[1] < width
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    with torch.no_grad():
        scores = model(x)
    scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
    return scores.argmax(1)[0].numpy().astype(np.uint8)


def nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """A label map resized to (height, width) by nearest neighbour (source row i * h // H)."""
    rows = np.arange(height) * labels.shape[0] // height
    cols = np.arange(width) * labels.shape[1] // width
    return labels[rows][:, cols]


def frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A street-like frame with texture (so labels vary), shifted per seed."""
    base = probe_frame(height + 16, width + 16)
    rng = np.random.default_rng(seed)
    top, left = (int(v) for v in rng.integers(0, 16, 2))
    return np.ascontiguousarray(base[top:top + height, left:left + width])


# -- hand-made graphs -------------------------------------------------------------------------------
def graph_file(path: Path, nodes: list, inputs: list, outputs: list, *, initializers: Sequence = (),
               opset: int = 17, domains: Sequence[tuple[str, int]] = (),
               metadata: dict[str, str] | None = None) -> Path:
    """Write a graph built with ``onnx.helper`` (no checks: some of these files are meant to be bad)."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   *(helper.make_opsetid(d, v) for d, v in domains)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path.write_bytes(model.SerializeToString())
    return path


def tensor(name: str, dims: list, elem: int = TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def identity_network(path: Path, dims: list | None = None, metadata: dict[str, str] | None = None) -> Path:
    """The normalised input as 3-class logits: label = the channel with the largest value."""
    dims = dims or ["n", 3, "h", "w"]
    return graph_file(path, [helper.make_node("Identity", ["x"], ["y"])], [tensor("x", dims)], [tensor("y", dims)],
                      metadata=metadata)


def identity_labels(frame: np.ndarray, mean: Sequence[float] = MEAN, std: Sequence[float] = STD,
                    channel_order: str = "rgb") -> np.ndarray:
    """What :func:`identity_network` labels ``frame`` with under this normalisation."""
    return normalise(frame, mean, std, channel_order)[0].argmax(0).numpy().astype(np.uint8)

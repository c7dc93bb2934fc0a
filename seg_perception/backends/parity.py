"""Parity of a network run by another backend or precision with its fp32 reference: the cache
probe and the precision parity gate are the same measurement on different frames.

Both networks see the same inputs; what is compared is what a user sees, the labels: the fraction
of pixels whose label equals the reference's (*agreement*) and the mean IoU of the candidate's
labels against the reference's, over the classes either predicts, pooled over every frame. A
network with another class count or output shape fails outright with the reason.

Two uses:

* **the cache probe** (:func:`parity_probe`): one small deterministic street-like frame
  (:func:`probe_frame`) at load time; a cached artifact is served only when it reproduces the
  network it is supposed to be (a different network copied over a cache entry agrees on a few
  percent of the pixels): :data:`CACHE_MIN_AGREEMENT`, whatever the gate's setting.
* **the parity gate** (:func:`parity_check`): every engine that is not the fp32 reference (fp16,
  int8, ONNX Runtime, TensorRT) runs its network and the reference on the parity frames: held-out
  calibration frames, else a few frames of the live input, else the probe frame; below
  ``parity_min_agreement`` the engine refuses itself with the measured figure
  (:meth:`seg_perception.engine.SegmentationEngine.check_parity`,
  :class:`~seg_perception.engine_api.ParityError`).

The reference is any callable: for a registered model the PyTorch module in fp32
(:func:`fp32_reference`); a network that exists only as an ONNX file would pass fp32 ONNX Runtime.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..choices import HELD_OUT, LIVE, SYNTHETIC  # noqa: F401  (the gate's frame kinds, re-exported)
from ..normalization import Normalization

__all__ = ["CACHE_MIN_AGREEMENT", "HELD_OUT", "LIVE", "PROBE_SIZE", "SYNTHETIC", "ParityReport", "fp32_reference",
           "label_parity", "logits_parity", "parity_check", "parity_probe", "probe_frame", "probe_input"]

#: (H, W) of the load-time probe frame for shape-dynamic networks: small enough to cost a few
#: milliseconds, large enough for every registered backbone (output stride 32: a 2x3 feature map).
PROBE_SIZE = (64, 96)
#: Agreement with PyTorch fp32 on the probe frame below which a cached artifact is not served.
#: ONNX Runtime fp32 agrees on >= 99.9 % of the pixels (ties aside); a network with other weights
#: or another architecture agrees on a few percent; 90 % leaves room for reduced-precision engines.
CACHE_MIN_AGREEMENT = 0.9


#: A network as the gate calls it: ``(N, 3, H, W)`` float in, ``(N, C, H, W)`` logits out.
Network = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ParityReport:
    """How a candidate's labels compare with the reference's."""

    #: Fraction of pixels whose label equals the reference's.
    agreement: float
    #: Mean over the classes either predicts of IoU(candidate == c, reference == c).
    mean_iou: float
    pixels: int
    #: Why the candidate could not be compared at all (shape, class count, a failed run); "" when it could.
    problem: str = ""
    #: How many frames were compared, and what they were (:data:`HELD_OUT`, :data:`LIVE`, :data:`SYNTHETIC`).
    frames: int = 1
    source: str = ""

    def passed(self, min_agreement: float) -> bool:
        return not self.problem and self.agreement >= min_agreement

    def summary(self) -> str:
        if self.problem:
            return self.problem
        where = f" on {self.frames} {self.source}" if self.source and self.source != SYNTHETIC else \
            (f" on {self.source}" if self.source else "")
        return (f"label agreement {100 * self.agreement:.2f} %, mIoU {100 * self.mean_iou:.1f} %{where} "
                f"({self.pixels} pixels)")


def _confusion(got: np.ndarray, expected: np.ndarray, classes: int) -> np.ndarray:
    index = expected.astype(np.int64).ravel() * classes + got.astype(np.int64).ravel()
    return np.bincount(index, minlength=classes * classes).reshape(classes, classes)


def _report(confusion: np.ndarray, frames: int = 1, source: str = "") -> ParityReport:
    pixels = int(confusion.sum())
    if pixels == 0:
        return ParityReport(1.0, 1.0, 0, frames=frames, source=source)
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return ParityReport(agreement=float(intersection.sum() / pixels),
                        mean_iou=float((intersection[present] / union[present]).mean()), pixels=pixels,
                        frames=frames, source=source)


def label_parity(candidate: np.ndarray, reference: np.ndarray) -> ParityReport:
    """Agreement and mean IoU of integer label maps of the same shape."""
    got, expected = np.asarray(candidate), np.asarray(reference)
    if got.shape != expected.shape:
        return ParityReport(0.0, 0.0, int(expected.size), f"label shape {got.shape} differs from the reference's "
                                                          f"{expected.shape}")
    if expected.size == 0:
        return ParityReport(1.0, 1.0, 0)
    classes = int(max(got.max(), expected.max())) + 1
    return _report(_confusion(got, expected, classes))


def _logits_problem(candidate: torch.Tensor, reference: torch.Tensor) -> str:
    if candidate.ndim != 4 or tuple(candidate.shape[:1] + candidate.shape[2:]) != \
            tuple(reference.shape[:1] + reference.shape[2:]):
        return f"the network outputs shape {tuple(candidate.shape)}, expected {tuple(reference.shape)}"
    if candidate.shape[1] != reference.shape[1]:
        return f"the network outputs {candidate.shape[1]} classes, expected {reference.shape[1]}"
    return ""


def _labels(output: torch.Tensor) -> np.ndarray:
    """Labels of ``(N, C, H, W)`` scores, first maximum wins (as the engine takes them); an
    integer ``(N, 1, H, W)`` output is a label map already (a network that outputs labels)."""
    if not output.is_floating_point() and output.shape[1] == 1:
        return output[:, 0].cpu().numpy()
    return output.float().max(dim=1).indices.cpu().numpy()


def logits_parity(candidate: torch.Tensor, reference: torch.Tensor) -> ParityReport:
    """Parity of two ``(N, C, H, W)`` logit tensors through their labels (first maximum wins)."""
    problem = _logits_problem(candidate, reference)
    if problem:
        return ParityReport(0.0, 0.0, int(reference[:, 0].numel()), problem)
    return label_parity(_labels(candidate), _labels(reference))


def probe_frame(height: int, width: int) -> np.ndarray:
    """A deterministic uint8 RGB frame with the structure of a street scene (sky, facades,
    road, edges, texture), so a trained network predicts several classes on it."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = np.empty((height, width, 3), np.float32)
    horizon = 0.45 * height
    frame[:] = (130, 180, 235)
    frame[ys > horizon] = (128, 64, 128)
    facade = (ys < horizon) & (ys > horizon * (0.35 + 0.25 * np.sin(xs / max(width, 1) * 9.0)))
    frame[facade] = (150, 110, 90)
    frame[(xs // max(width // 8, 1)) % 3 == 0] *= 0.7
    frame += 25 * np.sin(xs / 5.0 + ys / 7.0)[..., None]
    frame += np.random.default_rng(0).normal(0, 6, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def probe_input(size: tuple[int, int], normalization: Normalization) -> torch.Tensor:
    """:func:`probe_frame` as the engine would feed it: ``(1, 3, H, W)`` float32, normalised."""
    rgb = probe_frame(*size).astype(np.float32) / 255.0
    if normalization.channel_order == "bgr":
        rgb = rgb[..., ::-1]
    x = (rgb - np.asarray(normalization.mean, np.float32)) / np.asarray(normalization.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def fp32_reference(model: nn.Module) -> nn.Module:
    """The model in fp32 on its own device (a copy when it runs in another precision)."""
    params = list(model.parameters())
    if params and params[0].dtype != torch.float32:
        model = copy.deepcopy(model).float()
    return model.eval()


def _reference(reference: nn.Module | Network) -> tuple[Network, torch.device]:
    """The reference as a callable and the device its inputs go to."""
    if isinstance(reference, nn.Module):
        module = fp32_reference(reference)
        params = list(module.parameters())
        return module, params[0].device if params else torch.device("cpu")
    return reference, torch.device("cpu")


def parity_check(candidate: Network, reference: nn.Module | Network, inputs: Sequence[torch.Tensor],
                 device: torch.device | None = None, source: str = "") -> ParityReport:
    """Run every input (``(N, 3, H, W)``, normalised) through the candidate (on ``device``, in the
    input's dtype) and the fp32 reference (a module on its own device in fp32, or any callable on
    the CPU), and compare their labels pooled over all inputs. A candidate that fails to run, or
    whose output has another shape or class count, fails the check with the reason."""
    ref, ref_device = _reference(reference)
    confusion: np.ndarray | None = None
    pixels = 0
    with torch.inference_mode():
        for index, x in enumerate(inputs):
            expected = ref(x.float().to(ref_device)).cpu()
            pixels += int(expected[:, 0].numel())
            try:
                got = candidate(x.to(device or ref_device)).cpu()
            except Exception as exc:  # a network that cannot run the frame is not the right network
                where = "the probe frame" if source in ("", SYNTHETIC) else f"{source} ({index + 1} of {len(inputs)})"
                return ParityReport(0.0, 0.0, pixels, f"the network failed on {where}: {type(exc).__name__}: "
                                                      f"{str(exc)[:200]}", len(inputs), source)
            problem = _logits_problem(got, expected)
            if problem:
                return ParityReport(0.0, 0.0, pixels, problem, len(inputs), source)
            got_labels, expected_labels = _labels(got), _labels(expected)
            classes = max(int(expected.shape[1]), int(max(got_labels.max(), expected_labels.max())) + 1)
            if confusion is not None and classes > confusion.shape[0]:  # label maps: grow to the largest id seen
                confusion = np.pad(confusion, (0, classes - confusion.shape[0]))
            frame = _confusion(got_labels, expected_labels, confusion.shape[0] if confusion is not None
                               else classes)
            confusion = frame if confusion is None else confusion + frame
    if confusion is None:
        return ParityReport(1.0, 1.0, 0, "no parity frames", 0, source)
    return _report(confusion, len(inputs), source)


def parity_probe(candidate: Network, reference: nn.Module | Network, x: torch.Tensor,
                 device: torch.device | None = None) -> ParityReport:
    """The cache probe: :func:`parity_check` on the one probe input ``x``."""
    return parity_check(candidate, reference, [x], device, SYNTHETIC)

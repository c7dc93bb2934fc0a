"""Parity of a network run by another backend (or precision) with its PyTorch fp32 reference.

Both see the same input; what is compared is what a user sees, the labels: the fraction of pixels
whose label equals the reference's (*agreement*) and the mean IoU of the candidate's labels
against the reference's over the classes either predicts. A network with another class count or
output shape fails outright with the reason.

Used at load time on one small deterministic frame (:func:`parity_probe`): a cached artifact is
served only when it reproduces the PyTorch model it is supposed to be (a different network copied
over a cache entry agrees on a few percent of the pixels). The functions take any frames and any
candidate, so a precision gate can run them on real frames as well.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..normalization import Normalization

#: (H, W) of the load-time probe frame for shape-dynamic networks: small enough to cost a few
#: milliseconds, large enough for every registered backbone (output stride 32: a 2x3 feature map).
PROBE_SIZE = (64, 96)
#: Agreement with PyTorch fp32 on the probe frame below which a cached artifact is not served.
#: ONNX Runtime fp32 agrees on >= 99.9 % of the pixels (ties aside); a network with other weights
#: or another architecture agrees on a few percent; 90 % leaves room for reduced-precision engines.
CACHE_MIN_AGREEMENT = 0.9


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

    def passed(self, min_agreement: float) -> bool:
        return not self.problem and self.agreement >= min_agreement

    def summary(self) -> str:
        if self.problem:
            return self.problem
        return f"label agreement {100 * self.agreement:.1f} %, mIoU {100 * self.mean_iou:.1f} % on {self.pixels} pixels"


def label_parity(candidate: np.ndarray, reference: np.ndarray) -> ParityReport:
    """Agreement and mean IoU of integer label maps of the same shape."""
    got, expected = np.asarray(candidate), np.asarray(reference)
    if got.shape != expected.shape:
        return ParityReport(0.0, 0.0, int(expected.size), f"label shape {got.shape} differs from the reference's "
                                                          f"{expected.shape}")
    if expected.size == 0:
        return ParityReport(1.0, 1.0, 0)
    got, expected = got.astype(np.int64).ravel(), expected.astype(np.int64).ravel()
    classes = int(max(got.max(), expected.max())) + 1
    confusion = np.bincount(expected * classes + got, minlength=classes * classes).reshape(classes, classes)
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return ParityReport(agreement=float(intersection.sum() / expected.size),
                        mean_iou=float((intersection[present] / union[present]).mean()), pixels=int(expected.size))


def logits_parity(candidate: torch.Tensor, reference: torch.Tensor) -> ParityReport:
    """Parity of two ``(N, C, H, W)`` logit tensors through their labels (first maximum wins)."""
    if candidate.ndim != 4 or tuple(candidate.shape[:1] + candidate.shape[2:]) != \
            tuple(reference.shape[:1] + reference.shape[2:]):
        return ParityReport(0.0, 0.0, int(reference[:, 0].numel()),
                            f"the network outputs shape {tuple(candidate.shape)}, expected {tuple(reference.shape)}")
    if candidate.shape[1] != reference.shape[1]:
        return ParityReport(0.0, 0.0, int(reference[:, 0].numel()),
                            f"the network outputs {candidate.shape[1]} classes, expected {reference.shape[1]}")
    return label_parity(candidate.float().argmax(1).cpu().numpy(), reference.float().argmax(1).cpu().numpy())


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


def parity_probe(candidate: Callable[[torch.Tensor], torch.Tensor], reference: nn.Module, x: torch.Tensor,
                 device: torch.device | None = None) -> ParityReport:
    """Run ``x`` through the candidate (on ``device``) and the fp32 reference (on its own
    device) and compare their labels; a candidate that fails to run fails the probe."""
    reference = fp32_reference(reference)
    params = list(reference.parameters())
    ref_device = params[0].device if params else torch.device("cpu")
    with torch.inference_mode():
        expected = reference(x.to(ref_device)).float().cpu()
        try:
            got = candidate(x.to(device or ref_device)).float().cpu()
        except Exception as exc:  # a network that cannot run the probe is not the right network
            return ParityReport(0.0, 0.0, int(expected[:, 0].numel()),
                                f"the network failed on the probe frame: {type(exc).__name__}: {str(exc)[:200]}")
    return logits_parity(got, expected)

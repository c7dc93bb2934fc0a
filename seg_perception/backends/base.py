"""What every backend provides: the network as one callable, NCHW float tensor in, logits out.

The engine keeps pre- and post-processing (on the GPU when it runs on CUDA) and hands only the
normalised input batch ``(N, 3, H, W)`` to the network; whatever runs the network returns the
logits ``(N, C, H, W)`` at the input size on the input's device. Keeping the seam this narrow is
what makes stage timings, diagnostics and every output identical across backends.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..choices import BACKENDS

__all__ = ["BACKENDS", "BackendError", "ExportError", "Network"]


class BackendError(RuntimeError):
    """A backend failed to build or load a network (export failure, unusable cache, bad engine)."""


class ExportError(ValueError):
    """A model or option that cannot be exported (e.g. the CRF stage, which is not a network)."""


class Network(Protocol):
    """The network as the engine calls it (a non-torch backend; the torch backend is the model)."""

    #: Backend and provider in words, for diagnostics and reports.
    name: str
    #: Where the running artifact came from, for diagnostics: exported now, a verified cache hit,
    #: rebuilt (and why), or in memory only.
    origin: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` float -> ``(N, C, H, W)`` logits on the same device."""
        ...

    def release_memory(self) -> None:
        """Return memory the backend keeps sized for the largest input so far (called after an
        oversize frame, so one huge frame does not raise the resident memory for good)."""
        ...

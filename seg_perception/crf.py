"""Fully connected CRF post-processing (Krähenbühl & Koltun, NIPS 2011), as used by DeepLab v1.

The CRF is a stage of its own that refines the logits of ANY model, not a part of one: the
engine builds it once from the configuration and applies it to each frame after the model.

API
---
``config = CRFConfig(mode="cpu")``
    All parameters; ``config.validate()`` raises :class:`CRFConfigError` naming the bad field and
    its valid range or choices.
``crf = build_crf(config, device=None)``
    Returns ``None`` for mode ``"none"``, otherwise a :class:`DenseCRF`. Everything that can fail
    for configuration reasons fails here, at start-up, not on the first frame: an invalid field,
    mode ``"cpu"`` without the ``pydensecrf2`` package, or mode ``"gpu"`` with a ``device`` that
    torch cannot use (e.g. ``"cuda"`` on a machine without CUDA).
``probabilities = crf(logits, image)``
    ``logits``: float tensor ``(1, C, H, W)`` at the image resolution (any float dtype, any
    device); ``image``: the RGB frame as uint8 ``(H, W, 3)``, tensor or ndarray. Returns the
    refined class probabilities (mean-field marginals) as float32 ``(1, C, H, W)`` on the device
    of ``logits``; they sum to 1 over C, so ``argmax(1)`` gives the labels.

Model
-----
Unary ``-log softmax(logits)``; two Potts pairwise terms whose weights are Gaussian kernels:
the appearance (bilateral) kernel ``w1 * exp(-|p_i-p_j|^2 / 2 sa^2 - |I_i-I_j|^2 / 2 sb^2)`` and
the smoothness kernel ``w2 * exp(-|p_i-p_j|^2 / 2 sg^2)``, with positions in pixels and colours in
0..255. Mean field: ``Q = softmax(-U + sum_k w_k * normalised_filter_k(Q))``, repeated
``iterations`` times.

Defaults are DeepLab v1's: ``w2 = 3``, ``sg = 3`` and 10 mean-field iterations fixed as in the
paper, and ``w1 = 4, sa = 121, sb = 5``, the values DeepLab published for DeepLab-LargeFOV
(found by cross-validation on PASCAL VOC at about 500x500 pixels; re-tune them for other
datasets and resolutions, since ``sa`` is in pixels).

Modes
-----
``"none"``
    No CRF (``build_crf`` returns ``None``).
``"cpu"``
    The exact model via ``pydensecrf2`` (import name ``pydensecrf.densecrf``): Krähenbühl's C++
    permutohedral-lattice filtering with symmetric kernel normalisation. Runs on the CPU; the
    result is copied back to the device of the logits. About a second per 512x1024 frame.
``"gpu"``
    A PyTorch mean field that runs wherever the tensors are (CUDA in deployment; the CPU works
    too, slowly, and is what the tests use). The smoothness kernel is an exact separable Gaussian
    convolution at full resolution. The appearance kernel is evaluated exactly for every pixel
    against *key* pixels sampled every ``downsample`` pixels in x and y (each standing for its
    ``downsample^2`` block) plus the pixel itself; with ``sa`` of about a hundred pixels the
    spatial part is smooth on that grid and the colours stay real pixel colours. Each kernel is
    normalised per pixel (row sums). Cost per iteration ~ ``H*W * H*W / downsample^2``, done in
    chunks of bounded memory, in float32 whatever the dtype of the logits.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F

MODES = ("none", "cpu", "gpu")
#: Package that provides mode "cpu", and the module it installs.
PYDENSECRF_PACKAGE = "pydensecrf2"
PYDENSECRF_MODULE = "pydensecrf.densecrf"
#: Kernel entries (pixels x keys) evaluated at once by the torch CRF: 2^24 floats = 64 MiB.
_CHUNK_ELEMENTS = 1 << 24
#: Largest appearance kernel the torch CRF keeps between iterations: 2^26 floats = 256 MiB.
_CACHE_ELEMENTS = 1 << 26


class CRFConfigError(ValueError):
    """A CRF configuration that cannot be built; the message names the field and valid values."""


@dataclass
class CRFConfig:
    """Parameters of the fully connected CRF (names: w1, sa, sb = bilateral; w2, sg = Gaussian)."""

    mode: str = "none"
    iterations: int = 10
    bilateral_weight: float = 4.0
    bilateral_xy_std: float = 121.0
    bilateral_rgb_std: float = 5.0
    gaussian_weight: float = 3.0
    gaussian_xy_std: float = 3.0
    #: Mode "gpu" only: stride in pixels of the key grid of the appearance kernel.
    downsample: int = 8

    def validate(self) -> CRFConfig:
        """Raise :class:`CRFConfigError` for the first invalid field; return ``self`` if valid."""
        if self.mode not in MODES:
            raise CRFConfigError(f"crf mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("iterations", "downsample"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CRFConfigError(f"crf {name} must be an integer >= 1, got {value!r}")
        for f in fields(self):
            if f.name in ("mode", "iterations", "downsample"):
                continue
            value = getattr(self, f.name)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not is_number or not math.isfinite(value):
                raise CRFConfigError(f"crf {f.name} must be a finite number, got {value!r}")
            if f.name.endswith("_std") and value <= 0:
                raise CRFConfigError(f"crf {f.name} must be > 0 (pixels or 0..255 levels), got {value!r}")
            if f.name.endswith("_weight") and value < 0:
                raise CRFConfigError(f"crf {f.name} must be >= 0, got {value!r}")
        return self


class DenseCRF(ABC):
    """A configured CRF: ``crf(logits (1,C,H,W), image uint8 (H,W,3)) -> probabilities``."""

    def __init__(self, config: CRFConfig) -> None:
        self.config = config

    def __call__(self, logits: torch.Tensor, image: torch.Tensor | np.ndarray) -> torch.Tensor:
        rgb = _check_inputs(logits, image)
        with torch.no_grad():
            return self._refine(logits.float(), rgb)

    @abstractmethod
    def _refine(self, logits: torch.Tensor, rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Mean-field marginals, float32 ``(1, C, H, W)`` on the device of ``logits``."""


def _check_inputs(logits: torch.Tensor, image: torch.Tensor | np.ndarray) -> np.ndarray | torch.Tensor:
    if logits.dim() != 4 or logits.shape[0] != 1 or not logits.is_floating_point():
        raise ValueError(f"crf expects float logits of shape (1, C, H, W), got {tuple(logits.shape)} {logits.dtype}")
    if image.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"crf expects a uint8 RGB image, got dtype {image.dtype}")
    if tuple(image.shape) != (*logits.shape[-2:], 3):
        raise ValueError(
            f"crf image shape {tuple(image.shape)} does not match the logits: expected "
            f"{(*logits.shape[-2:], 3)} (resize the logits to the image first)"
        )
    return image


class ExactDenseCRF(DenseCRF):
    """Mode "cpu": Krähenbühl's permutohedral-lattice implementation through ``pydensecrf2``."""

    def __init__(self, config: CRFConfig, densecrf: ModuleType) -> None:
        super().__init__(config)
        self._densecrf = densecrf

    def _refine(self, logits: torch.Tensor, rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
        c = self.config
        _, classes, height, width = logits.shape
        unary = -F.log_softmax(logits[0], dim=0).reshape(classes, -1).cpu().numpy()
        image = rgb.cpu().numpy() if isinstance(rgb, torch.Tensor) else rgb
        crf = self._densecrf.DenseCRF2D(width, height, classes)
        crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
        crf.addPairwiseGaussian(sxy=c.gaussian_xy_std, compat=c.gaussian_weight)
        crf.addPairwiseBilateral(
            sxy=c.bilateral_xy_std, srgb=c.bilateral_rgb_std,
            rgbim=np.ascontiguousarray(image), compat=c.bilateral_weight,
        )
        q = np.asarray(crf.inference(c.iterations), dtype=np.float32)
        return torch.from_numpy(q.reshape(1, classes, height, width)).to(logits.device)


class TorchDenseCRF(DenseCRF):
    """Mode "gpu": batched PyTorch mean field on the device of the logits (see module docstring)."""

    def _refine(self, logits: torch.Tensor, rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
        c = self.config
        device = logits.device
        image = torch.as_tensor(rgb).to(device=device, dtype=torch.float32)
        neg_unary = F.log_softmax(logits, dim=1)
        smooth = _GaussianFilter(c.gaussian_xy_std, logits.shape[-2:], device)
        appearance = _AppearanceFilter(image, c.bilateral_xy_std, c.bilateral_rgb_std, c.downsample)
        q = neg_unary.softmax(dim=1)
        for _ in range(c.iterations):
            message = c.gaussian_weight * smooth(q) + c.bilateral_weight * appearance(q)
            q = (neg_unary + message).softmax(dim=1)
        return q


class _GaussianFilter:
    """Normalised isotropic Gaussian blur (truncated at 3 std), exact at full resolution."""

    def __init__(self, std: float, size: torch.Size, device: torch.device) -> None:
        radius = max(1, math.ceil(3 * std))
        taps = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
        self.kernel = torch.exp(-0.5 * (taps / std) ** 2)
        self.radius = radius
        self.norm = self._blur(torch.ones(1, 1, *size, device=device))

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        kx = self.kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
        ky = self.kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
        x = F.conv2d(x, kx, padding=(0, self.radius), groups=channels)
        return F.conv2d(x, ky, padding=(self.radius, 0), groups=channels)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        return self._blur(q) / self.norm


class _AppearanceFilter:
    """Normalised bilateral filter: every pixel against a strided grid of key pixels plus itself.

    With features ``f = (x/sa, y/sa, rgb/sb)`` the kernel is ``exp(-|f_i - f_j|^2 / 2)``; the
    exponent ``f_i.f_j - |f_i|^2/2 - |f_j|^2/2`` of a whole chunk of pixels is one matrix product
    of augmented features. A key stands for the ``stride^2`` pixels of its block, so its weight is
    scaled by ``stride^2``; the pixel's own term (kernel value 1) is added separately so that a
    pixel whose colour no key shares is not pulled towards unrelated keys. The kernel does not
    change between iterations, so it is kept when it fits in ``_CACHE_ELEMENTS``.
    """

    def __init__(self, image: torch.Tensor, xy_std: float, rgb_std: float, stride: int) -> None:
        height, width, _ = image.shape
        device = image.device
        ys, xs = torch.meshgrid(
            torch.arange(height, device=device, dtype=torch.float32),
            torch.arange(width, device=device, dtype=torch.float32),
            indexing="ij",
        )
        # Centred features keep |f|^2 small, so the expanded square distance loses no precision.
        positions = torch.stack((xs - width / 2, ys - height / 2), dim=-1) / xy_std
        colours = (image - 127.5) / rgb_std
        features = torch.cat((positions, colours), dim=-1).reshape(-1, 5)
        key_rows = torch.arange(min(stride // 2, height - 1), height, stride, device=device)
        key_cols = torch.arange(min(stride // 2, width - 1), width, stride, device=device)
        self.key_index = (key_rows[:, None] * width + key_cols[None, :]).reshape(-1)
        keys = features[self.key_index]
        half_sq = 0.5 * (features * features).sum(dim=1, keepdim=True)
        ones = torch.ones_like(half_sq)
        self.queries = torch.cat((features, -half_sq, ones), dim=1)  # (pixels, 7)
        key_half_sq = 0.5 * (keys * keys).sum(dim=1, keepdim=True)
        self.keys_t = torch.cat((keys, ones[: len(keys)], -key_half_sq), dim=1).t().contiguous()
        self.key_weight = float(stride * stride)
        self.chunk = max(1, _CHUNK_ELEMENTS // len(self.key_index))
        self.cache: list[torch.Tensor] | None = None
        if self.queries.shape[0] * len(self.key_index) <= _CACHE_ELEMENTS:
            self.cache = [self._kernel(rows) for rows in self._chunks()]

    def _chunks(self) -> list[slice]:
        return [slice(s, s + self.chunk) for s in range(0, self.queries.shape[0], self.chunk)]

    def _kernel(self, rows: slice) -> torch.Tensor:
        return torch.exp_(self.queries[rows] @ self.keys_t)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        _, classes, height, width = q.shape
        flat = q.reshape(classes, -1).t()  # (pixels, C)
        values = torch.cat((flat[self.key_index], flat.new_ones(len(self.key_index), 1)), dim=1)
        values *= self.key_weight
        out = torch.empty_like(flat)
        for i, rows in enumerate(self._chunks()):
            kernel = self.cache[i] if self.cache is not None else self._kernel(rows)
            summed = kernel @ values
            out[rows] = (summed[:, :classes] + flat[rows]) / (summed[:, classes:] + 1.0)
        return out.t().reshape(1, classes, height, width)


def _import_pydensecrf() -> ModuleType:
    try:
        return importlib.import_module(PYDENSECRF_MODULE)
    except ImportError as exc:
        raise CRFConfigError(
            f"crf mode 'cpu' needs the {PYDENSECRF_PACKAGE!r} package (module "
            f"{PYDENSECRF_MODULE!r}), which cannot be imported ({exc}); install it with "
            f"'pip install {PYDENSECRF_PACKAGE}' or choose another mode: {', '.join(MODES)}"
        ) from exc


def _check_device(device: torch.device | str) -> None:
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise CRFConfigError(
            f"crf mode 'gpu' cannot use torch device {str(device)!r} ({exc}); run the engine on an "
            f"available device or choose another mode: {', '.join(MODES)}"
        ) from exc


def build_crf(config: CRFConfig, device: torch.device | str | None = None) -> DenseCRF | None:
    """Validate ``config`` and build its CRF (``None`` for mode "none").

    ``device`` is where the engine will run the model; only mode "gpu" uses it, to check at
    configuration time that torch can allocate there (the CRF itself follows the logits).
    """
    config.validate()
    if config.mode == "none":
        return None
    if config.mode == "cpu":
        return ExactDenseCRF(config, _import_pydensecrf())
    if device is not None:
        _check_device(device)
    return TorchDenseCRF(config)

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
    The reference implementation via ``pydensecrf2`` (import name ``pydensecrf.densecrf``):
    Krähenbühl's C++ permutohedral-lattice filtering with symmetric kernel normalisation. Runs on
    the CPU; the result is copied back to the device of the logits. About a second per 512x1024 frame.
``"gpu"``
    The same model and algorithm in batched PyTorch ops (:class:`PermutohedralFilter`), run
    wherever the tensors are: CUDA in deployment; CPU tensors work too (that is what the tests
    use), so the name says "torch implementation", not "needs a GPU". float32 inside whatever the
    dtype of the logits. Agrees with mode "cpu" on >99.9 % of the labels (bench/crf_compare.py);
    on CUDA, ``index_add_`` accumulates with atomics, so results may differ in the last bits from
    run to run.

Host synchronisation (why ``SegmentationEngine.asynchronous`` is False with a CRF)
-----------------------------------------------------------------------------------
Mode "gpu" waits for the device twice per frame, once per lattice: ``torch.unique`` of the lattice
vertices returns a tensor whose size depends on the data, so the host must wait for it (on CUDA,
until everything queued before it, the model included, has run). Nothing else in the filter
reads device values on the host: the lattice's size comes with ``unique``'s result, and the
overflow check of the lattice codes reads the code ranges only after that wait (a few bytes, no
further waiting). Mode "cpu" copies the logits to the host, which waits likewise. So with a CRF
``submit`` returns once the frame's logits exist; frames no longer overlap on the device.
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

    def validate(self) -> CRFConfig:
        """Raise :class:`CRFConfigError` for the first invalid field; return ``self`` if valid."""
        if self.mode not in MODES:
            raise CRFConfigError(f"crf mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        it = self.iterations
        if isinstance(it, bool) or not isinstance(it, int) or it < 1:
            raise CRFConfigError(f"crf iterations must be an integer >= 1, got {it!r}")
        for f in fields(self):
            if f.name in ("mode", "iterations"):
                continue
            value = getattr(self, f.name)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not is_number or not math.isfinite(value):
                raise CRFConfigError(f"crf {f.name} must be a finite number, got {value!r}")
            if f.name.endswith("_std") and value <= 0:
                raise CRFConfigError(f"crf {f.name} must be > 0, got {value!r}")
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


def _check_inputs(
    logits: torch.Tensor, image: torch.Tensor | np.ndarray
) -> np.ndarray | torch.Tensor:
    if logits.dim() != 4 or logits.shape[0] != 1 or not logits.is_floating_point():
        raise ValueError(
            f"crf expects float logits of shape (1, C, H, W), got {tuple(logits.shape)} "
            f"{logits.dtype}"
        )
    if image.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"crf expects a uint8 RGB image, got dtype {image.dtype}")
    if tuple(image.shape) != (*logits.shape[-2:], 3):
        raise ValueError(
            f"crf image shape {tuple(image.shape)} does not match the logits: expected "
            f"{(*logits.shape[-2:], 3)} (resize the logits to the image first)"
        )
    return image


class ExactDenseCRF(DenseCRF):
    """Mode "cpu": Krähenbühl's C++ implementation through ``pydensecrf2``."""

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
    """Mode "gpu": the mean field of mode "cpu" in batched PyTorch ops, on the logits' device."""

    def _refine(self, logits: torch.Tensor, rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
        c = self.config
        _, classes, height, width = logits.shape
        device = logits.device
        ys, xs = torch.meshgrid(
            torch.arange(height, device=device, dtype=torch.float32),
            torch.arange(width, device=device, dtype=torch.float32),
            indexing="ij",
        )
        positions = torch.stack((xs, ys), dim=-1).reshape(-1, 2)
        colours = torch.as_tensor(rgb).to(device=device, dtype=torch.float32).reshape(-1, 3)
        smoothness = PermutohedralFilter(positions / c.gaussian_xy_std)
        appearance = PermutohedralFilter(
            torch.cat((positions / c.bilateral_xy_std, colours / c.bilateral_rgb_std), dim=1)
        )
        neg_unary = F.log_softmax(logits[0].reshape(classes, -1).t(), dim=1)  # (pixels, C)
        q = neg_unary.softmax(dim=1)
        for _ in range(c.iterations):
            message = c.gaussian_weight * smoothness(q) + c.bilateral_weight * appearance(q)
            q = (neg_unary + message).softmax(dim=1)
        return q.t().reshape(1, classes, height, width)


class PermutohedralFilter:
    """Symmetrically normalised Gaussian filter ``exp(-|f_i - f_j|^2 / 2)`` over feature space.

    The permutohedral lattice of Adams, Baek & Davis (Eurographics 2010), as in Krähenbühl's
    dense CRF: each point is splatted onto the d+1 vertices of its enclosing simplex with
    barycentric weights, the lattice is blurred with [1/2, 1, 1/2] along each of the d+1 lattice
    directions, and values are sliced back with the same weights. The lattice depends only on
    the features, so it is built once per frame and every mean-field iteration costs
    O(pixels * (d+1) * classes). Output ``D^-1/2 K D^-1/2 q`` with ``D = K 1``.
    """

    def __init__(self, features: torch.Tensor) -> None:
        points, d = features.shape
        device = features.device
        # Elevate onto the hyperplane sum(x) = 0 of R^(d+1), scaled so the blur is unit variance.
        i = torch.arange(d, device=device, dtype=torch.float32)
        cf = features * ((d + 1) * math.sqrt(2.0 / 3.0) / torch.sqrt((i + 1) * (i + 2)))
        suffix = torch.flip(torch.cumsum(torch.flip(cf, [1]), 1), [1])  # sum_{k>=j} cf_k
        suffix = torch.cat((suffix, cf.new_zeros(points, 1)), dim=1)
        elevated = suffix - torch.cat((cf.new_zeros(points, 1), cf * (i + 1)), dim=1)
        # Nearest remainder-0 lattice point, and the ordering of the remainders (the simplex).
        scaled = elevated / (d + 1)
        down, up = torch.floor(scaled) * (d + 1), torch.ceil(scaled) * (d + 1)
        rem0 = torch.where(up - elevated < elevated - down, up, down)
        total = torch.round(rem0.sum(dim=1, keepdim=True) / (d + 1))
        diff = elevated - rem0
        later = torch.ones(d + 1, d + 1, dtype=torch.bool, device=device).triu(1)  # j > i
        less = diff[:, :, None] < diff[:, None, :]  # [n, i, j] = diff_i < diff_j
        rank = ((less & later).sum(2) + (~less & later).sum(1)).to(torch.float32)
        # Bring the point back onto the plane when the rounding left the coordinates' sum off 0.
        over = (total > 0) & (rank >= d + 1 - total)
        under = (total < 0) & (rank < -total)
        rem0 = rem0 - (d + 1) * over + (d + 1) * under
        rank = rank + total - (d + 1) * over + (d + 1) * under
        rank = rank.long()
        # Barycentric coordinates of the point in its simplex.
        v = (elevated - rem0) / (d + 1)
        bary = features.new_zeros(points, d + 2)
        bary.scatter_add_(1, d - rank, v)
        bary.scatter_add_(1, d - rank + 1, -v)
        bary[:, 0] += 1.0 + bary[:, d + 1]
        self.weights = bary[:, : d + 1]
        # Vertex r of the simplex: rem0 + r, minus (d+1) where the rank is above d - r.
        r = torch.arange(d + 1, device=device)
        vertices = rem0.long()[:, None, :d] + r[None, :, None] - (d + 1) * (
            rank[:, None, :d] > d - r[None, :, None]
        )
        codes, self.radix, self.offset = _encode(vertices.reshape(-1, d))
        table, index = torch.unique(codes, return_inverse=True)  # the one host sync (size is data)
        _check_span(self.radix)  # after unique: the device is idle, reading the ranges waits for nothing
        self.index = index.reshape(points, d + 1)
        self.size = table.shape[0]
        # Neighbours of every vertex along each lattice direction (missing ones -> a zero row).
        keys = _decode(table, self.radix, self.offset, d)
        self.neighbours = []
        for j in range(d + 1):
            step = torch.full((d,), -1, device=device, dtype=torch.long)
            if j < d:
                step[j] = d
            forward, backward = self._lookup(table, keys + step), self._lookup(table, keys - step)
            self.neighbours.append((forward, backward))
        self.norm = (self._filter(features.new_ones(points, 1)) + 1e-20).rsqrt()

    def _lookup(self, table: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        inside = ((keys >= self.offset) & (keys - self.offset < self.radix)).all(dim=1)
        codes = _encode(keys, self.radix, self.offset)[0]
        pos = torch.searchsorted(table, codes).clamp_(max=self.size - 1)
        found = inside & (table[pos] == codes)
        return torch.where(found, pos, torch.full_like(pos, self.size))

    def _filter(self, values: torch.Tensor) -> torch.Tensor:
        lattice = values.new_zeros(self.size + 1, values.shape[1])
        for r in range(self.index.shape[1]):
            lattice.index_add_(0, self.index[:, r], self.weights[:, r : r + 1] * values)
        for forward, backward in self.neighbours:
            blurred = lattice[:-1] + 0.5 * (lattice[forward] + lattice[backward])
            lattice = torch.cat((blurred, lattice[-1:]))
        out = torch.zeros_like(values)
        for r in range(self.index.shape[1]):
            out += self.weights[:, r : r + 1] * lattice[self.index[:, r]]
        return out

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        return self.norm * self._filter(self.norm * values)


def _encode(
    keys: torch.Tensor, radix: torch.Tensor | None = None, offset: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixed-radix int64 code of integer lattice keys (sorting the codes sorts the keys).

    With new ranges, check them with :func:`_check_span` before trusting the codes (they wrap
    around when the lattice spans more than 2^62 keys); this function does not read the device.
    """
    if radix is None or offset is None:
        offset = keys.min(dim=0).values
        radix = keys.max(dim=0).values - offset + 1
    codes = torch.zeros(keys.shape[0], dtype=torch.long, device=keys.device)
    for k in range(keys.shape[1]):
        codes = codes * radix[k] + (keys[:, k] - offset[k])
    return codes, radix, offset


def _check_span(radix: torch.Tensor) -> None:
    """Refuse a lattice whose mixed-radix codes would overflow int64 (exact, in Python ints)."""
    if math.prod(int(r) for r in radix.tolist()) >= 2**62:
        raise ValueError("crf features span too large a lattice; increase the kernel stds")


def _decode(codes: torch.Tensor, radix: torch.Tensor, offset: torch.Tensor, d: int) -> torch.Tensor:
    keys = []
    for k in reversed(range(d)):
        keys.append(codes % radix[k] + offset[k])
        codes = codes // radix[k]
    return torch.stack(keys[::-1], dim=1)


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

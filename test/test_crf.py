"""Dense CRF stage: configuration errors, the refinement it must achieve, and cpu/gpu agreement."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seg_perception.crf import (
    CRFConfig,
    CRFConfigError,
    ExactDenseCRF,
    PermutohedralFilter,
    TorchDenseCRF,
    build_crf,
)

MODES = ("cpu", "gpu")
needs_pydensecrf = pytest.mark.skipif(
    importlib.util.find_spec("pydensecrf") is None, reason="pydensecrf2 not installed"
)


def two_regions(
    height: int = 64, width: int = 128, seed: int = 0
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Dark left / bright right image with a wavy boundary, and logits that blur and noise it.

    The logits see the labels only at stride 8 (so the boundary is smeared over ~8 pixels) plus
    pixel noise, the typical error pattern the CRF is meant to fix using the image edges.
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    labels = (xs > width / 2 + 6 * np.sin(ys / 5)).astype(np.int64)
    image = np.where(labels[..., None] == 1, 200.0, 60.0) + rng.normal(0, 6, (height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    onehot = torch.from_numpy(np.eye(2, dtype=np.float32)[labels]).permute(2, 0, 1)[None]
    coarse = F.interpolate(F.avg_pool2d(onehot, 8), size=(height, width), mode="bilinear")
    noise = torch.from_numpy(rng.normal(0, 1.0, (1, 2, height, width)).astype(np.float32))
    return 2.0 * coarse + noise, image, labels


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mode", "cuda", "none, cpu, gpu"),
        ("iterations", 0, "iterations must be an integer >= 1"),
        ("iterations", 2.5, "iterations must be an integer >= 1"),
        ("iterations", True, "iterations must be an integer >= 1"),
        ("bilateral_xy_std", 0.0, "bilateral_xy_std must be > 0"),
        ("bilateral_rgb_std", -5, "bilateral_rgb_std must be > 0"),
        ("gaussian_xy_std", float("nan"), "gaussian_xy_std must be a finite number"),
        ("gaussian_weight", -1.0, "gaussian_weight must be >= 0"),
        ("bilateral_weight", "4", "bilateral_weight must be a finite number"),
    ],
)
def test_invalid_config_names_field_and_valid_values(field, value, message):
    config = CRFConfig(mode="gpu", **{field: value}) if field != "mode" else CRFConfig(mode=value)
    with pytest.raises(CRFConfigError, match=message):
        config.validate()
    with pytest.raises(CRFConfigError, match=message):
        build_crf(config)


def test_defaults_are_deeplab_largefov_values():
    c = CRFConfig().validate()
    assert (c.mode, c.iterations) == ("none", 10)
    assert (c.bilateral_weight, c.bilateral_xy_std, c.bilateral_rgb_std) == (4.0, 121.0, 5.0)
    assert (c.gaussian_weight, c.gaussian_xy_std) == (3.0, 3.0)


def test_build_per_mode():
    assert build_crf(CRFConfig(mode="none")) is None
    assert isinstance(build_crf(CRFConfig(mode="gpu"), device="cpu"), TorchDenseCRF)


@needs_pydensecrf
def test_build_cpu_mode():
    assert isinstance(build_crf(CRFConfig(mode="cpu")), ExactDenseCRF)


def test_cpu_mode_without_pydensecrf_fails_at_build_time(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # makes the import fail
    with pytest.raises(CRFConfigError, match=r"pydensecrf2.*none, cpu, gpu"):
        build_crf(CRFConfig(mode="cpu"))
    assert isinstance(build_crf(CRFConfig(mode="gpu")), TorchDenseCRF)  # other modes unaffected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_mode_with_unusable_device_fails_at_build_time():
    with pytest.raises(CRFConfigError, match=r"cannot use torch device 'cuda'.*none, cpu, gpu"):
        build_crf(CRFConfig(mode="gpu"), device="cuda")


@pytest.mark.parametrize("mode", MODES)
def test_crf_recovers_region_boundary(mode):
    if mode == "cpu" and importlib.util.find_spec("pydensecrf") is None:
        pytest.skip("pydensecrf2 not installed")
    logits, image, labels = two_regions()
    raw_accuracy = (logits.argmax(1)[0].numpy() == labels).mean()
    probs = build_crf(CRFConfig(mode=mode))(logits, image)
    crf_accuracy = (probs.argmax(1)[0].numpy() == labels).mean()
    assert raw_accuracy < 0.92  # measured 0.891
    assert crf_accuracy > 0.99  # measured 1.0 for both modes
    assert crf_accuracy > raw_accuracy + 0.08


@pytest.mark.parametrize("mode", MODES)
def test_output_contract(mode):
    if mode == "cpu" and importlib.util.find_spec("pydensecrf") is None:
        pytest.skip("pydensecrf2 not installed")
    logits, image, _ = two_regions(32, 48)
    crf = build_crf(CRFConfig(mode=mode, iterations=3))
    for logit_input, image_input in ((logits, image), (logits.half(), torch.from_numpy(image))):
        probs = crf(logit_input, image_input)
        assert probs.shape == logits.shape
        assert probs.dtype == torch.float32
        assert probs.device == logits.device
        assert torch.all(probs >= 0)
        torch.testing.assert_close(probs.sum(1), torch.ones(1, 32, 48), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("logits_shape", "image_shape", "image_dtype", "message"),
    [
        ((2, 3, 16, 16), (16, 16, 3), np.uint8, r"\(1, C, H, W\)"),
        ((1, 3, 16, 16), (16, 20, 3), np.uint8, "does not match the logits"),
        ((1, 3, 16, 16), (16, 16, 3), np.float32, "uint8"),
    ],
)
def test_bad_inputs_are_rejected(logits_shape, image_shape, image_dtype, message):
    crf = build_crf(CRFConfig(mode="gpu", iterations=1))
    with pytest.raises(ValueError, match=message):
        crf(torch.zeros(logits_shape), np.zeros(image_shape, image_dtype))


@needs_pydensecrf
def test_gpu_mode_matches_pydensecrf():
    """Both modes run the same lattice algorithm; measured: identical labels, |dp| ~1e-4."""
    rng = np.random.default_rng(3)
    logits = torch.from_numpy(rng.normal(0, 1.5, (1, 5, 48, 80)).astype(np.float32))
    image = rng.integers(0, 256, (6, 10, 3)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    exact = build_crf(CRFConfig(mode="cpu"))(logits, image)
    torch_probs = build_crf(CRFConfig(mode="gpu"))(logits, image)
    agreement = (exact.argmax(1) == torch_probs.argmax(1)).float().mean().item()
    assert agreement >= 0.999
    torch.testing.assert_close(torch_probs, exact, atol=2e-3, rtol=0)


def test_permutohedral_filter_approximates_exact_gaussian():
    """On a pixel grid the lattice filter is within 2 % (measured 0.8 %) of the dense kernel."""
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(32.0), indexing="ij")
    features = torch.stack((xs, ys), -1).reshape(-1, 2) / 3.0
    values = torch.rand(features.shape[0], 3, generator=torch.Generator().manual_seed(0))
    kernel = torch.exp(-0.5 * torch.cdist(features, features) ** 2)
    norm = kernel.sum(1, keepdim=True).rsqrt()
    exact = norm * (kernel @ (norm * values))
    approx = PermutohedralFilter(features)(values)
    assert (approx - exact).norm() / exact.norm() < 0.02

"""HRNetV2-W48 + OCR + hierarchical multi-scale attention: architecture, checkpoints, goldens.

Golden weights are regenerated from seeds as ``../shared/reference/hrnet_ocr/FACTS.md`` section 3
describes (conv weights from per-index seeded generators, other tensors stored), in the official
layout for the single-scale golden and in NVIDIA's layout for the multi-scale one, so both
remappings are exercised too.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import reference
from torch.utils.flop_counter import FlopCounterMode

from seg_perception.models import (
    CheckpointMismatchError,
    ClassCountMismatchError,
    ModelConfigError,
    build_model,
    count_parameters,
    load_checkpoint,
)
from seg_perception.models.checkpoint import load_state_dict_strict
from seg_perception.models.hrnet_ocr import HRNetOCR, MissingScaleAttentionError, SpatialGather

ATOL = 2e-3  # FACTS: thread count / float64 change the logits by up to 2.1e-4


def _seeded_conv(shape: list[int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * math.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))


def official_golden_state() -> dict[str, torch.Tensor]:
    """The golden official state dict as a released file holds it (``model.`` + loss weight)."""
    keys = json.loads(reference("hrnet_ocr", "keys_hrnet_ocr_w48.json").read_text())
    state = {k: _seeded_conv(s, i) for i, (k, s, _) in enumerate(keys) if len(s) == 4}
    state.update(torch.load(reference("hrnet_ocr", "hrnet_ocr_w48_golden_non_conv_tensors.pt")))
    ordered = {f"model.{k}": state[k] for k, _, _ in keys}
    ordered["loss.criterion.weight"] = torch.ones(19)
    return ordered


def nvidia_attention_state() -> dict[str, torch.Tensor]:
    keys = json.loads(reference("hrnet_ocr", "keys_nvidia_ocrnet_HRNet_Mscale.json").read_text())
    state = {
        k: _seeded_conv(s, 100_000 + i)
        for i, (k, s, _) in enumerate(keys)
        if k.startswith("scale_attn.") and len(s) == 4
    }
    state.update(
        torch.load(reference("hrnet_ocr", "nvidia_mscale_golden_scale_attn_non_conv_tensors.pt"))
    )
    return state


@pytest.fixture(scope="module")
def golden_file(tmp_path_factory: pytest.TempPathFactory):
    """The official golden weights saved like a released ``hrnet_ocr_cs_*.pth`` file."""
    path = tmp_path_factory.mktemp("hrnet_ocr") / "hrnet_ocr_official_layout.pth"
    torch.save(official_golden_state(), path)
    return path


@pytest.fixture(scope="module")
def official_model(golden_file) -> HRNetOCR:
    """Single-scale, align_corners=True, loaded from the official layout through the loader."""
    model = build_model("hrnet_ocr", scales=(1.0,), align_corners=True)
    return load_checkpoint(model, golden_file).eval()


@pytest.fixture(scope="module")
def nvidia_model(official_model: HRNetOCR) -> HRNetOCR:
    """Multi-scale, align_corners=False, loaded from NVIDIA's layout (``module.`` stripped)."""
    state = {k: v for k, v in official_model.state_dict().items() if not k.startswith("scale_attn.")}
    state.update(nvidia_attention_state())
    model = build_model("hrnet_ocr", scales=(0.5, 1.0, 2.0), align_corners=False)
    load_state_dict_strict(model, model.remap_checkpoint(state), "<nvidia golden>")
    return model.eval()


def test_parameter_counts_match_the_references() -> None:
    with torch.device("meta"):
        model = build_model("hrnet_ocr")
    assert count_parameters(model) == 72_143_430  # NVIDIA ocrnet.HRNet_Mscale
    assert count_parameters(model) - count_parameters(model.scale_attn) == 70_372_678  # official
    assert count_parameters(model.backbone) == 65_325_120


@pytest.mark.parametrize(
    ("scales", "gflops"),
    [((1.0,), 2595.758), ((0.5, 1.0), 3360.688)],  # FACTS: 2,595.76; 3,824.6 - 463.9 (unused attn)
)
def test_flops_on_meta_device(scales: tuple[float, ...], gflops: float) -> None:
    """Conv/matmul FLOPs at 1024x2048; also proves the forward runs on the meta device."""
    with torch.device("meta"):
        model = build_model("hrnet_ocr", scales=scales).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = model(torch.empty(1, 3, 1024, 2048))
    assert out.shape == (1, 19, 1024, 2048)
    assert counter.get_total_flops() / 1e9 == pytest.approx(gflops, abs=1e-3)


def test_state_dict_layout_is_nvidia_and_official_keys_remap_exactly() -> None:
    nvidia = json.loads(reference("hrnet_ocr", "keys_nvidia_ocrnet_HRNet_Mscale.json").read_text())
    official = json.loads(reference("hrnet_ocr", "keys_hrnet_ocr_w48.json").read_text())
    with torch.device("meta"):
        model = build_model("hrnet_ocr", scales=(1.0,))
        own = model.state_dict()
        assert [(k, list(v.shape)) for k, v in own.items()] == [(k, s) for k, s, _ in nvidia]
        state = {f"model.{k}": torch.empty(s) for k, s, _ in official}
    state["loss.criterion.weight"] = torch.ones(19)
    remapped = model.remap_checkpoint(state)
    assert list(remapped) == list(own)
    assert all(remapped[k].shape == own[k].shape for k in own)


def test_golden_official_single_scale(official_model: HRNetOCR) -> None:
    x = torch.load(reference("hrnet_ocr", "input.pt"))
    golden = torch.load(reference("hrnet_ocr", "output_stride4_aux_and_cls.pt"))
    with torch.no_grad():
        aux, cls = official_model.forward_single_scale(x)
    assert aux.shape == cls.shape == (1, 19, 64, 128)
    torch.testing.assert_close(aux, golden["aux"], atol=ATOL, rtol=0)
    torch.testing.assert_close(cls, golden["cls"], atol=ATOL, rtol=0)
    # The official post-processing; forward() == this is checked on a small input below.
    logits = F.interpolate(cls, size=x.shape[-2:], mode="bilinear", align_corners=True)
    argmax = torch.load(reference("hrnet_ocr", "output_argmax_uint8.pt"))
    agreement = (logits.argmax(1).to(torch.uint8) == argmax).float().mean().item()
    assert agreement > 0.997  # FACTS: 0.12% of pixels have a top-1/top-2 margin below 1e-3


def test_golden_nvidia_hierarchical_multiscale(nvidia_model: HRNetOCR) -> None:
    x = torch.load(reference("hrnet_ocr", "nvidia_mscale_input_128x256.pt"))
    golden = torch.load(reference("hrnet_ocr", "nvidia_mscale_golden_outputs.pt"))
    with torch.no_grad():
        out = nvidia_model.forward_multiscale(x)
    for key in ("pred_1.0x", "pred_0.5x", "attn_1.0x", "attn_0.5x"):
        torch.testing.assert_close(out[key], golden[key], atol=ATOL, rtol=0, msg=key)
    assert "attn_2.0x" not in out  # the largest scale's attention is never used
    assert out["pred_2.0x"].shape == (1, 19, 256, 512)
    torch.testing.assert_close(out["pred"], golden["pred_nscale_0.5_1.0_2.0"], atol=ATOL, rtol=0)


def test_golden_nvidia_two_scale_override(nvidia_model: HRNetOCR) -> None:
    x = torch.load(reference("hrnet_ocr", "nvidia_mscale_input_128x256.pt"))
    golden = torch.load(reference("hrnet_ocr", "nvidia_mscale_golden_outputs.pt"))
    with torch.no_grad():
        out = nvidia_model.forward_multiscale(x, scales=[0.5, 1.0])
    torch.testing.assert_close(out["pred"], golden["pred_two_scale_0.5_1.0"], atol=ATOL, rtol=0)


def test_align_corners_changes_the_function(official_model: HRNetOCR, nvidia_model: HRNetOCR) -> None:
    """Same backbone+head weights; only align_corners differs -> clearly different logits."""
    x = torch.load(reference("hrnet_ocr", "input.pt"))[..., :128, :256]
    with torch.no_grad():
        a = official_model.forward_single_scale(x)[1]
        b = nvidia_model.forward_single_scale(x)[1]
    assert (a - b).abs().max() > 0.1


def test_forward_is_the_configured_inference_at_input_size(
    official_model: HRNetOCR, nvidia_model: HRNetOCR
) -> None:
    x = torch.randn(1, 3, 70, 98, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        aux, cls = official_model.forward_single_scale(x)
        single = official_model(x)
        multi = nvidia_model(x)
        record = nvidia_model.forward_multiscale(x)
    assert official_model.output_stride == nvidia_model.output_stride == 4
    assert aux.shape == cls.shape == (1, 19, 18, 25)  # ceil(70/4), ceil(98/4)
    assert single.shape == multi.shape == (1, 19, 70, 98)
    # scales=(1.0,) is plain HRNet-OCR: the cls logits upsampled with the model's align_corners.
    expected = F.interpolate(cls, size=(70, 98), mode="bilinear", align_corners=True)
    torch.testing.assert_close(single, expected, atol=0, rtol=0)
    torch.testing.assert_close(multi, record["pred"], atol=0, rtol=0)
    assert not torch.allclose(multi, record["pred_1.0x"], atol=1e-2)  # the merge did something


def test_checkpoint_round_trip_nvidia_layout(nvidia_model: HRNetOCR, tmp_path) -> None:
    """NVIDIA's file format: {'state_dict': module.-prefixed keys, numpy metadata, ...}."""
    path = tmp_path / "cityscapes_ocrnet.HRNet_Mscale_test.pth"
    torch.save(
        {
            "epoch": 1, "arch": "network.ocrnet.HRNet_Mscale", "num_classes": 19,
            "mean_iu": np.float64(0.5),
            "state_dict": {f"module.{k}": v for k, v in nvidia_model.state_dict().items()},
        },
        path,
    )
    fresh = load_checkpoint(build_model("hrnet_ocr", scales=(0.5, 1.0)), path).eval()
    x = torch.load(reference("hrnet_ocr", "nvidia_mscale_input_128x256.pt"))[..., :64, :128]
    with torch.no_grad():
        expected = nvidia_model.forward_multiscale(x, scales=(0.5, 1.0))["pred"]
        torch.testing.assert_close(fresh(x), expected, atol=0, rtol=0)


def test_official_checkpoint_needs_single_scale(golden_file) -> None:
    with torch.device("meta"):
        model = build_model("hrnet_ocr", scales=(0.5, 1.0))
    with pytest.raises(MissingScaleAttentionError, match=r"scale_attn\.conv0\.weight.*scales=\(1\.0,\)"):
        load_checkpoint(model, golden_file)
    assert issubclass(MissingScaleAttentionError, CheckpointMismatchError)


def test_wrong_class_count_checkpoint(golden_file) -> None:
    with torch.device("meta"):
        model = build_model("hrnet_ocr", num_classes=21, scales=(1.0,), align_corners=True)
    with pytest.raises(ClassCountMismatchError, match="19 classes"):
        load_checkpoint(model, golden_file)


def test_partial_checkpoint_is_refused(tmp_path) -> None:
    with torch.device("meta"):
        model = build_model("hrnet_ocr", scales=(1.0,))
    state = {f"model.{k}": torch.zeros(v.shape) for k, v in model.ocr.state_dict().items()}
    torch.save(state, tmp_path / "head_only.pth")
    with pytest.raises(CheckpointMismatchError, match="missing key"):
        load_checkpoint(model, tmp_path / "head_only.pth")


@pytest.mark.parametrize(
    "scales", [(0.5, 2.0), (), (1.0, -0.5), (1.0, 1.0), (1.0, float("nan")), "1.0", None]
)
def test_invalid_scales_are_config_errors(scales) -> None:
    with pytest.raises(ModelConfigError):
        build_model("hrnet_ocr", scales=scales)


def test_invalid_align_corners_is_a_config_error() -> None:
    with pytest.raises(ModelConfigError, match="align_corners"):
        build_model("hrnet_ocr", align_corners="false")


def test_spatial_gather_computes_in_float32_under_autocast() -> None:
    """The softmax over H*W positions must not run in reduced precision (FACTS section 5)."""
    g = torch.Generator().manual_seed(0)
    features = torch.rand(1, 8, 128, 256, generator=g).to(torch.bfloat16)
    logits = (torch.randn(1, 19, 128, 256, generator=g) * 3).to(torch.bfloat16)
    gather = SpatialGather()
    expected = gather(features.float(), logits.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = gather(features, logits)
    assert got.dtype == torch.bfloat16 and got.shape == (1, 8, 19, 1)
    torch.testing.assert_close(got, expected.to(torch.bfloat16), atol=0, rtol=0)

"""DeepLabV3+: reference layout and parameter counts, golden output, strides, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import reference

from seg_perception.models import (
    ClassCountMismatchError,
    build_model,
    count_parameters,
    load_checkpoint,
    model_options,
)
from seg_perception.models.deeplabv3plus import InvertedResidual
from seg_perception.models.registry import resolve

#: Parameter counts of VainF/DeepLabV3Plus-Pytorch at 19 classes (reference FACTS.md, measured).
REFERENCE_PARAMS = {"resnet101": 58_753_459, "mobilenetv2": 5_225_203}
KEY_FILES = {"resnet101": "keys_resnet101.json", "mobilenetv2": "keys_mobilenet.json"}
RANDOM_STATE = "deeplabv3plus_mobilenet_os16_random_state.pt"


def _reference_keys(variant: str) -> list[tuple[str, tuple[int, ...], str]]:
    entries = json.loads(reference("deeplabv3plus", KEY_FILES[variant]).read_text())
    return [(key, tuple(shape), dtype) for key, shape, dtype in entries]


def _seeded(variant: str, num_classes: int = 19, **options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("deeplabv3plus", num_classes, variant, **options).eval()


def _decoder_logits(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Model output and the head's stride-4 logits (before the final resize)."""
    captured: list[torch.Tensor] = []
    handle = model.classifier.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        handle.remove()
    return out, captured[0]


def test_registry_entry() -> None:
    entry, variant = resolve("deeplabv3plus")
    assert variant == "resnet101"
    assert set(entry.variants) == {"resnet101", "mobilenetv2"}
    assert model_options("deeplabv3plus", "mobilenetv2") == ("output_stride",)


@pytest.mark.parametrize("variant", ["resnet101", "mobilenetv2"])
def test_parameter_count_equals_reference(variant: str) -> None:
    assert count_parameters(build_model("deeplabv3plus", 19, variant)) == REFERENCE_PARAMS[variant]


@pytest.mark.parametrize("variant", ["resnet101", "mobilenetv2"])
def test_state_dict_layout_equals_reference(variant: str) -> None:
    """Same keys, shapes and dtypes as the reference checkpoints, so they load with no renaming."""
    state = build_model("deeplabv3plus", 19, variant).state_dict()
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
    assert sorted(ours) == sorted(_reference_keys(variant))


def test_resnet101_reference_checkpoint_loads_strictly(tmp_path) -> None:
    """A file shaped like the released ResNet-101 checkpoint (``model_state`` wrapper, numpy
    ``best_score``) loads strictly and every tensor arrives where its key says."""
    g = torch.Generator().manual_seed(0)
    weights = {
        key: torch.randint(0, 5, shape, generator=g) if dtype == "int64"
        else torch.randn(shape, generator=g)
        for key, shape, dtype in _reference_keys("resnet101")
    }
    path = tmp_path / "best_deeplabv3plus_resnet101_cityscapes_os16.pth.tar"
    torch.save({"cur_itrs": 30000, "model_state": weights, "best_score": np.float64(0.762)}, path)
    model = load_checkpoint(build_model("deeplabv3plus", 19, "resnet101"), path)
    loaded = model.state_dict()
    for key in ("backbone.layer4.2.conv3.weight", "classifier.aspp.convs.4.1.weight",
                "classifier.classifier.3.bias", "backbone.bn1.running_var"):
        assert torch.equal(loaded[key], weights[key])


def test_golden_output_matches_reference() -> None:
    """The reference MobileNet model (random BN statistics) on the reference input."""
    model = build_model("deeplabv3plus", 19, "mobilenetv2").eval()
    load_checkpoint(model, reference("deeplabv3plus", RANDOM_STATE))
    x = torch.load(reference("deeplabv3plus", "input.pt"))
    expected_stride4 = torch.load(reference("deeplabv3plus", "output_stride4_pre_upsample.pt"))
    expected_argmax = torch.load(reference("deeplabv3plus", "output_argmax_uint8.pt"))

    out, stride4 = _decoder_logits(model, x)

    torch.testing.assert_close(stride4, expected_stride4, atol=1e-3, rtol=0)
    expected = F.interpolate(expected_stride4, size=x.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)
    mismatch = (out.argmax(1).to(torch.uint8) != expected_argmax).float().mean().item()
    assert mismatch < 0.002  # 0.07% of the reference pixels have a top-2 margin below 1e-3


@pytest.mark.parametrize("variant", ["resnet101", "mobilenetv2"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_strides(variant: str, output_stride: int) -> None:
    model = build_model("deeplabv3plus", 19, variant, output_stride=output_stride).eval()
    assert model.output_stride == 4 and model.encoder_output_stride == output_stride
    x = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        low_level, deep = model.backbone(x)
    assert low_level.shape[-2:] == (32, 64)
    assert deep.shape[-2:] == (128 // output_stride, 256 // output_stride)
    out, stride4 = _decoder_logits(model, x)
    assert stride4.shape == (1, 19, 32, 64)
    assert out.shape == (1, 19, 128, 256)


@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_aspp_rates_follow_output_stride(output_stride: int, rates: tuple[int, ...]) -> None:
    aspp = build_model("deeplabv3plus", 19, "mobilenetv2", output_stride=output_stride).classifier.aspp
    atrous = [branch[0] for branch in aspp.convs[1:4]]
    assert [conv.dilation[0] for conv in atrous] == list(rates)
    assert [conv.padding[0] for conv in atrous] == list(rates)


@pytest.mark.parametrize("output_stride", [4, 32, 0])
@pytest.mark.parametrize("variant", ["resnet101", "mobilenetv2"])
def test_invalid_output_stride_names_valid_values(variant: str, output_stride: int) -> None:
    with pytest.raises(ValueError, match="8, 16"):
        build_model("deeplabv3plus", 19, variant, output_stride=output_stride)


def test_mobilenet_reproduces_reference_padding() -> None:
    """Unpadded stem (256x512 -> 127x255) and blocks that pad their input before the expansion."""
    model = build_model("deeplabv3plus", 19, "mobilenetv2")
    with torch.no_grad():
        stem = model.backbone.low_level_features[0]
        assert stem(torch.randn(1, 3, 256, 512)).shape == (1, 32, 127, 255)
    block = InvertedResidual(8, 8, stride=1, dilation=2, expand_ratio=6).eval()
    with torch.no_grad():
        block.conv[0][1].bias.fill_(3.0)  # expansion of a zero input (and border): ReLU6(3) = 3
        block.conv[1][0].weight.fill_(1.0 / 9)  # depthwise mean filter
        block.conv[2].weight.fill_(1.0)
        out = block(torch.zeros(1, 8, 9, 9))
    # The depthwise conv sees 3 on the padded border too, so the result is spatially uniform;
    # zero padding inside the depthwise conv (torchvision) would darken the border.
    assert out.shape == (1, 8, 9, 9)
    torch.testing.assert_close(out, torch.full_like(out, 3.0 * 48), rtol=1e-4, atol=0)  # BN eps


def test_arbitrary_input_size_gives_input_sized_logits() -> None:
    model = _seeded("mobilenetv2")
    with torch.no_grad():
        assert model(torch.randn(2, 3, 97, 130)).shape == (2, 19, 97, 130)


def test_eval_mode_is_deterministic() -> None:
    x = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    model = _seeded("mobilenetv2")
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_checkpoint_round_trip(tmp_path) -> None:
    model = _seeded("mobilenetv2", output_stride=8)
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(123)
    fresh = build_model("deeplabv3plus", 19, "mobilenetv2", output_stride=8)
    fresh = load_checkpoint(fresh, path).eval()
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))


def test_wrong_class_count_checkpoint_is_rejected() -> None:
    model = build_model("deeplabv3plus", 21, "mobilenetv2")
    with pytest.raises(ClassCountMismatchError) as info:
        load_checkpoint(model, reference("deeplabv3plus", RANDOM_STATE))
    assert (info.value.checkpoint_classes, info.value.model_classes) == (19, 21)

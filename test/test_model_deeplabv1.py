"""DeepLab v1 LargeFOV: size, output stride, determinism, checkpoints (no reference data exists)."""

from __future__ import annotations

import math

import pytest
import torch

from seg_perception.models import (
    ClassCountMismatchError,
    build_model,
    count_parameters,
    list_models,
    load_checkpoint,
)

#: Table 2 of the paper: DeepLab-LargeFOV has 20.5 M parameters (PASCAL VOC, 21 classes).
PAPER_PARAMS_21 = 20.5e6


def vgg_largefov_params(num_classes: int) -> int:
    """Parameters from the layer list: 13 VGG 3x3 convs, fc6 3x3 512->1024, fc7, fc8, all biased."""
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    total = sum(9 * cin * cout + cout for cin, cout in convs)
    total += 9 * 512 * 1024 + 1024  # fc6
    total += 1024 * 1024 + 1024  # fc7
    return total + 1024 * num_classes + num_classes  # fc8


def pooled(size: int) -> int:
    """Caffe (ceil-mode) output size of a 3x3, stride 2, pad 1 max pool."""
    return math.ceil((size - 1) / 2) + 1


def pre_upsample_shape(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    shapes = []
    handle = model.fc8.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    with torch.no_grad():
        model(x)
    handle.remove()
    return shapes[0]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("deeplabv1", 19).eval()


def test_registered_as_default_variant():
    entry = list_models()["deeplabv1"]
    assert entry.default_variant == "largefov"
    assert "1412.7062" in entry.paper


@pytest.mark.parametrize(("classes", "expected"), [(21, 20_505_429), (19, 20_503_379)])
def test_parameter_count(classes, expected):
    n = count_parameters(build_model("deeplabv1", classes))
    assert n == vgg_largefov_params(classes) == expected
    assert abs(n - PAPER_PARAMS_21) / PAPER_PARAMS_21 < 0.02


def test_caffe_layer_names(model):
    keys = list(model.state_dict())
    blocks = zip(range(1, 6), (2, 2, 3, 3, 3), strict=False)
    expected_layers = [f"conv{b}_{i}" for b, n in blocks for i in range(1, n + 1)]
    expected_layers += ["fc6", "fc7", "fc8"]
    assert keys == [f"{layer}.{p}" for layer in expected_layers for p in ("weight", "bias")]
    assert model.fc6.dilation == (12, 12) and model.fc6.out_channels == 1024
    assert model.conv5_1.dilation == (2, 2) and model.conv4_3.dilation == (1, 1)


@pytest.mark.parametrize(("height", "width"), [(65, 129), (64, 96)])
def test_output_stride_8_and_input_resolution(model, height, width):
    x = torch.randn(1, 3, height, width)
    assert model.output_stride == 8
    expected = (1, 19, pooled(pooled(pooled(height))), pooled(pooled(pooled(width))))
    assert pre_upsample_shape(model, x) == expected
    if (height - 1) % 8 == 0:  # caffe-aligned sizes 8k+1 give exactly k+1 logits
        assert expected[2:] == ((height - 1) // 8 + 1, (width - 1) // 8 + 1)
    with torch.no_grad():
        assert model(x).shape == (1, 19, height, width)


def test_eval_mode_is_deterministic():
    x = torch.randn(1, 3, 41, 57, generator=torch.Generator().manual_seed(1))
    m = build_model("deeplabv1", 19).eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)  # dropout off in eval


def test_checkpoint_round_trip(model, tmp_path):
    path = tmp_path / "deeplabv1.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    torch.manual_seed(123)
    fresh = load_checkpoint(build_model("deeplabv1", 19).eval(), path)
    x = torch.randn(1, 3, 33, 49)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_caffe_classifier_name_is_remapped(model, tmp_path):
    """Converted DeepLab VOC caffemodels call the classifier ``fc8_voc12``."""
    state = {
        (k.replace("fc8.", "fc8_voc12.") if k.startswith("fc8.") else k): v
        for k, v in model.state_dict().items()
    }
    path = tmp_path / "caffe_converted.pth"
    torch.save(state, path)
    fresh = load_checkpoint(build_model("deeplabv1", 19), path)
    torch.testing.assert_close(fresh.fc8.weight, model.fc8.weight, rtol=0, atol=0)


def test_wrong_class_count_checkpoint(tmp_path):
    path = tmp_path / "voc.pth"
    torch.save(build_model("deeplabv1", 21).state_dict(), path)
    with pytest.raises(ClassCountMismatchError) as info:
        load_checkpoint(build_model("deeplabv1", 19), path)
    assert (info.value.checkpoint_classes, info.value.model_classes) == (21, 19)

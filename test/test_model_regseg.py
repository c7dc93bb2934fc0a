"""RegSeg matches the official implementation: keys, parameter count, golden logits."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import reference
from torch.overrides import TorchFunctionMode

from seg_perception.models import build_model, count_parameters, load_checkpoint


@pytest.fixture(scope="module")
def golden_model() -> torch.nn.Module:
    model = build_model("regseg").eval()
    load_checkpoint(model, reference("regseg", "regseg_exp48_decoder26_cityscapes_random_state.pt"))
    return model


def test_parameter_count_matches_paper_model() -> None:
    assert count_parameters(build_model("regseg", variant="exp48_decoder26")) == 3_334_951


def test_state_dict_keys_and_shapes_match_official_checkpoint() -> None:
    expected = [(k, s) for k, s, _ in json.loads(reference("regseg", "keys.json").read_text())]
    ours = [(k, list(v.shape)) for k, v in build_model("regseg").state_dict().items()]
    assert ours == expected


def test_golden_logits_match_official_output(golden_model: torch.nn.Module) -> None:
    x = torch.load(reference("regseg", "input.pt"))
    pre_upsample = torch.load(reference("regseg", "output_stride4_pre_upsample.pt"))
    expected = F.interpolate(pre_upsample, size=x.shape[-2:], mode="bilinear", align_corners=False)
    with torch.no_grad():
        out = golden_model(x)
    assert out.shape == (1, 19, 256, 512)
    assert (out - expected).abs().max().item() <= 5e-4
    agreement = (out.argmax(1) == expected.argmax(1)).float().mean().item()
    assert agreement > 0.995


def test_channel_split_uses_static_slicing_not_tensor_split() -> None:
    """tensor_split exports to SplitToSequence, which TensorRT rejects."""
    called: set[str] = set()

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            called.add(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    model = build_model("regseg").eval()
    with torch.no_grad(), Recorder():
        model(torch.randn(1, 3, 64, 128))
    assert "tensor_split" not in called and "split" not in called and "chunk" not in called
    assert "cat" in called  # the split halves are concatenated: the split path did run


@pytest.mark.parametrize("size", [(64, 128), (65, 129), (120, 160)])
def test_output_is_input_size_for_any_size(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_model("regseg").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 19, *size)


def test_exp53_decoder29_is_wider_and_follows_official_layout() -> None:
    model = build_model("regseg", variant="exp53_decoder29")
    state = model.state_dict()
    assert count_parameters(model) == 6_131_579
    assert state["body.stage4.0.conv1.weight"].shape == (48, 32, 1, 1)  # two stride-4 blocks
    assert state["body.stage8.5.conv1.weight"].shape == (120, 120, 1, 1)  # six stride-8 blocks
    assert state["body.stage16.13.conv2.convs.1.weight"].shape == (192, 24, 3, 3)  # group width 24
    assert state["decoder.classifier.weight"].shape == (19, 128, 1, 1)
    assert model.body.stage16[13].conv2.convs[1].dilation == (14, 14)


def test_seeded_model_is_deterministic_and_round_trips(tmp_path) -> None:
    torch.manual_seed(3)
    model = build_model("regseg", num_classes=7).eval()
    x = torch.randn(1, 3, 64, 96)
    path = tmp_path / "regseg.pt"
    torch.save(model.state_dict(), path)
    fresh = load_checkpoint(build_model("regseg", num_classes=7).eval(), path)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
        assert torch.equal(model(x), model(x))

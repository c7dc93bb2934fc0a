"""RefineNet: architecture pinned by a hand-derived parameter count, strides, block semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg_perception.models import (
    ClassCountMismatchError,
    build_model,
    count_parameters,
    load_checkpoint,
    model_options,
)
from seg_perception.models.refinenet import (
    ChainedResidualPooling,
    MultiResolutionFusion,
    RefineNet,
    ResidualConvUnit,
)

RESNET101_BACKBONE = 42_500_160  # ResNet-101 without fc (torchvision/timm layout)


def _conv3x3(cin: int, cout: int, bias: bool = False) -> int:
    return 9 * cin * cout + (cout if bias else 0)


def _rcu(c: int) -> int:
    return _conv3x3(c, c, bias=True) + _conv3x3(c, c)


def _block(cin: int, c: int, previous: int | None) -> int:
    adapt = _conv3x3(cin, c) + 2 * _rcu(c)
    fusion = 0 if previous is None else _conv3x3(c, c) + _conv3x3(previous, c)
    crp = 2 * _conv3x3(c, c)
    return adapt + fusion + crp + _rcu(c)


EXPECTED_CHILD_PARAMS = {
    "backbone": RESNET101_BACKBONE,
    "refinenet4": _block(2048, 512, None),
    "refinenet3": _block(1024, 256, 512),
    "refinenet2": _block(512, 256, 256),
    "refinenet1": _block(256, 256, 256),
    "classifier": 2 * _rcu(256) + _conv3x3(256, 19, bias=True),
}


@pytest.fixture(scope="module")
def model() -> RefineNet:
    torch.manual_seed(0)
    return build_model("refinenet", 19).eval()


def _run_with_hooks(model: nn.Module, x: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, dict]:
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: captured.__setitem__(n, o)) for n in names
    ]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, captured


def test_registry_entry() -> None:
    assert model_options("refinenet") == ()
    assert model_options("refinenet", "resnet101") == ()


def test_parameter_count_matches_hand_derived_breakdown(model: RefineNet) -> None:
    children = {n: count_parameters(m) for n, m in model.named_children() if count_parameters(m)}
    assert children == EXPECTED_CHILD_PARAMS
    assert count_parameters(model) == sum(EXPECTED_CHILD_PARAMS.values()) == 95_632_467


def test_structure(model: RefineNet) -> None:
    rcus = [n for n, m in model.named_modules() if isinstance(m, ResidualConvUnit)]
    assert len(rcus) == 4 * 3 + 2  # 2 adaptive + 1 output per block, 2 before the classifier
    crps = [m for m in model.modules() if isinstance(m, ChainedResidualPooling)]
    assert len(crps) == 4 and all(len(c.convs) == 2 for c in crps)
    assert model.refinenet4.fusion is None
    assert all(len(getattr(model, f"refinenet{i}").fusion.convs) == 2 for i in (1, 2, 3))
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(n.startswith("backbone.") for n in norms)  # no BN in the refinement


def test_shapes_at_each_stride(model: RefineNet) -> None:
    assert model.output_stride == 4
    names = ["refinenet4", "refinenet3", "refinenet2", "refinenet1", "classifier"]
    out, feats = _run_with_hooks(model, torch.randn(1, 3, 128, 256), names)
    assert feats["refinenet4"].shape == (1, 512, 4, 8)
    assert feats["refinenet3"].shape == (1, 256, 8, 16)
    assert feats["refinenet2"].shape == (1, 256, 16, 32)
    assert feats["refinenet1"].shape == (1, 256, 32, 64)
    assert feats["classifier"].shape == (1, 19, 32, 64)
    assert out.shape == (1, 19, 128, 256)
    expected = F.interpolate(feats["classifier"], size=(128, 256), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_arbitrary_input_size(model: RefineNet) -> None:
    with torch.no_grad():
        assert model(torch.randn(1, 3, 100, 150)).shape == (1, 19, 100, 150)


def _identity_kernel(conv: nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(conv.out_channels):
            conv.weight[c, c, 1, 1] = 1.0
        if conv.bias is not None:
            conv.bias.zero_()


def test_residual_conv_unit_is_preactivated_residual() -> None:
    rcu = ResidualConvUnit(4)
    x = torch.randn(1, 4, 6, 6)
    for conv in (rcu.conv1, rcu.conv2):
        _identity_kernel(conv)
    with torch.no_grad():
        torch.testing.assert_close(rcu(x), x + x.relu())  # x + conv(relu(conv(relu(x))))
        nn.init.zeros_(rcu.conv2.weight)
        assert torch.equal(rcu(x), x)


def test_chained_residual_pooling_chains_pool_then_conv() -> None:
    crp = ChainedResidualPooling(3)
    for conv in crp.convs:
        _identity_kernel(conv)
    x = torch.randn(1, 3, 9, 11)
    pool = nn.MaxPool2d(5, stride=1, padding=2)
    r = x.relu()
    with torch.no_grad():
        torch.testing.assert_close(crp(x), r + pool(r) + pool(pool(r)))


def test_fusion_upsamples_coarse_paths_and_sums() -> None:
    fusion = MultiResolutionFusion((2, 2), 2)
    for conv in fusion.convs:
        _identity_kernel(conv)
    fine, coarse = torch.randn(1, 2, 8, 10), torch.randn(1, 2, 4, 5)
    expected = fine + F.interpolate(coarse, size=(8, 10), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(fusion((fine, coarse)), expected)


def test_eval_mode_is_deterministic(model: RefineNet) -> None:
    x = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_checkpoint_round_trip_and_class_mismatch(model: RefineNet, tmp_path) -> None:
    path = tmp_path / "refinenet.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(99)
    fresh = load_checkpoint(build_model("refinenet", 19), path).eval()
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    with pytest.raises(ClassCountMismatchError):
        load_checkpoint(build_model("refinenet", 21), path)

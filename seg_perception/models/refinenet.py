"""RefineNet (Lin, Milan, Shen, Reid, "RefineNet: Multi-Path Refinement Networks for
High-Resolution Semantic Segmentation", CVPR 2017).

Instead of dilating the backbone, RefineNet keeps ResNet's strides 4..32 and refines the coarse
semantics with the finer features through four cascaded RefineNet blocks (RefineNet-4 on stride 32
alone, then RefineNet-3/2/1 each fusing the previous block's output with the stride-16/8/4
features). A block is: adaptive convs (3x3 reduction + 2 residual conv units per ResNet path),
multi-resolution fusion (3x3 conv per path, upsample to the finest, sum), chained residual pooling
and an output RCU. There is no BatchNorm in the refinement path, as in the paper.

Where the paper leaves details open we follow the authors' MatConvNet code (guosheng/refinenet):
the reduction and fusion convs are 3x3 without bias, an RCU's first conv has a bias and its second
none, dropout 0.5 on the layer3/layer4 features and before the classifier (training only), and the
classifier is a 3x3 conv with bias. Block count, CRP stages (2) and the 1+2 output RCUs follow
the paper. No public PyTorch checkpoint of this exact layout exists; weights come from training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import RESNET101_CHANNELS, resnet101_features
from .registry import register_model

PAPER = "Lin et al. 2017, CVPR, arXiv:1611.06612"

#: Feature dimension of RefineNet-4 (on the stride-32 features) and of the three other blocks.
REFINENET4_CHANNELS = 512
REFINENET_CHANNELS = 256

#: Pooling blocks in each chained residual pooling (the paper's Fig. 2(d) and default config).
CRP_STAGES = 2


def _conv3x3(in_channels: int, out_channels: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


class ResidualConvUnit(nn.Module):
    """RCU: ReLU -> 3x3 conv -> ReLU -> 3x3 conv, plus the input (pre-activation, no BN)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels, channels, bias=True)
        self.conv2 = _conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(x))
        return x + self.conv2(F.relu(out))


class MultiResolutionFusion(nn.Module):
    """Adapt every path with a 3x3 conv, upsample all to the finest path's size and sum.

    The first path is the finest (the ResNet features); the others are the coarser outputs of
    previous blocks.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv3x3(c, out_channels) for c in in_channels)

    def forward(self, paths: Sequence[torch.Tensor]) -> torch.Tensor:
        size = paths[0].shape[-2:]
        out = self.convs[0](paths[0])
        for conv, path in zip(self.convs[1:], paths[1:], strict=False):
            out = out + F.interpolate(conv(path), size=size, mode="bilinear", align_corners=False)
        return out


class ChainedResidualPooling(nn.Module):
    """ReLU, then a chain of (5x5 max-pool stride 1 -> 3x3 conv) whose outputs are all summed.

    Each stage pools the previous stage's output, so the chain covers growing windows of context
    and the convs learn how much of each to add back to the features.
    """

    def __init__(self, channels: int, stages: int = CRP_STAGES) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.convs = nn.ModuleList(_conv3x3(channels, channels) for _ in range(stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        path = x
        for conv in self.convs:
            path = conv(self.pool(path))
            x = x + path
        return x


class RefineNetBlock(nn.Module):
    """One RefineNet-m: adaptive convs on the ResNet path, fusion, chained pooling, output RCU.

    ``previous_channels`` is the channel count of the coarser block's output, or ``None`` for
    RefineNet-4, which has a single input and so no fusion.
    """

    def __init__(self, in_channels: int, channels: int, previous_channels: int | None) -> None:
        super().__init__()
        self.adapt = nn.Sequential(
            _conv3x3(in_channels, channels), ResidualConvUnit(channels), ResidualConvUnit(channels)
        )
        self.fusion = (
            None if previous_channels is None
            else MultiResolutionFusion((channels, previous_channels), channels)
        )
        self.crp = ChainedResidualPooling(channels)
        self.output_conv = ResidualConvUnit(channels)

    def forward(self, feature: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        x = self.adapt(feature)
        if self.fusion is not None:
            x = self.fusion((x, previous))
        return self.output_conv(self.crp(x))


class RefineNet(nn.Module):
    """ResNet-101 -> RefineNet-4..1 -> 2 RCUs -> dropout -> 3x3 classifier -> resize to input."""

    output_stride = 4

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.backbone = resnet101_features(out_indices=(1, 2, 3, 4))
        self.dropout = nn.Dropout(0.5)
        c4, c8, c16, c32 = RESNET101_CHANNELS[1:]
        self.refinenet4 = RefineNetBlock(c32, REFINENET4_CHANNELS, None)
        self.refinenet3 = RefineNetBlock(c16, REFINENET_CHANNELS, REFINENET4_CHANNELS)
        self.refinenet2 = RefineNetBlock(c8, REFINENET_CHANNELS, REFINENET_CHANNELS)
        self.refinenet1 = RefineNetBlock(c4, REFINENET_CHANNELS, REFINENET_CHANNELS)
        self.classifier = nn.Sequential(
            ResidualConvUnit(REFINENET_CHANNELS),
            ResidualConvUnit(REFINENET_CHANNELS),
            nn.Dropout(0.5),
            nn.Conv2d(REFINENET_CHANNELS, num_classes, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f4, f8, f16, f32 = self.backbone(x)
        # The authors drop out the two widest ResNet outputs (layer3, layer4) during training.
        y = self.refinenet4(self.dropout(f32))
        y = self.refinenet3(self.dropout(f16), y)
        y = self.refinenet2(f8, y)
        y = self.refinenet1(f4, y)
        logits = self.classifier(y)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model(
    "refinenet", "resnet101", default=True, paper=PAPER,
    description="RefineNet: 4-cascaded multi-path refinement of ResNet-101 strides 32..4",
)
def refinenet_resnet101(num_classes: int = 19) -> RefineNet:
    """RefineNet on ResNet-101 (v1.5, as in timm/torchvision), logits at stride 4."""
    return RefineNet(num_classes)

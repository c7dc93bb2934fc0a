"""RegSeg (Gao, "Rethinking Dilated Convolution for Real-time Semantic Segmentation", 2021).

The body stacks D blocks, Y blocks whose grouped 3x3 convolution is split into channel groups
with different dilation rates, so the field of view grows to thousands of pixels at stride 16
without a stride-32 stage. The decoder fuses strides 16, 8 and 4. Module names follow the
official checkpoints (``stem``, ``body.stageN``, ``decoder.headN``/``convN``/``classifier``), so
they load with strict key matching.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

PAPER = "Gao 2021, arXiv:2111.09957"


class ConvBnAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional ReLU, named ``conv``/``bn`` like the checkpoints."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
        padding: int = 0, act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        if act:
            self.act = nn.ReLU(inplace=True)


class SqueezeExcitation(nn.Module):
    """Channel gate: global pool -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid -> scale."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.conv2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = torch.sigmoid(self.conv2(F.relu(self.conv1(scale), inplace=True)))
        return x * scale


class SplitDilatedConv(nn.Module):
    """Grouped 3x3 convs with one dilation per equal channel split (the D block's core).

    Channels are split with static slices rather than ``tensor_split`` so that ONNX export
    produces plain ``Slice`` ops that TensorRT accepts.
    """

    def __init__(self, channels: int, dilations: Sequence[int], group_width: int, stride: int) -> None:
        super().__init__()
        if channels % len(dilations) or (channels // len(dilations)) % group_width:
            raise ValueError(f"{channels} channels cannot be split over dilations {list(dilations)}")
        self.split = channels // len(dilations)
        self.convs = nn.ModuleList(
            nn.Conv2d(
                self.split, self.split, 3, stride=stride, padding=d, dilation=d,
                groups=self.split // group_width, bias=False,
            )
            for d in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.split
        # A channel slice of a channels_last (NHWC) tensor is strided; made contiguous in the
        # input's own layout here, cuDNN gets a dense NHWC input instead of converting it to
        # NCHW and back for each split (the engine runs channels_last on CUDA).
        layout = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous() else torch.contiguous_format
        return torch.cat(
            [conv(x[:, i * s:(i + 1) * s].contiguous(memory_format=layout)) for i, conv in enumerate(self.convs)],
            dim=1,
        )


class Shortcut(nn.Module):
    """Projection shortcut; stride 2 uses average pooling then a 1x1 conv (ResNet-D style)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.avg = nn.AvgPool2d(2, 2, ceil_mode=True) if stride != 1 else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.avg(x)))


class DBlock(nn.Module):
    """The paper's dilated block: 1x1 -> split dilated grouped 3x3 -> SE -> 1x1, plus shortcut."""

    def __init__(
        self, in_channels: int, out_channels: int, dilations: Sequence[int], group_width: int,
        stride: int,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        if len(dilations) == 1:
            d = dilations[0]
            self.conv2 = nn.Conv2d(
                out_channels, out_channels, 3, stride=stride, padding=d, dilation=d,
                groups=out_channels // group_width, bias=False,
            )
        else:
            self.conv2 = SplitDilatedConv(out_channels, dilations, group_width, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.se = SqueezeExcitation(out_channels, in_channels // 4)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = Shortcut(in_channels, out_channels, stride) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        x = self.bn3(self.conv3(self.se(x)))
        return F.relu(x + shortcut, inplace=True)


#: Dilations of the stride-16 blocks after the first one, shared by exp48 and exp53.
STAGE16_DILATIONS: list[list[int]] = [[1], [1, 2]] + 4 * [[1, 4]] + 7 * [[1, 14]]


class RegSegBody(nn.Module):
    """D-block backbone returning features at strides 4, 8 and 16.

    ``stage4``/``stage8`` give (out_channels, number of blocks); the first block of each stage has
    stride 2. ``stage16`` opens with a stride-2 block, continues with one block per entry of
    ``dilations`` and ends with a block that widens to ``out16`` channels.
    """

    def __init__(
        self, group_width: int, stage4: tuple[int, int], stage8: tuple[int, int],
        width16: int, out16: int, dilations: Sequence[Sequence[int]] = STAGE16_DILATIONS,
    ) -> None:
        super().__init__()
        c4, n4 = stage4
        c8, n8 = stage8
        self.stage4 = self._stage(32, c4, n4, group_width)
        self.stage8 = self._stage(c4, c8, n8, group_width)
        self.stage16 = nn.Sequential(
            DBlock(c8, width16, [1], group_width, 2),
            *(DBlock(width16, width16, d, group_width, 1) for d in dilations[:-1]),
            DBlock(width16, out16, dilations[-1], group_width, 1),
        )
        self.channels = {"4": c4, "8": c8, "16": out16}

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, group_width: int) -> nn.Module:
        first = DBlock(in_channels, out_channels, [1], group_width, 2)
        if blocks == 1:
            return first  # exp48's stride-4 stage is a bare block: keys ``body.stage4.conv1...``
        rest = (DBlock(out_channels, out_channels, [1], group_width, 1) for _ in range(blocks - 1))
        return nn.Sequential(first, *rest)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x4 = self.stage4(x)
        x8 = self.stage8(x4)
        return {"4": x4, "8": x8, "16": self.stage16(x8)}


class RegSegDecoder(nn.Module):
    """Fuse stride 16 into 8 (sum), refine, upsample to stride 4, concat the stride-4 head."""

    def __init__(self, num_classes: int, channels: dict[str, int], width: int, width4: int, out: int) -> None:
        super().__init__()
        self.head16 = ConvBnAct(channels["16"], width)
        self.head8 = ConvBnAct(channels["8"], width)
        self.head4 = ConvBnAct(channels["4"], width4)
        self.conv8 = ConvBnAct(width, out, 3, padding=1)
        self.conv4 = ConvBnAct(out + width4, out, 3, padding=1)
        self.classifier = nn.Conv2d(out, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x16 = self.head16(features["16"])
        x8 = self.head8(features["8"])
        x4 = self.head4(features["4"])
        x8 = x8 + F.interpolate(x16, size=x8.shape[-2:], mode="bilinear", align_corners=False)
        x8 = self.conv8(x8)
        x8 = F.interpolate(x8, size=x4.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.conv4(torch.cat((x8, x4), dim=1)))


class RegSeg(nn.Module):
    """Stem -> D-block body -> decoder; returns logits at the input resolution."""

    output_stride = 4

    def __init__(self, body: RegSegBody, decoder_widths: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.stem = ConvBnAct(3, 32, 3, stride=2, padding=1)
        self.body = body
        self.decoder = RegSegDecoder(num_classes, body.channels, *decoder_widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.body(self.stem(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model(
    "regseg", "exp48_decoder26", default=True, paper=PAPER,
    description="RegSeg: D-block body with dilations up to 14, 3-branch decoder (the paper's model)",
)
def regseg_exp48_decoder26(num_classes: int = 19) -> RegSeg:
    """The paper's RegSeg: 3.34 M parameters, 78.3 mIoU on Cityscapes test."""
    body = RegSegBody(group_width=16, stage4=(48, 1), stage8=(128, 3), width16=256, out16=320)
    return RegSeg(body, (128, 8, 64), num_classes)


@register_model("regseg", "exp53_decoder29")
def regseg_exp53_decoder29(num_classes: int = 19) -> RegSeg:
    """The larger RegSeg of the official README (group width 24, 79.5 mIoU on Cityscapes test)."""
    body = RegSegBody(group_width=24, stage4=(48, 2), stage8=(120, 6), width16=336, out16=384)
    return RegSeg(body, (256, 16, 128), num_classes)

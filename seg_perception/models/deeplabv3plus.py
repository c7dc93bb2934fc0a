"""DeepLabV3+ (Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
Segmentation", ECCV 2018).

An atrous encoder (dilated ResNet-101 or MobileNetV2, output stride 16 or 8) feeds ASPP: a 1x1
branch, three 3x3 atrous branches and an image-pooling branch, concatenated and projected to 256
channels. The decoder upsamples that to stride 4, concatenates a 48-channel projection of the
stride-4 backbone features, refines with a 3x3 conv and classifies; the logits are resized
bilinearly to the input.

Layout and parameter names follow the widely used PyTorch re-implementation
VainF/DeepLabV3Plus-Pytorch (``backbone.*``, ``classifier.project``/``aspp``/``classifier``), whose
released Cityscapes checkpoints therefore load strictly with no renaming. Its MobileNetV2 pads
differently from torchvision's, which we reproduce because the checkpoints depend on it (see
:class:`InvertedResidual`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import check_output_stride, resnet101_features
from .registry import register_model

PAPER = "Chen et al. 2018, ECCV, arXiv:1802.02611"
DESCRIPTION = "DeepLabV3+: atrous encoder + ASPP, decoder with stride-4 low-level features"

#: Encoder output strides DeepLabV3+ supports (the paper trains at 16 and evaluates at 8 or 16).
OUTPUT_STRIDES = (8, 16)

#: ASPP atrous rates at encoder output stride 16; they double at stride 8 to keep the same
#: field of view in input pixels.
ASPP_RATES_OS16 = (6, 12, 18)


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    """The three ASPP atrous rates for an encoder output stride of 16 or 8."""
    return tuple(r * 16 // output_stride for r in ASPP_RATES_OS16)


class ASPPPooling(nn.Sequential):
    """Image-level features: global average pool -> 1x1 conv -> BN -> ReLU -> broadcast back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return F.interpolate(super().forward(x), size=size, mode="bilinear", align_corners=False)


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1
) -> nn.Sequential:
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: [1x1, three 3x3 atrous, image pooling] -> concat -> 1x1."""

    def __init__(self, in_channels: int, rates: tuple[int, ...], out_channels: int = 256) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [_conv_bn_relu(in_channels, out_channels)]
            + [_conv_bn_relu(in_channels, out_channels, 3, rate) for rate in rates]
            + [ASPPPooling(in_channels, out_channels)]
        )
        self.project = nn.Sequential(
            nn.Conv2d(out_channels * len(self.convs), out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the deep feature plus the decoder that fuses it with stride-4 features.

    The low-level features are projected to only 48 channels so that they do not outweigh the 256
    semantic channels of ASPP (the paper's ablation, Table 1).
    """

    def __init__(
        self, in_channels: int, low_level_channels: int, num_classes: int, rates: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.project = _conv_bn_relu(low_level_channels, 48)
        self.aspp = ASPP(in_channels, rates)
        self.classifier = nn.Sequential(
            nn.Conv2d(48 + 256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1),
        )

    def forward(self, low_level: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        low_level = self.project(low_level)
        deep = F.interpolate(
            self.aspp(deep), size=low_level.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.classifier(torch.cat((low_level, deep), dim=1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block with the reference's explicit padding.

    The block zero-pads its *input* by the dilation and then runs expand 1x1 -> depthwise 3x3
    (no padding) -> project 1x1. The expansion therefore also sees the zero border, so the border
    the depthwise conv sees is ReLU6(BN(0)), not zero as with torchvision's in-conv padding. The
    released DeepLabV3+ MobileNet checkpoints were trained this way; padding like torchvision
    changes their logits by up to ~4.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, dilation: int, expand_ratio: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, dilation, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.padding = (dilation,) * 4
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(F.pad(x, self.padding))
        return x + out if self.use_residual else out


def _conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
    groups: int = 1,
) -> nn.Sequential:
    """Conv without padding (the callers pad) -> BN -> ReLU6."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=0, dilation=dilation,
            groups=groups, bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


#: MobileNetV2 stages: (expansion t, channels c, blocks n, stride s), from the MobileNetV2 paper.
MOBILENETV2_SETTING = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 (width 1.0) without its 1280-channel head, split at stride 4.

    ``low_level_features`` are modules 0-3 (stem + blocks 1-3, 24 ch at stride 4) and
    ``high_level_features`` modules 4-17 (320 ch at ``output_stride``); the indices are those of
    the original ``features`` sequence, as in the reference checkpoints. The stem's stride-2 conv
    has no padding (a 256x512 input gives 127x255), again as in the reference.

    Once the running stride reaches ``output_stride``, later stages keep stride 1 and multiply
    the dilation by their stride instead; the first block of such a stage keeps the previous
    dilation.
    """

    low_level_channels = 24
    out_channels = 320

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, stride=2)]
        in_channels, current_stride, dilation = 32, 2, 1
        for t, c, n, s in MOBILENETV2_SETTING:
            previous_dilation = dilation
            if current_stride == output_stride:
                stride, dilation = 1, dilation * s
            else:
                stride, current_stride = s, current_stride * s
            for i in range(n):
                if i == 0:
                    blocks.append(InvertedResidual(in_channels, c, stride, previous_dilation, t))
                else:
                    blocks.append(InvertedResidual(in_channels, c, 1, dilation, t))
                in_channels = c
        self.low_level_features = nn.Sequential(*blocks[:4])
        self.high_level_features = nn.Sequential(
            OrderedDict((str(i), block) for i, block in enumerate(blocks) if i >= 4)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        low_level = self.low_level_features(x)
        return [low_level, self.high_level_features(low_level)]


class DeepLabV3Plus(nn.Module):
    """Backbone -> :class:`DeepLabV3PlusHead` -> bilinear resize to the input size.

    ``backbone(x)`` returns ``[stride-4 features, deepest features]``. ``output_stride`` is the
    stride of the logits before the final resize (always 4, the decoder's resolution);
    ``encoder_output_stride`` is the stride of the deepest features (16 or 8).
    """

    output_stride = 4

    def __init__(
        self, backbone: nn.Module, low_level_channels: int, deep_channels: int, num_classes: int,
        encoder_output_stride: int,
    ) -> None:
        super().__init__()
        self.encoder_output_stride = encoder_output_stride
        self.backbone = backbone
        self.classifier = DeepLabV3PlusHead(
            deep_channels, low_level_channels, num_classes, aspp_rates(encoder_output_stride)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low_level, deep = self.backbone(x)
        logits = self.classifier(low_level, deep)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model(
    "deeplabv3plus", "resnet101", default=True, paper=PAPER,
    description=DESCRIPTION,
)
def deeplabv3plus_resnet101(num_classes: int = 19, *, output_stride: int = 16) -> DeepLabV3Plus:
    """DeepLabV3+ on a dilated ResNet-101 (58.75 M parameters at 19 classes).

    ``output_stride`` (16 or 8) is the encoder's; 8 costs about 3x the backbone compute.
    """
    check_output_stride(output_stride, OUTPUT_STRIDES)
    backbone = resnet101_features(out_indices=(1, 4), output_stride=output_stride)
    return DeepLabV3Plus(backbone, 256, 2048, num_classes, output_stride)


@register_model("deeplabv3plus", "mobilenetv2", paper=PAPER, description=DESCRIPTION)
def deeplabv3plus_mobilenetv2(num_classes: int = 19, *, output_stride: int = 16) -> DeepLabV3Plus:
    """DeepLabV3+ on MobileNetV2 (5.23 M parameters at 19 classes), reference padding."""
    check_output_stride(output_stride, OUTPUT_STRIDES)
    backbone = MobileNetV2Encoder(output_stride)
    return DeepLabV3Plus(
        backbone, MobileNetV2Encoder.low_level_channels, MobileNetV2Encoder.out_channels,
        num_classes, output_stride,
    )

"""HRNetV2 backbone (Wang et al., "Deep High-Resolution Representation Learning for Visual
Recognition", TPAMI 2020).

HRNet keeps a stride-4 branch alive through the whole network and adds one lower-resolution
branch per stage (strides 8, 16, 32); at the end of every multi-resolution module each branch
receives the sum of all branches, resampled to its own resolution. The "V2" segmentation
variant upsamples the three lower branches to stride 4 and concatenates all four, so the head
sees ``15 * width`` channels (720 for W48) at stride 4.

Module and parameter names follow the official HRNet-Semantic-Segmentation code, so its
backbone keys load unchanged. Upward fusion resizes bilinearly *to the target branch's size*
(not by a fixed factor, as timm's classification HRNet does with nearest upsampling): that keeps
any input size working and matches the segmentation checkpoints. ``align_corners`` of those
resizes differs between checkpoint families, so it is a constructor argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _resize(x: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 conv (no bias) -> BN -> ReLU, indexed ``0``/``1``/``2`` like the official keys."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity shortcut (all HRNet branches use it)."""

    expansion = 1

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + x, inplace=True)


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1, expansion 4), used only by the stride-4 ``layer1``."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )
            if in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(out + shortcut, inplace=True)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks followed by all-to-all fusion.

    Fusion into branch ``i`` from branch ``j``: identity when ``j == i``; 1x1 conv + BN then a
    bilinear resize to branch ``i``'s size when ``j`` is lower resolution; ``i - j`` stride-2 3x3
    convs + BN when ``j`` is higher resolution (ReLU between them, not after the last, which
    changes the channel count). The sum is rectified.
    """

    def __init__(self, channels: Sequence[int], num_blocks: int, align_corners: bool) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(c) for _ in range(num_blocks))) for c in channels
        )
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(self._fuse_layer(channels, i, j) for j in range(len(channels)))
            for i in range(len(channels))
        )

    @staticmethod
    def _fuse_layer(channels: Sequence[int], i: int, j: int) -> nn.Module:
        if j == i:
            return nn.Identity()
        if j > i:
            return nn.Sequential(
                nn.Conv2d(channels[j], channels[i], 1, bias=False), nn.BatchNorm2d(channels[i])
            )
        steps: list[nn.Module] = [_conv_bn_relu(channels[j], channels[j], 2) for _ in range(i - j - 1)]
        steps.append(
            nn.Sequential(
                nn.Conv2d(channels[j], channels[i], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[i])
            )
        )
        return nn.Sequential(*steps)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=False)]
        out = []
        for i, fuse in enumerate(self.fuse_layers):
            size = xs[i].shape[-2:]
            # Same summation order as the reference (input 0 first), for bitwise-close results.
            y = fuse[0](xs[0])
            for j in range(1, len(xs)):
                contribution = fuse[j](xs[j])
                if j > i:
                    contribution = _resize(contribution, size, self.align_corners)
                y = y + contribution
            out.append(F.relu(y))
        return out


@dataclass(frozen=True)
class StageSpec:
    """One HRNet stage: ``modules`` HighResolutionModules over branches of ``channels``."""

    modules: int
    channels: tuple[int, ...]
    blocks: int = 4


def hrnetv2_stages(width: int) -> tuple[StageSpec, StageSpec, StageSpec]:
    """Stages 2-4 of HRNetV2-W``width`` (branch widths w, 2w, 4w, 8w; 1, 4 and 3 modules)."""
    return (
        StageSpec(1, (width, 2 * width)),
        StageSpec(4, (width, 2 * width, 4 * width)),
        StageSpec(3, (width, 2 * width, 4 * width, 8 * width)),
    )


class HRNetV2(nn.Module):
    """HRNetV2 backbone: returns the four branches upsampled to stride 4 and concatenated."""

    output_stride = 4

    def __init__(self, width: int = 48, *, align_corners: bool) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(
            Bottleneck(64, 64), *(Bottleneck(256, 64) for _ in range(3))
        )
        stages = hrnetv2_stages(width)
        previous: tuple[int, ...] = (256,)
        for index, spec in enumerate(stages, start=2):
            setattr(self, f"transition{index - 1}", self._transition(previous, spec.channels))
            setattr(
                self, f"stage{index}",
                nn.Sequential(
                    *(HighResolutionModule(spec.channels, spec.blocks, align_corners)
                      for _ in range(spec.modules))
                ),
            )
            previous = spec.channels
        self.out_channels = sum(previous)

    @staticmethod
    def _transition(previous: Sequence[int], current: Sequence[int]) -> nn.ModuleList:
        """Adapt the branches of one stage to the next.

        Existing branches pass through (or get a 3x3 conv when their width changes, only after
        ``layer1``); the new lowest-resolution branch is a stride-2 3x3 conv of the previous
        lowest one. The extra ``Sequential`` level around it reproduces the official key names.
        """
        layers: list[nn.Module] = []
        for i, channels in enumerate(current):
            if i < len(previous):
                same = previous[i] == channels
                layers.append(nn.Identity() if same else _conv_bn_relu(previous[i], channels, 1))
            else:
                layers.append(nn.Sequential(_conv_bn_relu(previous[-1], channels, 2)))
        return nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        xs = [self.layer1(x)]
        for transition, stage in (
            (self.transition1, self.stage2),
            (self.transition2, self.stage3),
            (self.transition3, self.stage4),
        ):
            xs = stage([t(xs[min(i, len(xs) - 1)]) for i, t in enumerate(transition)])
        size = xs[0].shape[-2:]
        return torch.cat([xs[0]] + [_resize(x, size, self.align_corners) for x in xs[1:]], dim=1)

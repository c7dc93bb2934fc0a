"""Backbone factories shared by the segmentation models.

The ResNets come from ``timm`` (``features_only``), built with ``pretrained=False``: a model never
downloads weights at construction; trained weights arrive through the checkpoint loader. timm's
``resnet101`` is the torchvision layout (ResNet v1.5, stride on the 3x3 conv) with the same
parameter names (``conv1``, ``bn1``, ``layer1``..``layer4``), so checkpoints of implementations
built on torchvision's ResNet load without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
from torch import nn

#: Output strides a dilated ResNet supports: 32 (plain), 16 (layer4 dilated), 8 (layer3 too).
RESNET_OUTPUT_STRIDES = (8, 16, 32)

#: Channels of the ResNet-101 stage outputs, indexed like timm's ``out_indices`` (0 = stem).
RESNET101_CHANNELS = (64, 256, 512, 1024, 2048)


def check_output_stride(output_stride: int, valid: Sequence[int]) -> int:
    """Return ``output_stride`` or raise ``ValueError`` naming the valid choices."""
    if output_stride not in valid:
        raise ValueError(
            f"output_stride must be one of {', '.join(map(str, valid))}, got {output_stride!r}"
        )
    return output_stride


def resnet101_features(out_indices: Sequence[int], output_stride: int = 32) -> nn.Module:
    """ResNet-101 returning a list with the outputs of the stages in ``out_indices``.

    Index 1..4 are ``layer1``..``layer4`` (strides 4, 8, 16, 32 without dilation). With
    ``output_stride`` 16 (8) the stride of layer4 (and layer3) is replaced by dilation; as in
    torchvision, the first block of a dilated stage keeps the previous dilation.
    """
    check_output_stride(output_stride, RESNET_OUTPUT_STRIDES)
    return timm.create_model(
        "resnet101",
        pretrained=False,
        features_only=True,
        out_indices=tuple(out_indices),
        output_stride=output_stride,
    )

"""HRNet-OCR's attention scores cannot overflow in half precision, and RegSeg's
channel splits hand cuDNN dense channels_last inputs."""

from __future__ import annotations

import torch

from seg_perception.models.hrnet_ocr import ObjectAttentionBlock
from seg_perception.models.regseg import SplitDilatedConv


def test_attention_scores_do_not_overflow_in_half_precision() -> None:
    torch.manual_seed(0)
    block = ObjectAttentionBlock(channels=32, key_channels=256).eval()
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.fill_(0.05)  # positive features of ~400 per key channel
    pixels = torch.full((1, 32, 4, 4), 8.0)
    objects = torch.full((1, 32, 19, 1), 8.0)
    with torch.no_grad():
        query = block.f_pixel(pixels.half().float())
        key = block.f_object(objects)
        unscaled = torch.bmm(query.flatten(2).transpose(1, 2), key.flatten(2)).max()
        assert unscaled > torch.finfo(torch.float16).max  # the old order overflowed in fp16
        out = block.half()(pixels.half(), objects.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_split_dilated_conv_gets_contiguous_channels_last_slices() -> None:
    conv = SplitDilatedConv(channels=32, dilations=(1, 2), group_width=16, stride=1).eval()
    seen: list[bool] = []
    for branch in conv.convs:
        branch.register_forward_pre_hook(
            lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(1, 32, 8, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = conv(x)
        reference = conv(x.contiguous())
    assert seen[:2] == [True, True]
    assert torch.allclose(out, reference, atol=1e-5)

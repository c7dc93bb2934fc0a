"""HRNetV2-W48 + OCR with hierarchical multi-scale attention.

* OCR, object-contextual representations (Yuan, Chen, Wang, "Object-Contextual Representations
  for Semantic Segmentation", ECCV 2020): a coarse ("soft object region") segmentation from an
  auxiliary head pools the pixel features into one feature per class; every pixel then attends
  over those class features and the resulting context is concatenated to its own feature.
* Hierarchical multi-scale attention (Tao, Sapra, Catanzaro, "Hierarchical Multi-Scale Attention
  for Semantic Segmentation", arXiv:2005.10821, 2020): a small head predicts, per pixel, how much
  to trust the current scale; scales are merged pairwise from the largest down, so attention is
  learnt between adjacent scales only and any scale list can be used at inference.

Module names follow NVIDIA's ``ocrnet.HRNet_Mscale`` (``backbone``, ``ocr``, ``scale_attn``), so
its checkpoints load unchanged; :meth:`HRNetOCR.remap_checkpoint` converts the official HRNet-OCR
layout (``model.``-prefixed flat state dict) as well. The two families were trained with different
``align_corners`` for every bilinear resize, which changes the logits substantially (FACTS:
up to 4.4 on the same weights), so it is a per-checkpoint option.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointMismatchError
from .hrnet import HRNetV2
from .registry import ModelConfigError, register_model

PAPER = (
    "Yuan et al., ECCV 2020 (OCR); Wang et al., TPAMI 2020 (HRNetV2); "
    "Tao, Sapra, Catanzaro, arXiv:2005.10821, 2020 (hierarchical multi-scale attention)"
)


class BNReLU(nn.Sequential):
    """BatchNorm + ReLU as one unit; gives the ``.1.0.`` key level of the reference heads."""

    def __init__(self, channels: int) -> None:
        super().__init__(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def _conv1x1_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 1, bias=False), BNReLU(out_channels)]


def _float32_only(device_type: str) -> contextlib.AbstractContextManager[None]:
    """Autocast off (where it exists), so float32 ops stay float32."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class SpatialGather(nn.Module):
    """Class features: softmax of the coarse logits over all positions, per class, then the
    softmax-weighted sum of the pixel features. Returns ``(N, C, K, 1)``.

    The softmax and the weighted sum run over ``H * W`` positions (131,072 at stride 4 of
    1024x2048). In half precision most weights become subnormal and the sum drifts, so this op
    always computes in float32 (autocast disabled) and casts back to the input dtype.
    """

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        n, c = features.shape[:2]
        device = features.device.type
        with _float32_only(device):
            probs = torch.softmax(logits.float().flatten(2), dim=2)  # N, K, HW
            pixels = features.float().flatten(2).transpose(1, 2)  # N, HW, C
            objects = torch.bmm(probs, pixels)  # N, K, C
        return objects.to(features.dtype).transpose(1, 2).reshape(n, c, -1, 1)


class ObjectAttentionBlock(nn.Module):
    """Pixel-to-object attention: query from pixels, key/value from the class features."""

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.f_pixel = nn.Sequential(
            *_conv1x1_bn_relu(channels, key_channels), *_conv1x1_bn_relu(key_channels, key_channels)
        )
        self.f_object = nn.Sequential(
            *_conv1x1_bn_relu(channels, key_channels), *_conv1x1_bn_relu(key_channels, key_channels)
        )
        self.f_down = nn.Sequential(*_conv1x1_bn_relu(channels, key_channels))
        self.f_up = nn.Sequential(*_conv1x1_bn_relu(key_channels, channels))

    def forward(self, pixels: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        n, _, h, w = pixels.shape
        query = self.f_pixel(pixels).flatten(2).transpose(1, 2)  # N, HW, Ck
        key = self.f_object(objects).flatten(2)  # N, Ck, K
        value = self.f_down(objects).flatten(2).transpose(1, 2)  # N, K, Ck
        # Scores in float32, the query scaled BEFORE the product: in fp16 a dot product over
        # 256 key channels of ReLU features can pass 65,504 (inf, then NaN after the softmax).
        # Only HW x K scores (K = classes), so float32 costs next to nothing.
        with _float32_only(pixels.device.type):
            scores = torch.bmm(query.float() * self.key_channels**-0.5, key.float())
            similarity = torch.softmax(scores, dim=-1)
            context = torch.bmm(similarity, value.float()).to(value.dtype)
        context = context.transpose(1, 2).reshape(n, self.key_channels, h, w)
        return self.f_up(context)


class SpatialOCR(nn.Module):
    """Object context, concatenated before the pixel features, fused by a 1x1 conv."""

    def __init__(self, channels: int, key_channels: int, dropout: float) -> None:
        super().__init__()
        self.object_context_block = ObjectAttentionBlock(channels, key_channels)
        self.conv_bn_dropout = nn.Sequential(
            *_conv1x1_bn_relu(2 * channels, channels), nn.Dropout2d(dropout)
        )

    def forward(self, pixels: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        context = self.object_context_block(pixels, objects)
        return self.conv_bn_dropout(torch.cat([context, pixels], dim=1))


class OCRHead(nn.Module):
    """Auxiliary soft-region head, 3x3 pixel-feature conv, gather, distribute, classifier.

    Returns ``(cls, aux, features)`` at the backbone's stride; ``features`` (the 512-channel OCR
    output) also feeds the scale-attention head.
    """

    def __init__(
        self, in_channels: int, num_classes: int, mid_channels: int = 512, key_channels: int = 256,
        dropout: float = 0.05,
    ) -> None:
        super().__init__()
        self.conv3x3_ocr = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 3, 1, 1), BNReLU(mid_channels)
        )
        self.ocr_gather_head = SpatialGather()
        self.ocr_distri_head = SpatialOCR(mid_channels, key_channels, dropout)
        self.cls_head = nn.Conv2d(mid_channels, num_classes, 1)
        self.aux_head = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 1), BNReLU(in_channels),
            nn.Conv2d(in_channels, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        aux = self.aux_head(x)
        pixels = self.conv3x3_ocr(x)
        objects = self.ocr_gather_head(pixels, aux)
        features = self.ocr_distri_head(pixels, objects)
        return self.cls_head(features), aux, features


def scale_attention_head(in_channels: int = 512, bottleneck: int = 256) -> nn.Sequential:
    """Per-pixel weight in (0, 1) of the current scale versus the larger scales merged so far."""
    return nn.Sequential(OrderedDict([
        ("conv0", nn.Conv2d(in_channels, bottleneck, 3, 1, 1, bias=False)),
        ("bn0", nn.BatchNorm2d(bottleneck)),
        ("re0", nn.ReLU(inplace=True)),
        ("conv1", nn.Conv2d(bottleneck, bottleneck, 3, 1, 1, bias=False)),
        ("bn1", nn.BatchNorm2d(bottleneck)),
        ("re1", nn.ReLU(inplace=True)),
        ("conv2", nn.Conv2d(bottleneck, 1, 1, bias=False)),
        ("sig", nn.Sigmoid()),
    ]))


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """Validate an inference scale list; the merge is anchored at 1.0, so it must be present."""
    try:
        values = tuple(float(s) for s in scales)
    except (TypeError, ValueError) as exc:
        raise ModelConfigError(f"scales must be a list of numbers, got {scales!r}") from exc
    if 1.0 not in values:
        raise ModelConfigError(f"scales must include 1.0 (the output resolution), got {list(values)}")
    if any(not math.isfinite(s) or s <= 0 for s in values) or len(set(values)) != len(values):
        raise ModelConfigError(f"scales must be distinct positive numbers, got {list(values)}")
    return values


# Official HRNet-OCR head names -> ours (NVIDIA's BNReLU wrapper adds a level / shifts an index).
_OFFICIAL_HEAD_RENAMES = (
    (re.compile(r"^conv3x3_ocr\.1\."), "conv3x3_ocr.1.0."),
    (re.compile(r"^aux_head\.1\."), "aux_head.1.0."),
    (re.compile(r"^aux_head\.3\."), "aux_head.2."),
)
_OFFICIAL_HEAD_PREFIXES = ("conv3x3_ocr.", "ocr_distri_head.", "cls_head.", "aux_head.")


class MissingScaleAttentionError(CheckpointMismatchError):
    """A checkpoint without the attention head was loaded into a multi-scale model."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__("<checkpoint>", missing=missing, unexpected=[], wrong_shape=[])
        self.args = (
            f"the checkpoint has no multi-scale attention head ({len(missing)} missing key(s): "
            f"{', '.join(missing)}); it is a single-scale HRNet-OCR checkpoint (official "
            f"HRNet-OCR or NVIDIA ocrnet.HRNet): build the model with scales=(1.0,), or load an "
            f"NVIDIA ocrnet.HRNet_Mscale checkpoint for multi-scale inference",
        )


class HRNetOCR(nn.Module):
    """HRNetV2 + OCR with a scale-attention head; ``forward`` returns input-resolution logits.

    With ``scales == (1.0,)`` this is plain HRNet-OCR (the attention head is kept so that one
    state-dict layout serves both, but it is not run). With more scales, inference follows NVIDIA's
    ``nscale_forward``: passes run from the largest scale down and each merges into the running
    prediction with its attention. Logits are merged, never probabilities; the auxiliary logits,
    which NVIDIA also merges for its training loss, are not needed at inference and are skipped.
    """

    output_stride = 4

    def __init__(
        self, num_classes: int = 19, *, scales: Sequence[float] = (0.5, 1.0, 2.0),
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.scales = check_scales(scales)
        self.align_corners = align_corners
        self.backbone = HRNetV2(48, align_corners=align_corners)
        self.ocr = OCRHead(self.backbone.out_channels, num_classes)
        self.scale_attn = scale_attention_head()

    def forward_single_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(aux, cls)`` logits at stride 4, exactly what the official model returns."""
        cls, aux, _ = self.ocr(self.backbone(x))
        return aux, cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.scales) == 1:
            _, cls = self.forward_single_scale(x)
            return self._resize(cls, x.shape[-2:])
        return self._merge_scales(x, self.scales, None)

    def forward_multiscale(
        self, x: torch.Tensor, scales: Sequence[float] | None = None
    ) -> dict[str, torch.Tensor]:
        """Hierarchical inference that also returns each scale's logits and attention.

        Keys: ``pred`` (merged logits at the input size), ``pred_{s}x`` (logits of scale ``s``
        at that scale's input size) and ``attn_{s}x`` for every scale except the largest, whose
        attention the merge never uses. ``scales`` overrides the model's list for this call.
        """
        record: dict[str, torch.Tensor] = {}
        record["pred"] = self._merge_scales(
            x, self.scales if scales is None else check_scales(scales), record
        )
        return record

    def _resize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=self.align_corners)

    def _scale_pass(
        self, x: torch.Tensor, with_attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits and attention of one scale, both resized to that scale's input size."""
        cls, _, features = self.ocr(self.backbone(x))
        size = x.shape[-2:]
        attention = self._resize(self.scale_attn(features), size) if with_attention else None
        return self._resize(cls, size), attention

    def _merge_scales(
        self, x: torch.Tensor, scales: Sequence[float], record: dict[str, torch.Tensor] | None
    ) -> torch.Tensor:
        pred: torch.Tensor | None = None
        for s in sorted(scales, reverse=True):
            xs = x if s == 1.0 else F.interpolate(
                x, scale_factor=s, mode="bilinear", align_corners=self.align_corners,
                recompute_scale_factor=True,
            )
            cls, attention = self._scale_pass(xs, with_attention=pred is not None)
            if record is not None:
                record[f"pred_{s}x"] = cls
                if attention is not None:
                    record[f"attn_{s}x"] = attention
            if pred is None:
                pred = cls
            elif s >= 1.0:
                # Larger scales so far: bring the running prediction down to this scale.
                pred = self._resize(pred, cls.shape[-2:])
                pred = attention * cls + (1 - attention) * pred
            else:
                # Smaller scale: weight at low resolution, then bring weight and term up.
                size = pred.shape[-2:]
                pred = self._resize(attention * cls, size) + (1 - self._resize(attention, size)) * pred
        assert pred is not None
        return pred

    def remap_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept official HRNet-OCR and NVIDIA (ocrnet.HRNet / HRNet_Mscale) state dicts.

        * Official (``hrnet_ocr_cs_*.pth``): flat, every key prefixed ``model.`` plus the loss's
          class weights ``loss.criterion.weight`` (dropped). Backbone keys gain ``backbone.``,
          head keys ``ocr.`` with the three renames of NVIDIA's BN+ReLU wrapper.
        * NVIDIA: already our layout once the loader has removed ``state_dict``/``module.``.

        Neither the official files nor NVIDIA's single-scale ``ocrnet.HRNet`` have the attention
        head. That is fine for ``scales == (1.0,)``, which never runs it (the model's own,
        unused, attention weights are kept); a multi-scale model raises
        :class:`MissingScaleAttentionError` naming the missing ``scale_attn`` keys.
        """
        state = {k: v for k, v in state.items() if not k.startswith("loss.")}
        if state and all(k.startswith("model.") for k in state):
            state = {k[len("model."):]: v for k, v in state.items()}
        if not any(k.startswith(("backbone.", "ocr.")) for k in state):
            state = {self._official_to_ours(k): v for k, v in state.items()}
        own_attention = {
            f"scale_attn.{k}": v for k, v in self.scale_attn.state_dict().items()
        }
        if not any(k in state for k in own_attention):
            if len(self.scales) > 1:
                raise MissingScaleAttentionError(list(own_attention))
            state.update(own_attention)
        return state

    @staticmethod
    def _official_to_ours(key: str) -> str:
        if not key.startswith(_OFFICIAL_HEAD_PREFIXES):
            return f"backbone.{key}"
        for pattern, replacement in _OFFICIAL_HEAD_RENAMES:
            key = pattern.sub(replacement, key)
        return f"ocr.{key}"


@register_model(
    "hrnet_ocr", "w48", default=True, paper=PAPER,
    description="HRNetV2-W48 + OCR with hierarchical multi-scale attention (NVIDIA HRNet_Mscale)",
)
def hrnet_ocr_w48(
    num_classes: int = 19, *, scales: Sequence[float] = (0.5, 1.0, 2.0), align_corners: bool = False
) -> HRNetOCR:
    """HRNetV2-W48 + OCR + attention head: 72.1 M parameters (70.4 M without the attention head).

    ``scales``: inference scales, must include 1.0; ``(1.0,)`` is plain single-scale HRNet-OCR.
    ``align_corners``: False for NVIDIA checkpoints (the default, as is the multi-scale default
    that only NVIDIA checkpoints can run), True for the official HRNet-OCR checkpoints.
    """
    if not isinstance(align_corners, bool):
        raise ModelConfigError(f"align_corners must be true or false, got {align_corners!r}")
    return HRNetOCR(num_classes, scales=check_scales(scales), align_corners=align_corners)

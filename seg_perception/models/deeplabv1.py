"""DeepLab v1 LargeFOV (Chen et al., "Semantic Image Segmentation with Deep Convolutional Nets and
Fully Connected CRFs", ICLR 2015).

VGG-16 made dense: pool4 and pool5 keep stride 1 so the logits stay at output stride 8, conv5
compensates with dilation 2, and fc6 becomes a 3x3 convolution with dilation 12 and 1024 channels
(the "LargeFOV" field of view at a fraction of the fully convolutional VGG's fc6 cost). The paper
then sharpens the coarse logits with a fully connected CRF; here that is a separate,
model-independent stage (:mod:`seg_perception.crf`).

Layers are named like the DeepLab caffe prototxt (``conv1_1`` ... ``conv5_3``, ``fc6``, ``fc7``,
``fc8``), so a caffemodel converted to a PyTorch state dict loads with strict key matching;
:meth:`DeepLabV1LargeFOV.remap_checkpoint` renames DeepLab's VOC classifier ``fc8_voc12``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

PAPER = "Chen, Papandreou, Kokkinos, Murphy, Yuille, ICLR 2015, arXiv:1412.7062"

#: VGG-16 blocks: (output channels, number of 3x3 convolutions).
VGG16_BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
#: Stride of pool1 ... pool5; the last two keep the resolution (output stride 8, not 32).
POOL_STRIDES: tuple[int, ...] = (2, 2, 2, 1, 1)
#: Dilation of the convolutions of each block: conv5 sees the stride-16 grid it was trained on.
BLOCK_DILATIONS: tuple[int, ...] = (1, 1, 1, 1, 2)
#: Names that public DeepLab checkpoints give the classifier, mapped to ours.
CLASSIFIER_ALIASES: tuple[str, ...] = ("fc8_voc12",)


class DeepLabV1LargeFOV(nn.Sequential):
    """Dense VGG-16 -> fc6 (3x3, dilation 12) -> fc7 (1x1) -> fc8 classifier -> bilinear upsample.

    The children are the caffe layers in order, so ``state_dict`` keys are the caffe layer names.
    Pooling uses ``ceil_mode=True`` because caffe's pooling rounds the output size up; with it an
    input of ``8k + 1`` pixels gives ``k + 1`` logits whose first and last samples sit on the first
    and last pixels, the layout the DeepLab "Interp" layer (``align_corners=True``) expects.
    """

    output_stride = 8

    def __init__(self, num_classes: int = 21) -> None:
        super().__init__()
        self.num_classes = num_classes
        in_channels = 3
        for block, ((channels, convs), stride, dilation) in enumerate(
            zip(VGG16_BLOCKS, POOL_STRIDES, BLOCK_DILATIONS, strict=False), start=1
        ):
            for i in range(1, convs + 1):
                conv = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation)
                self.add_module(f"conv{block}_{i}", conv)
                self.add_module(f"relu{block}_{i}", nn.ReLU(inplace=True))
                in_channels = channels
            self.add_module(f"pool{block}", nn.MaxPool2d(3, stride, padding=1, ceil_mode=True))
        self.fc6 = nn.Conv2d(in_channels, 1024, 3, padding=12, dilation=12)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Conv2d(1024, 1024, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(0.5)
        self.fc8 = nn.Conv2d(1024, num_classes, 1)
        # A small classifier init keeps an untrained model's logits near zero (uniform softmax).
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.zeros_(self.fc8.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)

    def remap_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename DeepLab's dataset-specific classifier (``fc8_voc12.*``) to ``fc8.*``.

        Every other key of a converted DeepLab-LargeFOV caffemodel already matches.
        """
        remapped = {}
        for key, value in state.items():
            layer, _, rest = key.partition(".")
            remapped[f"fc8.{rest}" if layer in CLASSIFIER_ALIASES else key] = value
        return remapped


@register_model(
    "deeplabv1", "largefov", default=True, paper=PAPER,
    description="DeepLab v1 LargeFOV: dense VGG-16, fc6 3x3 dilation 12 (1024 ch), output stride 8",
)
def deeplabv1_largefov(num_classes: int = 19) -> DeepLabV1LargeFOV:
    """The paper's DeepLab-LargeFOV: 20.5 M parameters with 21 (PASCAL VOC) classes."""
    return DeepLabV1LargeFOV(num_classes)

"""``seg-perception`` as the distributed training tests start it under torchrun.

Two additions to the real command, both for tests only:

* a tiny segmentation network with batch norms, ``tiny_bn``: comparing two processes with one
  needs a network whose float32 gradients are well conditioned; RegSeg at random init is not (its
  float32 gradients differ from float64 ones by about 1 %, more than any two summation orders of
  the same maths differ from each other), so weights after a few steps can only be compared loosely;
* ``FAIL_RANK`` / ``FAIL_AT_ITERATION``: that rank raises when it starts that iteration, as a lost
  GPU or an out-of-memory kill would end it.
"""

from __future__ import annotations

import os
import sys

import torch.nn.functional as F
from torch import nn

from seg_perception.cli import main
from seg_perception.models import list_models
from seg_perception.models.registry import register_model
from seg_perception.training import trainer


class TinyBnNet(nn.Module):
    """Three conv + batch norm + ReLU layers (stride 4 in all) and a 1x1 classifier."""

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout, stride in ((3, 8, 2), (8, 16, 2), (16, 16, 1)):
            layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        return F.interpolate(self.classifier(self.body(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)


if "tiny_bn" not in list_models():
    register_model("tiny_bn", "test", description="test network")(lambda num_classes=19: TinyBnNet(num_classes))

if "FAIL_RANK" in os.environ and int(os.environ.get("RANK", "0")) == int(os.environ["FAIL_RANK"]):
    _learning_rate = trainer.learning_rate
    _fail_at = int(os.environ["FAIL_AT_ITERATION"])

    def _failing_learning_rate(iteration: int, *args: float) -> float:
        if iteration == _fail_at:
            raise RuntimeError(f"injected failure: rank {os.environ['RANK']} lost its device at iteration {iteration}")
        return _learning_rate(iteration, *args)

    trainer.learning_rate = _failing_learning_rate

if __name__ == "__main__":
    sys.exit(main())

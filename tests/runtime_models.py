"""Small models shared by the runtime tests."""

from __future__ import annotations

from timm.models.resnet import BasicBlock, ResNet
from torch import nn

import trp_zoo

INPUT_SIZE = (1, 28, 28)


def tiny_resnet() -> nn.Module:
    """A narrow one-block-per-stage timm ResNet for 28x28 grey images, with its data config."""
    model = ResNet(
        BasicBlock,
        (1, 1, 1, 1),
        num_classes=10,
        in_chans=1,
        stem_width=16,
        channels=(16, 32, 32, 64),
    )
    model.pretrained_cfg = {
        "input_size": INPUT_SIZE,
        "mean": (0.2860,),
        "std": (0.3530,),
        "first_conv": "conv1",
        "classifier": "fc",
    }
    return model.eval()


def tiny_factorized(scheme: str = "channel", rank: int = 8) -> nn.Module:
    return trp_zoo.decompose(tiny_resnet(), scheme, rank=rank).eval()

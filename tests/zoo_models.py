"""Small factorized timm models and checkpoints for the zoo and hub tests."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

import trp_zoo

INPUT_SIZE = (1, 28, 28)
PRETRAINED_CFG = {"input_size": INPUT_SIZE, "mean": (0.2860,), "std": (0.3530,), "crop_pct": 1.0}
METRICS = {"top1": 88.5, "dense_top1": 89.0, "dataset": "fashion-mnist", "split": "test"}
PROVENANCE = {
    "recipe": "recipes/fashion_mnist_resnet18.py",
    "command": "python recipes/fashion_mnist_resnet18.py --scheme channel",
    "data": "Fashion-MNIST",
    "date": "2026-01-02",
    "epochs": 1,
}


@functools.cache
def _tiny(seed: int, scheme: str) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    dense = timm.create_model("resnet18", channels=(8, 16, 32, 64), in_chans=1, num_classes=10)
    for p in dense.parameters():  # random BN affine parameters too, so every tensor matters
        p.data.normal_(0, 0.3, generator=generator)
    return trp_zoo.decompose(dense, scheme, rank=2, method="gram").eval()


def tiny_factorized(seed: int = 0, scheme: str = "channel") -> nn.Module:
    """A narrow timm resnet18 (1 input channel, 10 classes) factorized at rank 2, in eval mode."""
    return copy.deepcopy(_tiny(seed, scheme))


def save_tiny(path: Path, model: nn.Module | None = None, **kwargs: Any) -> Path:
    """Save a tiny factorized model with the Fashion-MNIST settings a recipe would pass."""
    args: dict[str, Any] = dict(
        metrics=METRICS, provenance=PROVENANCE, pretrained_cfg=PRETRAINED_CFG
    )
    args.update(kwargs)
    return trp_zoo.save_pretrained(model if model is not None else tiny_factorized(), path, **args)


def probe() -> torch.Tensor:
    """A fixed input batch."""
    return torch.linspace(-2, 2, 2 * 28 * 28).reshape(2, *INPUT_SIZE)


@torch.no_grad()
def outputs(model: nn.Module) -> torch.Tensor:
    return model.eval()(probe())

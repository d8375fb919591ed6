"""Model definitions registered with timm (importing this package registers them)."""

from .cifar_resnet import CifarResNet

__all__ = ["CifarResNet"]

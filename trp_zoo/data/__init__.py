"""Data sets the recipes and benchmarks train on."""

from .fashion_mnist import FASHION_MNIST_DIRS, find_fashion_mnist, load_fashion_mnist

__all__ = ["FASHION_MNIST_DIRS", "find_fashion_mnist", "load_fashion_mnist"]

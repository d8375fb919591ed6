"""Data pipelines for the recipes: Fashion-MNIST (IDX), CIFAR-10 (python batches), ImageNet
(ImageFolder with timm's transforms).

Augmentation is a pure function of ``(seed, epoch, sample index)``: ``SeededDataset``
reseeds the random generators before each sample, so a run resumed mid-epoch, or run
on a different number of workers, sees exactly the same images.
"""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2

from ..data import fashion_mnist
from ..errors import DataError
from ..models.cifar_resnet import CIFAR10_MEAN, CIFAR10_STD

DATASETS = ("fashion_mnist", "cifar10", "imagenet")
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

CIFAR_LAYOUT = (
    "expected the CIFAR-10 python version: a directory (or its parent holding "
    "'cifar-10-batches-py') with data_batch_1 ... data_batch_5 and test_batch, each a "
    "pickled dict with b'data' (N x 3072 uint8) and b'labels'"
)
IMAGENET_LAYOUT = (
    "expected an ImageFolder layout: DIR/train/<class>/<image> and DIR/val/<class>/<image> "
    "with the same class folders in both"
)


@dataclass
class DataBundle:
    """Train and validation sets plus what a model card needs to know about them."""

    name: str
    train: Dataset[Any]
    val: Dataset[Any]
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    label_names: tuple[str, ...] | None = None
    extra_cfg: dict[str, Any] = field(default_factory=dict)


class TensorImageDataset(Dataset[tuple[Tensor, int]]):
    """Images held in memory as a ``uint8 [N, C, H, W]`` tensor."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor]):
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


class SeededDataset(Dataset[Any]):
    """Makes the wrapped dataset's random transforms depend only on (seed, epoch, index)."""

    def __init__(self, base: Dataset[Any], seed: int) -> None:
        self.base, self.seed, self.epoch = base, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        sample_seed = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed % (2**63))
            random.seed(sample_seed)
            try:
                return self.base[index]
            finally:
                random.setstate(py_state)


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, sharded over ranks, that can start mid-epoch."""

    def __init__(
        self, size: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's order and skip its first ``skip`` samples of this rank."""
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> list[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        if self.world_size > 1 and self.shuffle:  # pad so every rank takes equal steps
            pad = (-len(order)) % self.world_size
            order += order[:pad]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.skip)


def _image_transforms(
    size: int, pad: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[v2.Compose, v2.Compose]:
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    train = v2.Compose([v2.RandomCrop(size, padding=pad), v2.RandomHorizontalFlip(), *to_float])
    return train, v2.Compose(to_float)


def fashion_mnist_data(
    data_dir: str | os.PathLike[str] | None, download: bool = False
) -> DataBundle:
    """Fashion-MNIST at 28x28, one channel."""
    root: str | os.PathLike[str] | None = data_dir
    if download and data_dir is not None:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(data_dir), train=True, download=True)
        FashionMNIST(str(data_dir), train=False, download=True)
    try:
        folder = fashion_mnist.find_fashion_mnist(root)
        train_x, train_y = fashion_mnist.load_fashion_mnist("train", folder)
        test_x, test_y = fashion_mnist.load_fashion_mnist("test", folder)
    except (FileNotFoundError, ValueError) as err:
        raise DataError(str(err)) from None
    mean, std = (fashion_mnist.MEAN,), (fashion_mnist.STD,)
    train_t, eval_t = _image_transforms(28, 2, mean, std)
    return DataBundle(
        name="fashion-mnist",
        train=TensorImageDataset(train_x, train_y, train_t),
        val=TensorImageDataset(test_x, test_y, eval_t),
        num_classes=10,
        input_size=(1, 28, 28),
        mean=mean,
        std=std,
        source=str(folder),
        label_names=fashion_mnist.CLASSES,
        extra_cfg={"crop_pct": 1.0, "interpolation": "bilinear"},
    )


def _cifar_root(data_dir: Path) -> Path:
    for cand in (data_dir, data_dir / "cifar-10-batches-py"):
        if (cand / "data_batch_1").is_file() and (cand / "test_batch").is_file():
            return cand
    raise DataError(f"CIFAR-10 not found in {data_dir}: {CIFAR_LAYOUT}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch.get(b"labels", batch.get(b"fine_labels")), dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"{path} is missing: {CIFAR_LAYOUT}") from None
    except Exception as err:  # unpickling errors come in many types
        raise DataError(f"{path} is not a CIFAR-10 python batch ({err}): {CIFAR_LAYOUT}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path}: data {data.shape}, labels {labels.shape}: {CIFAR_LAYOUT}")
    return data.reshape(-1, 3, 32, 32), labels


def cifar10_data(data_dir: str | os.PathLike[str] | None) -> DataBundle:
    """CIFAR-10 from the python-pickle batches directory."""
    if data_dir is None:
        raise DataError(f"--data-dir is required for CIFAR-10: {CIFAR_LAYOUT}")
    root = _cifar_root(Path(data_dir))
    parts = [_read_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    train_x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    train_y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    test = _read_cifar_batch(root / "test_batch")
    train_t, eval_t = _image_transforms(32, 4, CIFAR10_MEAN, CIFAR10_STD)
    return DataBundle(
        name="cifar10",
        train=TensorImageDataset(train_x, train_y, train_t),
        val=TensorImageDataset(torch.from_numpy(test[0]), torch.from_numpy(test[1]), eval_t),
        num_classes=10,
        input_size=(3, 32, 32),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        source=str(root),
        label_names=CIFAR10_CLASSES,
        extra_cfg={"crop_pct": 1.0, "interpolation": "bilinear"},
    )


def imagenet_data(data_dir: str | os.PathLike[str] | None, model_name: str) -> DataBundle:
    """ImageNet-style ImageFolder train/val with timm's transforms for ``model_name``."""
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg
    from torchvision.datasets import ImageFolder

    if data_dir is None:
        raise DataError(f"--data-dir is required for ImageNet: {IMAGENET_LAYOUT}")
    root = Path(data_dir)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"{root / split} is missing: {IMAGENET_LAYOUT}")
    pretrained_cfg = get_pretrained_cfg(model_name)
    cfg = resolve_data_config(
        {}, pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else None
    )
    try:
        train = ImageFolder(
            str(root / "train"), transform=create_transform(**cfg, is_training=True)
        )
        val = ImageFolder(str(root / "val"), transform=create_transform(**cfg))
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"{root}: {err}; {IMAGENET_LAYOUT}") from None
    if train.classes != val.classes:
        raise DataError(f"{root}: train and val class folders differ; {IMAGENET_LAYOUT}")
    return DataBundle(
        name="imagenet",
        train=train,
        val=val,
        num_classes=len(train.classes),
        input_size=tuple(cfg["input_size"]),  # type: ignore[arg-type]
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        source=str(root),
        label_names=tuple(train.classes),
        extra_cfg={"crop_pct": cfg["crop_pct"], "interpolation": cfg["interpolation"]},
    )


def build_data(
    dataset: str,
    data_dir: str | os.PathLike[str] | None,
    model_name: str = "resnet50",
    download: bool = False,
) -> DataBundle:
    """The recipe's data set by name (``fashion_mnist``, ``cifar10`` or ``imagenet``).

    ``model_name`` picks timm's ImageNet transforms (input size, mean/std, crop).
    """
    if dataset == "fashion_mnist":
        return fashion_mnist_data(data_dir, download=download)
    if dataset == "cifar10":
        return cifar10_data(data_dir)
    if dataset == "imagenet":
        return imagenet_data(data_dir, model_name)
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")

"""Evaluation images for the accuracy checks: Fashion-MNIST, an ImageFolder, or random.

Images come out as float32 ``(N, C, H, W)`` batches, preprocessed as the model expects
(timm's eval transforms from the model's data config; Fashion-MNIST scaled to [0, 1],
normalized with the model's mean/std and resized to its input size).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DataError

FASHION_MNIST = "fashion-mnist"
RANDOM = "random"

Batch = tuple[torch.Tensor, torch.Tensor | None]


@dataclass
class EvalData:
    """A finite, re-iterable evaluation set."""

    description: str
    labelled: bool
    size: int
    _batches: Any = field(repr=False)  # callable: batch size -> iterator of batches

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Iterate ``(images, labels or None)`` in batches of at most ``batch_size``."""
        return self._batches(batch_size)  # type: ignore[no-any-return]


def _tensor_batches(images: torch.Tensor, labels: torch.Tensor | None, prep: Any) -> Any:
    def gen(batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(images), batch_size):
            stop = start + batch_size
            yield prep(images[start:stop]), None if labels is None else labels[start:stop]

    return gen


def fashion_mnist(
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    max_images: int | None = None,
    root: str | os.PathLike[str] | None = None,
    split: str = "test",
) -> EvalData:
    """A Fashion-MNIST split: ``test`` (10,000 labelled images) or ``train`` (60,000)."""
    from trp_zoo.data import load_fashion_mnist

    try:
        images, labels = load_fashion_mnist(split, root)
    except (FileNotFoundError, ValueError) as err:
        raise DataError(str(err)) from None
    if max_images:
        images, labels = images[:max_images], labels[:max_images]
    c, h, w = input_size
    mean_t = torch.tensor(list(mean), dtype=torch.float32).reshape(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).reshape(1, -1, 1, 1)

    def prep(x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        if c != 1:
            x = x.expand(-1, c, -1, -1)
        return ((x - mean_t) / std_t).contiguous()

    return EvalData(
        f"Fashion-MNIST {split} split ({len(labels)} images)",
        True,
        len(labels),
        _tensor_batches(images, labels, prep),
    )


SENSITIVITY_FLAG = "--sensitivity-data"  # images that price ranks: never random ones


def image_folder(
    root: str | os.PathLike[str],
    data_config: Mapping[str, Any],
    *,
    max_images: int | None = None,
    flag: str = "--data",
) -> EvalData:
    """An ImageFolder tree (``root/<class>/<image>``) read with timm's eval transforms
    (``flag``: the option errors name)."""
    import timm.data
    from torch.utils.data import DataLoader, Subset

    root = Path(root)
    if not root.is_dir():
        named = "or 'fashion-mnist'" if flag == SENSITIVITY_FLAG else "'fashion-mnist', or 'random'"
        raise DataError(
            f"{flag} {root}: no such directory; pass an ImageFolder directory "
            f"(one sub-directory of images per class), {named}"
        )
    # a model's pretrained_cfg holds more than preprocessing (url, custom_load, ...):
    # timm's own resolver keeps what create_transform takes
    config = timm.data.resolve_data_config({}, pretrained_cfg=dict(data_config))
    channels = int(config["input_size"][0])
    if channels not in (1, 3) or len(config["mean"]) != channels:
        raise DataError(
            f"--data {root}: the model takes {channels}-channel input normalized with "
            f"mean {tuple(config['mean'])}; an ImageFolder is read as RGB (3 channels) or "
            "greyscale (1 channel) with one mean per channel: use --data random"
        )
    transform = timm.data.create_transform(**config, is_training=False)
    try:
        dataset: Any = timm.data.ImageDataset(
            str(root), transform=transform, input_img_mode="L" if channels == 1 else "RGB"
        )
    except Exception as err:  # timm raises RuntimeError/FileNotFoundError for empty trees
        raise DataError(
            f"{flag} {root} is not an ImageFolder tree ({err}); expected root/<class>/<image>"
        ) from None
    if len(dataset) == 0:
        raise DataError(f"{flag} {root} holds no images; expected root/<class>/<image>")
    if max_images:
        dataset = Subset(dataset, range(min(max_images, len(dataset))))

    def gen(batch_size: int) -> Iterator[Batch]:
        for images, labels in DataLoader(dataset, batch_size=batch_size, num_workers=0):
            yield images.float().contiguous(), labels

    return EvalData(f"ImageFolder {root} ({len(dataset)} images)", True, len(dataset), gen)


def random_images(input_size: Sequence[int], count: int = 64, *, seed: int = 0) -> EvalData:
    """Standard-normal images (the model's normalized input scale), no labels."""
    images = torch.randn(count, *input_size, generator=torch.Generator().manual_seed(seed))
    return EvalData(
        f"random N(0, 1) inputs ({count} images, no labels)",
        False,
        count,
        _tensor_batches(images, None, lambda x: x),
    )


def resolve_eval_data(
    data: str | None,
    *,
    input_size: Sequence[int],
    data_config: Mapping[str, Any],
    dataset_hint: str | None = None,
    max_images: int | None = None,
    random_count: int = 64,
    split: str = "test",
    flag: str = "--data",
) -> EvalData:
    """Pick the evaluation set for ``--data``.

    ``None``: Fashion-MNIST when the model was trained on it (``dataset_hint``), else random
    inputs. ``fashion-mnist``, ``random``, a directory holding Fashion-MNIST's IDX files, or
    an ImageFolder directory select explicitly. ``split`` picks Fashion-MNIST's split
    (an ImageFolder directory is read as given); ``flag`` is the option errors name.
    """
    mean = data_config.get("mean", (0.0,))
    std = data_config.get("std", (1.0,))
    if data is None:
        data = FASHION_MNIST if (dataset_hint or "").lower() == FASHION_MNIST else RANDOM
    if data == RANDOM:
        count = min(random_count, max_images) if max_images else random_count
        return random_images(input_size, count)
    if data == FASHION_MNIST:
        return fashion_mnist(input_size, mean, std, max_images=max_images, split=split)
    from trp_zoo.data import find_fashion_mnist

    try:
        folder = find_fashion_mnist(data)
    except FileNotFoundError:
        return image_folder(data, data_config, max_images=max_images, flag=flag)
    return fashion_mnist(input_size, mean, std, max_images=max_images, root=folder, split=split)


def check_sensitivity_source(data: str, count: int) -> None:
    """Refuse what sensitivity cannot be measured on, before any model is built."""
    if data == RANDOM:
        raise DataError(
            "sensitivity data 'random': random inputs say nothing about what the model has "
            "learned; pass fashion-mnist or an ImageFolder directory of training images"
        )
    if count < 1:
        raise DataError(f"sensitivity images must be >= 1, got {count}")


def sensitivity_images(
    data: str,
    model: nn.Module,
    input_size: tuple[int, int, int],
    count: int,
    flag: str = SENSITIVITY_FLAG,
) -> torch.Tensor:
    """The first ``count`` training images of ``data`` (``fashion-mnist``, a directory of
    its IDX files, or an ImageFolder of training images), preprocessed for ``model``: what
    rank sensitivity is measured on (``trp_zoo.algorithms.sensitivity``)."""
    check_sensitivity_source(data, count)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if input_size[0] == 1 and len(cfg.get("mean") or ()) != 1:
        # a one-channel timm model keeps ImageNet's three-channel statistics in its
        # config; normalize as the Fashion-MNIST recipe trains instead
        from trp_zoo.data.fashion_mnist import MEAN, STD

        cfg["mean"], cfg["std"] = (MEAN,), (STD,)
    images = resolve_eval_data(
        data,
        input_size=input_size,
        data_config={**cfg, "input_size": input_size},
        max_images=count,
        split="train",
        flag=flag,
    )
    batch = torch.cat([x for x, _ in images.batches(256)])
    if len(batch) < count:
        raise DataError(
            f"--sensitivity-images {count} is more than the {len(batch)} training "
            f"images of {data}: use at most {len(batch)}"
        )
    return batch


TEST_SPLIT_NAMES = ("test", "val", "validation", "eval", "t10k")
CALIBRATION_HINT = (
    "pass --calibration-data with a training split: 'fashion-mnist' (its train split), an "
    "ImageFolder train directory (or a directory holding train/), or 'random' (speed only)"
)


def image_folder_train_split(root: str | os.PathLike[str], *, sibling: bool = False) -> Path:
    """The training split of an ImageFolder data set given by ``root``.

    ``root/train`` when it exists; ``root`` itself when it is named ``train``; with
    ``sibling``, the ``train`` directory next to an evaluation split (``test``, ``val``,
    ...: the ``--data`` directory). An evaluation split itself is refused: calibrating on
    test images would leak them into the engine.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"calibration data {root}: no such directory; {CALIBRATION_HINT}")
    if (root / "train").is_dir():
        return root / "train"
    name = root.name.lower()
    if name == "train":
        return root
    if name in TEST_SPLIT_NAMES and sibling and (root.parent / "train").is_dir():
        return root.parent / "train"
    if name in TEST_SPLIT_NAMES:
        raise DataError(
            f"refusing to calibrate on {root}: it is an evaluation split ('{root.name}'), and "
            f"calibration must never see test images; pass its train split"
            + (f" ({root.parent / 'train'})" if (root.parent / "train").is_dir() else "")
        )
    raise DataError(
        f"calibration data {root}: cannot tell its split (no train/ inside, not named train); "
        f"{CALIBRATION_HINT}"
    )


def resolve_calibration_data(
    data: str | None,
    *,
    input_size: Sequence[int],
    data_config: Mapping[str, Any],
    dataset_hint: str | None = None,
    max_images: int,
    eval_data: str | None = None,
) -> EvalData:
    """The images int8 engines are calibrated on: always a training split, never test.

    ``data`` is ``--calibration-data``; when None, the training split of ``eval_data``
    (``--data``: its sibling ``train`` directory for an ImageFolder ``val``/``test``
    directory; Fashion-MNIST for its models when that is None too). ``fashion-mnist`` and
    IDX directories give Fashion-MNIST's train split; a directory an ImageFolder's train
    split (``image_folder_train_split``); ``random`` standard-normal inputs (for speed
    only: no accuracy meaning).
    """
    if max_images < 1:
        raise DataError(f"--calibration-images must be >= 1, got {max_images}")
    derived = data is None and eval_data is not None
    if data is None:
        data = eval_data
    if data is None:
        if (dataset_hint or "").lower() != FASHION_MNIST:
            raise DataError(
                "nothing to calibrate the int8 engines on: the model's training data is "
                f"unknown; {CALIBRATION_HINT}"
            )
        data = FASHION_MNIST
    if data == RANDOM:
        return random_images(input_size, max_images, seed=1)
    mean = data_config.get("mean", (0.0,))
    std = data_config.get("std", (1.0,))
    if data == FASHION_MNIST:
        found = fashion_mnist(input_size, mean, std, max_images=max_images, split="train")
    else:
        from trp_zoo.data import find_fashion_mnist

        try:
            folder = find_fashion_mnist(data)
        except FileNotFoundError:
            train = image_folder_train_split(data, sibling=derived)
            found = image_folder(
                train, data_config, max_images=max_images, flag="--calibration-data"
            )
        else:
            found = fashion_mnist(
                input_size, mean, std, max_images=max_images, root=folder, split="train"
            )
    if found.size == 0:
        raise DataError(f"no images to calibrate on in {found.description}; {CALIBRATION_HINT}")
    return found

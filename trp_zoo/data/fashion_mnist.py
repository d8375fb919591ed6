"""Fashion-MNIST from its IDX files (as shipped by Debian's ``dataset-fashion-mnist``)."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MEAN, STD = 0.2860, 0.3530
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
LAYOUT_HINT = (
    "expected train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] in that directory "
    "(install them with `apt-get install dataset-fashion-mnist`, or pass the directory of "
    "torchvision's FashionMNIST/raw download)"
)


def _find_file(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def find_fashion_mnist(root: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding the IDX files: ``root``, ``$FASHION_MNIST_DIR`` or Debian's path."""
    env = os.environ.get("FASHION_MNIST_DIR")
    candidates = (
        [Path(root)] if root is not None else ([Path(env)] if env else list(FASHION_MNIST_DIRS))
    )
    for cand in candidates:
        for sub in (cand, cand / "FashionMNIST" / "raw"):
            if all(_find_file(sub, f) for pair in FILES.values() for f in pair):
                return sub
    where = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"Fashion-MNIST not found in {where}: {LAYOUT_HINT}")


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # a cut-off or non-gzip .gz
        raise ValueError(
            f"{path} is not a complete gzip file ({err}); download it again: {LAYOUT_HINT}"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file: {LAYOUT_HINT}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: {len(data) - offset} bytes of pixels/labels, "
            f"header says {expected}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as ``uint8 [N, 1, 28, 28]`` and labels as ``int64 [N]``."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_fashion_mnist(root)
    img_file, lbl_file = (_find_file(folder, f) for f in FILES[split])
    assert img_file is not None and lbl_file is not None
    images = read_idx(img_file)
    labels = read_idx(lbl_file)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{folder}: images {images.shape} and labels {labels.shape} do not match (are the "
            f"image and label files swapped or from different sets?): {LAYOUT_HINT}"
        )
    if images.shape[1:] != (28, 28):
        raise ValueError(
            f"{img_file}: images are {images.shape[1]}x{images.shape[2]}, Fashion-MNIST's are "
            f"28x28: {LAYOUT_HINT}"
        )
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise ValueError(
            f"{lbl_file}: label {int(labels.max())} is out of range (Fashion-MNIST has "
            f"{len(CLASSES)} classes, 0-{len(CLASSES) - 1}): {LAYOUT_HINT}"
        )
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

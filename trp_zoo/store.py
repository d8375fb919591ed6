"""The local store: checkpoints trained on this machine, loadable by name with no hub.

``$TRP_ZOO_HOME/models/<name>/`` (default ``~/.cache/trp_zoo``) holds a copy of each
checkpoint a recipe recorded with ``save_pretrained(..., register_as=name)`` or
``register_local``. ``trp_zoo.load(name)`` looks here before the hub, so a model loads
by name right after its recipe finishes, offline.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_config, verify_weights
from .fileio import copy_directory_atomic
from .paths import zoo_subdir

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def store_dir() -> Path:
    """Where locally recorded checkpoints live: ``$TRP_ZOO_HOME/models``."""
    return zoo_subdir("models")


def check_store_name(name: str) -> None:
    """A store name is one path component: letters, digits, ``_``, ``.`` and ``-``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith("."):
        raise ValueError(
            f"{name!r} is not a valid model name: use letters, digits, '_', '.' and '-' "
            "(e.g. 'resnet18_trp_ch_fmnist')"
        )


def local_path(name: str) -> Path | None:
    """The stored checkpoint directory for ``name``, or None."""
    if not _NAME.fullmatch(name):
        return None
    path = store_dir() / name
    return path if (path / CONFIG_NAME).is_file() else None


def local_models() -> list[str]:
    """Names of the checkpoints in the local store."""
    root = store_dir()
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if not p.name.startswith(".") and (p / CONFIG_NAME).is_file()
    )


def register_local(checkpoint_dir: str | os.PathLike[str], name: str) -> Path:
    """Copy a checkpoint into the local store under ``name`` (replacing an older one).

    The checkpoint is checked first (config readable, weights intact). Returns the stored
    directory.
    """
    check_store_name(name)
    src = Path(checkpoint_dir)
    read_config(src)
    verify_weights(src / WEIGHTS_NAME)
    return copy_directory_atomic(src, store_dir() / name)

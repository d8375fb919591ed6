"""Where trp-zoo keeps its files: one root, ``$TRP_ZOO_HOME`` (default ``~/.cache/trp_zoo``).

Under it: ``models/`` (the local store of trained checkpoints), ``costs/`` (measured
per-layer cost tables) and ``tensorrt/`` (TensorRT timing caches).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ZooError


def zoo_home() -> Path:
    """``$TRP_ZOO_HOME`` (a relative one is taken from the current directory), or
    ``~/.cache/trp_zoo``; ``ZooError`` when it, or a folder above it, is a file."""
    home = Path(os.environ.get("TRP_ZOO_HOME") or "~/.cache/trp_zoo").expanduser().absolute()
    existing = next(p for p in (home, *home.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == home else f"is under a file ({existing})"
        raise ZooError(
            f"TRP_ZOO_HOME {home} {what}, not a directory: point TRP_ZOO_HOME at a directory "
            "or unset it (default ~/.cache/trp_zoo)"
        )
    return home


def zoo_subdir(name: str) -> Path:
    """``$TRP_ZOO_HOME/<name>``: the folder of one kind of file (not created here)."""
    return zoo_home() / name

"""Where trp-zoo keeps its files: one root, ``$TRP_ZOO_HOME`` (default ``~/.cache/trp_zoo``).

Under it: ``models/`` (the local store of trained checkpoints), ``costs/`` (measured
per-layer cost tables) and ``tensorrt/`` (TensorRT timing caches).
"""

from __future__ import annotations

import os
from pathlib import Path


def zoo_home() -> Path:
    """``$TRP_ZOO_HOME``, or ``~/.cache/trp_zoo``."""
    return Path(os.environ.get("TRP_ZOO_HOME") or "~/.cache/trp_zoo").expanduser()


def zoo_subdir(name: str) -> Path:
    """``$TRP_ZOO_HOME/<name>``: the folder of one kind of file (not created here)."""
    return zoo_home() / name

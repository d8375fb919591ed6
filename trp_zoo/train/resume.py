"""Training checkpoints: atomic, kept two deep, resumable after ``kill -9``.

A checkpoint holds the model, optimizer, scheduler, AMP scaler, TRP hook state, every
random generator's state, and where in the data it stopped (epoch, batches done, optimizer
step). Files are written to a temp file and renamed, so a kill while writing leaves the
previous checkpoint intact; the newest file that loads is the one resumed.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import torch_save, write_error

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{9})\.pt$")
KEEP = 2


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint files, newest first (temp files of interrupted writes ignored)."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)), reverse=True)  # type: ignore[union-attr]


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def partial_checkpoints(output_dir: str | Path) -> list[Path]:
    """Temporary files of checkpoint writes that were killed (``.step-*.pt.tmp-*``)."""
    folder = checkpoint_dir(output_dir)
    return sorted(folder.glob(".step-*.pt.tmp-*")) if folder.is_dir() else []


def remove_partial_checkpoints(output_dir: str | Path) -> list[Path]:
    """Delete what killed checkpoint writes left behind; returns the files removed."""
    removed = partial_checkpoints(output_dir)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def save_checkpoint(output_dir: str | Path, step: int, state: dict[str, Any]) -> Path:
    """Write ``state`` as the checkpoint of optimizer step ``step``; prune old ones."""
    path = checkpoint_dir(output_dir) / f"step-{step:09d}.pt"
    try:
        torch_save(state, path)
    except (OSError, RuntimeError) as err:  # torch reports a full disk as a RuntimeError
        raise write_error(
            path,
            err,
            "free disk space or choose another --output-dir, then rerun with --resume to "
            "continue from the last checkpoint",
        ) from None
    for old in list_checkpoints(output_dir)[KEEP:]:
        old.unlink(missing_ok=True)
    remove_partial_checkpoints(output_dir)
    return path


# what Trainer.restore reads of a checkpoint
_STATE_KEYS = (
    "config",
    "epoch",
    "batches_done",
    "step",
    "stats",
    "history",
    "model",
    "optimizer",
    "scheduler",
    "rng",
)


def load_latest(
    output_dir: str | Path, map_location: str | torch.device = "cpu"
) -> dict[str, Any] | None:
    """The newest checkpoint that loads (a damaged newest file falls back to the one before)."""
    for path in list_checkpoints(output_dir):
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:  # a truncated or corrupt file: try the previous one
            logger.warning("checkpoint %s is unreadable (%s); trying an older one", path, err)
            continue
        missing = [k for k in _STATE_KEYS if k not in state] if isinstance(state, dict) else []
        if not isinstance(state, dict) or missing:
            logger.warning(
                "checkpoint %s is not a trp-zoo training checkpoint (no %s); trying an older one",
                path,
                ", ".join(missing) or "dict",
            )
            continue
        state["path"] = str(path)
        return state
    return None

"""A recipe that kills itself (``kill -9``) right after writing the training checkpoint of
optimizer step ``KILL_AT_STEP``: an interruption at a known point, for resume tests.

    python tests/killed_recipe.py RECIPE.py KILL_AT_STEP [recipe arguments ...]
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path
from typing import Any

from trp_zoo.train import trainer

ROOT = Path(__file__).resolve().parents[1]
_save = trainer.save_checkpoint
_kill_at = int(sys.argv[2])


def _save_then_die(output_dir: Any, step: int, state: dict[str, Any]) -> Path:
    path = _save(output_dir, step, state)
    if step >= _kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return path


trainer.save_checkpoint = _save_then_die  # type: ignore[assignment]
sys.argv = [str(ROOT / "recipes" / sys.argv[1]), *sys.argv[3:]]
sys.path.insert(0, str(ROOT / "recipes"))
runpy.run_path(sys.argv[0], run_name="__main__")

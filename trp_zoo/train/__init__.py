"""The training engine behind ``recipes/``: data, TRP training, checkpoints, final stage."""

from .config import TrainConfig
from .recipe import run_recipe

__all__ = ["TrainConfig", "run_recipe"]

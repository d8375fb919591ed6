"""A Fashion-MNIST recipe, in-process, for the benchmarks that compare its runs.

``FmnistRecipe(path)`` reads the recipe's ``DEFAULTS`` from the script itself (the one
home of its settings); ``train_row`` runs (or resumes, or reuses) one configuration;
``trained_dense`` reads a dense baseline's final weights; ``evaluation_trainer`` is a
recipe trainer without TRP, to evaluate any model on the test split. The module-level
functions are those of the resnet18 recipe (the README demo's).
"""

from __future__ import annotations

import dataclasses
import json
import runpy
from pathlib import Path
from typing import Any

import torch

from runtime.train_target import plan_for_target
from trp_zoo.models.dense import create_dense_model
from trp_zoo.train import TrainConfig
from trp_zoo.train.data import build_data
from trp_zoo.train.distributed import init_distributed
from trp_zoo.train.finalize import TRAIN_RESULTS
from trp_zoo.train.recipe import run_recipe
from trp_zoo.train.resume import load_latest
from trp_zoo.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
FMNIST_RECIPES = {
    "resnet18": "recipes/fashion_mnist_resnet18.py",
    "vit": "recipes/fashion_mnist_vit.py",
    "convnext": "recipes/fashion_mnist_convnext.py",
}


class FmnistRecipe:
    """One Fashion-MNIST recipe script, run in this process."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.defaults: TrainConfig = runpy.run_path(str(ROOT / script))["DEFAULTS"]

    def create_model(self, cfg: TrainConfig | None = None) -> torch.nn.Module:
        """The recipe's dense architecture for Fashion-MNIST (10 classes, one channel)."""
        cfg = cfg or self.defaults
        kwargs = {"num_classes": 10, "in_chans": 1, **cfg.model_kwargs}
        return create_dense_model(cfg.model, **kwargs)

    def train_row(
        self, name: str, work: Path, common: list[str], extra: list[str]
    ) -> dict[str, Any]:
        """Run the recipe for one row (or reuse / resume an earlier run of it)."""
        out = work / name
        done = out / TRAIN_RESULTS
        if done.is_file():
            return dict(json.loads(done.read_text()))
        argv = [*common, *extra, "--output-dir", str(out)]
        if load_latest(out) is not None:
            argv.append("--resume")
        print(f"== {name}: {' '.join(argv)}", flush=True)
        result = run_recipe(self.defaults, self.script, argv, target_planner=plan_for_target)
        result.pop("decomposed_model", None)
        return result

    def trained_dense(self, work: Path, cfg: TrainConfig | None = None) -> torch.nn.Module:
        """The dense baseline's final weights (the last checkpoint of its run in ``work``)."""
        ckpt = load_latest(work)
        if ckpt is None:
            raise SystemExit(
                f"{work} holds no dense baseline run of {self.script}: run its benchmark's "
                "dense row first"
            )
        model = self.create_model(cfg)
        model.load_state_dict(ckpt["model"])
        return model.eval()

    def evaluation_trainer(self, out: Path) -> Trainer:
        """A recipe trainer (no TRP) to evaluate models on the Fashion-MNIST test set."""
        cfg = dataclasses.replace(self.defaults, trp=False, progress=False, output_dir=str(out))
        data = build_data("fashion_mnist", None)
        return Trainer(cfg, self.create_model(cfg), data, init_distributed("cpu"))


RESNET18 = FmnistRecipe(FMNIST_RECIPES["resnet18"])
RECIPE = RESNET18.script
DEFAULTS = RESNET18.defaults
train_row = RESNET18.train_row
trained_dense = RESNET18.trained_dense
evaluation_trainer = RESNET18.evaluation_trainer

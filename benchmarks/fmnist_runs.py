"""The Fashion-MNIST recipe, in-process, for the benchmarks that compare its runs.

``DEFAULTS`` are read from ``recipes/fashion_mnist_resnet18.py`` itself (the one home of
the recipe's settings); ``train_row`` runs (or resumes, or reuses) one configuration;
``trained_dense`` reads the dense baseline's final weights; ``evaluation_trainer`` is a
recipe trainer without TRP, to evaluate any model on the test split.
"""

from __future__ import annotations

import dataclasses
import json
import runpy
from pathlib import Path
from typing import Any

import torch

from trp_zoo.models.dense import create_dense_model
from trp_zoo.train import TrainConfig
from trp_zoo.train.data import build_data
from trp_zoo.train.distributed import init_distributed
from trp_zoo.train.finalize import TRAIN_RESULTS
from trp_zoo.train.recipe import run_recipe
from trp_zoo.train.resume import load_latest
from trp_zoo.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/fashion_mnist_resnet18.py"
DEFAULTS: TrainConfig = runpy.run_path(str(ROOT / RECIPE))["DEFAULTS"]


def train_row(name: str, work: Path, common: list[str], extra: list[str]) -> dict[str, Any]:
    """Run the recipe for one row (or reuse / resume an earlier run of it)."""
    out = work / name
    done = out / TRAIN_RESULTS
    if done.is_file():
        return dict(json.loads(done.read_text()))
    argv = [*common, *extra, "--output-dir", str(out)]
    if load_latest(out) is not None:
        argv.append("--resume")
    print(f"== {name}: {' '.join(argv)}", flush=True)
    result = run_recipe(DEFAULTS, RECIPE, argv)
    result.pop("decomposed_model", None)
    return result


def trained_dense(work: Path, cfg: TrainConfig = DEFAULTS) -> torch.nn.Module:
    """The dense baseline's final weights (from the last checkpoint of its run in ``work``)."""
    ckpt = load_latest(work)
    if ckpt is None:
        raise SystemExit(
            f"{work} holds no dense baseline run: run "
            "python benchmarks/fashion_mnist_table.py --epochs 5 (its dense row) first"
        )
    model = create_dense_model(cfg.model, num_classes=10, in_chans=1)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def evaluation_trainer(out: Path) -> Trainer:
    """A recipe trainer (no TRP) to evaluate models on the Fashion-MNIST test set."""
    cfg = dataclasses.replace(DEFAULTS, trp=False, progress=False, output_dir=str(out))
    data = build_data("fashion_mnist", None)
    model = create_dense_model(cfg.model, num_classes=10, in_chans=1)
    return Trainer(cfg, model, data, init_distributed("cpu"))

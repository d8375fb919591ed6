"""The last stage of every recipe: project, decompose, evaluate, count, save, plot, report."""

from __future__ import annotations

import datetime as dt
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..algorithms.decompose import decompose
from ..environment import software_versions
from ..errors import ZooError
from ..fileio import write_json
from ..lowrank.convs import ConvGeometry
from ..lowrank.linears import layer_scheme
from ..lowrank.macs import compare_cost
from ..lowrank.spectra import layer_spectra
from ..zoo.publish import publish
from ..zoo.registry import get_entry
from ..zoo.saving import save_pretrained
from .config import TrainConfig
from .plots import plot_curves, plot_ranks, plot_spectra
from .trainer import Trainer

logger = logging.getLogger(__name__)


# what a training run measured (the checkpoint it saves has its own results.json)
TRAIN_RESULTS = "train_results.json"


def command_line() -> str:
    """How this process was started, for provenance."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def _spectra(trainer: Trainer, count: int = 4) -> dict[str, torch.Tensor]:
    if trainer.trp is None:
        return {}
    names = list(trainer.trp.targets)
    picks = sorted(
        {names[i * (len(names) - 1) // max(count - 1, 1)] for i in range(count)}, key=names.index
    )
    return layer_spectra({n: trainer.trp.targets[n] for n in picks}, trainer.trp.scheme)


def _provenance(trainer: Trainer, recipe: str) -> dict[str, Any]:
    """How the run was made: command, versions, config, data and training."""
    cfg, info, input_size = trainer.cfg, trainer.info, trainer.data.input_size
    results: dict[str, Any] = {
        "recipe": recipe,
        "command": command_line(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": software_versions(),
        "config": cfg.to_dict(),
        "data": {
            "name": trainer.data.name,
            "source": trainer.data.source,
            "train_images": len(trainer.data.train),  # type: ignore[arg-type]
            "val_images": len(trainer.data.val),  # type: ignore[arg-type]
            "input_size": list(input_size),
        },
        "training": {
            "epochs": trainer.state.epoch,
            "optimizer_steps": trainer.state.step,
            "steps_this_process": trainer.steps_run,
            "seconds": sum(r.get("epoch_seconds", 0.0) for r in trainer.state.history),
            "processes": info.world_size,
        },
        "weight_digests": trainer.weight_digests(),
    }
    if trainer.resumed_from is not None:
        results["training"]["resumed_from"] = trainer.resumed_from
    if trainer.state.initial_top1 is not None:
        results["initial_top1"] = trainer.state.initial_top1
    if trainer.target_plan is not None:  # --target-latency: the plan TRP was capped by
        results["target_plan"] = trainer.target_plan
    return results


def _final_projection(trainer: Trainer, results: dict[str, Any]) -> dict[str, int]:
    """One last projection: the ranks training reached (TRP), or the energy criterion's
    (nuclear norm only); empty without TRP."""
    if trainer.trp is None:
        return {}
    # TRP: keep the ranks training reached; nuclear norm only: the energy criterion
    reached = trainer.trp.ranks if trainer.trp.projecting else None
    plan_all = trainer.trp.project(reached or None)
    results["training"]["trp_projection_seconds"] = trainer.trp.projection_seconds
    results["training"]["trp_projection_share"] = trainer.trp.projection_seconds / max(
        results["training"]["seconds"], 1e-9
    )
    return plan_all


def _decompose_and_evaluate(
    trainer: Trainer, plan_all: dict[str, int], results: dict[str, Any]
) -> nn.Module | None:
    """Evaluate the trained model, decompose it where a rank lowers a layer's cost, and
    evaluate the decomposed model (no fine-tuning); the numbers go into ``results``."""
    cfg, model, input_size = trainer.cfg, trainer.module, trainer.data.input_size
    _, dense_top1 = trainer.evaluate()
    results["dense"] = {"top1": dense_top1, "note": "the trained model before decomposition"}
    low = None
    targets = trainer.trp.targets if trainer.trp is not None else {}
    geoms = {n: ConvGeometry.of(targets[n]) for n in plan_all}
    schemes = {n: layer_scheme(targets[n], cfg.scheme) for n in plan_all}
    plan = {n: r for n, r in plan_all.items() if schemes[n].lowers_cost(geoms[n], r)}
    results["full_ranks"] = {n: schemes[n].full_rank(g) for n, g in geoms.items()}
    if plan_all and not plan:
        skipped = [
            f"{flag} {value}"
            for flag, value in (
                ("--model-name", cfg.model_name),
                ("--push-to-hub", cfg.push_to_hub),
                ("--publish-mirror", cfg.publish_mirror),
            )
            if value
        ]
        results["note"] = (
            "no layer reached a rank that lowers its cost, so nothing was decomposed"
            + (f" and no model was saved ({', '.join(skipped)} skipped)" if skipped else "")
            + "; train longer or lower --energy"
        )
        trainer.log(results["note"])
    if plan:
        # the plan's layers are TRP's targets, already of the --layers kind
        low = decompose(model, cfg.scheme, rank=plan, layers=cfg.layers)
        _, low_top1 = trainer.evaluate(low)
        cost = compare_cost(model, low, input_size)
        results["dense"].update(macs=cost.dense_macs, params=cost.dense_params)
        results["decomposed"] = {
            "top1": low_top1,
            "macs": cost.factorized_macs,
            "params": cost.factorized_params,
            "macs_reduction": cost.macs_reduction,
            "params_reduction": cost.params_reduction,
            "scheme": cfg.scheme,
            "rank_plan": plan,
            "kept_dense": sorted(set(plan_all) - set(plan)),
            "max_abs_logit_diff": _logit_diff(trainer, model, low),
        }
    else:
        cost = compare_cost(model, model, input_size)
        results["dense"].update(macs=cost.dense_macs, params=cost.dense_params)
    return low


def finalize(trainer: Trainer, recipe: str) -> dict[str, Any]:
    """Decompose the trained model, evaluate both forms, write results, checkpoint and plots."""
    cfg, info, out = trainer.cfg, trainer.info, trainer.out
    spectra = _spectra(trainer)
    results = _provenance(trainer, recipe)
    plan_all = _final_projection(trainer, results)
    low = _decompose_and_evaluate(trainer, plan_all, results)
    error = None
    if info.is_main:
        try:
            results["plots"] = _plots(trainer, plan_all, spectra, results)
            if low is not None:
                results["checkpoint"] = str(save_model(trainer, low, results))
                error = _publish(cfg, Path(results["checkpoint"]), results)
        except (OSError, ValueError, ZooError) as err:
            error = (
                f"saving the decomposed model failed ({err}); the training checkpoints in "
                f"{out / 'checkpoints'} are kept: fix the cause and rerun with --resume "
                "to redo only this last stage"
            )
        finally:  # the measured numbers are kept whatever a later step does
            if error:
                results["error"] = error
            write_json(out / TRAIN_RESULTS, results)
        print_table(results)
    results["decomposed_model"] = low
    if error:
        raise SystemExit(f"error: {error}")
    return results


@torch.no_grad()
def _logit_diff(trainer: Trainer, dense: torch.nn.Module, low: torch.nn.Module) -> float:
    """Largest logit difference of the two forms on (up to) 64 validation images: the
    decomposition of projected weights is lossless up to float rounding."""
    val = trainer.data.val
    count = min(64, len(val))  # type: ignore[arg-type]
    x = torch.stack([val[i][0] for i in range(count)]).float().to(trainer.device)
    was_training = dense.training
    dense.eval()
    low.eval()
    diff = float((dense(x) - low(x)).abs().max())
    dense.train(was_training)
    return diff


def save_model(trainer: Trainer, low: torch.nn.Module, results: dict[str, Any]) -> Path:
    """Save the decomposed model as a timm-compatible Hugging Face checkpoint in ``model/``."""
    cfg, data = trainer.cfg, trainer.data
    dec = results["decomposed"]
    metrics = {
        "top1": dec["top1"],
        "top1_before_decomposition": results["dense"]["top1"],
        "dense_macs": results["dense"]["macs"],
        "dense_params": results["dense"]["params"],
        "dataset": data.name,
        "split": "test" if data.name in ("fashion-mnist", "cifar10") else "val",
    }
    if "initial_top1" in results:
        metrics["dense_top1"] = results["initial_top1"]
    provenance = {
        "recipe": results["recipe"],
        "command": results["command"],
        "data": data.source,
        "date": results["date"],
        "epochs": cfg.epochs,
        "optimizer_steps": trainer.state.step,
        "processes": trainer.info.world_size,
        **{
            k: getattr(cfg, k)
            for k in ("scheme", "layers", "energy", "period", "nuclear_weight", "lr", "batch_size")
        },
    }
    return save_pretrained(
        low,
        trainer.out / "model",
        metrics=metrics,
        provenance=provenance,
        pretrained_cfg={
            "input_size": data.input_size,
            "mean": data.mean,
            "std": data.std,
            **data.extra_cfg,
        },
        label_names=data.label_names,
        register_as=cfg.model_name,
    )


def _publish(cfg: TrainConfig, checkpoint: Path, results: dict[str, Any]) -> str | None:
    """Publish as asked; returns a message instead of raising, so nothing already saved is lost."""
    targets: list[tuple[str, str | None]] = []
    if cfg.push_to_hub:
        targets.append((cfg.push_to_hub, None))
    if cfg.publish_mirror:
        repo_id = cfg.push_to_hub or (get_entry(cfg.model_name).repo_id if cfg.model_name else None)
        if repo_id is None:
            return "--publish-mirror needs --push-to-hub ORG/NAME or --model-name to name the repo"
        targets.append((repo_id, cfg.publish_mirror))
    published = results.setdefault("published", [])
    for repo_id, mirror in targets:
        try:
            done = publish(checkpoint, repo_id, mirror_dir=mirror)
        except (ZooError, OSError) as err:
            where = f" --mirror-dir {mirror}" if mirror else ""
            return (
                f"publishing to {repo_id} failed ({err}); the checkpoint is saved in "
                f"{checkpoint}, publish it later with: "
                f"python -m trp_zoo publish {checkpoint} --repo {repo_id}{where}"
            )
        published.append(
            {"repo_id": done.repo_id, "target": done.target, "location": done.location}
        )
    return None


def _plots(
    trainer: Trainer,
    ranks: dict[str, int],
    spectra: dict[str, torch.Tensor],
    results: dict[str, Any],
) -> list[str]:
    folder = trainer.out / "plots"
    made = []
    try:
        if trainer.state.history:
            made.append(plot_curves(trainer.state.history, folder / "curves.png"))
        if ranks and trainer.trp is not None:
            made.append(
                plot_ranks(ranks, results["full_ranks"], trainer.trp.history, folder / "ranks.png")
            )
        if spectra:
            made.append(plot_spectra(spectra, ranks, folder / "spectra.png"))
    except Exception as err:  # plots are a convenience: never lose a trained model over one
        logger.warning("could not draw the plots: %s", err)
    return [str(p) for p in made]


def _fmt_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def print_table(results: dict[str, Any]) -> None:
    """The final table: dense vs decomposed top-1, MACs and parameters."""
    dense, low = results["dense"], results.get("decomposed")
    rows = [("trained model (dense form)", dense["top1"], dense["macs"], dense["params"], "")]
    if low:
        rows.append(
            (
                f"decomposed ({low['scheme']}), no fine-tuning",
                low["top1"],
                low["macs"],
                low["params"],
                f"{low['macs_reduction']:.2f}x fewer MACs",
            )
        )
    print()
    print(f"| {'model':<38} | {'top-1':>6} | {'MACs':>8} | {'params':>8} | {'':<18} |")
    print(f"|{'-' * 40}|{'-' * 8}|{'-' * 10}|{'-' * 10}|{'-' * 20}|")
    for name, top1, macs, params, note in rows:
        print(
            f"| {name:<38} | {top1:6.2f} | {_fmt_count(macs):>8} | "
            f"{_fmt_count(params):>8} | {note:<18} |"
        )
    print()

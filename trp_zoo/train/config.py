"""Training configuration and the recipes' shared command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.optim import list_optimizers
from timm.utils import ParseKwargs

from ..cli import ArgumentParser
from ..lowrank.linears import LAYER_KINDS, LayerKind
from ..lowrank.schemes import SCHEMES
from ..lowrank.svd import METHODS
from ..modules import close_matches
from .data import DATASETS

# timm schedulers the trainer can step once per optimizer update; timm's others need what a
# TrainConfig does not carry (plateau: an eval metric per epoch; wsd, rsqrt: decay epochs)
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "constant")


@dataclass
class TrainConfig:
    """Everything a recipe run depends on (saved with every checkpoint)."""

    # model and data
    model: str = "resnet18"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    download: bool = False
    pretrained: str | None = None  # dense starting weights: a file or an hf-hub id
    # TRP
    trp: bool = True
    project: bool = True  # False: nuclear-norm regularization only
    layers: LayerKind = "all"  # which layers TRP trains low-rank: conv, linear or all
    scheme: str = "channel"
    energy: float = 0.9
    period: int = 20
    nuclear_weight: float = 3e-4
    svd_method: str = "subspace"
    rank_plan_file: str | None = None  # JSON file {layer: rank}: caps each layer's rank
    # or: a plan chosen at the start for a latency budget on a deployment target
    target_latency: float | None = None  # fraction of the dense model's latency
    target_backend: str = "onnxruntime"
    target_batch_size: int = 8
    target_rank_step: int = 8  # candidate ranks: multiples of this
    target_sensitivity_images: int = 0  # > 0: price ranks by measured sensitivity
    # optimization
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 256
    lr: float = 0.1
    opt: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    sched: str = "cosine"
    decay_milestones: list[int] = field(default_factory=list)
    decay_rate: float = 0.1
    warmup_epochs: int = 0
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    # knowledge distillation from a dense teacher of the same architecture
    distill_from: str | None = None  # the teacher's weights: a state-dict file or hf-hub:ID
    distill_weight: float = 0.5  # share of the distillation term in the loss
    distill_temperature: float = 4.0
    accum_steps: int = 1
    amp: str = "none"
    channels_last: bool = False
    device: str = "auto"
    workers: int = 0
    seed: int = 0
    # limits (smoke tests, quick looks)
    limit_train_batches: int = 0
    limit_val_batches: int = 0
    # output
    output_dir: str = "runs/run"
    resume: bool = False
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints (0: per epoch)
    model_name: str | None = None  # local registry name; "{scheme}" becomes ch/sp
    push_to_hub: str | None = None
    publish_mirror: str | None = None
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _ParseModelKwargs(ParseKwargs):
    """timm's ``--model-kwargs KEY=VALUE ...``, with a usage error for a pair without ``=``."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        bad = [v for v in values or () if v and "=" not in v]
        if bad:
            parser.error(f"{option_string} takes KEY=VALUE pairs, e.g. depth=6; got {bad[0]!r}")
        super().__call__(parser, namespace, values, option_string)


def _bool_flag(parser: argparse._ActionsContainer, name: str, default: bool, help: str) -> None:
    parser.add_argument(
        f"--{name}", action=argparse.BooleanOptionalAction, default=default, help=help
    )


def build_parser(defaults: TrainConfig, description: str | None = None) -> argparse.ArgumentParser:
    """The recipes' command line, with ``defaults`` shown in ``--help``."""
    p = ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    d = defaults
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=d.data_dir, help="data set directory")
    _bool_flag(g, "download", d.download, "download the data set where the internet is reachable")
    g.add_argument("--workers", type=int, default=d.workers, help="data loader worker processes")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=d.model, help="timm architecture")
    g.add_argument(
        "--model-kwargs",
        nargs="*",
        action=_ParseModelKwargs,
        default=argparse.SUPPRESS,
        metavar="KEY=VALUE",
        help=f"timm.create_model kwargs (Python literals), over the recipe's {d.model_kwargs}",
    )
    g.add_argument(
        "--pretrained",
        default=d.pretrained,
        help="dense starting weights: file, hf-hub:ID, or none",
    )
    _add_trp_arguments(p.add_argument_group("TRP"), d)
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--opt", default=d.opt, help="timm optimizer name")
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--sched", choices=SCHEDULERS, default=d.sched, help="timm scheduler")
    g.add_argument("--decay-milestones", type=int, nargs="*", default=d.decay_milestones)
    g.add_argument("--decay-rate", type=float, default=d.decay_rate)
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs)
    g.add_argument("--min-lr", type=float, default=d.min_lr)
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--accum-steps", type=int, default=d.accum_steps, help="gradient accumulation")
    g = p.add_argument_group("distillation")
    g.add_argument(
        "--distill-from",
        default=d.distill_from,
        metavar="WEIGHTS",
        help="distill from a dense teacher of --model: its state-dict file or hf-hub:ID",
    )
    g.add_argument(
        "--distill-weight",
        type=float,
        default=d.distill_weight,
        help="share of the distillation term: (1-w) cross-entropy + w T^2 KL(teacher||student)",
    )
    g.add_argument("--distill-temperature", type=float, default=d.distill_temperature, metavar="T")
    g.add_argument(
        "--amp",
        choices=["auto", "none", "bf16", "fp16"],
        default=d.amp,
        help="mixed precision; auto: bf16 on CUDA, none on CPU",
    )
    _bool_flag(g, "channels-last", d.channels_last, "channels_last memory format")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--limit-train-batches", type=int, default=d.limit_train_batches, help="0: all")
    g.add_argument("--limit-val-batches", type=int, default=d.limit_val_batches, help="0: all")
    g = p.add_argument_group("output")
    g.add_argument("--output-dir", default=d.output_dir)
    _bool_flag(g, "resume", d.resume, "continue from the newest checkpoint in --output-dir")
    g.add_argument(
        "--checkpoint-every", type=int, default=d.checkpoint_every, help="steps; 0: per epoch"
    )
    g.add_argument("--model-name", default=d.model_name, help="name the result loads by locally")
    g.add_argument("--push-to-hub", default=d.push_to_hub, metavar="ORG/NAME")
    g.add_argument("--publish-mirror", default=d.publish_mirror, metavar="DIR")
    _bool_flag(g, "progress", d.progress, "progress bars")
    return p


def _add_trp_arguments(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    """TRP's options, rank plans and the ``--target-latency`` plan."""
    _bool_flag(g, "trp", d.trp, "train with TRP (--no-trp: plain dense training)")
    _bool_flag(g, "project", d.project, "low-rank projection (--no-project: nuclear norm only)")
    g.add_argument(
        "--layers",
        default=d.layers,
        metavar="{" + ",".join(LAYER_KINDS) + "}",
        help="layers TRP trains low-rank and the end decomposes (stem and classifier stay dense)",
    )
    g.add_argument("--scheme", choices=sorted(SCHEMES), default=d.scheme)
    g.add_argument("--energy", type=float, default=d.energy, help="energy kept by the projection")
    g.add_argument(
        "--period", type=int, default=d.period, help="optimizer steps between projections"
    )
    g.add_argument("--nuclear-weight", type=float, default=d.nuclear_weight, help="lambda")
    g.add_argument("--svd-method", choices=METHODS, default=d.svd_method)
    g.add_argument(
        "--rank-plan",
        dest="rank_plan_file",
        default=d.rank_plan_file,
        help="JSON {layer: rank} capping each rank",
    )
    g.add_argument(
        "--target-latency",
        type=float,
        default=d.target_latency,
        metavar="FRACTION",
        help="instead of --rank-plan: cap the ranks of the --layers kind by a plan for this "
        "fraction of the dense latency on --target-backend, chosen from the starting weights",
    )
    g.add_argument("--target-backend", default=d.target_backend, help="onnxruntime or tensorrt")
    g.add_argument("--target-batch-size", type=int, default=d.target_batch_size)
    g.add_argument(
        "--target-rank-step", type=int, default=d.target_rank_step, help="rank multiples to time"
    )
    g.add_argument(
        "--target-sensitivity-images",
        type=int,
        default=d.target_sensitivity_images,
        metavar="N",
        help="with --target-latency and --pretrained: choose the ranks by how far each moves "
        "the predictions on N training images, not by spectral energy (0: energy)",
    )


def config_from_args(defaults: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """Merge parsed arguments into a copy of ``defaults`` and validate them."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    for name in ("pretrained", "distill_from"):
        if str(values.get(name)).lower() in ("none", ""):
            values[name] = None
    if str(values.get("model_name")).lower() == "none":  # '' is refused, not skipped
        values["model_name"] = None
    if "model_kwargs" in values:  # --model-kwargs adds to (or overrides) the recipe's
        values["model_kwargs"] = {**defaults.model_kwargs, **values["model_kwargs"]}
    cfg = dataclasses.replace(defaults, **values)
    validate(cfg)
    if cfg.model_name and "{scheme}" in cfg.model_name:
        # registry names abbreviate the scheme: resnet18_trp_ch_fmnist, resnet18_trp_sp_fmnist
        cfg.model_name = cfg.model_name.format(scheme=cfg.scheme[:2]) if cfg.trp else None
    return cfg


# the largest float32: optimizers scale float32 parameters by these numbers
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def validate(cfg: TrainConfig) -> None:
    """Clear errors for settings that cannot work."""
    problems = [
        f"--{f.name.replace('_', '-')} must be a finite number, got {value}"
        if not math.isfinite(value)
        else f"--{f.name.replace('_', '-')} {value} does not fit in float32, the precision "
        f"training uses: give a value of magnitude at most {_FLOAT32_MAX:.3g}"
        for f in dataclasses.fields(cfg)
        if isinstance(value := getattr(cfg, f.name), float)
        and not (math.isfinite(value) and abs(value) <= _FLOAT32_MAX)
    ]
    if cfg.dataset not in DATASETS:
        problems.append(f"dataset {cfg.dataset!r} is not one of {', '.join(DATASETS)}")
    if cfg.layers not in LAYER_KINDS:
        problems.append(f"--layers must be one of {', '.join(LAYER_KINDS)}, got {cfg.layers!r}")
    if not 0.0 < cfg.energy <= 1.0:
        problems.append(f"--energy must be in (0, 1], got {cfg.energy}")
    for name in ("period", "epochs", "batch_size", "eval_batch_size", "accum_steps"):
        if getattr(cfg, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        problems.append(f"--lr must be > 0, got {cfg.lr}")
    optimizer = cfg.opt.lower().split("_")[-1]  # timm reads lookahead_NAME as NAME, wrapped
    optimizers = [name for name in list_optimizers() if isinstance(name, str)]
    if optimizer not in optimizers:
        problems.append(
            f"--opt {cfg.opt!r} is not a timm optimizer (e.g. sgd, adamw)."
            + close_matches(optimizer, optimizers)
        )
    if cfg.sched not in SCHEDULERS:
        problems.append(f"--sched must be one of {', '.join(SCHEDULERS)}, got {cfg.sched!r}")
    for name in ("nuclear_weight", "weight_decay", "momentum", "min_lr"):
        if getattr(cfg, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if cfg.decay_rate <= 0:
        problems.append(f"--decay-rate must be > 0 (e.g. 0.1), got {cfg.decay_rate}")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        problems.append(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    milestones = cfg.decay_milestones
    if milestones and (milestones != sorted(set(milestones)) or milestones[0] < 1):
        # milestones past --epochs are allowed: a shortened run of a recipe never reaches them
        problems.append(
            "--decay-milestones must be increasing epochs (at which the lr decays) from 1 on, "
            f"got {' '.join(map(str, milestones))}"
        )
    problems += _count_problems(cfg)
    if cfg.rank_plan_file is not None and not Path(cfg.rank_plan_file).is_file():
        what = "is a directory" if Path(cfg.rank_plan_file).is_dir() else "does not exist"
        problems.append(
            f"--rank-plan {cfg.rank_plan_file} {what}: give a JSON file {{layer name: rank}}"
        )
    if cfg.rank_plan_file is not None and not cfg.trp:
        problems.append("--rank-plan caps TRP's ranks: it needs --trp (drop --no-trp)")
    if cfg.target_latency is not None:
        if not 0.0 < cfg.target_latency <= 1.0:
            problems.append(
                f"--target-latency is a fraction of the dense latency in (0, 1], got "
                f"{cfg.target_latency}"
            )
        if cfg.rank_plan_file is not None:
            problems.append("give --rank-plan or --target-latency, not both")
        if not cfg.trp:
            problems.append("--target-latency caps TRP's ranks: it needs --trp")
    if cfg.target_sensitivity_images < 0:
        problems.append(
            f"--target-sensitivity-images must be >= 0, got {cfg.target_sensitivity_images}"
        )
    elif cfg.target_sensitivity_images and cfg.target_latency is None:
        problems.append("--target-sensitivity-images prices a --target-latency plan: give both")
    for name in ("target_batch_size", "target_rank_step"):
        if getattr(cfg, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if problem := _weights_source_problem(
        cfg.pretrained, "--pretrained", "dense starting weights'"
    ):
        problems.append(f"{problem}, or none to start from random weights")
    problems += _distillation_problems(cfg)
    if problems:
        raise ValueError("; ".join(problems))


def _count_problems(cfg: TrainConfig) -> list[str]:
    """Epoch, batch, worker and seed counts that cannot work (or would be silently ignored)."""
    problems = []
    zero_means = {
        "warmup_epochs": "no warm-up",
        "limit_train_batches": "all batches",
        "limit_val_batches": "all batches",
        "checkpoint_every": "once per epoch",
        "workers": "load in the main process",
    }
    for name, zero in zero_means.items():
        if getattr(cfg, name) < 0:
            problems.append(
                f"--{name.replace('_', '-')} must be >= 0 (0: {zero}), got {getattr(cfg, name)}"
            )
    if cfg.warmup_epochs > cfg.epochs >= 1:
        problems.append(
            f"--warmup-epochs {cfg.warmup_epochs} is longer than the run (--epochs "
            f"{cfg.epochs}), so the learning rate would never reach --lr: use at most "
            f"{cfg.epochs} warm-up epochs or more --epochs"
        )
    if not 0 <= cfg.seed < 2**32:
        problems.append(f"--seed must be in [0, 2**32), got {cfg.seed}")
    return problems


def _distillation_problems(cfg: TrainConfig) -> list[str]:
    problems = []
    if not 0.0 < cfg.distill_weight <= 1.0:
        problems.append(f"--distill-weight must be in (0, 1], got {cfg.distill_weight}")
    if cfg.distill_temperature <= 0:
        problems.append(f"--distill-temperature must be > 0, got {cfg.distill_temperature}")
    if problem := _weights_source_problem(cfg.distill_from, "--distill-from", "dense teacher's"):
        problems.append(problem)
    return problems


def _weights_source_problem(source: str | None, flag: str, whose: str) -> str | None:
    """A weights file (or ``hf-hub:ID``) that is not there, or None."""
    if source and not source.startswith("hf-hub:") and not Path(source).is_file():
        return (
            f"{flag} {source} is not a file: give the {whose} state-dict file "
            "(.pth/.safetensors) or hf-hub:ID"
        )
    return None


def load_rank_plan(path: str) -> dict[str, int]:
    """Read a ``{layer: rank}`` JSON file."""
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--rank-plan {path}: not a readable JSON file ({err})") from None
    if isinstance(plan, dict) and isinstance(plan.get("plan"), dict):
        plan = plan["plan"]
    if not isinstance(plan, dict) or not all(isinstance(v, int) for v in plan.values()):
        raise ValueError(f"--rank-plan {path}: expected a JSON object {{layer name: int rank}}")
    return plan

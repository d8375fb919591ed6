"""The training engine shared by every recipe: DDP, AMP, accumulation, TRP, checkpoints."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..algorithms.decompose import validated_plan
from ..algorithms.layers import kind_layers
from ..algorithms.trp import TRP
from ..errors import CheckpointError, TrainingDivergedError
from ..fileio import write_json, write_text
from ..modules import unwrap_model
from .config import TrainConfig, load_rank_plan
from .data import DataBundle, EpochSampler, SeededDataset
from .distillation import Distiller
from .distributed import DistInfo, all_sum, barrier
from .resume import (
    list_checkpoints,
    load_latest,
    remove_partial_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

TARGET_PLAN = "target_plan.json"
# settings a resumed run must share with its checkpoint (what is trained, on what, and how
# TRP shapes it); the others (epochs, batch limits, outputs, ...) may change on --resume
RESUME_IDENTITY = (
    "model",
    "model_kwargs",
    "dataset",
    "trp",
    "project",
    "layers",
    "scheme",
    "opt",  # another optimizer cannot take this one's state
    "sched",  # nor another scheduler kind
)

# ``--target-latency``: (model, config, input size, sensitivity images or None) -> plan JSON;
# the runtime's ``runtime.train_target.plan_for_target``, handed in by the recipes
TargetPlanner = Callable[
    [nn.Module, TrainConfig, tuple[int, int, int], Tensor | None], dict[str, Any]
]


def recipe_optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer a recipe trains ``module`` with: timm's factory at ``cfg``'s settings."""
    return create_optimizer_v2(
        module, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum
    )


def recipe_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> Scheduler:
    """The recipe's learning-rate schedule over ``cfg.epochs``, stepped once per optimizer
    update (``scheduler.step_update(num_updates=...)``)."""
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=cfg.epochs,
        decay_milestones=cfg.decay_milestones or [cfg.epochs + 1],
        decay_rate=cfg.decay_rate,
        warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.lr * 0.01,
        min_lr=cfg.min_lr,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    return scheduler


@dataclass
class EpochStats:
    """Running sums over the batches of one epoch."""

    loss_sum: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1.0)

    @property
    def top1(self) -> float:
        return 100.0 * self.correct / max(self.count, 1.0)


@dataclass
class TrainState:
    """Where the run stands."""

    epoch: int = 0
    batches_done: int = 0  # batches of the current epoch already trained
    step: int = 0  # optimizer steps
    stats: EpochStats = field(default_factory=EpochStats)
    history: list[dict[str, Any]] = field(default_factory=list)
    initial_top1: float | None = None  # the starting (pretrained dense) model's top-1


def _as_flag(name: str, value: Any) -> str:
    """A setting as the command-line flag that gives it: ``--no-trp``, ``--layers conv``."""
    flag = f"--{name.replace('_', '-')}"
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    if isinstance(value, dict):
        return f"{flag} " + (" ".join(f"{k}={v}" for k, v in value.items()) or "(none)")
    return f"{flag} {value}"


class Trainer:
    """Trains ``model`` on ``data`` as ``cfg`` says; writes only on rank 0."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        data: DataBundle,
        info: DistInfo,
        target_planner: TargetPlanner | None = None,
        teacher: nn.Module | None = None,
    ):
        self.cfg, self.data, self.info = cfg, data, info
        self.target_planner = target_planner
        self.out = Path(cfg.output_dir)
        self.device = info.device
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = model.to(self.device).to(memory_format=memory_format)
        self.module = self.model
        self.distiller = (
            None
            if teacher is None
            else Distiller(
                teacher.to(self.device).to(memory_format=memory_format),
                cfg.distill_weight,
                cfg.distill_temperature,
            )
        )
        if info.distributed:
            ids = [info.local_rank] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        self.train_set = SeededDataset(data.train, cfg.seed)
        self.sampler = EpochSampler(
            len(self.train_set),
            shuffle=True,
            seed=cfg.seed,
            rank=info.rank,
            world_size=info.world_size,
        )
        self.loader = DataLoader(
            self.train_set,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
        )
        batches = len(self.loader)
        if batches == 0:
            raise ValueError(
                f"the training set ({len(self.train_set)} images over {info.world_size} processes) "
                f"is smaller than one batch of {cfg.batch_size}; lower --batch-size"
            )
        if cfg.limit_train_batches:
            batches = min(batches, cfg.limit_train_batches)
        self.batches_per_epoch = batches
        self.steps_per_epoch = math.ceil(batches / cfg.accum_steps)
        self.optimizer = recipe_optimizer(self.module, cfg)
        self.scheduler = recipe_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        amp = cfg.amp if cfg.amp != "auto" else ("bf16" if self.device.type == "cuda" else "none")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == "fp16" else None
        self.target_plan: dict[str, Any] | None = None
        self.trp = self._trp_hook() if cfg.trp else None
        self.state = TrainState()
        self.resumed_from: dict[str, Any] | None = None  # the checkpoint --resume loaded
        self.steps_run = 0  # optimizer steps taken by this process (after any resume)

    def _trp_hook(self) -> TRP:
        """The TRP hook on the ``--layers`` kind, its ranks capped by ``--rank-plan`` or the
        ``--target-latency`` plan."""
        cfg = self.cfg
        plan = load_rank_plan(cfg.rank_plan_file) if cfg.rank_plan_file else None
        if plan is not None:
            self._check_plan_kind(plan)
        if cfg.target_latency is not None:
            self.target_plan = self._plan_for_target()
            plan = self.target_plan["plan"]
        return TRP(
            self.model,
            cfg.scheme,
            energy=cfg.energy,
            period=cfg.period,
            nuclear_weight=cfg.nuclear_weight,
            plan=plan,
            method=cfg.svd_method,  # type: ignore[arg-type]
            project=cfg.project,
            layers=cfg.layers,
        )

    def _check_plan_kind(self, plan: dict[str, int]) -> None:
        """A ``--rank-plan`` selects its layers by name: refuse one of the kind ``--layers``
        leaves out."""
        layers = self.cfg.layers
        kept = kind_layers(self.module, layers)
        other = [n for n in validated_plan(plan) if n in kind_layers(self.module) and n not in kept]
        if other:
            raise ValueError(
                f"--rank-plan names {other[0]!r}, which --layers {layers} leaves out: drop it "
                "from the plan or use --layers all"
            )

    def _plan_for_target(self) -> dict[str, Any]:
        """The ``--target-latency`` plan: chosen once from the starting weights (rank 0) and
        kept in the run directory, so a resumed run and every process use the same ranks."""
        path = self.out / TARGET_PLAN
        if self.info.is_main and not (self.cfg.resume and path.is_file()):
            if self.target_planner is None:
                raise ValueError(
                    "--target-latency needs a deployment planner: run a recipe script "
                    "(recipes/*.py), or pass target_planner=runtime.train_target.plan_for_target "
                    "to run_recipe / Trainer"
                )
            chosen = self.target_planner(
                self.module, self.cfg, self.data.input_size, self._sensitivity_images()
            )
            write_json(path, chosen)
            self.log(
                f"rank plan for {self.cfg.target_latency} of the dense latency on "
                f"{self.cfg.target_backend}: {len(chosen['plan'])} layers factorized, predicted "
                f"{chosen['predicted']['latency_fraction']:.3f} of dense ({path})"
            )
        barrier(self.info)
        plan: dict[str, Any] = json.loads(path.read_text())
        return plan

    def _sensitivity_images(self) -> torch.Tensor | None:
        """The first ``--target-sensitivity-images`` training images (None when 0)."""
        count = min(self.cfg.target_sensitivity_images, len(self.data.train))  # type: ignore[arg-type]
        if count <= 0:
            return None
        if not self.cfg.pretrained:
            self.log(
                "note: --target-sensitivity-images on untrained weights measures how the "
                "initialization reacts, not learned importance; pass --pretrained"
            )
        return torch.stack([self.data.train[i][0] for i in range(count)]).float()

    # -- checkpoints ------------------------------------------------------------------
    def _checkpoint_state(self) -> dict[str, Any]:
        s = self.state
        return {
            "config": self.cfg.to_dict(),
            "epoch": s.epoch,
            "batches_done": s.batches_done,
            "step": s.step,
            "stats": vars(s.stats).copy(),
            "history": list(s.history),
            "initial_top1": s.initial_top1,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "trp": self.trp.state_dict() if self.trp else None,
            "rng": rng_state(),
        }

    def save(self) -> None:
        """Checkpoint now (rank 0 writes; every rank waits for it)."""
        if self.info.is_main:
            save_checkpoint(self.out, self.state.step, self._checkpoint_state())
        barrier(self.info)

    def restore(self) -> bool:
        """Load the newest checkpoint of ``output_dir``; False when there is none."""
        ckpt = load_latest(self.out)
        if ckpt is None:
            return False
        self._check_resumable(ckpt["config"], ckpt["path"])
        self.module.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.trp and ckpt.get("trp"):
            self.trp.load_state_dict(ckpt["trp"])
        set_rng_state(ckpt["rng"])
        self.state = TrainState(
            epoch=ckpt["epoch"],
            batches_done=ckpt["batches_done"],
            step=ckpt["step"],
            stats=EpochStats(**ckpt["stats"]),
            history=list(ckpt["history"]),
            initial_top1=ckpt.get("initial_top1"),
        )
        self.resumed_from = {"path": ckpt["path"], "step": ckpt["step"]}
        self._rewrite_metrics_log()
        self.log(f"resumed from {ckpt['path']} (epoch {ckpt['epoch'] + 1}, step {ckpt['step']})")
        return True

    def _check_resumable(self, trained: dict[str, Any], path: Any) -> None:
        """Refuse to resume a checkpoint of another model, data set or TRP setup: its weights
        would not load, or would silently continue under other settings."""
        trained = {"layers": "all", **trained}  # checkpoints from before --layers: all
        current = self.cfg.to_dict()
        for name in RESUME_IDENTITY:
            if name in trained and trained[name] != current[name]:
                was = _as_flag(name, trained[name])
                raise CheckpointError(
                    f"{path} was trained with {was}: resume with {was}, or start a new run "
                    "in another --output-dir"
                )

    # -- logging ----------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def log(self, message: str) -> None:
        if self.info.is_main:
            tqdm.write(message)

    def _rewrite_metrics_log(self) -> None:
        """Keep the JSON-lines log in step with the restored history."""
        if self.info.is_main:
            write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.state.history))

    def _append_metrics(self, record: dict[str, Any]) -> None:
        self.state.history.append(record)
        if self.info.is_main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    # -- training ---------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _batches(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        s = self.state
        self.train_set.set_epoch(s.epoch)
        self.sampler.set_epoch(s.epoch, skip=s.batches_done * self.cfg.batch_size)
        memory_format = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        for i, (x, y) in enumerate(self.loader, start=s.batches_done):
            if i >= self.batches_per_epoch:
                return
            x = x.to(self.device, non_blocking=True, memory_format=memory_format)
            yield i, x, y.to(self.device, non_blocking=True)

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.steps_run += 1
        self.scheduler.step_update(num_updates=self.state.step)

    def train_epoch(self) -> None:
        cfg, s = self.cfg, self.state
        self.model.train()
        bar = tqdm(
            total=self.batches_per_epoch,
            initial=s.batches_done,
            desc=f"epoch {s.epoch + 1}/{cfg.epochs}",
            disable=not (self.info.is_main and cfg.progress),
            dynamic_ncols=True,
            leave=True,
        )
        start = time.perf_counter()
        seen_here = 0
        for i, x, y in self._batches():
            boundary = (i + 1) % cfg.accum_steps == 0 or i + 1 == self.batches_per_epoch
            sync = (
                self.model.no_sync()
                if isinstance(self.model, nn.parallel.DistributedDataParallel) and not boundary
                else contextlib.nullcontext()
            )
            with sync:
                with self._autocast():
                    out = self.model(x)
                    loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
                    if self.distiller is not None:
                        loss = self.distiller.loss(out, x, loss)
                scaled = loss / cfg.accum_steps
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            value = float(loss.detach())
            if not math.isfinite(value):  # stop before the step writes non-finite weights
                raise TrainingDivergedError(
                    f"training diverged at epoch {s.epoch + 1}, batch {i + 1} (loss {value}): "
                    f"lower --lr (now {cfg.lr:g}) or raise --warmup-epochs; the last checkpoint "
                    f"in {self.out / 'checkpoints'} is from before"
                )
            s.stats.loss_sum += value * len(y)
            s.stats.correct += float((out.detach().argmax(1) == y).sum())
            s.stats.count += len(y)
            seen_here += len(y)
            s.batches_done = i + 1
            if boundary:
                self._optimizer_step()
                if cfg.checkpoint_every and s.step % cfg.checkpoint_every == 0:
                    s.stats.seconds += time.perf_counter() - start
                    start = time.perf_counter()
                    self.save()
            elapsed = s.stats.seconds + time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(
                loss=f"{s.stats.loss:.3f}",
                acc=f"{s.stats.top1:.1f}",
                img_s=f"{seen_here * self.info.world_size / max(elapsed, 1e-9):.0f}",
                lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
            )
        bar.close()
        s.stats.seconds += time.perf_counter() - start

    @torch.no_grad()
    def evaluate(self, model: nn.Module | None = None) -> tuple[float, float]:
        """Validation loss and top-1 (%) of ``model`` (default: the trained model), all ranks."""
        model = unwrap_model(model if model is not None else self.module)
        was_training = model.training
        model.eval()
        sampler = EpochSampler(
            len(self.data.val),  # type: ignore[arg-type]
            shuffle=False,
            rank=self.info.rank,
            world_size=self.info.world_size,
        )
        loader = DataLoader(
            self.data.val,
            batch_size=self.cfg.eval_batch_size,
            sampler=sampler,
            num_workers=self.cfg.workers,
        )
        loss_sum = correct = count = 0.0
        for i, (x, y) in enumerate(loader):
            if self.cfg.limit_val_batches and i >= self.cfg.limit_val_batches:
                break
            x, y = x.to(self.device), y.to(self.device)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                out = model(x)
            loss_sum += float(F.cross_entropy(out.float(), y, reduction="sum"))
            correct += float((out.argmax(1) == y).sum())
            count += len(y)
        model.train(was_training)
        loss_sum, correct, count = all_sum(self.info, loss_sum, correct, count)
        return loss_sum / max(count, 1.0), 100.0 * correct / max(count, 1.0)

    def _sync_buffers(self) -> None:
        """Give every process rank 0's buffers (BatchNorm statistics drift apart per rank)."""
        if self.info.distributed:
            for buffer in self.module.buffers():
                dist.broadcast(buffer, src=0)

    def _end_epoch(self) -> None:
        s = self.state
        self._sync_buffers()
        train_loss, train_correct, train_count = all_sum(
            self.info, s.stats.loss_sum, s.stats.correct, s.stats.count
        )
        val_loss, val_top1 = self.evaluate()
        record: dict[str, Any] = {
            "epoch": s.epoch + 1,
            "step": s.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": train_loss / max(train_count, 1.0),
            "train_top1": 100.0 * train_correct / max(train_count, 1.0),
            "val_loss": val_loss,
            "val_top1": val_top1,
            "epoch_seconds": s.stats.seconds,
            "images_per_second": train_count / max(s.stats.seconds, 1e-9),
        }
        if self.trp is not None and self.trp.ranks:
            record["ranks"] = dict(self.trp.ranks)
            record["trp_projection_seconds"] = self.trp.projection_seconds
        self._append_metrics(record)
        self.log(
            f"epoch {s.epoch + 1}: train loss {record['train_loss']:.4f} "
            f"top-1 {record['train_top1']:.2f} | val loss {val_loss:.4f} top-1 {val_top1:.2f}"
        )
        s.epoch += 1
        s.batches_done = 0
        s.stats = EpochStats()
        self.scheduler.step(s.epoch)

    def fit(self) -> None:
        """Train from the start or from the newest checkpoint (``--resume``)."""
        cfg = self.cfg
        existing = list_checkpoints(self.out)
        if existing and not cfg.resume:
            raise FileExistsError(
                f"{self.out} already holds checkpoints of a run; pass --resume to continue it "
                "or choose another --output-dir"
            )
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        barrier(self.info)
        if self.info.is_main:
            for partial in remove_partial_checkpoints(self.out):
                self.log(f"removed {partial}, a checkpoint whose write was interrupted")
        resumed = cfg.resume and self.restore()
        if cfg.resume and not resumed and list_checkpoints(self.out):
            raise CheckpointError(
                f"--resume: no checkpoint in {self.out / 'checkpoints'} could be read (see the "
                "warnings above); move them away to start over, or resume from a copy of the run"
            )
        if cfg.resume and not resumed:
            self.log(
                f"--resume: no checkpoint in {self.out / 'checkpoints'}, training from the start"
            )
        if not resumed:
            if self.info.is_main:
                self.metrics_path.unlink(missing_ok=True)
            if cfg.pretrained:  # the dense model TRP starts from: the baseline to compare with
                self.state.initial_top1 = self.evaluate()[1]
                self.log(f"starting dense model: top-1 {self.state.initial_top1:.2f}")
        if self.trp is not None:
            self.trp.attach(self.optimizer)
        while self.state.epoch < cfg.epochs:
            self.train_epoch()
            self._end_epoch()
            self.save()

    def weight_digests(self) -> list[str]:
        """SHA-256 of the model weights on every process, in rank order."""
        digest = hashlib.sha256()
        for tensor in self.module.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        mine = digest.hexdigest()
        if not self.info.distributed:
            return [mine]
        gathered: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(gathered, mine)
        return [str(g) for g in gathered]

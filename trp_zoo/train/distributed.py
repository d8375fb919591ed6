"""Distributed data parallel under ``torchrun``: nccl on GPUs, gloo on CPUs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun set up (``RANK``/``WORLD_SIZE``), or run alone."""
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "--device cuda was asked for, but PyTorch sees no CUDA GPU: use --device cpu (or "
            "auto), or check CUDA_VISIBLE_DEVICES and that this PyTorch build has CUDA"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_sum(info: DistInfo, *values: float) -> list[float]:
    """Sum numbers over all processes."""
    t = torch.tensor(values, dtype=torch.float64)
    if info.distributed:
        if info.device.type == "cuda":
            t = t.to(info.device)
        dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def all_gather_floats(info: DistInfo, value: float) -> list[float]:
    """One number from every process, in rank order."""
    if not info.distributed:
        return [value]
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    out = [torch.zeros_like(t) for _ in range(info.world_size)]
    dist.all_gather(out, t)
    return [float(x) for x in out]


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()

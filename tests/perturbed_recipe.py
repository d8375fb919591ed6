"""The Fashion-MNIST recipe with every TRP projection computed slightly differently on
rank 1 (as a nondeterministic SVD could): rank 0's broadcast must make the processes
agree again. Run under torchrun with the recipe's arguments."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from trp_zoo.lowrank import svd as lowrank

ROOT = Path(__file__).resolve().parents[1]
_project = lowrank.SubspaceProjector.__call__


def _perturbed(self, matrix, criterion, **kwargs):
    result = _project(self, matrix, criterion, **kwargs)
    if dist.is_initialized() and dist.get_rank() == 1:
        result.projected = result.projected + 1e-3 * torch.randn_like(result.projected)
    return result


lowrank.SubspaceProjector.__call__ = _perturbed  # type: ignore[method-assign]
sys.argv = [str(ROOT / "recipes" / "fashion_mnist_resnet18.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")

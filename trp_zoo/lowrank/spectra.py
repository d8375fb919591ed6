"""Spectra of layers: singular values and the energy a rank keeps.

The one implementation of both for the library (rank criteria, rank selection, training
plots) and the runtime's planner. Singular values come from the eigenvalues of the
smaller Gram matrix in float64: no vectors, a fraction of a full SVD's cost, accurate
for every value above about ``1e-8`` of the largest (smaller ones hold no energy any
criterion can see).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from .linears import effective_weight, layer_scheme
from .schemes import Scheme


@torch.no_grad()
def singular_values(matrix: Tensor) -> Tensor:
    """Singular values of ``matrix`` (descending, float64, on the CPU)."""
    a = matrix.detach().cpu().double()
    gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0.0).sqrt()


def layer_spectra(layers: Mapping[str, nn.Module], scheme: str | Scheme) -> dict[str, Tensor]:
    """Singular values of each layer's weight as its scheme reshapes it (``scheme`` for
    convs, channel for Linears; the kernel the layer applies, see ``convs.effective_weight``)."""
    return {
        name: singular_values(
            layer_scheme(layer, scheme).to_matrix(effective_weight(layer))  # type: ignore[arg-type]
        )
        for name, layer in layers.items()
    }


def energy_curve(s: Tensor, total: float | None = None) -> np.ndarray:
    """Kept energy by rank: ``e[r - 1] = sum_{k<=r} s_k^2 / total`` (``total``: the sum of
    all squared singular values, by default those of ``s``; pass it for a leading part).

    For trained weights this is how much of the layer's function a rank-``r`` truncation
    keeps. For randomly initialized weights the spectrum is nearly flat (Marchenko-Pastur),
    so ``e(r)`` is close to the share ``r / full rank`` of the layer's dimensions that is
    kept: a structural measure of capacity, not of learned importance. An all-zero
    spectrum keeps everything at every rank.
    """
    sq = s.detach().double().cpu().numpy() ** 2
    total = float(sq.sum()) if total is None else float(total)
    if total <= 0:
        return np.ones_like(sq)
    return np.minimum(np.cumsum(sq) / total, 1.0)

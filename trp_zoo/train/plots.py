"""PNG plots of a run: learning curves, the ranks TRP settled on, singular-value spectra."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from ..fileio import atomic_path


def save_png(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure to ``path`` as PNG, atomically, and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(history: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Train/val loss and top-1 per epoch."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [r["train_top1"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [r["val_top1"] for r in history], "o-", label="val")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_png(fig, path)


def plot_ranks(
    final: Mapping[str, int],
    full: Mapping[str, int],
    trajectory: Sequence[Mapping[str, Any]],
    path: Path,
) -> Path:
    """Per-layer final rank against full rank, and the mean rank fraction over training."""
    names = list(final)
    fig, (ax_bar, ax_traj) = plt.subplots(
        1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]}
    )
    xs = range(len(names))
    ax_bar.bar(xs, [full[n] for n in names], color="#cccccc", label="full rank")
    ax_bar.bar(xs, [final[n] for n in names], color="#1f77b4", label="TRP rank")
    ax_bar.set_xticks(list(xs), names, rotation=75, ha="right", fontsize=7)
    ax_bar.set(ylabel="rank", title="rank per layer at the end of training")
    ax_bar.legend()
    if trajectory:
        steps = [t["step"] for t in trajectory]
        frac = [
            sum(t["ranks"][n] / full[n] for n in t["ranks"]) / max(len(t["ranks"]), 1)
            for t in trajectory
        ]
        ax_traj.plot(steps, frac, "-")
    ax_traj.set(xlabel="optimizer step", ylabel="mean rank / full rank", title="rank over training")
    ax_traj.grid(alpha=0.3)
    return save_png(fig, path)


def plot_spectra(spectra: Mapping[str, torch.Tensor], ranks: Mapping[str, int], path: Path) -> Path:
    """Normalized singular values of a few layers, with the rank each one kept."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, s in spectra.items():
        s = s.double()
        line = ax.semilogy(range(1, len(s) + 1), (s / s[0]).clamp_min(1e-8).tolist(), label=name)
        if name in ranks:
            ax.axvline(ranks[name], color=line[0].get_color(), ls=":", lw=1)
    ax.set(xlabel="index", ylabel="s_i / s_1", title="singular values before the final projection")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return save_png(fig, path)

"""Plots people look at: fitness over generations, query MSE vs tasks seen."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def fitness_curve(history: Sequence[dict], path: str | Path, heldout: Sequence[dict] = ()) -> Path:
    """Best / mean / median fitness per generation (training episodes), and held-out center loss points."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    gens = [h["generation"] + 1 for h in history]
    shown: list[float] = []
    for key, style in (("best", "-"), ("median", "--"), ("mean", ":")):
        values = [h[key] for h in history]
        if any(math.isfinite(v) for v in values):   # EvoTorch's distributed mode reports no median
            ax.plot(gens, values, style, label=f"{key} fitness (training episodes)")
            shown += [v for v in values if math.isfinite(v)]
    if heldout:
        ax.plot([h["generation"] for h in heldout], [-h["loss"] for h in heldout], "o-", color="k", ms=3,
                label="-held-out MSE of the search center")
        shown += [-h["loss"] for h in heldout]
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness = -query MSE")
    if shown:  # the first generations of a search can be far below the rest: keep the scale readable
        ax.set_ylim(bottom=max(min(shown), -20))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def mse_vs_tasks_seen(curves: dict[str, Sequence[float]], path: str | Path, title: str = "") -> Path:
    """Query MSE over the tasks seen so far, one line per learner (the continual-learning curve)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, "o-", ms=3, label=label)
    ax.set_xlabel("tasks seen")
    ax.set_ylabel("query MSE over the tasks seen")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def finetune_curve(history: Sequence[dict], before: Sequence[dict], after: Sequence[dict],
                   path: str | Path) -> Path:
    """Meta-loss per meta-step, with each genome's held-out MSE before and after fine-tuning."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2, 1]})
    ax.plot([h["step"] for h in history], [h["meta_loss"] for h in history], lw=1)
    ax.set_xlabel("meta-step")
    ax.set_ylabel("meta-loss (training episodes)")
    ax.grid(alpha=0.3)
    idx = range(len(before))
    bx.bar([i - 0.2 for i in idx], [b["loss"] for b in before], width=0.4, label="before")
    bx.bar([i + 0.2 for i in idx], [a["loss"] for a in after], width=0.4, label="after")
    bx.set_xticks(list(idx))
    bx.set_xlabel("genome")
    bx.set_ylabel("held-out query MSE")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

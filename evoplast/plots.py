"""Plots people look at: fitness over generations, query MSE vs tasks seen."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def fitness_curve(history: Sequence[dict], path: str | Path, heldout: Sequence[dict] = ()) -> Path:
    """Best / mean / median fitness per generation (training episodes), and held-out center loss points."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    gens = [h["generation"] for h in history]
    for key, style in (("best", "-"), ("median", "--"), ("mean", ":")):
        ax.plot(gens, [h[key] for h in history], style, label=f"{key} fitness (training episodes)")
    if heldout:
        ax.plot([h["generation"] for h in heldout], [-h["loss"] for h in heldout], "o-", color="k", ms=3,
                label="-held-out MSE of the search center")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness = -query MSE")
    lo = min(min(h["median"] for h in history), min((-h["loss"] for h in heldout), default=0))
    ax.set_ylim(bottom=max(lo, -20))
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

"""Plots people look at: fitness over generations, query MSE vs tasks seen."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: str | Path, *axes) -> Path:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


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
    return _save(fig, path, ax)


def mse_vs_tasks_seen(curves: dict[str, Sequence[float]], path: str | Path, title: str = "",
                      ylabel: str = "query MSE") -> Path:
    """Query loss over the tasks seen so far, one line per learner (the continual-learning curve)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, "o-", ms=3, label=label)
    ax.set_xlabel("tasks seen")
    ax.set_ylabel(f"{ylabel} over the tasks seen")
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path, ax)


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


def accuracy_vs_n(by_n: dict[int, dict[str, float]], path: str | Path) -> Path:
    """Held-out accuracy against the number of classes per episode, one line per learner."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ns = sorted(by_n)
    for name in by_n[ns[0]]:
        ax.plot(ns, [by_n[n][name] for n in ns], "o-", ms=4, label=name)
    ax.plot(ns, [1 / n for n in ns], ":", color="gray", label="chance")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("classes per episode (N)")
    ax.set_ylabel("held-out query accuracy")
    ax.set_ylim(0, 1)
    return _save(fig, path, ax)


def forgetting_heatmaps(matrices: dict[str, "object"], path: str | Path, metric: str) -> Path:
    """One heatmap per learner: row j = after learning task j, column i = task i."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 3.8), squeeze=False)
    values = [m for m in matrices.values()]
    lo = min(float(v.min()) for v in values)
    hi = max(float(v.max()) for v in values)
    for ax, (name, m) in zip(axes[0], matrices.items()):
        im = ax.imshow(m.numpy() if hasattr(m, "numpy") else m, vmin=lo, vmax=hi,
                       cmap="viridis" if metric == "accuracy" else "viridis_r")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("task i")
        ax.set_ylabel("after learning task j")
    fig.colorbar(im, ax=axes[0].tolist(), label=f"query {metric}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def cosine_curves(cosine, layers: Sequence[int], task_ends: Sequence[int], path: str | Path) -> Path:
    """cos(rule update, -gradient) per lifetime step, one line per plastic layer; dotted lines end tasks."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for i, layer in enumerate(layers):
        ax.plot(cosine[:, i].tolist(), lw=1, label=f"layer {layer}")
    for t in task_ends[:-1]:
        ax.axvline(t + 0.5, color="gray", lw=0.5, ls=":")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("lifetime step")
    ax.set_ylabel("cos(rule update, -gradient)")
    ax.set_ylim(-1, 1)
    return _save(fig, path, ax)


def seeds_summary(agg: dict, path: str | Path, title: str = "") -> Path:
    """Results over seeds (:func:`evoplast.seeds.aggregate`): each learner's mean with its 95% CI over seeds,
    and each baseline's paired difference rule − baseline with its 95% CI (per held-out episode)."""
    rows = agg["rows"]
    metric = "accuracy" if agg["kind"] == "classification" else "query MSE"
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 1.8))
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, [r["interval"]["mean"] for r in rows], xerr=[_half(r["interval"]) for r in rows],
            color=["C3" if i == 0 else "C0" for i in range(len(rows))], capsize=3)
    ax.set_yticks(ys, [r["label"][:62] for r in rows], fontsize=7)
    ax.set_xlabel(f"held-out {metric}, mean ± 95% CI over {agg['seeds']} seeds")
    ax.grid(alpha=0.3, axis="x")
    diffs = [r for r in rows if "diff_episodes" in r]
    ys2 = list(range(len(diffs)))[::-1]
    bx.errorbar([r["diff_episodes"]["mean"] for r in diffs], ys2, xerr=[_half(r["diff_episodes"]) for r in diffs],
                fmt="o", capsize=3, label="paired per episode")
    bx.errorbar([r["diff_seeds"]["mean"] for r in diffs], [y - 0.2 for y in ys2],
                xerr=[_half(r["diff_seeds"]) for r in diffs], fmt="s", ms=3, capsize=3, label="paired per seed")
    bx.axvline(0, color="k", lw=0.7)
    bx.set_yticks(ys2, [r["label"][:62] for r in diffs], fontsize=7)
    bx.set_xlabel(f"evolved rule − learner ({metric}), 95% CI")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, bx)


def _half(interval: dict) -> float:
    h = interval["half_width"]
    return 0.0 if h != h else h

"""Plots people look at: fitness over generations, query MSE vs tasks seen."""

from __future__ import annotations

import math
import textwrap
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


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` and close it."""
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _smooth(values: Sequence[float], window: int) -> tuple[list[float], list[float]]:
    """Running mean and standard deviation over the last ``window`` finite values (``[G]`` each)."""
    means, stds, buf = [], [], []
    for v in values:
        if math.isfinite(v):
            buf.append(v)
        buf = buf[-window:]
        if buf:
            m = sum(buf) / len(buf)
            means.append(m)
            stds.append(math.sqrt(sum((x - m) ** 2 for x in buf) / len(buf)))
        else:
            means.append(float("nan"))
            stds.append(float("nan"))
    return means, stds


# one colour per learner in every plot (evolve, fine-tune, evaluate), by the learner's label (evoplast.runs.run_page)
LEARNER_COLORS = {
    "fine-tuned rule": "#d62728",                                          # red: the rule to use, when fine-tuned
    "evolved rule": "#1f77b4",                                             # blue: the search center
    "same genome, plasticity off": "#7f7f7f",
    "online SGD of the plastic weights, same initial weights": "#ff7f0e",
    "online SGD of every weight, same initial weights": "#2ca02c",
    "feedback alignment, same initial weights": "#9467bd",
    "online SGD, seed's initial weights": "#8c564b",
    "online SGD on the shuffled (iid) stream, same initial weights": "#e377c2",
    "best input-only predictor": "#bcbd22",
    "OML (meta-learned init, SGD of the head)": "#17becf",
}
RULES = ("fine-tuned rule", "evolved rule", "same genome, plasticity off")   # the rule and its own ablation


def color_of(label: str, fallback: int = 0) -> str:
    """The colour of a learner in every plot: its entry of :data:`LEARNER_COLORS` (a rule's label may say more,
    ``"evolved rule (search center)"``), else matplotlib's ``C{fallback}``."""
    for key, color in LEARNER_COLORS.items():
        if label == key or label.startswith(key):
            return color
    return f"C{fallback % 10}"


def _legend_below(ax, ncol: int = 2, fontsize: int = 7):
    """The legend under the axes, off the data."""
    ax.legend(fontsize=fontsize, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False)


def fitness_curve(history: Sequence[dict], heldout: Sequence[dict] = (), *, baselines: dict[str, float] | None = None,
                  center_name: str = "search center"):
    """The figure of a search: best fitness so far, the population's mean fitness smoothed over a window
    with a ±1 s.d. band (training episodes), the held-out loss of the search center (negated, as fitness),
    and the baselines' held-out losses as dashed reference lines, each in its learner's colour
    (:data:`LEARNER_COLORS`); the training curves in black and gray; the legend under the axes.

    The y-range is set from the smoothed curves and the references (robust to a few capped genomes at the
    loss cap: one −100 does not stretch it). Returns the matplotlib figure (``save_figure`` / ``log_figure``).
    """
    fig, ax = plt.subplots(figsize=(7.5, 5.6))
    gens = [h["generation"] + 1 for h in history]
    best = [h["best"] for h in history]
    so_far, top = [], float("-inf")
    for b in best:
        top = max(top, b) if math.isfinite(b) else top
        so_far.append(top if math.isfinite(top) else float("nan"))
    window = max(1, min(len(history) // 10, max(3, len(history) // 25)))
    mean, std = _smooth([h["mean"] for h in history], window)
    shown: list[float] = []
    if history:
        ax.fill_between(gens, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color="0.6",
                        alpha=0.25, lw=0)
        ax.plot(gens, mean, color="0.45", lw=1.2, label=f"population mean (training, {window}-generation mean ± s.d.)")
        ax.plot(gens, so_far, color="k", lw=1.6, label="best so far (training episodes)")
        finite_mean = sorted(v for v in mean if math.isfinite(v))
        if finite_mean:   # the mean's early dips (and capped genomes) do not set the range: its 5th percentile
            shown += [finite_mean[len(finite_mean) // 20], finite_mean[-1]]
        shown += [v for v in so_far if math.isfinite(v)]
    if heldout:
        ax.plot([h["generation"] for h in heldout], [-h["loss"] for h in heldout], "o-", color=color_of("evolved rule"),
                ms=3.5, lw=1.2, label=f"{center_name}, held-out (−loss)")
        shown += [-h["loss"] for h in heldout]
    lo, hi = (min(shown), max(shown)) if shown else (-1.0, 0.0)
    span = hi - lo or 1.0
    for i, (name, value) in enumerate((baselines or {}).items()):
        if not math.isfinite(value):
            continue
        inside = lo - span <= -value <= hi + span      # a reference far off the search's scale is named, not drawn
        ax.axhline(-value if inside else float("nan"), ls="--", lw=1.2, color=color_of(name, i + 2),
                   label=f"{name}, held-out (−loss)" + ("" if inside else f": {-value:.3g}, off the scale"))
        if inside:
            lo, hi = min(lo, -value), max(hi, -value)
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness = −query loss")
    pad = 0.08 * (hi - lo or 1.0)
    ax.set_ylim(lo - pad, hi + pad)
    ax.grid(alpha=0.3)
    _legend_below(ax)
    fig.tight_layout()
    return fig


def _curve(ax, label: str, curve, color: str, band: bool = True, **kw) -> list[float]:
    """One learner's mean curve over the tasks seen, with its 95% band over episodes; returns the means."""
    from ..science.stats import mean_ci

    rows = [list(map(float, r)) for r in curve] if curve and isinstance(curve[0], (list, tuple)) else None
    if rows:
        cis = [mean_ci([r[c] for r in rows]) for c in range(len(rows[0]))]
        mean = [iv.mean for iv in cis]
        half = [0.0 if iv.half_width != iv.half_width else iv.half_width for iv in cis]
        xs = range(1, len(mean) + 1)
        if band:
            ax.fill_between(xs, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                            color=color, alpha=0.18, lw=0)
    else:
        mean = list(map(float, curve))
        xs = range(1, len(mean) + 1)
    ax.plot(xs, mean, "o-", ms=3, color=color, label=label, **kw)
    return [v for v in mean if math.isfinite(v)]


def mse_vs_tasks_seen(curves: dict[str, Sequence], title: str = "", ylabel: str = "query MSE"):
    """Query loss over the tasks seen so far, each learner in its colour (:data:`LEARNER_COLORS`) with a 95%
    band over episodes, in two panels that share the y-axis so the bands can be told apart: the learned rules
    (and the rule without plasticity) on the left, the baselines on the right with the best rule drawn again,
    without its band, for reference. One panel when there are no baselines.

    ``curves``: ``{learner: [K, C] per-episode values}`` (a band from :func:`evoplast.science.stats.mean_ci` over the K
    episodes at each of the C points) or ``[C]`` (a mean curve, no band). Returns the figure.
    """
    rules = {k: v for k, v in curves.items() if k.startswith(RULES)}
    others = {k: v for k, v in curves.items() if k not in rules}
    panels = [p for p in (rules, others) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.2), sharey=True, squeeze=False)
    means: list[float] = []
    first_rule = next(iter(rules), None)
    for ax, panel in zip(axes[0], panels):
        for i, (label, curve) in enumerate(panel.items()):
            means += _curve(ax, label, curve, color_of(label, i))
        if panel is others and first_rule is not None:
            means += _curve(ax, first_rule, rules[first_rule], color_of(first_rule), band=False, lw=2.2, alpha=0.8)
        ax.set_xlabel("tasks seen")
        ax.grid(alpha=0.3)
        ax.set_title("learned rules" if panel is rules else "baselines (the rule again, for reference)", fontsize=9)
        _legend_below(ax, ncol=1)
    ax0 = axes[0][0]
    if means:   # the range follows the means (a diverged learner's band does not flatten the others)
        lo, hi = min(means), max(means)
        if lo > 0 and hi / lo > 5:
            ax0.set_yscale("log")
            ax0.set_ylim(lo / 1.5, hi * 1.5)
        else:
            pad = 0.15 * (hi - lo or abs(hi) or 1.0)
            ax0.set_ylim(lo - pad, hi + pad)
    ax0.set_ylabel(f"{ylabel} over the tasks seen (95% CI over episodes)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def finetune_curve(history: Sequence[dict], before: Sequence[dict], after: Sequence[dict],
                   heldout: Sequence[tuple[int, float]] = (), labels: Sequence[str] = ()):
    """Meta-loss per meta-step (training episodes) and the held-out loss at the steps it was measured (step 0:
    before), with each genome's held-out loss before and after fine-tuning as bars (the figure)."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.5, 4.6), gridspec_kw={"width_ratios": [2, 1]})
    ax.plot([h["step"] for h in history], [h["meta_loss"] for h in history], lw=0.8, color="0.55",
            label="meta-loss (training episodes)")
    if heldout:
        ax.plot([s for s, _ in heldout], [v for _, v in heldout], "o-", ms=3.5, lw=1.4,
                color=color_of("fine-tuned rule"), label="held-out query loss (step 0: before)")
    ax.set_xlabel("meta-step")
    ax.set_ylabel("query loss")
    ax.grid(alpha=0.3)
    _legend_below(ax)
    idx = range(len(before))
    bx.bar([i - 0.2 for i in idx], [b["loss"] for b in before], width=0.4, label="before",
           color=color_of("evolved rule"))
    bx.bar([i + 0.2 for i in idx], [a["loss"] for a in after], width=0.4, label="after",
           color=color_of("fine-tuned rule"))
    bx.set_xticks(list(idx), [textwrap.fill(str(l), 18) for l in labels] if labels else [str(i) for i in idx], fontsize=7)
    bx.set_xlabel("genome")
    bx.set_ylabel("held-out query loss")
    _legend_below(bx)
    fig.tight_layout()
    return fig


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
    """Results over seeds (:func:`evoplast.science.over_seeds.aggregate`): each learner's mean with its 95% CI over seeds,
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

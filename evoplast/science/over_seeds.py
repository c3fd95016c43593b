"""Results over seeds: one evolution per seed, every genome judged on the same held-out episodes.

:func:`aggregate` turns the per-seed reports (:meth:`evoplast.evaluation.Evaluator.report`, computed on
episodes shared by every seed) into means with 95% t-intervals over seeds (:mod:`evoplast.science.stats`) and, for
each baseline, the paired difference rule − baseline: per held-out episode (the seeds' mean on each shared
episode, interval over episodes) and per seed (each seed's mean difference, interval over seeds).
:func:`markdown_table` writes it as a table that can be pasted into the docs.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .stats import format_interval, mean_ci, paired_ci

# (report key, label) of every learner a report can carry
_LABELS = {
    "loss": "evolved rule", "accuracy": "evolved rule",
    "loss_plasticity_off": "same genome, plasticity off", "accuracy_plasticity_off": "same genome, plasticity off",
    "input_only": "best input-only predictor (fitted on training episodes, no learning)",
    "prototype": "nearest class mean on the initial features (prototypes)",
    "sgd_plastic_weights": "online SGD of the plastic weights only, same initial weights",
    "sgd_same_init": "online SGD of every weight and bias, same initial weights",
    "fa_same_init": "feedback alignment, same initial weights",
    "sgd_seed_init": "online SGD, seed's random initial weights",
    "sgd_iid_same_init": "online SGD on the shuffled (iid) stream, same initial weights",
    "oml": "OML: meta-learned init, SGD of the head (equal meta-compute)",
}
_BASELINES = ("sgd_plastic_weights", "sgd_same_init", "fa_same_init", "sgd_seed_init", "sgd_iid_same_init", "oml")
# the learners of a regression / classification report, the evolved rule first
REGRESSION = tuple((k, _LABELS[k]) for k in ("loss", "loss_plasticity_off", "input_only", *_BASELINES))
CLASSIFICATION = tuple((k, _LABELS[k]) for k in ("accuracy", "accuracy_plasticity_off", "input_only", "prototype",
                                                 *_BASELINES))
MEASURES = (("learning_gain", "learning gain (plasticity off − on)"),
            ("episode_gain", "episode-specific gain (other episode's tasks − own)"))
TRANSFER = (("transfer_long", "4× longer stream"), ("transfer_wide", "4× larger batches"),
            ("transfer_both", "4× longer stream of 4× larger batches"))


def _interval_dict(iv) -> dict[str, float]:
    return {"mean": iv.mean, "half_width": iv.half_width, "n": iv.n}


def aggregate(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means and paired differences over seeds.

    Args:
        reports: one report per seed, on the same held-out episodes (``per_episode`` lists of equal length).
    Returns:
        ``{"kind", "seeds", "rows": [{key, label, interval, diff_episodes, diff_seeds}], "measures": [...],
        "transfer": [...]}``; intervals as ``{"mean", "half_width", "n"}``. A difference is rule − learner
        (MSE: negative = the rule is better; accuracy: positive = the rule is better).
    """
    classification = "per_episode_accuracy" in reports[0]
    learners = CLASSIFICATION if classification else REGRESSION
    per_ep = "per_episode_accuracy" if classification else "per_episode"
    rule_key = "accuracy" if classification else "loss"
    rule = torch.tensor([r[per_ep][rule_key] for r in reports], dtype=torch.float64)      # [S, K]
    rows = []
    for key, label in learners:
        if key not in reports[0][per_ep]:
            continue
        values = torch.tensor([r[per_ep][key] for r in reports], dtype=torch.float64)       # [S, K]
        per_seed = values.mean(1)
        row = {"key": key, "label": label, "interval": _interval_dict(mean_ci(per_seed))}
        if key != rule_key and torch.isfinite(values).all():
            row["diff_episodes"] = _interval_dict(paired_ci(rule.mean(0), values.mean(0)))
            row["diff_seeds"] = _interval_dict(paired_ci(rule.mean(1), per_seed))
        rows.append(row)
    measures = [{"key": k, "label": lab, "interval": _interval_dict(mean_ci([r[k] for r in reports]))}
                for k, lab in MEASURES]
    transfer = []
    for key, what in TRANSFER:
        if key not in reports[0]:
            continue
        transfer.append({"key": key, "label": what,
                         "rule": _interval_dict(mean_ci([r[key] for r in reports])),
                         "nonfinite": _interval_dict(mean_ci([r[f"{key}_nonfinite"] for r in reports])),
                         "nonfinite_per_seed": [r[f"{key}_nonfinite"] for r in reports],
                         "diverged_per_seed": [r.get(f"{key}_diverged", math.nan) for r in reports],
                         "sgd_plastic_weights": _interval_dict(mean_ci([r[f"{key}_sgd_plastic_weights"]
                                                                        for r in reports]))})
    return {"kind": "classification" if classification else "regression", "seeds": len(reports),
            "episodes": rule.shape[1], "rows": rows, "measures": measures, "transfer": transfer}


def _fmt(d: dict[str, float] | None, digits: int = 3, signed: bool = False, star: bool = False) -> str:
    if d is None:
        return ""
    from .stats import Interval

    iv = Interval(d["mean"], d["half_width"], int(d["n"]))
    text = format_interval(iv, digits)
    if signed and iv.mean >= 0:
        text = "+" + text
    if star and iv.n >= 2 and not math.isnan(iv.half_width) and iv.excludes_zero():
        text += " *"
    return text


def markdown_table(agg: dict[str, Any], title: str = "") -> str:
    """The aggregate as markdown: learners (mean ± 95% CI over seeds), paired differences, learning measures,
    transfer. ``*`` marks a difference whose 95% interval excludes 0."""
    metric = "accuracy" if agg["kind"] == "classification" else "query MSE"
    s, k = agg["seeds"], agg["episodes"]
    lines = [f"### {title}\n" if title else "",
             f"Held-out {metric}, mean ± 95% CI over {s} seeds; rule − learner paired per held-out episode "
             f"({k} episodes shared by all seeds; interval over episodes of the seeds' mean) and per seed "
             f"(interval over seeds). `*`: the interval excludes 0.",
             "",
             f"| learner | {metric} | rule − learner, per episode | rule − learner, per seed |",
             "|---|---|---|---|"]
    for row in agg["rows"]:
        lines.append(f"| {row['label']} | {_fmt(row['interval'])} | {_fmt(row.get('diff_episodes'), signed=True, star=True)} | "
                     f"{_fmt(row.get('diff_seeds'), signed=True, star=True)} |")
    for m in agg["measures"]:
        lines.append(f"| {m['label']} | {_fmt(m['interval'], signed=True)} | | |")
    if agg["transfer"]:
        lines += ["", "| transfer (same genome) | evolved rule | episodes non-finite / at the loss cap, per seed | "
                      "SGD of the plastic weights |", "|---|---|---|---|"]
        for t in agg["transfer"]:
            seeds = ", ".join(f"{a:.0%} / {b:.0%}" for a, b in zip(t["nonfinite_per_seed"], t["diverged_per_seed"]))
            lines.append(f"| {t['label']} | {_fmt(t['rule'])} | {seeds} | "
                         f"{_fmt(t['sgd_plastic_weights'])} |")
    return "\n".join(line for line in lines if line is not None).strip() + "\n"


def metrics_of(agg: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics of the aggregate: ``mean.<key>``, ``ci.<key>`` (half-width), ``diff.<key>``,
    ``diff_ci.<key>`` (paired per episode), ``diff_seeds.<key>``, ``diff_seeds_ci.<key>``, ``transfer...``."""
    out: dict[str, float] = {}
    for row in agg["rows"] + agg["measures"]:
        out[f"mean.{row['key']}"] = row["interval"]["mean"]
        out[f"ci.{row['key']}"] = row["interval"]["half_width"]
        for name in ("diff", "diff_seeds"):
            d = row.get("diff_episodes" if name == "diff" else "diff_seeds")
            if d is not None:
                out[f"{name}.{row['key']}"] = d["mean"]
                out[f"{name}_ci.{row['key']}"] = d["half_width"]
    for t in agg["transfer"]:
        out[f"mean.{t['key']}"] = t["rule"]["mean"]
        out[f"ci.{t['key']}"] = t["rule"]["half_width"]
        out[f"mean.{t['key']}_nonfinite"] = t["nonfinite"]["mean"]
        out[f"mean.{t['key']}_sgd_plastic_weights"] = t["sgd_plastic_weights"]["mean"]
    return {k: v for k, v in out.items() if not math.isnan(v)}

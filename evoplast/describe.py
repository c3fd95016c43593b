"""What a run says about itself: its name, tags, the params that apply, the learned rule as equations,
and the markdown description shown on the run's page in the MLflow UI.

Pure functions of the config, decoded genome segments and report dicts: nothing here talks to MLflow.
The recommended genome of an evolution is called :data:`CENTER` everywhere (console, plots, MLflow).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from torch import Tensor

CENTER = "evolved rule (search center)"   # the one name of the genome an evolution recommends

# params that only mean something for some runs: (prefix or key, does it apply to this flattened config?)
_IMAGE_TASK = ("glyphs", "digits", "omniglot")
_APPLIES = (
    ("task.amplitude", lambda f: f.get("task.name") == "sinusoid"),
    ("task.phase", lambda f: f.get("task.name") == "sinusoid"),
    ("task.x_range", lambda f: f.get("task.name") == "sinusoid"),
    ("task.output_classes", lambda f: f.get("task.name") in _IMAGE_TASK),
    ("task.image_size", lambda f: f.get("task.name") in _IMAGE_TASK),
    ("task.data_dir", lambda f: f.get("task.name") == "omniglot"),
    ("task.glyph_classes", lambda f: f.get("task.name") == "glyphs"),
    ("task.images_per_class", lambda f: f.get("task.name") == "glyphs"),
    ("network.conv_channels", lambda f: f.get("network.features") == "conv"),
    ("network.features", lambda f: f.get("task.name") in _IMAGE_TASK),
    ("rule.terms", lambda f: f.get("rule.name") == "terms"),
    ("rule.term_scale", lambda f: f.get("rule.name") == "terms"),
    ("rule.eta_transform", lambda f: f.get("rule.name") != "terms"),
    ("rule.eta_scale", lambda f: f.get("rule.name") != "terms"),
    ("rule.eta_init", lambda f: f.get("rule.name") != "terms"),
    ("search.elite_ratio", lambda f: f.get("search.algorithm") == "cem"),
    ("search.center_learning_rate", lambda f: f.get("search.algorithm") in ("pgpe", "snes", "xnes")),
    ("search.stdev_learning_rate", lambda f: f.get("search.algorithm") in ("pgpe", "snes", "xnes")),
    ("search.optimizer", lambda f: f.get("search.algorithm") == "pgpe"),
    ("search.max_speed", lambda f: f.get("search.algorithm") == "pgpe"),
    ("search.ranking_method", lambda f: f.get("search.algorithm") != "cmaes"),
    ("search.separable", lambda f: f.get("search.algorithm") == "cmaes"),
    ("finetune.after_evolution_steps", lambda f: str(f.get("finetune.after_evolution")) == "True"),
    ("ray.", lambda f: str(f.get("ray.num_actors")) not in ("0", "none", "None")),
    ("tracking.tracking_uri", lambda f: bool(f.get("tracking.tracking_uri"))),
    ("tracking.run_name", lambda f: bool(f.get("tracking.run_name"))),
)


def applicable_params(flat: dict[str, Any]) -> dict[str, Any]:
    """The flattened config without the keys that do not apply to its task, model, rule and searcher
    (``task.glyph_classes`` on a sinusoid run, ``network.conv_channels`` without a conv stack, ...)."""
    out = {}
    for key, value in flat.items():
        rules = [test for prefix, test in _APPLIES if key == prefix or (prefix.endswith(".") and key.startswith(prefix))]
        if all(test(flat) for test in rules):
            out[key] = value
    return out


def run_name(flat: dict[str, Any], suffix: str = "") -> str:
    """``sinusoid-hebb-pgpe-s0`` (task-rule-searcher-seed), then ``-suffix`` (``-finetune``, ``-evaluate``);
    the config's ``tracking.run_name`` when set."""
    base = flat.get("tracking.run_name") or (f"{flat.get('task.name')}-{flat.get('rule.name')}-"
                                              f"{flat.get('search.algorithm')}-s{flat.get('seed')}")
    return f"{base}-{suffix}" if suffix else str(base)


def run_tags(flat: dict[str, Any], outer: str) -> dict[str, str]:
    """Tags the run list can show as columns: task, rule, searcher, outer method (``es``, ``bptt``,
    ``es+bptt``, ``evaluation``), plastic layers."""
    return {"task": str(flat.get("task.name")), "rule": str(flat.get("rule.name")),
            "searcher": str(flat.get("search.algorithm")), "outer": outer,
            "plastic_layers": str(flat.get("network.plastic_layers")), "seed": str(flat.get("seed"))}


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _signed(x: float) -> str:
    """``" + 0.139"`` or ``" − 0.122"``: a term added to what comes before it."""
    return f" − {_num(-x)}" if x < 0 else f" + {_num(x)}"


def _value(t: Tensor) -> str:
    """One number, or ``mean 0.12 (range 0.01..0.3, 40 values)`` for a tensor of several."""
    t = t.detach().float().reshape(-1)
    if t.numel() == 1:
        return _num(float(t[0]))
    return f"mean {_num(float(t.mean()))} (range {_num(float(t.min()))}..{_num(float(t.max()))}, {t.numel()} values)"


def rule_equations(model, segments: dict[str, Tensor]) -> list[str]:
    """The learned rule with its coefficients, one equation per plastic layer (plain text, Unicode).

    Args:
        model: the run's :class:`~evoplast.network.ModelSpec` (sizes, plastic layers, rule, ...).
        segments: model values by name (``layer3.eta`` ...), each ``[*shape]`` or ``[1, *shape]``.
    Returns:
        e.g. ``["ΔW3 = 0.0045 · meanᵣₒᵥᵥₛ[(0.939·(1.45·(y − ŷ) + 0.139) + 0.061·ŷ) h2ᵀ]", ...]`` and the
        legend lines after them.
    """
    def seg(name: str) -> Optional[Tensor]:
        v = segments.get(name)
        if v is None:
            return None
        return v[0] if v.dim() > 1 and v.shape[0] == 1 else v

    L = model.num_layers if hasattr(model, "num_layers") else len(model.sizes) - 1
    reduce = "mean over rows" if getattr(model, "batch_reduction", "sum") == "mean" else "sum over rows"
    s = {"error": "(y − ŷ)", "target": "y"}.get(model.teaching_signal, "s") if model.kind == "regression" else \
        {"target": "onehot(y)", "error": "(onehot(y) − softmax(ŷ))"}.get(model.teaching_signal, "s")
    lines = []
    for l in model.plastic_layers:
        out_act = "ŷ" if l == L else f"h{l}"
        beta, fb, fb_b = seg(f"layer{l}.beta"), seg(f"layer{l}.feedback"), seg(f"layer{l}.feedback_bias")
        g = "" if l == L else ("relu" if model.feedback_activation == "relu" else "")
        scalar_fb = fb is not None and fb.numel() == 1
        scalar_c = fb_b is not None and fb_b.numel() == 1
        fb_text = (f"{_value(fb)}·{s}" if scalar_fb else f"B{l}·{s}") + (_signed(float(fb_b.reshape(-1)[0])) if scalar_c else f" + c{l}")
        f = f"{g}({fb_text})" if g else f"({fb_text})"
        if l == L and model.kind == "classification":
            post = s
        elif beta is not None and beta.numel() == 1:
            b = float(beta.reshape(-1)[0])
            post = f"({_num(b)}·{f} + {_num(1 - b)}·{out_act})"
        else:
            post = f"(β{l}·{f} + (1 − β{l})·{out_act})"
        pre = f"h{l - 1}" if l > 1 else "x"
        lines.append(f"p{l} = {post[1:-1] if post.startswith('(') and post.endswith(')') else post}")
        post = f"p{l}"
        if model.rule == "hebb":
            body = f"{_value(seg(f'layer{l}.eta'))} · {reduce}[{post} {pre}ᵀ]"
        elif model.rule == "oja":
            body = f"{_value(seg(f'layer{l}.eta'))} · {reduce}[{post} {pre}ᵀ − diag({post}²) W{l}]"
        elif model.rule == "abcd":
            c = {k: _value(seg(f"layer{l}.{k}")) for k in ("eta", "A", "B", "C", "D")}
            body = (f"{c['eta']} · {reduce}[{c['A']}·{post} {pre}ᵀ + {c['B']}·{post} 1ᵀ + {c['C']}·1 {pre}ᵀ + "
                    f"{c['D']}]")
        else:   # terms
            theta = seg(f"layer{l}.theta")
            parts = []
            for r, term in enumerate(model.terms):
                parts.append(f"{_value(theta[r]) if theta is not None else '?'}·{term}")
            body = f"{reduce}[" + " + ".join(parts) + "]"
        lines.append(f"ΔW{l} = {body}")
    for l in model.plastic_layers:
        v = seg(f"layer{l}.feedback")
        if v is not None and v.numel() > 1:
            lines.append(f"  B{l} {tuple(v.shape)}: {_value(v)}; c{l}: {_value(seg(f'layer{l}.feedback_bias'))}")
    for l in model.plastic_layers:
        b = seg(f"layer{l}.beta")
        if b is not None and b.numel() > 1:
            lines.append(f"  β{l}: {_value(b)}")
    return lines


def rule_legend(model) -> str:
    """What the symbols of :func:`rule_equations` mean, in one line."""
    L = model.num_layers if hasattr(model, "num_layers") else len(model.sizes) - 1
    return (f"h_l: layer l's feed-forward activity (h0 = x), ŷ = output of layer {L}, y: target; rows: the "
            f"mini-batch; biases are not plastic. Feedback f_l = B_l·s + c_l (relu for hidden layers), "
            f"teaching post = β·f + (1 − β)·h.")


def table_markdown(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    """A markdown table; floats shown with 3 decimals."""
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def next_commands(run_id: str, *, finetuned: bool, uri: str = "") -> list[str]:
    """The commands that continue from run ``run_id``: fine-tune, export, evaluate."""
    env = f"MLFLOW_TRACKING_URI={uri} " if uri and uri != "sqlite:///mlflow.db" else ""
    which = "finetuned" if finetuned else "best"
    cmds = []
    if not finetuned:
        cmds.append(f"{env}python scripts/finetune.py --run-id {run_id}")
    cmds += [f"{env}python scripts/export.py --run-id {run_id} --which {which} --out rule.pt2",
             f"{env}python scripts/evaluate.py --run-id {run_id} --which {which}"]
    return cmds


def summary_rows(report: dict[str, Any], classification: bool) -> list[tuple[str, str]]:
    """``(label, report key)`` of every learner the held-out table shows, the evolved rule first."""
    if classification:
        rows = [(CENTER, "accuracy"), ("same genome, plasticity off", "accuracy_plasticity_off"),
                ("online SGD on the plastic weights only, same initial weights", "sgd_plastic_weights_accuracy"),
                ("online SGD on every weight and bias, same initial weights", "sgd_same_init_accuracy"),
                ("feedback alignment, same initial weights", "fa_same_init_accuracy"),
                ("online SGD, seed's initial weights", "sgd_seed_init_accuracy"),
                ("online SGD on the shuffled (iid) stream, same initial weights", "sgd_iid_same_init_accuracy"),
                ("nearest class mean on the initial features (prototypes)", "prototype_accuracy"),
                ("best input-only predictor (fitted on training episodes)", "input_only_accuracy")]
    else:
        rows = [(CENTER, "loss"), ("same genome, plasticity off", "loss_plasticity_off"),
                ("online SGD on the plastic weights only, same initial weights", "sgd_plastic_weights"),
                ("online SGD on every weight and bias, same initial weights", "sgd_same_init"),
                ("feedback alignment, same initial weights", "fa_same_init"),
                ("online SGD, seed's initial weights", "sgd_seed_init"),
                ("online SGD on the shuffled (iid) stream, same initial weights", "sgd_iid_same_init"),
                ("best input-only predictor (fitted on training episodes)", "input_only")]
    return [(label, key) for label, key in rows if key in report]


def summary_table(report: dict[str, Any]) -> dict[str, list]:
    """The held-out table as columns (for ``MlflowClient.log_table``): learner, value, learning rate."""
    classification = "accuracy" in report
    learner, value, lr = [], [], []
    for label, key in summary_rows(report, classification):
        learner.append(label)
        value.append(float(report[key]))
        base = key.removesuffix("_accuracy")
        lr.append(float(report[f"{base}_lr"]) if f"{base}_lr" in report else float("nan"))
    for key in ("learning_gain", "episode_gain"):
        learner.append(key.replace("_", " "))
        value.append(float(report[key]))
        lr.append(float("nan"))
    return {"learner": learner, "accuracy" if classification else "query MSE": value, "learning rate": lr}


def evolution_description(*, run_id: str, flat: dict[str, Any], generations: int, report: dict[str, Any],
                          equations: Sequence[str], legend: str, history: Sequence[dict] = (),
                          finetune: Optional[dict[str, Any]] = None, uri: str = "") -> str:
    """The run's description (``mlflow.note.content``, markdown): what it is, the held-out table, the rule
    written out, and the next commands with the run id filled in."""
    classification = "accuracy" in report
    metric = "accuracy" if classification else "query MSE"
    score = report["accuracy" if classification else "loss"]
    # the rule comes first: the UI shows the first lines of a long description until "Show more"
    lines = [f"**Learned rule** ({CENTER}), held-out {metric} **{score:.3f}**:", "", "```", *equations, "```", "",
             f"**{flat.get('task.name')}** task, **{flat.get('rule.name')}** rule on layer(s) "
             f"{flat.get('network.plastic_layers')} of {flat.get('network.hidden')} hidden, evolved by "
             f"**{flat.get('search.algorithm')}** (popsize {flat.get('search.popsize')}) for {generations} "
             f"generations, seed {flat.get('seed')}. {legend}"]
    if history:
        best = max(h["best"] for h in history if h["best"] == h["best"]) if any(h["best"] == h["best"]
                                                                              for h in history) else float("nan")
        lines.append(f"Training fitness: best so far {best:.3f} (−query loss, training episodes).")
    lines += ["", f"### Held-out episodes ({flat.get('evaluation.heldout_episodes')}, {flat.get('task.order')} stream)",
              ""]
    rows = []
    for label, key in summary_rows(report, classification):
        base = key.removesuffix("_accuracy")
        lr = report.get(f"{base}_lr")
        rows.append((label, float(report[key]), "" if lr is None else f"{lr:g}"))
    lines.append(table_markdown(rows, ("learner", metric, "learning rate")))
    lines += ["", f"Learning gain (plasticity off − on) {report['learning_gain']:+.3f}; episode-specific gain "
                  f"(other episode's tasks − own) {report['episode_gain']:+.3f}."]
    if finetune:
        lines += ["", f"Fine-tuned by BPTT (nested run `{finetune['run_id']}`): held-out {metric} "
                      f"{finetune['before']:.3f} → {finetune['after']:.3f}."]
    lines += ["", "### Next", "", "```"] + next_commands(run_id, finetuned=bool(finetune), uri=uri) + ["```"]
    return "\n".join(lines)


def finetune_description(*, run_id: str, parent_run_id: Optional[str], labels: Sequence[str],
                         before: Sequence[dict], after: Sequence[dict], chosen: int, steps: int,
                         equations: Sequence[str], legend: str, uri: str = "") -> str:
    """A fine-tune run's description: before/after table, the fine-tuned rule, the next commands."""
    source = f"the evolution run `{parent_run_id}`" if parent_run_id else "the initial genome (from scratch)"
    rows = [(label + (" (kept)" if i == chosen else ""), float(before[i]["loss"]), float(after[i]["loss"]),
             float(before[i]["episode_gain"]), float(after[i]["episode_gain"])) for i, label in enumerate(labels)]
    target = parent_run_id or run_id
    return "\n".join([f"**Fine-tuned rule** (BPTT, {steps} meta-steps, from {source}):", "", "```", *equations, "```",
                      legend, "", "### Held-out query loss", "",
                      table_markdown(rows, ("genome", "before", "after", "episode gain before", "after")), "",
                      "### Next", "", "```", *next_commands(target, finetuned=True, uri=uri), "```"])


# report keys of the learners drawn as reference lines and logged as baseline/<key>
BASELINES = {"loss_plasticity_off": "same genome, plasticity off",
             "sgd_plastic_weights": "online SGD of the plastic weights, same initial weights",
             "sgd_same_init": "online SGD of every weight, same initial weights",
             "input_only": "best input-only predictor"}


def baseline_lines(report: dict[str, Any]) -> dict[str, float]:
    """``{report key: held-out loss}`` of the baselines the report has."""
    return {k: float(report[k]) for k in BASELINES if isinstance(report.get(k), float)}


def learner_curves(report: dict[str, Any], rule_label: str = CENTER) -> dict[str, Any]:
    """``{label: [K, C] per-episode curves (or a [C] mean curve)}`` of every learner the report has curves for."""
    labels = {"loss": rule_label, "loss_plasticity_off": "same genome, plasticity off",
              "sgd_plastic_weights": "online SGD of the plastic weights, same initial weights",
              "sgd_same_init": "online SGD of every weight, same initial weights",
              "fa_same_init": "feedback alignment, same initial weights",
              "sgd_seed_init": "online SGD, seed's initial weights",
              "sgd_iid_same_init": "online SGD on the shuffled (iid) stream, same initial weights",
              "oml": "OML (meta-learned init, SGD of the head)"}
    per = report.get("curves_per_episode", {})
    out = {}
    for key, label in labels.items():
        if key in per:
            out[label] = per[key]
        elif f"curve_{key}" in report or (key == "loss" and "curve" in report):
            out[label] = report["curve" if key == "loss" else f"curve_{key}"]
    return out

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


def applicable_params(flat: dict[str, Any], *, ray: Optional[bool] = None, gpu: Optional[bool] = None,
                      command: str = "") -> dict[str, Any]:
    """The flattened config without the keys that do not apply to its task, model, rule and searcher
    (``task.glyph_classes`` on a sinusoid run, ``network.conv_channels`` without a conv stack, ...), nor to
    what ran: ``ray=False`` drops ``ray.*`` (an in-process run; an evolution keeps ``ray.num_actors``, the choice
    that placed it), ``gpu=False`` drops the GPU keys (a CPU run);
    ``command="evolve"`` keeps only the fine-tune keys that the evolution's own fine-tune used
    (``finetune.after_evolution_steps``, not ``finetune.steps``, when that is set; none without one),
    ``command="finetune"`` / ``"train"`` drop ``finetune.after_evolution*`` (they do not run it)."""
    out = {}
    for key, value in flat.items():
        rules = [test for prefix, test in _APPLIES if key == prefix or (prefix.endswith(".") and key.startswith(prefix))]
        if all(test(flat) for test in rules):
            out[key] = value
    if ray is False:     # an evolution keeps ray.num_actors: that choice (e.g. auto) placed it in-process
        out = {k: v for k, v in out.items() if not k.startswith("ray.") or
               (command == "evolve" and k == "ray.num_actors")}
    if gpu is False:
        out = {k: v for k, v in out.items() if "gpu" not in k}
    if command == "evolve":
        if str(flat.get("finetune.after_evolution")) != "True":
            out = {k: v for k, v in out.items() if not k.startswith("finetune.")}
        elif flat.get("finetune.after_evolution_steps") not in (None, "", "None"):
            out.pop("finetune.steps", None)
    elif command in ("finetune", "train"):
        out = {k: v for k, v in out.items() if not k.startswith("finetune.after_evolution")}
    return out


SEP = " · "      # between a child run's role and its parent's name: ``finetune · sinusoid-hebb-pgpe-s0``


def run_name(flat: dict[str, Any], role: str = "") -> str:
    """``sinusoid-hebb-pgpe-s0`` (task-rule-searcher-seed; the config's ``tracking.run_name`` when set); a
    child run's name starts with its role, which the UI's narrow name column still shows:
    ``finetune · sinusoid-hebb-pgpe-s0``."""
    base = flat.get("tracking.run_name") or (f"{flat.get('task.name')}-{flat.get('rule.name')}-"
                                              f"{flat.get('search.algorithm')}-s{flat.get('seed')}")
    return child_name(role, str(base)) if role else str(base)


def child_name(role: str, parent_name: str) -> str:
    """``child_name("export finetuned", "sinusoid-hebb-pgpe-s0") -> "export finetuned · sinusoid-hebb-pgpe-s0"``."""
    return f"{role}{SEP}{parent_name}"


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
    s = {"error": "y − ŷ, the error", "target": "y, the target"}.get(model.teaching_signal, model.teaching_signal)
    return (f"h_l: layer l's feed-forward activity (h0 = x), ŷ = output of layer {L}, y: target; rows: the "
            f"mini-batch; biases are not plastic. Feedback f_l = B_l·s + c_l (relu for hidden layers), with s the "
            f"teaching signal ({s}); teaching post p_l = β·f + (1 − β)·h.")


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


FINETUNED = "fine-tuned rule (ES then BPTT)"   # the search center after the BPTT fine-tune of evolve.py


def units(classification: bool, episodes: Any = "", order: Any = "") -> str:
    """What the numbers of a description are, in one line."""
    n = f"the {episodes} held-out episodes" if episodes else "the held-out episodes"
    stream = f"{order} stream; " if order else ""
    what = ("query cross-entropy: the mean cross-entropy of the predicted class on each task's query images"
            if classification else "query MSE: the mean squared error of the prediction on each task's query points")
    return (f"Units: {what}, after learning from the episode's stream, averaged over {n} "
            f"({stream}never seen in training); lower is better. Learning rate: the baseline's "
            f"SGD step size, the best of `evaluation.sgd_lrs` on separate validation episodes.")


def run_link(experiment_id: Any, run_id: str, text: str = "") -> str:
    """A markdown link to a run's page in the MLflow UI (relative: it works on any host and port)."""
    return f"[{text or run_id}](#/experiments/{experiment_id}/runs/{run_id})" if experiment_id else f"`{run_id}`"


def model_link(name: str, version: Any) -> str:
    """A markdown link to a registered model version's page in the MLflow UI."""
    return f"[{name} v{version}](#/models/{name}/versions/{version})"


def learner_rows(report: dict[str, Any], finetune: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """Every learner of the held-out table as ``{"label", "key", "loss", "accuracy", "lr", "rule"}``: the
    fine-tuned rule (when there is one), the evolved rule, the same genome without plasticity, the baselines.
    ``rule`` marks the learned rules (the others are the baselines they are compared with)."""
    classification = "accuracy" in report
    rows = []
    if finetune:
        rows.append({"label": FINETUNED, "key": "finetuned", "loss": float(finetune["after"]),
                     "accuracy": finetune.get("after_accuracy"), "lr": None, "rule": True})
    for label, key in summary_rows(report, classification):
        base = key.removesuffix("_accuracy")
        loss_key = base if base != "accuracy" else "loss"
        loss_key = {"accuracy_plasticity_off": "loss_plasticity_off"}.get(key, loss_key)
        if loss_key not in report or not isinstance(report.get(loss_key), (int, float)):
            continue
        rows.append({"label": label, "key": loss_key, "loss": float(report[loss_key]),
                     "accuracy": float(report[key]) if classification else None,
                     "lr": report.get(f"{loss_key}_lr"), "rule": loss_key == "loss"})
    return rows


def headline(report: dict[str, Any], finetune: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The numbers runs are compared by (held-out query loss, lower is better), with stable names:
    ``recommended`` (the rule the run recommends), ``evolved`` (the search center), ``finetuned`` (when
    fine-tuned), ``best_baseline`` (the best learner that is not a learned rule, plasticity off excluded:
    that is the rule's own ablation) and its label, and which rule is recommended."""
    rows = learner_rows(report, finetune)
    baselines = [r for r in rows if not r["rule"] and r["key"] != "loss_plasticity_off"]
    best = min(baselines, key=lambda r: r["loss"]) if baselines else None
    evolved = float(report["loss"])
    use_finetuned = bool(finetune) and float(finetune["after"]) <= float(finetune.get("before", evolved))
    out = {"recommended": float(finetune["after"]) if use_finetuned else evolved, "evolved": evolved,
           "recommended_label": FINETUNED if use_finetuned else CENTER,
           "which": "finetuned" if use_finetuned else "best"}
    if finetune:
        out["finetuned"] = float(finetune["after"])
    if best is not None:
        out["best_baseline"], out["best_baseline_label"] = best["loss"], best["label"]
    return out


def headline_metrics(head: dict[str, Any]) -> dict[str, float]:
    """``summary/recommended_loss``, ``summary/evolved_loss``, ``summary/finetuned_loss``,
    ``summary/best_baseline_loss``, ``summary/recommended_minus_best_baseline`` (negative: the rule wins)."""
    out = {f"summary/{k}_loss": float(head[k]) for k in ("recommended", "evolved", "finetuned", "best_baseline")
           if k in head}
    if "best_baseline" in head:
        out["summary/recommended_minus_best_baseline"] = float(head["recommended"]) - float(head["best_baseline"])
    return out


def _versus(rows: Sequence[dict], rule: dict) -> str:
    """``online SGD ... (1.731: 0.836 lower, −33%)`` for every baseline that beats ``rule``."""
    beat = sorted((r for r in rows if not r["rule"] and r["loss"] < rule["loss"]), key=lambda r: r["loss"])
    return "; ".join(f"{r['label']} ({r['loss']:.3f}: {rule['loss'] - r['loss']:.3f} lower, "
                     f"{100 * (r['loss'] - rule['loss']) / rule['loss']:+.0f}%)" for r in beat)


def evolution_description(*, run_id: str, flat: dict[str, Any], generations: int, report: dict[str, Any],
                          equations: Sequence[str], legend: str, history: Sequence[dict] = (),
                          finetune: Optional[dict[str, Any]] = None, uri: str = "",
                          experiment_id: Any = "") -> str:
    """The run's description (``mlflow.note.content``, markdown). Its first line, which the UI shows above
    "Show more", names the rule to use with its held-out number; then that rule's equations, the held-out
    table (best learner marked; which baselines beat the rule, by how much), units, what ran, the next commands.

    ``finetune``: ``{"run_id", "before", "after", "steps", "equations"}`` of the fine-tune of the search center.
    """
    classification = "accuracy" in report
    metric = "query cross-entropy" if classification else "query MSE"
    head = headline(report, finetune)
    use_ft = head["which"] == "finetuned"
    rule_eq = list(finetune["equations"]) if use_ft and finetune.get("equations") else list(equations)
    lines = [f"**Use: the {head['recommended_label']}**, held-out {metric} **{head['recommended']:.3f}** "
             f"(lower is better; best baseline {head.get('best_baseline', float('nan')):.3f})", "",
             "```", *rule_eq, "```", legend, ""]
    rows = learner_rows(report, finetune)
    best = min(rows, key=lambda r: r["loss"])
    table = []
    for r in rows:
        mark = " ← best" if r is best else ""
        label = f"**{r['label']}**{mark}" if r is best else r["label"]
        cells = [label, f"{r['loss']:.3f}"]
        if classification:
            cells.append("—" if r["accuracy"] is None else f"{r['accuracy']:.3f}")
        cells.append("" if r["lr"] is None else f"{float(r['lr']):g}")
        table.append(cells)
    header = ("learner", metric, *(("accuracy",) if classification else ()), "learning rate")
    lines += [f"### Held-out episodes ({flat.get('evaluation.heldout_episodes')}, {flat.get('task.order')} stream)", "",
              table_markdown(table, header), ""]
    recommended = rows[0] if use_ft else next(r for r in rows if r["key"] == "loss")
    versus = _versus(rows, recommended)
    lines.append(f"Baselines that beat the {head['recommended_label']}: {versus}." if versus else
                 f"No baseline beats the {head['recommended_label']}.")
    if use_ft:
        center = next(r for r in rows if r["key"] == "loss")
        versus = _versus(rows, center)
        lines.append(f"Baselines that beat the {CENTER} before fine-tuning: {versus}." if versus else
                     f"No baseline beats the {CENTER}.")
    lines += ["", units(classification, flat.get("evaluation.heldout_episodes"), flat.get("task.order")), "",
              f"Learning gain (plasticity off − on) {report['learning_gain']:+.3f}; episode-specific gain "
              f"(other episode's tasks − own) {report['episode_gain']:+.3f}.", ""]
    lines.append(f"**What ran**: **{flat.get('task.name')}** task, **{flat.get('rule.name')}** rule on layer(s) "
                 f"{flat.get('network.plastic_layers')} of {flat.get('network.hidden')} hidden, evolved by "
                 f"**{flat.get('search.algorithm')}** (popsize {flat.get('search.popsize')}) for {generations} "
                 f"generations, seed {flat.get('seed')}.")
    if history:
        finite = [h["best"] for h in history if h["best"] == h["best"]]
        if finite:
            lines.append(f"Training fitness: best so far {max(finite):.3f} (−query loss, training episodes).")
    if finetune:
        lines += ["", f"Fine-tuned by BPTT for {finetune.get('steps', '?')} meta-steps (nested run "
                      f"{run_link(experiment_id, finetune['run_id'], child_name('finetune', run_name(flat)))}): "
                      f"held-out {metric} {float(finetune['before']):.3f} → {float(finetune['after']):.3f}."]
        if use_ft:
            lines += ["", f"The {CENTER} (before fine-tuning):", "", "```", *equations, "```"]
    lines += ["", "### Next", "", "```"] + next_commands(run_id, finetuned=use_ft, uri=uri) + ["```"]
    return "\n".join(lines)


def finetune_description(*, run_id: str, parent_run_id: Optional[str], labels: Sequence[str],
                         before: Sequence[dict], after: Sequence[dict], chosen: int, steps: int,
                         equations: Sequence[str], legend: str, uri: str = "", experiment_id: Any = "",
                         classification: bool = False, skipped: int = 0) -> str:
    """A fine-tune run's description: first line the kept genome's held-out loss after (and before) the
    fine-tune; its rule; the before/after table; units; the next commands."""
    metric = "query cross-entropy" if classification else "query MSE"
    source = (f"the evolution run {run_link(experiment_id, parent_run_id)}" if parent_run_id
              else "the initial genome (from scratch)")
    rows = [(label + (" (kept)" if i == chosen else ""), float(before[i]["loss"]), float(after[i]["loss"]),
             float(before[i]["episode_gain"]), float(after[i]["episode_gain"])) for i, label in enumerate(labels)]
    target = parent_run_id or run_id
    return "\n".join([f"**Fine-tuned rule**, held-out {metric} **{float(after[chosen]['loss']):.3f}** (before "
                      f"{float(before[chosen]['loss']):.3f}; BPTT, {steps} meta-steps, from {source})", "", "```",
                      *equations, "```", legend, "", f"### Held-out {metric}", "",
                      table_markdown(rows, ("genome", "before", "after", "episode gain before", "after")), "",
                      units(classification), "", f"Updates skipped for a non-finite gradient: {skipped} of {steps}.",
                      "", "### Next", "", "```",
                      *next_commands(target, finetuned=True, uri=uri), "```"])


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

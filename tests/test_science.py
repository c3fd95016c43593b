"""Science that stands up (issue 11): batch reduction, the same-parameter baseline, prototypes, the input-only
predictor, transfer rows and results over seeds with confidence intervals."""

import math

import re

import pytest
import torch

from evoplast import fused
from evoplast.science.baselines import InputOnlyRidge, prototype_accuracy
from evoplast.evaluation import Evaluator
from evoplast.learners import GradientLearner, PlasticLearner
from evoplast.network import ModelSpec, forward
from evoplast.seeding import Purpose
from evoplast.science import report as science_report


def _params(spec, B=5, eta=0.05, seed=0, per_neuron=False):
    g = torch.Generator().manual_seed(seed)
    sizes, L = spec.sizes, spec.num_layers
    p = {}
    for l in range(1, L + 1):
        p[f"layer{l}.weight"] = torch.randn(B, sizes[l], sizes[l - 1], generator=g) / math.sqrt(sizes[l - 1])
        p[f"layer{l}.bias"] = torch.randn(B, sizes[l], generator=g) * 0.1
    for l in spec.plastic_layers:
        p[f"layer{l}.feedback"] = torch.randn(B, sizes[l], sizes[-1], generator=g)
        p[f"layer{l}.feedback_bias"] = torch.randn(B, sizes[l], generator=g) * 0.1
        p[f"layer{l}.beta"] = torch.rand(B, 1, 1, generator=g)
        if spec.rule == "terms":
            p[f"layer{l}.theta"] = torch.randn(B, len(spec.terms), 1, 1, generator=g) * eta
        else:
            p[f"layer{l}.eta"] = torch.rand(B, sizes[l] if per_neuron else 1, 1, generator=g) * eta
    return p


def _step(learner, params, x, y, inplace):
    state = learner.init_state(params)
    with torch.set_grad_enabled(not inplace):
        new, y_hat = learner.step_and_predict(params, state, x, y, inplace=inplace)
    return [w.detach() for w in new.weights], y_hat.detach()


@pytest.mark.parametrize("rule", ["hebb", "oja", "terms"])
@pytest.mark.parametrize("path", ["out_of_place", "inplace", "fused"])
def test_mean_reduction_equals_sum_with_eta_over_m(rule, path):
    """batch_reduction=mean at m rows is exactly batch_reduction=sum with eta (or theta) divided by m, on every
    path: out of place (autograd), the in-place PyTorch ops and the fused C++ kernel."""
    if path == "fused" and (rule == "terms" or not fused.available()):
        pytest.skip("the fused kernel covers hebb / oja only" if rule == "terms" else "no fused kernel here")
    m, sizes = 12, (5, 9, 7, 2)
    kw = dict(terms=("hebb", "oja_decay")) if rule == "terms" else {}
    mean = ModelSpec(sizes, (1, 2, 3), rule, batch_reduction="mean", **kw)
    total = ModelSpec(sizes, (1, 2, 3), rule, batch_reduction="sum", **kw)
    params = _params(mean, eta=0.2)
    coef = "theta" if rule == "terms" else "eta"
    scaled = params | {f"layer{l}.{coef}": params[f"layer{l}.{coef}"] / m for l in (1, 2, 3)}
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, m, 5, generator=g), torch.randn(5, m, 2, generator=g)
    use_fused = path == "fused"
    a, ya = _step(PlasticLearner(mean, fused=use_fused), params, x, y, inplace=path != "out_of_place")
    b, yb = _step(PlasticLearner(total, fused=use_fused), scaled, x, y, inplace=path != "out_of_place")
    c, _ = _step(PlasticLearner(total, fused=use_fused), params, x, y, inplace=path != "out_of_place")
    torch.testing.assert_close(ya, yb)
    for wa, wb, wc, w0 in zip(a, b, c, (params[f"layer{l}.weight"] for l in (1, 2, 3))):
        torch.testing.assert_close(wa, wb, rtol=1e-5, atol=1e-6)
        # and it is not the sum: the sum's update is m times the mean's
        torch.testing.assert_close(wc - w0, (wa - w0) * m, rtol=1e-3, atol=1e-5)


def _delta_rule_cfg(tiny_cfg, **extra):
    """Output-only hebb with beta = 1 (sigmoid(30) rounds to 1), identity feedback and exact error: the delta rule."""
    over = {"network.plastic_layers": [3], "rule.name": "hebb", "rule.eta_transform": "identity", "rule.eta_scale": 1.0,
            "genome.evolve_feedback": False, "genome.evolve_beta": False, "genome.beta_init": 30.0,
            "genome.evolve_init_weights": False, "rule.batch_reduction": "mean", **extra}
    return tiny_cfg.replace(**over)


def test_mean_genome_stays_finite_at_four_times_the_batch(tiny_cfg):
    """A genome fixed at batch 8 keeps its held-out loss finite at batch 32 with mean; with sum the same genome
    (the same eta) takes 4x larger steps at batch 32 and diverges."""
    losses = {}
    for reduction in ("mean", "sum"):
        for m in (8, 32):
            cfg = _delta_rule_cfg(tiny_cfg, **{"rule.batch_reduction": reduction, "task.batch_size": m,
                                               "task.batches_per_task": 10, "evaluation.loss_cap": 1e6})
            ev = Evaluator(cfg)
            eta = 0.3 if reduction == "mean" else 0.3 / 8     # the same step at m = 8
            genome = ev.spec.encode({"layer3.eta": torch.full((1, 1), eta)})
            s = ev.score(genome.reshape(1, -1))
            losses[reduction, m] = (float(s.loss[0]), float(s.nonfinite_episodes.float().mean()))
    assert losses["mean", 8][0] == pytest.approx(losses["sum", 8][0], rel=1e-4)   # the same genome at m = 8
    assert losses["mean", 8][1] == 0 and losses["mean", 32][1] == 0
    assert losses["mean", 32][0] < losses["mean", 8][0] + 0.5                       # finite and about as good
    assert losses["sum", 32][1] > 0.5 or losses["sum", 32][0] > 100 * losses["mean", 32][0]


def test_same_parameter_sgd_equals_the_flp_identity(tiny_cfg):
    """SGD of the plastic weights only (no biases), learning rate lr, gives exactly the loss of the FLP rule
    hebb with beta = 1, exact error, identity feedback and eta = lr (batch_reduction=mean): the delta rule."""
    cfg = _delta_rule_cfg(tiny_cfg)
    ev = Evaluator(cfg)
    lr = 0.05
    genome = ev.spec.encode({"layer3.eta": torch.full((1, 1), lr)}).reshape(1, -1)
    rule = ev.score(genome, curve=True)
    sgd = ev.score(genome, learner=science_report.sgd_learner(ev, plastic_only=True), extra={"sgd.lr": torch.tensor([lr])},
                   curve=True)
    everything = ev.score(genome, learner=science_report.sgd_learner(ev), extra={"sgd.lr": torch.tensor([lr])})
    torch.testing.assert_close(rule.per_episode, sgd.per_episode, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rule.curve, sgd.curve, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(rule.per_episode, everything.per_episode, rtol=1e-3)   # SGD of every layer differs


def test_same_parameter_sgd_changes_exactly_the_plastic_weights():
    """With layers 2 and 3 plastic, the baseline's step moves W2 and W3 by -lr times the exact gradient of the
    step's loss (backprop through W3) and leaves W1 and every bias alone."""
    spec = ModelSpec((4, 6, 5, 2), (2, 3), "hebb")
    params = _params(spec, B=3)
    learner = GradientLearner(spec, 0.1, layers=spec.plastic_layers, biases=False)
    state = learner.init_state(params)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(3, 7, 4, generator=g), torch.randn(3, 7, 2, generator=g)
    new = learner.step(params, state, x, y)
    leaves = [w.detach().clone().requires_grad_(True) for w in state.weights]
    _, y_hat = forward(tuple(leaves), state.biases, x)
    (0.5 * (y_hat - y).square().sum(-1).mean(-1)).sum().backward()
    torch.testing.assert_close(new.weights[0], state.weights[0])
    for l in (2, 3):
        torch.testing.assert_close(new.weights[l - 1], state.weights[l - 1] - 0.1 * leaves[l - 1].grad)
    for b0, b1 in zip(state.biases, new.biases):
        assert b1 is b0


def test_prototype_baseline_is_exact_on_a_separable_problem():
    """Nearest class mean: every query point of well-separated clusters is classified right; relabelling the
    queries makes it wrong everywhere; a class never shown is never predicted."""
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    labels = torch.tensor([4, 0, 2])                               # output units of the three classes (of 6)
    stream_h = (centers.repeat_interleave(4, 0) + 0.3 * torch.randn(12, 2, generator=g)).unsqueeze(0)  # [1, 12, 2]
    stream_y = labels.repeat_interleave(4).unsqueeze(0)
    query_h = (centers.unsqueeze(1) + 0.3 * torch.randn(3, 5, 2, generator=g)).unsqueeze(0)           # [1, 3, 5, 2]
    query_y = labels.unsqueeze(1).expand(3, 5).unsqueeze(0)
    acc = prototype_accuracy(stream_h, stream_y, query_h, query_y, 6)
    assert acc.shape == (1, 3) and torch.equal(acc, torch.ones(1, 3))
    assert torch.equal(prototype_accuracy(stream_h, stream_y, query_h, query_y.roll(1, 1), 6), torch.zeros(1, 3))
    # unit 5 never appears in the stream: even a query at the origin is given a class that was shown
    far = torch.zeros(1, 1, 1, 2)
    assert prototype_accuracy(stream_h, stream_y, far, torch.tensor([[[5]]]), 6).item() == 0.0


def test_input_only_predictor_learns_the_family_mean(tiny_cfg):
    """The ridge on random Fourier features recovers a smooth function of the input; on sinusoids it predicts
    the family average, which beats predicting 0 and a genome that has learned nothing."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4000, 1, generator=g) * 10 - 5
    chunks = [(x[i:i + 1000], torch.cos(x[i:i + 1000])) for i in range(0, 4000, 1000)]
    xv = torch.linspace(-5, 5, 200).unsqueeze(1)
    model = InputOnlyRidge.fit(chunks, (xv, torch.cos(xv)), 1, torch.Generator().manual_seed(1))
    assert (model.predict(xv).float() - torch.cos(xv)).square().mean() < 1e-3
    ev = Evaluator(tiny_cfg.replace(**{"evaluation.heldout_episodes": 16}))
    loss, acc = science_report.input_only(ev)
    held = ev.episodes(Purpose.HELDOUT, 0, 16)
    zero = held.query_y.square().mean(dim=(1, 2, 3))                   # [K] MSE of predicting 0
    assert acc is None and loss.shape == (16,)
    assert loss.mean() < 0.85 * zero.mean()


def test_report_has_the_new_baselines_and_transfer_rows(tiny_cfg):
    ev = Evaluator(tiny_cfg)
    r = science_report.report(ev, ev.spec.initial_vector())
    for key in ("sgd_plastic_weights", "sgd_plastic_weights_lr", "input_only", "transfer_long", "transfer_wide",
                "transfer_both", "transfer_long_nonfinite", "transfer_both_sgd_plastic_weights"):
        assert isinstance(r[key], float), key
    assert set(r["per_episode"]) >= {"loss", "sgd_plastic_weights", "sgd_same_init", "input_only"}
    assert all(len(v) == tiny_cfg.evaluation.heldout_episodes for v in r["per_episode"].values())
    assert r["loss"] == pytest.approx(sum(r["per_episode"]["loss"]) / len(r["per_episode"]["loss"]), rel=1e-6)
    assert 0.0 <= r["transfer_both_nonfinite"] <= r["transfer_both_diverged"] <= 1.0
    grid = tiny_cfg.evaluation.sgd_lrs                  # the same-parameter rate: the grid, refined around its best
    assert any(math.isclose(r["sgd_plastic_weights_lr"], lr * 2 ** e, rel_tol=1e-9)
               for lr in grid for e in (-1, -0.5, 0, 0.5, 1))
    assert r["sgd_same_init_lr"] in grid


def _seeds_main(monkeypatch, argv):
    """``scripts/seeds.py``'s ``main(argv)`` in this process (errors raise, as before run_main sees them)."""
    from . import scripts

    return scripts.load("seeds").main(argv)


TINY_SEEDS = ["task.num_tasks=3", "task.batches_per_task=4", "task.batch_size=4", "task.query_size=8",
              "network.hidden=[8,8]", "evaluation.episodes=3", "evaluation.heldout_episodes=6", "search.popsize=8",
              "search.generations=4", "ray.num_actors=0", "tracking.gain_every=2"]


def test_seeds_script_nests_three_runs_and_logs_the_aggregate(store, tmp_path, monkeypatch, capsys):
    """Three seeds in-process: three evolution runs nested under one parent, whose metrics are the mean over
    the seeds' shared-episode reports with a t-interval, and paired differences; table, json and png logged."""
    import json

    from mlflow.tracking import MlflowClient

    from evoplast.science.stats import mean_ci, paired_ci

    tiny_auto = [o for o in TINY_SEEDS if not o.startswith("ray.num_actors")]   # the default's auto placement
    assert _seeds_main(monkeypatch, ["--parallel", "inprocess", "--out", "res.md", "--oml-budget", "3",
                                     "--seeds", "0", "1", "2", *tiny_auto]) == 0
    out = capsys.readouterr().out
    parent_id = out.split("MLflow parent run ")[1].split(";")[0]
    # progress of every long step: each seed's OML meta-training, the seeds done, with elapsed time and ETA
    assert re.search(r"\[seed 1\] OML meta-step +3/3 \| meta-loss [0-9.]+ \| elapsed \d+:\d\d \| ETA 0:00", out), out
    assert re.search(r"seeds +2/3 \| last seed 1, held-out [0-9.]+ \| elapsed \d+:\d\d \| ETA \d+:\d\d", out), out
    client = MlflowClient(store)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == 3 and {c.data.params["seed"] for c in children} == {"0", "1", "2"}
    assert all(c.info.status == "FINISHED" for c in children)
    saved = json.loads((tmp_path / "res.json").read_text())
    reports = [r["report"] for r in saved["reports"]]
    m = parent.data.metrics
    loss = mean_ci(torch.tensor([r["per_episode"]["loss"] for r in reports], dtype=torch.float64).mean(1))
    assert loss.mean == pytest.approx(sum(r["loss"] for r in reports) / 3, rel=1e-5)
    assert m["mean.loss"] == pytest.approx(loss.mean, rel=1e-6) and m["ci.loss"] == pytest.approx(loss.half_width, rel=1e-6)
    assert loss.half_width > 0                                         # three different seeds, three different genomes
    rule = torch.tensor([r["per_episode"]["loss"] for r in reports]).mean(0)
    base = torch.tensor([r["per_episode"]["sgd_plastic_weights"] for r in reports]).mean(0)
    diff = paired_ci(rule, base)
    assert m["diff.sgd_plastic_weights"] == pytest.approx(diff.mean, rel=1e-5, abs=1e-6)
    assert m["diff_ci.sgd_plastic_weights"] == pytest.approx(diff.half_width, rel=1e-5)
    assert diff.n == 6 and "mean.oml" in m and all(r["oml_meta_steps"] == 3 for r in reports)
    # every seed was judged on the same held-out episodes: the input-only predictor scores the same on all
    assert reports[0]["per_episode"]["input_only"] == reports[2]["per_episode"]["input_only"]
    for key in ("mean.transfer_both", "mean.transfer_both_nonfinite", "mean.learning_gain", "mean.episode_gain"):
        assert key in m, key
    names = {a.path for a in client.list_artifacts(parent_id)}
    assert names == {"res.md", "res.json", "res.png"}
    table = (tmp_path / "res.md").read_text()
    assert "| online SGD of the plastic weights only, same initial weights |" in table
    assert f"{loss.mean:.3f} ± {loss.half_width:.3f}" in table and table in out
    # judging the same runs again (--runs) reproduces the aggregate
    capsys.readouterr()
    runs = [r["run_id"] for r in saved["reports"]]
    assert _seeds_main(monkeypatch, ["--runs", *runs, "--out", "again.md"]) == 0
    again_id = capsys.readouterr().out.split("MLflow parent run ")[1].split(";")[0]
    again = client.get_run(again_id).data.metrics
    for key in ("mean.loss", "ci.loss", "diff.sgd_plastic_weights", "mean.transfer_both"):
        assert again[key] == pytest.approx(m[key], rel=1e-6, abs=1e-7), key


def test_seeds_script_refuses_one_seed(store, monkeypatch):
    from evoplast.cli import UsageError

    with pytest.raises(UsageError, match="at least 2 different seeds"):
        _seeds_main(monkeypatch, ["--seeds", "3", "3", *TINY_SEEDS])
    with pytest.raises(UsageError, match="--seeds takes integers"):
        _seeds_main(monkeypatch, ["--seeds", "0", "one", *TINY_SEEDS])


@pytest.mark.parametrize("argv, message", [(["--oml-budget", "foo"], "expected lifetimes, wallclock"),
                                           (["--oml-steps", "-3"], "meta-steps >= 0"),
                                           (["--oml-budget", "wallclock"], "needs --run-id")])
def test_evaluate_script_refuses_a_bad_oml_budget_before_any_work(argv, message):
    from evoplast.cli import UsageError

    from . import scripts

    with pytest.raises(UsageError, match=message):
        scripts.load("evaluate").main(argv)


def test_equal_lifetimes_budget(tiny_cfg):
    from evoplast.science.analysis import equal_lifetimes_steps

    cfg = tiny_cfg.replace(**{"search.generations": 1000, "search.popsize": 32, "evaluation.episodes": 4,
                              "finetune.episodes": 8})
    assert equal_lifetimes_steps(cfg) == 16000 and equal_lifetimes_steps(cfg, 300) == 4800
    assert equal_lifetimes_steps(cfg.replace(**{"finetune.episodes": 7}), 1) == 19   # rounded up: 128 / 7

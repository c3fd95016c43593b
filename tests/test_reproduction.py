"""evoplast.science.reproduction: step budgets from the calibration, the curve, a tiny end-to-end seed."""

import math

import pytest
import torch

from evoplast.science import reproduction as R
from evoplast.config import load_config
from evoplast.science.stats import Interval

from .conftest import REPO


def test_equal_time_budgets_follow_the_measured_step_costs():
    sec = {"flp_bptt": 0.2, "flp_output": 0.05, "oml": 0.1, "es": 0.4}
    b = R.step_budgets(sec, 100, es_share=0.125)
    # equal meta-steps: every arm the same count (ES generations count as meta-steps of the hybrid)
    assert {k: v["equal_steps"]["es"] + v["equal_steps"]["bptt"] for k, v in b.items()} == dict.fromkeys(b, 100)
    # equal wall-clock: 100 x 0.2 = 20 s for everyone
    assert b["flp_bptt"]["equal_time"]["bptt"] == 100
    assert b["flp_output"]["equal_time"]["bptt"] == 400
    assert b["oml"]["equal_time"]["bptt"] == 200
    h = b["flp_es_bptt"]["equal_time"]
    assert h["es"] == round(0.125 * 20 / 0.4) == b["flp_es_bptt"]["equal_steps"]["es"]
    assert h["es"] * 0.4 + h["bptt"] * 0.2 == pytest.approx(20, abs=0.2)
    # OML and FLP at equal cost per step get equal budgets
    same = R.step_budgets({"flp_bptt": 0.3, "flp_output": 0.3, "oml": 0.3, "es": 0.3}, 37)
    assert same["oml"]["equal_time"] == same["flp_bptt"]["equal_time"] == {"es": 0, "bptt": 37}


def test_calibrate_times_every_arm_in_interleaved_rounds():
    cfg = load_config(f"{REPO}/configs/flp.yaml", ["network.hidden=[4,4]", "task.num_tasks=2",
                                                    "task.batches_per_task=2", "finetune.episodes=2",
                                                    "search.popsize=4", "evaluation.episodes=1"])
    ticks = iter(range(10_000))
    order = []
    sec = R.calibrate(cfg, rounds=3, clock=lambda: order.append(1) or float(next(ticks)))
    assert set(sec) == {"flp_bptt", "flp_output", "oml", "es"}
    # interleaved: arm after arm within a round, so each arm's step spans the same clock increment
    assert all(v == 1.0 for v in sec.values()) and len(order) == 2 * 3 * 4


def test_one_tiny_seed_is_finite_with_one_curve_point_per_sinusoid():
    cfg = load_config(f"{REPO}/configs/flp.yaml", ["network.hidden=[6,6]", "task.num_tasks=3",
                                                    "task.batches_per_task=2", "task.batch_size=4",
                                                    "task.query_size=5", "finetune.episodes=2", "search.popsize=4",
                                                    "evaluation.episodes=1", "evaluation.heldout_episodes=3"])
    budgets = R.step_budgets({"flp_bptt": 1.0, "flp_output": 0.5, "oml": 0.5, "es": 1.0}, 3, es_share=0.3)
    seeds = [R.run_seed(cfg, s, budgets, paper_stream=True, analyses=True) for s in (0, 1)]
    for res in seeds:
        for key, per in res["arms"].items():
            for budget, row in per.items():
                assert math.isfinite(row["loss"]) and math.isfinite(row["paper_loss"]), (key, budget)
                assert len(row["curve"]) == 3 and len(row["per_episode"]) == 3
                assert row["steps"] == budgets[key][budget]["es"] + budgets[key][budget]["bptt"]
        assert res["arms"]["oml"]["equal_time"]["steps"] == 6
        assert len(res["baselines"]["sgd_same_init"]["curve"]) == 3
        f = res["analyses"]["flp_bptt"]["forgetting"]
        assert len(f["matrix"]) == 3 and len(res["analyses"]["flp_bptt"]["cosine_per_layer"]) == 3
    # every seed is scored on the same held-out episodes: SGD from the seed's random init differs by seed,
    # but the paired per-episode difference is defined
    agg = R.aggregate(seeds)
    row = agg["rows"]["equal_steps"]["oml"]
    assert isinstance(row["diff_seed"], Interval) and row["diff_seed"].n == 2
    assert row["diff_episode"].n == 3
    assert len(agg["curves"]["equal_time"]["flp_bptt"]) == 3
    text = R.markdown({"aggregate": agg, "calibration": {"seconds_per_step": {"flp_bptt": 1.0},
                       "budget_seconds": 3.0}, "seeds": seeds, "seconds": 1.0, "meta_steps": 3})
    assert "OML" in text and "equal wall-clock" in text
    assert torch.isfinite(torch.tensor(agg["analyses"]["flp_bptt"]["cosine"].mean))


def test_a_diverged_episode_costs_the_cap_and_leaves_the_others_gradient():
    """meta_loss_backward: one lifetime of K poisoned with NaN counts as the loss cap and contributes no
    gradient; the others' gradient is the same as without it (before, the whole meta-step was skipped)."""
    from evoplast.learners import NetState, PlasticLearner
    from evoplast.trainers.bptt import meta_loss_backward
    from evoplast.evaluation import Evaluator
    from evoplast.seeding import Purpose

    cfg = load_config(f"{REPO}/configs/flp.yaml", ["network.hidden=[5,5]", "task.num_tasks=2",
                                                    "task.batches_per_task=2", "task.batch_size=3"])
    ev = Evaluator(cfg)

    class Poisoned(PlasticLearner):
        def step(self, params, state, x, y, **kw):
            new = super().step(params, state, x, y, **kw)
            w = new.weights[-1]
            w = torch.cat([w[:1] * float("nan"), w[1:]])                      # lifetime 0 diverges
            return NetState(new.weights[:-1] + (w,), new.biases, new.counts)

    episodes = ev.task.episodes(0, Purpose.FINETUNE, 0, 3, "cpu")
    g = ev.spec.initial_vector().reshape(1, -1)
    poisoned = g.clone().requires_grad_(True)
    loss = meta_loss_backward(Poisoned(ev.spec.model), ev.spec, poisoned, episodes, cap=50.0)
    clean = g.clone().requires_grad_(True)
    ref = meta_loss_backward(PlasticLearner(ev.spec.model), ev.spec, clean, episodes.__class__(
        **{f: (getattr(episodes, f)[1:] if isinstance(getattr(episodes, f), torch.Tensor) else getattr(episodes, f))
           for f in episodes.__dataclass_fields__}), cap=50.0)
    assert torch.isfinite(loss).all() and torch.isfinite(poisoned.grad).all()
    # the loss is the mean of the cap (lifetime 0) and the two clean lifetimes; the gradient is 2/3 of theirs
    assert float(loss) == pytest.approx((50.0 + 2 * float(ref)) / 3, rel=1e-5)
    assert torch.allclose(poisoned.grad, clean.grad * 2 / 3, atol=1e-6)

"""The batched lifetime: equivalences, determinism, divergence, learning measures, autograd."""

import pytest
import torch


from evoplast.evaluation import Evaluator, score_params
from evoplast.lifetime import expand_params, run_lifetime
from evoplast.seeding import Purpose
from .conftest import small_config
from evoplast.science import report as science_report


def _population(ev, p, std, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ev.spec.initial_vector() + std * torch.randn(p, ev.spec.dim, generator=g)


def test_batched_equals_one_at_a_time(tiny_cfg):
    ev = Evaluator(tiny_cfg.replace(**{"genome.evolve_init_weights": True, "rule.eta_init": 1.0}))
    pop = _population(ev, 5, 0.1)
    batched, nonfinite = ev.fitness(pop, generation=2)
    assert not nonfinite.any()
    single = torch.cat([ev.fitness(pop[i:i + 1], generation=2)[0] for i in range(5)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    assert batched.unique().numel() == 5


def test_same_seed_same_fitness_other_episodes_other_fitness(tiny_cfg):
    cfg = tiny_cfg.replace(**{"rule.eta_init": 1.0})
    pop = _population(Evaluator(cfg), 4, 0.3)
    a = Evaluator(cfg).fitness(pop, 0)[0]
    b = Evaluator(cfg).fitness(pop, 0)[0]            # a fresh evaluator: nothing carried
    c = Evaluator(cfg).fitness(pop, 1)[0]            # next generation's episodes
    d = Evaluator(cfg.replace(seed=1)).fitness(pop, 0)[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, d)


def test_diverging_genome_scores_worst_and_is_counted(tiny_cfg):
    ev = Evaluator(tiny_cfg.replace(**{"rule.eta_scale": 1.0}))
    pop = _population(ev, 4, 0.0)
    eta = ev.spec.split(pop)
    eta["layer1.eta"][1] = 1e4                        # Oja with a huge eta: overflow, NaN
    eta["layer3.eta"][1] = -1e4
    pop = ev.spec.join(eta)
    fitness, nonfinite = ev.fitness(pop, 0)
    assert nonfinite.tolist() == [False, True, False, False]
    assert fitness[1].item() == -tiny_cfg.evaluation.loss_cap
    assert torch.isfinite(fitness).all() and (fitness[[0, 2, 3]] > fitness[1]).all()


def test_plasticity_off_equals_eta_zero(tiny_cfg):
    ev = Evaluator(tiny_cfg.replace(**{"rule.eta_init": 3.0, "genome.evolve_init_weights": True}))
    pop = _population(ev, 3, 0.2)
    off = ev.score(pop, learn=False)
    zero = ev.spec.split(pop.clone())
    for name in zero:
        if name.endswith(".eta"):
            zero[name].zero_()
    eta0 = ev.score(ev.spec.join(zero))
    torch.testing.assert_close(off.loss, eta0.loss)
    assert not torch.allclose(ev.score(pop).loss, off.loss)


def _delta_rule_cfg(*extra):
    """A plastic output layer with exact error feedback and beta = 1: online SGD of the readout."""
    return small_config(["network.plastic_layers=[3]", "rule.name=hebb", "rule.eta_scale=0.005",
                              "rule.eta_init=1.0", "genome.beta_init=30", *extra])


def test_delta_rule_genome_learns_a_sinusoid():
    ev = Evaluator(_delta_rule_cfg("task.num_tasks=1", "task.batches_per_task=20"))
    g = ev.spec.initial_vector().reshape(1, -1)
    on = ev.score(g, episode_gain=True, curve=True)
    off = ev.score(g, learn=False)
    assert (off.loss - on.loss).item() > 0.5          # learning gain
    assert on.episode_gain.item() > 1.0               # it learned its own sinusoid, not the family average


def test_delta_rule_genome_learns_in_the_continual_protocol():
    ev = Evaluator(_delta_rule_cfg())
    g = ev.spec.initial_vector().reshape(1, -1)
    on = ev.score(g, episode_gain=True, curve=True)
    off = ev.score(g, learn=False)
    assert (off.loss - on.loss).item() > 0.1
    assert on.episode_gain.item() > 0.05
    assert on.curve.shape == (1, 10)
    assert on.curve[0, 0] < off.loss                  # the first sinusoid is learned when it is shown


def test_untrained_genome_and_online_sgd_give_sane_numbers():
    ev = Evaluator(small_config())
    seed_genome = ev.spec.initial_vector().reshape(1, -1)
    untrained = ev.score(seed_genome)                 # eta = 0: the random initial network
    sgd, lr = science_report.tuned_sgd(ev, seed_genome[0])
    sgd_iid, lr_iid = science_report.tuned_sgd(ev, seed_genome[0], order="iid")
    assert lr in ev.cfg.evaluation.sgd_lrs and lr_iid in ev.cfg.evaluation.sgd_lrs
    zero_predictor = ev.score(seed_genome, learn=False)
    for s in (untrained, sgd, sgd_iid):
        assert torch.isfinite(s.loss).all() and s.num_nonfinite == 0
    # the family's mean squared amplitude / 2 is ~4.25: a random network is in that range
    assert 3.0 < untrained.loss.item() < 8.0
    assert sgd.loss.item() < zero_predictor.loss.item()
    assert sgd_iid.loss.item() < sgd.loss.item()      # continual (blocked) SGD forgets


def test_curve_of_a_non_learner_is_flat_and_a_learners_is_not(tiny_cfg):
    """Per task, the query loss of a network whose weights never change is the same at every curve point."""
    ev = Evaluator(tiny_cfg.replace(**{"rule.eta_init": 1.0}))
    params = expand_params(ev.decode(ev.spec.initial_vector().reshape(1, -1)), 2)
    episodes = ev.episodes(Purpose.TRAIN, 0, 2)
    for learn in (False, True):
        out = run_lifetime(ev.learner, params, episodes, 1, learn=learn, curve=True)   # curve [B, C, n]
        assert out.curve.shape == (2, 3, 3)
        flat = torch.equal(out.curve, out.curve[:, :1].expand_as(out.curve))
        assert flat is (not learn)
        torch.testing.assert_close(out.curve[:, -1], out.query_loss)      # the last point is the final query


def test_lifetime_is_differentiable_in_the_genome(tiny_cfg):
    ev = Evaluator(tiny_cfg.replace(**{"rule.eta_init": 1.0, "genome.evolve_init_weights": True}))
    genome = ev.spec.initial_vector().reshape(1, -1).requires_grad_(True)
    eps = ev.episodes(Purpose.TRAIN, 0, 2)
    with torch.enable_grad():
        scores = score_params(ev.learner, ev.spec.decode(genome), eps, cap=100.0)
        scores.loss.sum().backward()
    assert genome.grad is not None and torch.isfinite(genome.grad).all()
    eta_grad = ev.spec.split(genome.grad)["layer2.eta"]
    assert eta_grad.abs().sum() > 0


def test_episode_gain_needs_two_episodes(tiny_cfg):
    ev = Evaluator(tiny_cfg)
    with pytest.raises(ValueError, match="at least 2 episodes"):
        ev.score(ev.spec.initial_vector().reshape(1, -1), episode_gain=True,
                 episodes=ev.episodes(Purpose.HELDOUT, 0, 1))


def test_population_in_chunks_scores_the_same(tiny_cfg):
    ev = Evaluator(tiny_cfg.replace(**{"genome.evolve_init_weights": True, "rule.eta_init": 1.0}))
    pop = _population(ev, 7, 0.1)
    whole = ev.score(pop, curve=True, episode_gain=True)
    chunked = score_params(ev.learner, ev.decode(pop), ev.episodes(Purpose.HELDOUT, 0, 4), cap=100.0,
                           curve=True, episode_gain=True, chunk=3)
    # batched-matmul kernels may round differently for another batch size: equal to float32 precision
    for field in ("loss", "per_episode", "nonfinite", "curve", "episode_gain"):
        torch.testing.assert_close(getattr(chunked, field), getattr(whole, field), rtol=1e-5, atol=1e-5)

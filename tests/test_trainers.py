"""Outer trainers as peers: the protocol, exact resume, PES's unbiasedness, improvement on a tiny task."""

from __future__ import annotations

import io

import pytest
import torch


from evoplast.evaluation import Evaluator, cap_loss
from evoplast.learners import PlasticLearner
from evoplast.lifetime import expand_params, query, run_lifetime, tile
from evoplast.trainers import METRICS, OuterTrainer, PESTrainer, make_trainer
from .conftest import small_config

TINY = ["task.num_tasks=3", "task.batches_per_task=4", "task.batch_size=4", "task.query_size=8",
        "network.hidden=[8,8]", "network.plastic_layers=[3]", "rule.name=hebb", "rule.eta_transform=identity",
        "genome.evolve_init_weights=true", "evaluation.episodes=4", "evaluation.heldout_episodes=16",
        "search.algorithm=pgpe", "search.popsize=16", "search.stdev_init=0.05", "search.center_learning_rate=0.05",
        "search.stdev_learning_rate=0.1", "finetune.lr=0.01", "finetune.episodes=4", "ray.num_actors=0"]

# name -> (trainer, constructor arguments); every one is a peer over the same lifetime
KINDS = {
    "es": ("es", {}),
    "bptt": ("bptt", {}),
    "bptt_truncated": ("bptt", {"window": 4}),
    "bptt_checkpointed": ("bptt", {"checkpoint": True}),
    "pes": ("pes", {"pairs": 16, "sigma": 0.1, "window": 5, "lr": 0.03}),
    "nres": ("nres", {"pairs": 16, "sigma": 0.1, "window": 5, "lr": 0.03}),
    "hybrid": ("hybrid", {"es_generations": 3}),
}


def tiny(*extra):
    return small_config(TINY + list(extra))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_trainer_follows_the_protocol_and_improves_the_tiny_task(kind):
    cfg = tiny()
    ev = Evaluator(cfg)
    name, kw = KINDS[kind]
    trainer = make_trainer(name, cfg, **kw)
    assert isinstance(trainer, OuterTrainer)
    before = ev.score(trainer.best().reshape(1, -1)).loss.item()
    for _ in range(60):
        metrics = trainer.step()
        assert set(METRICS) <= set(metrics), metrics
        assert all(isinstance(v, float) for v in metrics.values()), metrics
    assert metrics["lifetimes"] > 0 and metrics["seconds"] > 0
    best = trainer.best()
    assert best.shape == (ev.spec.dim,)
    after = ev.score(best.reshape(1, -1)).loss.item()
    assert after < 0.85 * before, (kind, before, after)


def _run(trainer, n):
    return [trainer.step()["meta_loss"] for _ in range(n)]


@pytest.mark.parametrize("kind", ["bptt", "bptt_truncated", "pes", "nres", "hybrid", "es"])
def test_resume_is_exact(kind):
    """N steps = k steps, state_dict (through torch.save / weights_only load), fresh trainer, N - k steps."""
    cfg = tiny()
    name, kw = KINDS[kind]
    n, k = 9, 4          # PES: truncations of 5, 5, 2 steps per lifetime of 12: k cuts a lifetime in two
    whole = make_trainer(name, cfg, **kw)
    losses_whole = _run(whole, n)
    first = make_trainer(name, cfg, **kw)
    losses = _run(first, k)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    second = make_trainer(name, cfg, **kw)
    second.load_state_dict(state)
    losses += _run(second, n - k)
    assert losses == losses_whole
    assert torch.equal(second.best(), whole.best())
    assert not torch.equal(whole.best(), make_trainer(name, cfg, **kw).best())   # it moved


def test_a_trainer_keeps_going_after_its_state_is_saved():
    """state_dict is a copy: later steps do not change a saved state (PES updates its states in place)."""
    trainer = PESTrainer(tiny(), pairs=4, window=5)
    trainer.step()
    state = trainer.state_dict()
    saved = [w.clone() for w in state["plastic"]]
    trainer.step()
    assert all(torch.equal(a, b) for a, b in zip(saved, state["plastic"]))


def _sum_of_truncation_losses(cfg, theta, episodes, window):
    """Autograd reference: ``sum_tau L_tau(theta)``, the loss PES's estimates add up to over a lifetime."""
    ev = Evaluator(cfg)
    learner = PlasticLearner(ev.spec.model)
    params = expand_params(ev.spec.decode(theta.reshape(1, -1)), episodes.num_episodes)
    seen = episodes.seen_by_step()
    losses = []

    def loss_at(t, state):
        per_task, _ = query(learner, state, episodes.query_x, episodes.query_y, 1, params)
        mask = tile(seen[:, t], 1).to(per_task.dtype)
        per_lifetime = (per_task * mask).sum(-1) / mask.sum(-1)
        return cap_loss(per_lifetime, cfg.evaluation.loss_cap)[0].mean()

    def on_truncate(t, state):
        losses.append(loss_at(t, state))
        return state                                            # no truncation of the graph: the true gradient

    with torch.enable_grad():
        out = run_lifetime(learner, params, episodes, 1, truncate_every=window, on_truncate=on_truncate)
        losses.append(loss_at(episodes.num_steps - 1, out.final))
    return torch.stack(losses).sum()


UNBIASED = ("task.num_tasks=2", "task.batches_per_task=2", "task.batch_size=2", "network.hidden=[4]",
            "network.plastic_layers=[2]")


def _particles_at_a_fixed_theta(cls, window: int, k: int):
    """``(cfg, trainer, theta, episodes)``: a PES-like trainer with 40,000 pairs (σ = 0.01) held at one θ."""
    cfg = tiny(*UNBIASED)
    trainer = cls(cfg, pairs=40000, sigma=0.01, window=window, episodes=k)
    theta = trainer.spec.initial_vector() + 0.3 * torch.randn(trainer.spec.dim,
                                                              generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trainer.theta.copy_(theta)
    return cfg, trainer, theta, trainer._current_episodes()


def _against_autograd(cfg, theta, episodes, window: int, estimate) -> tuple[float, float, torch.Tensor]:
    """``(cosine, norm ratio, true gradient)`` of ``estimate`` against the autograd gradient of the sum of the
    truncation losses at ``theta``."""
    g = theta.clone().requires_grad_(True)
    _sum_of_truncation_losses(cfg, g, episodes, window).backward()
    cos = torch.nn.functional.cosine_similarity(estimate, g.grad, dim=0).item()
    return cos, (estimate.norm() / g.grad.norm()).item(), g.grad


def test_pes_is_unbiased_over_a_lifetime_where_truncation_is_not():
    """Summed over one lifetime's truncations (θ held fixed), PES's estimate matches the true gradient of
    the sum of the truncation losses; the truncated-BPTT gradient of the same sum does not."""
    window = 2
    cfg, pes, theta, episodes = _particles_at_a_fixed_theta(PESTrainer, window, k=2)
    T = episodes.num_steps
    estimate = sum(pes.estimate()[0] for _ in range(-(-T // window)))     # one lifetime, θ fixed
    assert pes.lifetime == 1 and pes.t == 0 and not pes.xi.any()           # reset at the lifetime's end

    cos, ratio, true = _against_autograd(cfg, theta, episodes, window, estimate)
    assert cos > 0.97 and 0.9 < ratio < 1.1, (cos, ratio)

    # truncated BPTT on the same sum (graph cut at the plastic weights between truncations) is biased
    from evoplast.trainers.bptt import meta_loss_backward

    t = theta.clone().reshape(1, -1).requires_grad_(True)
    meta_loss_backward(PlasticLearner(pes.spec.model), pes.spec, t, episodes, window=window, cap=cfg.evaluation.loss_cap)
    truncated = t.grad[0] * (-(-T // window))                             # meta_loss_backward averages the windows
    cos_truncated = torch.nn.functional.cosine_similarity(truncated, true, dim=0).item()
    print(f"PES cosine {cos:.4f} norm ratio {ratio:.4f}; truncated BPTT cosine {cos_truncated:.4f}")
    assert cos_truncated < cos - 0.02, (cos_truncated, cos)


def test_nres_is_unbiased_over_a_lifetime_and_reuses_one_perturbation():
    """NRES: one ε per particle for the whole lifetime (the same at every truncation, redrawn at the next
    lifetime); its estimates summed over one lifetime (θ fixed) match the autograd gradient of the sum of the
    truncation losses, as PES's do."""
    from evoplast.trainers import NRESTrainer

    window = 2
    cfg, nres, theta, episodes = _particles_at_a_fixed_theta(NRESTrainer, window, k=2)
    T = episodes.num_steps
    estimates, noise = [], []
    for _ in range(-(-T // window)):                                      # one lifetime, θ fixed
        estimates.append(nres.estimate()[0])
        noise.append(nres.xi.clone())
    assert nres.lifetime == 1 and nres.t == 0
    assert all(torch.equal(n, noise[0]) for n in noise)                   # the same ε at every truncation
    nres.estimate()
    assert not torch.equal(nres.xi, noise[0])                             # a new lifetime, a new ε
    estimate = sum(estimates)

    cos, ratio, _ = _against_autograd(cfg, theta, episodes, window, estimate)
    print(f"NRES cosine {cos:.4f} norm ratio {ratio:.4f}")
    assert cos > 0.97 and 0.9 < ratio < 1.1, (cos, ratio)


def test_nres_is_antithetic_es_with_the_lifetimes_noise_on_one_truncation():
    """With one truncation per lifetime NRES's estimate is antithetic ES over whole lifetimes with the
    same ε: checked against the ES estimate computed by hand from the evaluator's scores."""
    from evoplast.trainers import NRESTrainer

    cfg = tiny()
    nres = NRESTrainer(cfg, pairs=3, sigma=0.1, window=1000, episodes=2)
    episodes = nres._current_episodes()
    grad, loss = nres.estimate()
    eps = nres.xi
    theta = nres.theta.detach()
    ev = Evaluator(cfg)
    scores = ev.score(torch.cat([theta + eps, theta - eps]), episodes=episodes)
    torch.testing.assert_close(loss, scores.loss.float(), rtol=1e-4, atol=1e-5)
    by_hand = ((scores.loss[:3] - scores.loss[3:]).float().unsqueeze(-1) * eps).mean(0) / (2 * 0.1 ** 2)
    torch.testing.assert_close(grad, by_hand, rtol=1e-3, atol=1e-4)


def test_unknown_trainer_and_bad_pes_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown trainer 'sgd'"):
        make_trainer("sgd", tiny())
    with pytest.raises(ValueError, match="PES needs pairs >= 1"):
        PESTrainer(tiny(), pairs=0)
    with pytest.raises(ValueError, match="es_generations or es_seconds"):
        make_trainer("hybrid", tiny())

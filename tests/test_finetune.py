"""Gradient meta-training through the lifetime: exact gradients, truncation, checkpointing, memory."""

import gc
import os

import psutil
import torch
from mlflow.tracking import MlflowClient


from evoplast.evaluation import Evaluator
from evoplast.runs.finetune import run_finetune, train_spec_of
from evoplast.trainers.bptt import MetaTrainer, meta_loss_backward
from evoplast.seeding import Purpose

from .test_evolution import TINY, quiet
from .conftest import small_config


def _setup(*extra):
    cfg = small_config(TINY + list(extra))
    ev = Evaluator(cfg)
    g = ev.spec.initial_vector().reshape(1, -1) + 0.05 * torch.randn(1, ev.spec.dim, generator=torch.Generator().manual_seed(1))
    return cfg, ev, g, ev.episodes(Purpose.FINETUNE, 0, 3)


def _grad(ev, g, eps, **kw):
    g = g.clone().requires_grad_(True)
    loss = meta_loss_backward(ev.learner, ev.spec, g, eps, **kw)
    return loss.detach(), g.grad.detach()


def test_bptt_gradient_of_the_meta_loss_matches_finite_differences():
    """In float64, d(meta-loss)/d(genome) from BPTT equals central differences of the no-grad lifetime."""
    from dataclasses import replace

    cfg, ev, g, eps = _setup()
    g = g.double()                                  # the spec decodes in the genome's dtype
    eps = replace(eps, stream_x=eps.stream_x.double(), stream_y=eps.stream_y.double(),
                  query_x=eps.query_x.double(), query_y=eps.query_y.double())
    loss, grad = _grad(ev, g, eps)
    names = ev.spec.split(torch.arange(ev.spec.dim).reshape(1, -1).double())
    for name in ("layer3.eta", "layer3.beta", "layer1.weight", "layer3.feedback"):
        i = int(names[name].reshape(-1)[0])
        h = 1e-5
        plus, minus = g.clone(), g.clone()
        plus[0, i] += h
        minus[0, i] -= h
        with torch.no_grad():
            fd = (meta_loss_value(ev, plus, eps) - meta_loss_value(ev, minus, eps)) / (2 * h)
        assert torch.isclose(grad[0, i], fd, rtol=1e-4, atol=1e-8), (name, grad[0, i].item(), fd.item())


def meta_loss_value(ev, g, eps):
    from evoplast.evaluation import score_params

    return score_params(ev.learner, ev.spec.decode(g), eps, cap=1e9).loss[0]


def test_window_as_long_as_the_lifetime_is_full_bptt_and_checkpointing_changes_nothing():
    cfg, ev, g, eps = _setup()
    full_loss, full = _grad(ev, g, eps)
    long_loss, long = _grad(ev, g, eps, window=eps.num_steps)
    ckpt_loss, ckpt = _grad(ev, g, eps, checkpoint_activations=True)
    torch.testing.assert_close(long, full)
    torch.testing.assert_close(ckpt, full, rtol=1e-5, atol=1e-6)
    assert full_loss == long_loss == ckpt_loss
    short_loss, short = _grad(ev, g, eps, window=4)
    assert torch.isfinite(short).all() and not torch.allclose(short, full)


def test_meta_training_from_scratch_improves_held_out_loss():
    cfg = small_config(TINY + ["finetune.lr=0.01", "finetune.episodes=4"])
    ev = Evaluator(cfg)
    start = ev.spec.initial_vector().reshape(1, -1)
    trainer = MetaTrainer(cfg, ev.spec, start)
    for _ in range(40):
        trainer.step()
    before, after = ev.score(start).loss.item(), ev.score(trainer.current()).loss.item()
    assert after < before - 0.5, (before, after)


def _rss_mb():
    gc.collect()
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def test_memory_is_flat_over_meta_steps():
    """No graph survives a meta-step. Negative control: keeping each step's graph alive grows memory."""
    cfg = small_config(TINY + ["network.hidden=[64,64]", "network.plastic_layers=[]", "rule.name=oja",
                                    "finetune.episodes=8", "task.batches_per_task=12"])
    ev = Evaluator(cfg)
    trainer = MetaTrainer(cfg, ev.spec, ev.spec.initial_vector().reshape(1, -1))
    for _ in range(3):
        trainer.step()
    start = _rss_mb()
    for _ in range(15):
        trainer.step()
    growth = _rss_mb() - start
    # the same meta-step, keeping a reference to its graph (the classic leak of unrolled inner loops)
    kept = []
    eps = ev.episodes(Purpose.FINETUNE, 0, 8)
    base = _rss_mb()
    for _ in range(15):
        g = trainer.genomes.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            from evoplast.evaluation import score_params

            kept.append(score_params(ev.learner, ev.spec.decode(g), eps, cap=1e9).loss)
    leak = _rss_mb() - base
    print(f"growth over 15 meta-steps {growth:.1f} MB; with graphs kept {leak:.1f} MB")
    assert leak > 40, f"negative control grew only {leak:.1f} MB; the measurement could not see a leak"
    assert growth < leak / 4, f"memory grew {growth:.1f} MB over 15 meta-steps (a leak grows {leak:.1f} MB)"


def test_finetune_run_is_nested_and_reports_before_and_after(store):
    from evoplast.runs.evolve import run_evolution

    evo = run_evolution(small_config(TINY + ["search.generations=30"]), out=quiet)
    cfg = small_config(TINY + ["search.generations=30", "finetune.steps=30", "finetune.lr=0.01",
                                    "finetune.eval_every=10", "finetune.train=['layer3.*']"])
    genomes = torch.stack([evo.center, evo.center + 0.01])
    result = run_finetune(cfg, genomes, ["center", "nudged"], parent_run_id=evo.run_id, out=quiet)
    client = MlflowClient(store)
    run = client.get_run(result.run_id)
    assert run.data.tags["mlflow.parentRunId"] == evo.run_id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(result.run_id, "meta/loss")] == list(range(1, 31))
    assert len(client.get_metric_history(result.run_id, "heldout/loss_g1")) == 4   # before, 10, 20, 30
    assert result.after[result.chosen]["loss"] < result.before[0]["loss"]
    # the evolution's held-out number and the fine-tune's "before" are measured on the same episodes
    assert abs(result.before[0]["loss"] - evo.report["loss"]) < 1e-5
    saved = torch.load(client.download_artifacts(result.run_id, "finetuned_genome.pt"), weights_only=True)
    assert set(saved["trained"]) >= {"layer3.weight", "layer3.bias", "layer3.eta"}
    assert torch.equal(saved["genome"], result.genome)
    _, spec = train_spec_of(cfg)
    assert spec.dim == result.genome.numel()

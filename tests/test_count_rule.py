"""The count-normalised rule (``rule.count_normalised``): each plastic post-neuron's rate is divided by
(offset + the summed squared post activity it has seen), so with a one-hot post, Oja's rule, eta = 1 and
offset 0 an output row is exactly the running mean of its class's inputs, as a prototype learner's is."""

import pytest
import torch

from evoplast.config import load_config
from evoplast.errors import ConfigError
from evoplast.learners import PlasticLearner
from evoplast.network import ModelSpec

from .conftest import small_config

B, N_IN, H, C, M, T = 3, 5, 7, 4, 4, 30


def _params(eta: float = 1.0, offset: float = 0.0, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"layer1.weight": torch.randn(B, H, N_IN, generator=g), "layer1.bias": torch.randn(B, H, generator=g),
            "layer2.weight": torch.randn(B, C, H, generator=g), "layer2.bias": torch.randn(B, C, generator=g),
            "layer2.feedback": torch.randn(B, C, C, generator=g), "layer2.feedback_bias": torch.randn(B, C, generator=g),
            "layer2.beta": torch.rand(B, 1, 1, generator=g), "layer2.eta": torch.full((B, 1, 1), eta),
            "layer2.count_offset": torch.full((B, 1, 1), offset)}


def _lifetime(spec, params, inplace: bool):
    """Run T mixed-class mini-batches; return the final state and, per lifetime and class, the hidden
    features of every example of that class seen."""
    learner = PlasticLearner(spec)
    g = torch.Generator().manual_seed(1)
    seen = [[[] for _ in range(C)] for _ in range(B)]
    with torch.set_grad_enabled(not inplace):
        state = learner.init_state(params)
        for _ in range(T):
            x, y = torch.randn(B, M, N_IN, generator=g), torch.randint(0, C, (B, M), generator=g)
            h = torch.relu(x @ params["layer1.weight"].transpose(1, 2) + params["layer1.bias"][:, None])
            for b in range(B):
                for i in range(M):
                    seen[b][int(y[b, i])].append(h[b, i])
            state = learner.step(params, state, x, y, inplace=inplace)
    return state, seen


@pytest.mark.parametrize("inplace", [False, True], ids=["autograd path", "in-place path"])
def test_with_eta_1_and_offset_0_each_row_is_the_exact_class_mean(inplace):
    spec = ModelSpec((N_IN, H, C), (2,), "oja", teaching_signal="target", kind="classification",
                     count_normalised=True)
    state, seen = _lifetime(spec, _params(), inplace)
    for b in range(B):
        for c in range(C):
            torch.testing.assert_close(state.weights[1][b, c], torch.stack(seen[b][c]).mean(0), rtol=1e-5, atol=1e-6)
        assert state.counts[0][b].tolist() == [float(len(seen[b][c])) for c in range(C)]


def test_without_counting_the_same_rule_is_no_class_mean():
    """The test can fail: plain Oja with eta = 1 (no count) ends far from the class means."""
    spec = ModelSpec((N_IN, H, C), (2,), "oja", teaching_signal="target", kind="classification")
    state, seen = _lifetime(spec, _params(eta=0.1), inplace=False)
    gap = max((state.weights[1][b, c] - torch.stack(seen[b][c]).mean(0)).abs().max().item()
              for b in range(B) for c in range(C))
    assert gap > 0.05, gap


def test_a_positive_offset_shrinks_towards_the_initial_weights():
    """offset c: row = (c * W0 + n * mean) / (c + n) (a prior of weight c on the initial row)."""
    spec = ModelSpec((N_IN, H, C), (2,), "oja", teaching_signal="target", kind="classification",
                     count_normalised=True)
    params = _params(offset=3.0)
    state, seen = _lifetime(spec, params, inplace=False)
    for b in range(B):
        for c in range(C):
            n = len(seen[b][c])
            expected = (3.0 * params["layer2.weight"][b, c] + n * torch.stack(seen[b][c]).mean(0)) / (3.0 + n)
            torch.testing.assert_close(state.weights[1][b, c], expected, rtol=1e-4, atol=1e-5)


def test_the_offset_is_a_genome_segment_that_bptt_can_train():
    cfg = small_config(["rule.count_normalised=true", "rule.batch_reduction=sum", "network.plastic_layers=[]",
                        "rule.name=oja", "rule.eta_init=1.0"])          # eta = 0 would make the offset moot
    from evoplast.evaluation import Evaluator
    from evoplast.trainers.bptt import meta_loss_backward
    from evoplast.seeding import Purpose

    ev = Evaluator(cfg)
    names = [s.name for s in ev.spec.evolved]
    assert {f"layer{l}.count_offset" for l in ev.spec.model.plastic_layers} <= set(names)
    genomes = ev.spec.initial_vector()[None].clone().requires_grad_(True)
    episodes = ev.task.episodes(0, Purpose.FINETUNE, 0, 2, "cpu")
    meta_loss_backward(PlasticLearner(ev.spec.model), ev.spec, genomes, episodes)
    grads = ev.spec.split(genomes.grad)
    assert all(torch.isfinite(grads[n]).all() and grads[n].abs().sum() > 0 for n in names if "count_offset" in n)


def test_count_normalised_with_a_mean_over_rows_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="count_normalised=true needs rule.batch_reduction=sum"):
        load_config(None, ["rule.count_normalised=true"])


def test_the_fused_kernel_leaves_counting_to_pytorch():
    from evoplast import fused

    plain = ModelSpec((N_IN, H, C), (2,), "oja", kind="classification")
    counted = ModelSpec((N_IN, H, C), (2,), "oja", kind="classification", count_normalised=True)
    assert fused.supports(plain) and not fused.supports(counted)

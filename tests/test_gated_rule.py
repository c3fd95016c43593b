"""The gated rule (``rule.gated``): a third factor, ``sigmoid(G_l s + h_l)`` per row and post-neuron, a learned
function of the teaching signal that multiplies the post activity the local rule sees."""

import torch

from evoplast.learners import PlasticLearner
from evoplast.network import ModelSpec, forward, teaching_signal

B, N_IN, H, M = 3, 5, 6, 4


def _params(spec: ModelSpec, gate_bias: float, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    p = {}
    for l in range(1, spec.num_layers + 1):
        out, inp = spec.sizes[l], spec.sizes[l - 1]
        p[f"layer{l}.weight"] = torch.randn(B, out, inp, generator=g) / inp ** 0.5
        p[f"layer{l}.bias"] = 0.1 * torch.randn(B, out, generator=g)
    for l in spec.plastic_layers:
        out = spec.sizes[l]
        p[f"layer{l}.feedback"] = torch.randn(B, out, spec.n_out, generator=g)
        p[f"layer{l}.feedback_bias"] = torch.zeros(B, out)
        p[f"layer{l}.beta"] = torch.full((B, 1, 1), 0.5)
        p[f"layer{l}.eta"] = torch.full((B, out, 1), 0.05)
        if spec.gated:
            p[f"layer{l}.gate"] = torch.randn(B, out, spec.n_out, generator=g)
            p[f"layer{l}.gate_bias"] = torch.full((B, out), gate_bias)
    return p


def _step(spec, params, x, y):
    learner = PlasticLearner(spec)
    return learner.step(params, learner.init_state(params), x, y, inplace=False)


def test_an_open_gate_is_the_plain_rule_and_a_closed_one_stops_learning():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(B, M, N_IN, generator=g), torch.randn(B, M, 1, generator=g)
    plain = ModelSpec((N_IN, H, 1), (1, 2), "oja")
    gated = ModelSpec((N_IN, H, 1), (1, 2), "oja", gated=True)
    params_open = _params(gated, gate_bias=40.0)          # sigmoid(40 + G s) == 1.0 in float32 for |G s| < 20
    reference = _step(plain, {k: v for k, v in params_open.items() if "gate" not in k}, x, y)
    opened = _step(gated, params_open, x, y)
    for a, b in zip(opened.weights, reference.weights):
        assert torch.equal(a, b)
    params_closed = _params(gated, gate_bias=-40.0)
    closed = _step(gated, params_closed, x, y)
    for l in gated.plastic_layers:
        change = (closed.weights[l - 1] - params_closed[f"layer{l}.weight"]).abs().max().item()
        assert change < 1e-12, change
    assert any(not torch.equal(a, b) for a, b in zip(reference.weights, (params_open[f"layer{l}.weight"]
                                                                          for l in (1, 2))))   # plain rule learns


def test_the_gate_multiplies_each_rows_post_activity():
    """One hebb step of the output layer by hand: dW = eta * sum_rows (g * p) x^T with g = sigmoid(s G^T + h)."""
    spec = ModelSpec((N_IN, H, 2), (2,), "hebb", gated=True)
    params = _params(spec, gate_bias=0.3)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(B, M, N_IN, generator=g), torch.randn(B, M, 2, generator=g)
    acts, y_hat = forward(tuple(params[f"layer{l}.weight"] for l in (1, 2)),
                          tuple(params[f"layer{l}.bias"] for l in (1, 2)), x)
    s = teaching_signal(spec, y_hat, y)                                              # [B, M, 2]
    f = s @ params["layer2.feedback"].transpose(1, 2)                                # linear output feedback
    post = 0.5 * f + 0.5 * y_hat
    gate = torch.sigmoid(s @ params["layer2.gate"].transpose(1, 2) + params["layer2.gate_bias"][:, None])
    expected = params["layer2.weight"] + params["layer2.eta"] * (gate * post).transpose(1, 2) @ acts[1]
    torch.testing.assert_close(_step(spec, params, x, y).weights[1], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(gate, torch.ones_like(gate))


def test_gated_segments_are_in_the_genome_and_the_fused_kernel_leaves_them_to_pytorch():
    from evoplast import fused

    from .conftest import small_config
    from evoplast.evaluation import Evaluator

    ev = Evaluator(small_config(["rule.gated=true", "rule.name=oja"]))
    names = {s.name for s in ev.spec.evolved}
    assert {f"layer{l}.gate" for l in ev.spec.model.plastic_layers} <= names
    assert fused.supports(ModelSpec((N_IN, H, 1), (2,), "oja")) and \
        not fused.supports(ModelSpec((N_IN, H, 1), (2,), "oja", gated=True))
    fitness, bad = ev.fitness(ev.spec.initial_vector()[None].repeat(2, 1), 0)
    assert torch.isfinite(fitness).all() and not bad.any()

"""Math identities of the FLP update and the baselines."""

import math

import pytest
import torch

from evoplast.learners import GradientLearner, NetState, PlasticLearner
from evoplast.network import ModelSpec, forward
from evoplast.rules import TERMS, LayerActivity, oja


def _net(sizes, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    weights = tuple(torch.randn(batch, sizes[l], sizes[l - 1], generator=g) / math.sqrt(sizes[l - 1])
                    for l in range(1, len(sizes)))
    biases = tuple(torch.randn(batch, sizes[l], generator=g) * 0.1 for l in range(1, len(sizes)))
    return weights, biases


def _identity_params(spec, weights, biases, eta):
    """Plastic output layer only: identity feedback, c = 0, beta = 1, eta = lr."""
    B, L = weights[0].shape[0], spec.num_layers
    params = {f"layer{l}.weight": weights[l - 1] for l in range(1, L + 1)}
    params |= {f"layer{l}.bias": biases[l - 1] for l in range(1, L + 1)}
    params |= {f"layer{L}.feedback": torch.eye(spec.n_out).expand(B, -1, -1),
               f"layer{L}.feedback_bias": torch.zeros(B, spec.n_out),
               f"layer{L}.beta": torch.ones(B, 1, 1), f"layer{L}.eta": torch.full((B, 1, 1), eta)}
    return params


@pytest.mark.parametrize("grad_mode", [True, False])
def test_hebb_with_exact_error_feedback_is_one_sgd_step(grad_mode):
    """hebb + error signal + identity feedback + beta = 1 + eta = lr == SGD on 1/2 sum ||y - y_hat||^2."""
    sizes, B, m, lr = (3, 6, 5, 2), 4, 7, 0.03
    spec = ModelSpec(sizes, plastic_layers=(3,), rule="hebb")
    weights, biases = _net(sizes, B)
    x, y = torch.randn(B, m, 3), torch.randn(B, m, 2)
    with torch.set_grad_enabled(grad_mode):
        new = PlasticLearner(spec).step(_identity_params(spec, weights, biases, lr),
                                        PlasticLearner(spec).init_state(_identity_params(spec, weights, biases, lr)),
                                        x, y)
    w3 = weights[2].clone().requires_grad_(True)
    with torch.enable_grad():
        _, y_hat = forward((weights[0], weights[1], w3), biases, x)
        (0.5 * (y - y_hat).square().sum()).backward()
    torch.testing.assert_close(new.weights[2], weights[2] - lr * w3.grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(new.weights[0], weights[0]) and torch.equal(new.weights[1], weights[1])
    assert not torch.equal(new.weights[2], weights[2])


@pytest.mark.parametrize("n_out", [3, 1])   # one output: the outer-product feedback and vecdot update paths
def test_inplace_and_functional_paths_agree(n_out):
    """The fused in-place update (no grad) equals the out-of-place one (autograd) for every rule, and
    neither depends on the weights' memory layout."""
    sizes, B, m = (4, 6, 5, n_out), 3, 4
    weights, biases = _net(sizes, B, seed=1)
    x, y = torch.randn(B, m, 4), torch.randn(B, m, n_out)
    g = torch.Generator().manual_seed(2)
    for rule, gran, coefs in [("hebb", (1, 1), ("eta",)), ("oja", (6, 1), ("eta",)), ("oja", (6, 4), ("eta",)),
                              ("abcd", (1, 1), ("eta", "A", "B", "C", "D")), ("terms", (1, 1), ("theta",))]:
        spec = ModelSpec(sizes, plastic_layers=(1, 2, 3), rule=rule, terms=tuple(TERMS))
        params = {f"layer{l}.weight": weights[l - 1] for l in (1, 2, 3)} | \
                 {f"layer{l}.bias": biases[l - 1] for l in (1, 2, 3)}
        for l in (1, 2, 3):
            out, inp = sizes[l], sizes[l - 1]
            shape = {(1, 1): (1, 1), (6, 1): (out, 1), (6, 4): (out, inp)}[gran]
            params[f"layer{l}.feedback"] = torch.randn(B, out, n_out, generator=g)
            params[f"layer{l}.feedback_bias"] = torch.randn(B, out, generator=g) * 0.1
            params[f"layer{l}.beta"] = torch.rand(B, 1, 1, generator=g)
            for c in coefs:
                extra = (len(TERMS),) if c == "theta" else ()
                params[f"layer{l}.{c}"] = torch.randn(B, *extra, *shape, generator=g) * 0.05
        learner = PlasticLearner(spec)
        with torch.enable_grad():
            ref = learner.step(params, learner.init_state(params), x, y)
        with torch.no_grad():
            state = learner.init_state(params)
            assert all(w.transpose(1, 2).is_contiguous() for w in state.weights)   # the lifetime's layout
            fast = learner.step(params, state, x, y)
            row_major = NetState(tuple(w.clone(memory_format=torch.contiguous_format) for w in weights), biases)
            fast_row_major = learner.step(params, row_major, x, y)
        for a, b, c in zip(ref.weights, fast.weights, fast_row_major.weights):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"rule {rule} granularity {gran}")
            torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-6, msg=f"row-major, rule {rule} granularity {gran}")
        assert torch.equal(params["layer1.weight"], weights[0])  # the in-place path never touches params


def test_oja_single_neuron_finds_principal_direction():
    g = torch.Generator().manual_seed(0)
    d = 5
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    scales = torch.tensor([3.0, 1.0, 0.7, 0.5, 0.3])
    principal = q[:, 0]
    w = torch.randn(1, 1, d, generator=g) * 0.1
    eta = torch.full((1, 1, 1), 0.002)
    for _ in range(3000):
        x = (torch.randn(1, 8, d, generator=g) * scales) @ q.T   # [1, m, d] zero-mean, covariance cov
        post = x @ w.transpose(1, 2)                               # linear neuron y = w^T x, [1, m, 1]
        a = LayerActivity(pre=x, post=post, post_ff=post, feedback=post, weight=w, is_output=True)
        w = w + oja({"eta": eta}, a)
    w = w.reshape(d)
    assert abs(w.norm().item() - 1.0) < 0.05
    assert abs(torch.dot(w / w.norm(), principal).item()) > 0.99


def test_backprop_learner_is_autograd_sgd():
    sizes, B, m, lr = (3, 7, 6, 2), 3, 5, 0.1
    spec = ModelSpec(sizes, plastic_layers=(), rule="hebb")
    weights, biases = _net(sizes, B, seed=3)
    x, y = torch.randn(B, m, 3), torch.randn(B, m, 2)
    params = {f"layer{l}.weight": weights[l - 1] for l in (1, 2, 3)} | {f"layer{l}.bias": biases[l - 1] for l in (1, 2, 3)}
    learner = GradientLearner(spec, lr)
    new = learner.step(params, learner.init_state(params), x, y)
    leaves = [t.clone().requires_grad_(True) for t in (*weights, *biases)]
    _, y_hat = forward(tuple(leaves[:3]), tuple(leaves[3:]), x)
    (0.5 * (y - y_hat).square().sum(-1).mean(-1).sum()).backward()   # mean over rows, per lifetime
    for got, leaf in zip((*new.weights, *new.biases), leaves):
        torch.testing.assert_close(got, leaf.detach() - lr * leaf.grad, rtol=1e-5, atol=1e-6)


def test_feedback_alignment_with_transport_matrices_is_backprop():
    sizes, B, m = (3, 7, 6, 2), 2, 5
    spec = ModelSpec(sizes, plastic_layers=(), rule="hebb")
    weights, biases = _net(sizes, 1, seed=4)
    params = {f"layer{l}.weight": weights[l - 1].expand(B, -1, -1) for l in (1, 2, 3)} | \
             {f"layer{l}.bias": biases[l - 1].expand(B, -1) for l in (1, 2, 3)}
    x, y = torch.randn(B, m, 3), torch.randn(B, m, 2)
    fa = GradientLearner(spec, 0.1, "alignment", seed=0)
    bp = GradientLearner(spec, 0.1)
    different = fa.step(params, fa.init_state(params), x, y)
    fa.fa_matrices = tuple(w[0] for w in weights)
    same = fa.step(params, fa.init_state(params), x, y)
    ref = bp.step(params, bp.init_state(params), x, y)
    for a, b in zip(same.weights, ref.weights):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(different.weights[0], ref.weights[0])
    torch.testing.assert_close(different.weights[2], ref.weights[2])  # the output layer needs no feedback


def test_classification_output_post_is_the_one_hot_target():
    sizes, B, m = (4, 5, 3), 2, 6
    spec = ModelSpec(sizes, plastic_layers=(2,), rule="hebb", teaching_signal="target", kind="classification")
    weights, biases = _net(sizes, B, seed=5)
    params = {f"layer{l}.weight": weights[l - 1] for l in (1, 2)} | {f"layer{l}.bias": biases[l - 1] for l in (1, 2)}
    params |= {"layer2.feedback": torch.randn(B, 3, 3), "layer2.feedback_bias": torch.randn(B, 3),
               "layer2.beta": torch.full((B, 1, 1), 0.3), "layer2.eta": torch.full((B, 1, 1), 0.5)}
    x, labels = torch.randn(B, m, 4), torch.randint(0, 3, (B, m))
    new = PlasticLearner(spec).step(params, NetState(weights, biases), x, labels)
    acts, _ = forward(weights, biases, x)
    onehot = torch.nn.functional.one_hot(labels, 3).float()
    expected = weights[1] + 0.5 * torch.bmm(onehot.transpose(1, 2), acts[1])
    torch.testing.assert_close(new.weights[1], expected)

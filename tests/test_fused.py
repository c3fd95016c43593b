"""The fused CPU step (:mod:`evoplast.fused`) against the eager in-place step of :class:`PlasticLearner`."""

import itertools
import math
import warnings

import pytest
import torch

from evoplast import fused
from evoplast.learners import PlasticLearner
from evoplast.network import ModelSpec
from .conftest import small_config


@pytest.fixture(scope="module", autouse=True)
def kernel():
    """Compiles the kernel once (seconds; cached on disk afterwards), or skips the module."""
    if not fused.available():
        pytest.skip("the fused CPU kernel could not be compiled here (no C++ compiler or ninja?)")


def make_case(sizes, plastic, rule="oja", *, per_neuron=False, B=37, m=13, kind="regression", teaching="error",
              feedback="relu", eta=0.05, broadcast=False, seed=0):
    """A model spec, random params ``{name: [B, ...]}`` and one step's ``x``, ``y``.

    Widths and m are chosen by the callers so that every register-tile tail of the kernel runs.
    ``broadcast``: x and y are views of one episode with batch stride 0 (as ``lifetime.tile`` makes them).
    """
    spec = ModelSpec(tuple(sizes), tuple(plastic), rule, teaching_signal=teaching, feedback_activation=feedback,
                     kind=kind)
    g = torch.Generator().manual_seed(seed)
    n_out, L = sizes[-1], len(sizes) - 1
    params = {}
    for l in range(1, L + 1):
        params[f"layer{l}.weight"] = torch.randn(B, sizes[l], sizes[l - 1], generator=g) / math.sqrt(sizes[l - 1])
        params[f"layer{l}.bias"] = torch.randn(B, sizes[l], generator=g) * 0.1
    for l in plastic:
        params[f"layer{l}.feedback"] = torch.randn(B, sizes[l], n_out, generator=g)
        params[f"layer{l}.feedback_bias"] = torch.randn(B, sizes[l], generator=g) * 0.1
        params[f"layer{l}.beta"] = torch.rand(B, 1, 1, generator=g)           # both sides of torch.lerp's 0.5
        params[f"layer{l}.eta"] = torch.rand(B, sizes[l] if per_neuron else 1, 1, generator=g) * eta
    x, y = make_data(spec, B, m, g, broadcast)
    return spec, params, x, y


def make_data(spec, B, m, g, broadcast=False):
    rows = 1 if broadcast else B
    x = torch.randn(rows, m, spec.sizes[0], generator=g)
    if spec.kind == "classification":
        y = torch.randint(0, spec.n_out, (rows, m), generator=g)
    else:
        y = torch.sin(x.sum(-1, keepdim=True) + torch.arange(spec.n_out)) + 0.1 * torch.randn(rows, m, spec.n_out,
                                                                                              generator=g)
    if broadcast:
        x, y = x.expand(B, *x.shape[1:]), y.expand(B, *y.shape[1:])
    return x, y


def eager_step(spec, params, state, x, y):
    with torch.no_grad():
        return PlasticLearner(spec).step_and_predict(params, state, x, y, inplace=True)[1]


def fused_step(spec, params, state, x, y):
    with torch.no_grad():
        return fused.bind(spec)(params, state.weights, state.biases, x, y)


def states(spec, params):
    """Two independent initial states (plastic weights copied, column-major)."""
    learner = PlasticLearner(spec)
    return learner.init_state(params), learner.init_state(params)


def assert_step_matches(spec, params, x, y, rtol=1e-5, atol=1e-5):
    eager, mine = states(spec, params)
    before = [w.clone() for w in mine.weights]
    yh_e = eager_step(spec, params, eager, x, y)
    yh_f = fused_step(spec, params, mine, x, y)
    assert yh_f.shape == yh_e.shape and yh_f.is_contiguous()
    torch.testing.assert_close(yh_f, yh_e, rtol=rtol, atol=atol)
    for l, (we, wf, w0) in enumerate(zip(eager.weights, mine.weights, before), start=1):
        torch.testing.assert_close(wf, we, rtol=rtol, atol=atol)
        assert torch.equal(wf, w0) != (l in spec.plastic_layers), f"layer {l} changed iff plastic"


REGRESSION_GRID = list(itertools.product(
    ["hebb", "oja"], [False, True], ["output", "all"], ["relu", "linear"], ["error", "target"], [1, 3]))


@pytest.mark.parametrize("rule,per_neuron,plastic,feedback,teaching,n_out", REGRESSION_GRID,
                         ids=["-".join(map(str, c)) for c in REGRESSION_GRID])
def test_regression_step_matches_eager(rule, per_neuron, plastic, feedback, teaching, n_out):
    # widths 21 = 16 + 4 + 1 and 13 = 8 + 4 + 1 columns, m = 13 = 8 + 4 + 1 rows: every tile shape runs
    sizes = (7, 21, 13, n_out)
    layers = (3,) if plastic == "output" else (1, 2, 3)
    spec, params, x, y = make_case(sizes, layers, rule, per_neuron=per_neuron, feedback=feedback,
                                   teaching=teaching, seed=REGRESSION_GRID.index((rule, per_neuron, plastic, feedback,
                                                                                  teaching, n_out)))
    assert fused.supports(spec)
    assert_step_matches(spec, params, x, y)


CLASSIFICATION_GRID = list(itertools.product(["hebb", "oja"], ["error", "target"], ["output", "all"], [1, 6]))


@pytest.mark.parametrize("rule,teaching,plastic,m", CLASSIFICATION_GRID,
                         ids=["-".join(map(str, c)) for c in CLASSIFICATION_GRID])
def test_classification_step_matches_eager(rule, teaching, plastic, m):
    sizes = (20, 37, 10)    # 37 = 2 x 16 + 4 + 1 columns
    layers = (2,) if plastic == "output" else (1, 2)
    spec, params, x, y = make_case(sizes, layers, rule, kind="classification", teaching=teaching, m=m,
                                   per_neuron=rule == "oja")
    assert_step_matches(spec, params, x, y)


@pytest.mark.parametrize("B", [1, 37])
@pytest.mark.parametrize("broadcast", [False, True])
def test_batch_sizes_and_broadcast_views(B, broadcast):
    spec, params, x, y = make_case((11, 40, 40, 1), (1, 2, 3), "oja", B=B, m=8, broadcast=broadcast)
    if broadcast and B > 1:
        assert x.stride(0) == 0 and y.stride(0) == 0
    assert_step_matches(spec, params, x, y)


def test_single_layer_and_partly_plastic_networks():
    for sizes, plastic in [((5, 3), (1,)), ((9, 17, 2), (1,)), ((6, 8, 8, 8, 2), (2, 4))]:
        spec, params, x, y = make_case(sizes, plastic, "hebb", per_neuron=True)
        assert_step_matches(spec, params, x, y)


def test_non_contiguous_rows_and_shared_params():
    """x with strided rows (copied by the kernel), params that are broadcast views (batch stride 0)."""
    spec, params, x, y = make_case((7, 21, 3), (1, 2), "oja", B=5)
    x = torch.cat([x, x], dim=-1)[..., ::2]
    assert not x.is_contiguous()
    params["layer1.feedback"] = params["layer1.feedback"][:1].expand(5, -1, -1)
    params["layer2.eta"] = params["layer2.eta"][:1].expand(5, -1, -1)
    assert_step_matches(spec, params, x, y)


@pytest.mark.parametrize("rule", ["hebb", "oja"])
def test_lifetime_of_100_steps_matches_eager(rule):
    B, m, steps = 16, 8, 100
    spec, params, _, _ = make_case((11, 40, 40, 1), (1, 2, 3), rule, B=B, m=m, eta=0.001)
    # a genome that stays finite for 100 steps: delta-rule output feedback, weaker hidden feedback, beta >= 0.5
    params["layer3.feedback"], params["layer3.feedback_bias"] = torch.ones(B, 1, 1), torch.zeros(B, 1)
    for l in (1, 2, 3):
        params[f"layer{l}.beta"] = 0.5 + 0.5 * params[f"layer{l}.beta"]
    for l in (1, 2):
        params[f"layer{l}.feedback"] *= 0.3
    eager, mine = states(spec, params)
    g = torch.Generator().manual_seed(5)
    worst = 0.0
    for _ in range(steps):
        x, y = make_data(spec, B, m, g, broadcast=True)
        yh_e, yh_f = eager_step(spec, params, eager, x, y), fused_step(spec, params, mine, x, y)
        worst = max(worst, ((yh_f - yh_e).abs().max() / yh_e.abs().max()).item())
    for l, (we, wf) in enumerate(zip(eager.weights, mine.weights), start=1):
        assert torch.isfinite(we).all(), "the test's genome should stay finite"
        assert (we - params[f"layer{l}.weight"]).abs().max() > 0.1, "the weights should have learned"
        worst = max(worst, ((wf - we).abs().max() / we.abs().max()).item())
    assert worst < 1e-4


def test_diverging_genome_is_non_finite_like_eager():
    """Weights that blow up give Inf / NaN exactly where eager does: nothing is clamped or fixed."""
    B, m = 12, 8
    spec, params, _, _ = make_case((5, 16, 16, 2), (1, 2, 3), "hebb", B=B, m=m, eta=0.5)
    for l in (1, 2, 3):
        params[f"layer{l}.eta"][6:] = 0.0              # half the lifetimes explode, half stay as they are
    eager, mine = states(spec, params)
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        x, y = make_data(spec, B, m, g)
        yh_e, yh_f = eager_step(spec, params, eager, x, y), fused_step(spec, params, mine, x, y)
        assert torch.equal(torch.isfinite(yh_f), torch.isfinite(yh_e))
        assert torch.equal(torch.isnan(yh_f), torch.isnan(yh_e)) or not torch.isfinite(yh_e).all()
    for we, wf in zip(eager.weights, mine.weights):
        assert torch.equal(torch.isfinite(wf), torch.isfinite(we))
    assert not torch.isfinite(yh_e[:6]).any() and torch.isfinite(yh_e[6:]).all(), "the test should diverge"


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_nan_weight_propagates_like_eager(kind):
    n_out = 1 if kind == "regression" else 4
    spec, params, x, y = make_case((6, 9, n_out), (1, 2), "oja", B=5, kind=kind)
    params["layer1.weight"][2, 3, 1] = float("nan")
    params["layer2.weight"][4, 0, 0] = float("inf")
    eager, mine = states(spec, params)
    yh_e, yh_f = eager_step(spec, params, eager, x, y), fused_step(spec, params, mine, x, y)
    assert torch.isnan(yh_e[2]).any()
    assert torch.equal(torch.isnan(yh_f), torch.isnan(yh_e)) and torch.equal(torch.isinf(yh_f), torch.isinf(yh_e))
    for we, wf in zip(eager.weights, mine.weights):
        assert torch.equal(torch.isnan(wf), torch.isnan(we)) and torch.equal(torch.isinf(wf), torch.isinf(we))
    finite = torch.isfinite(yh_e)
    torch.testing.assert_close(yh_f[finite], yh_e[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_lifetime_does_not_depend_on_the_rest_of_the_batch(kind):
    """Bit-identical results for lifetimes 3..7 run among 37 or alone (copied: other memory alignment), with 1
    or 2 threads."""
    n_out = 1 if kind == "regression" else 5
    spec, params, x, y = make_case((11, 37, 21, n_out), (1, 2, 3), "oja", B=37, m=8, kind=kind, per_neuron=True)
    part = slice(3, 8)
    results = []
    threads = torch.get_num_threads()
    try:
        for sub, n_threads in [(False, threads), (True, threads), (True, 1), (False, 1)]:
            torch.set_num_threads(n_threads)
            p = {k: v[part].clone() for k, v in params.items()} if sub else params
            xs, ys = (x[part].clone(), y[part].clone()) if sub else (x, y)
            state = PlasticLearner(spec).init_state(p)
            out = []
            for _ in range(3):
                out.append(fused_step(spec, p, state, xs, ys))
            results.append([o if sub else o[part] for o in out] + [w if sub else w[part] for w in state.weights])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_rejects_what_it_does_not_cover():
    spec, params, x, y = make_case((5, 7, 2), (1, 2), "oja", B=3)
    state = PlasticLearner(spec).init_state(params)
    with pytest.raises(ValueError, match="column-major"):
        fused.bind(spec)(params, (state.weights[0].contiguous(), state.weights[1]), state.biases, x, y)
    synapse = dict(params, **{"layer1.eta": torch.full((3, 7, 5), 0.01)})
    with pytest.raises(ValueError, match="eta"):
        fused.bind(spec)(synapse, state.weights, state.biases, x, y)
    with pytest.raises(ValueError, match="shape"):
        fused.bind(spec)(params, state.weights, state.biases, x, y[:, :, :1])
    with pytest.raises(ValueError, match="float32"):
        fused.bind(spec)(params, state.weights, state.biases, x.double(), y)
    assert not fused.supports(ModelSpec((5, 7, 2), (1, 2), "abcd"))
    assert not fused.supports(ModelSpec((5, 7, 2), (1, 2), "terms", terms=("hebb",)))
    assert not fused.supports(ModelSpec((5, 7, 2), (1, 2), "oja", kind="classification", features="conv"))
    assert fused.supports(ModelSpec((5, 7, 2), (2,), "hebb", kind="classification"))
    with pytest.raises(ValueError, match="supports"):
        fused.bind(ModelSpec((5, 7, 2), (1, 2), "abcd"))(params, state.weights, state.biases, x, y)


def test_bad_label_raises_before_any_update():
    spec, params, x, y = make_case((5, 7, 3), (1, 2), "hebb", B=4, kind="classification")
    state = PlasticLearner(spec).init_state(params)
    before = [w.clone() for w in state.weights]
    y = y.clone()
    y[3, 0] = 3
    with pytest.raises(ValueError, match="label"):
        fused.bind(spec)(params, state.weights, state.biases, x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, state.weights))


def test_unavailable_kernel_warns_once_and_never_raises(monkeypatch):
    import torch.utils.cpp_extension

    def no_ninja(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    fused.available()           # the build the suite started in the background (conftest) is over first
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_ninja)
    monkeypatch.setattr(fused, "_status", None)    # restored after the test, like _module
    monkeypatch.setattr(fused, "_module", None)
    with pytest.warns(RuntimeWarning, match="unavailable.*Ninja is required"):
        assert fused.available() is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fused.available() is False          # no second warning
    spec, params, x, y = make_case((5, 7, 2), (1, 2), "oja", B=2)
    state = PlasticLearner(spec).init_state(params)
    with pytest.raises(RuntimeError, match="unavailable"):
        fused.bind(spec)(params, state.weights, state.biases, x, y)
    learner = PlasticLearner(spec, fused=True)         # asked for, unavailable: the PyTorch ops run
    assert learner.fused is False
    with torch.no_grad():
        assert torch.isfinite(learner.step_and_predict(params, state, x, y)[1]).all()


def test_evaluator_runs_the_kernel_and_scores_like_the_eager_ops():
    """End to end through ``Evaluator.fitness`` (the default config, which the kernel covers)."""
    
    from evoplast.evaluation import Evaluator

    scores = {}
    for on in (True, False):
        ev = Evaluator(small_config(["search.popsize=6", "evaluation.episodes=2", "genome.evolve_init_weights=true",
                                          f"evaluation.fused_kernel={str(on).lower()}"]))
        assert ev.learner.fused is on
        genomes = ev.spec.initial_vector() + 0.01 * torch.randn(6, ev.spec.dim, generator=torch.Generator().manual_seed(0))
        scores[on] = ev.fitness(genomes, 3)[0]
    torch.testing.assert_close(scores[True], scores[False], rtol=1e-4, atol=1e-5)
    assert scores[True].std() > 0                      # six different genomes, six different scores


def test_a_build_lock_left_by_a_killed_compile_is_removed_and_a_fresh_one_kept(tmp_path, monkeypatch, capsys):
    """torch waits forever on the build directory's ``lock``; one older than any build is removed."""
    import os
    import time

    import torch.utils.cpp_extension as cpp

    monkeypatch.setattr(cpp, "_get_build_directory", lambda name, verbose=False: str(tmp_path / name))
    (tmp_path / "ext").mkdir()
    lock = tmp_path / "ext" / "lock"
    lock.write_text("")
    assert not fused.clear_stale_lock("ext") and lock.exists()          # a build in progress: left alone
    old = time.time() - fused.STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    assert fused.clear_stale_lock("ext") and not lock.exists()
    assert "removed a stale build lock" in capsys.readouterr().err
    assert not fused.clear_stale_lock("ext")                            # nothing left to remove

import pytest
import torch


from evoplast.genome import Segment, build_genome_spec
from .conftest import small_config


def test_segments_of_the_default_genome():
    cfg = small_config(["genome.evolve_init_weights=true"])
    spec = build_genome_spec(cfg, 11, 1)
    # 11-40-40-1: weights+biases 2161, feedback B and c 2*(40+40)+2, beta 3, eta 3 (per layer)
    assert spec.dim == 2329
    assert spec.by_name["layer2.feedback"].shape == (40, 1)
    assert spec.by_name["layer3.feedback"].init.item() == 1.0  # the output layer's feedback starts at identity
    assert spec.by_name["layer1.eta"].shape == (1, 1)
    no_init = build_genome_spec(small_config(), 11, 1)
    assert no_init.dim == 168                                # the rule-only genome of the prototype


@pytest.mark.parametrize("granularity, shape", [("layer", (1, 1)), ("neuron", (40, 1)), ("synapse", (40, 11))])
def test_granularity_shapes(granularity, shape):
    spec = build_genome_spec(small_config([f"rule.granularity={granularity}"]), 11, 1)
    assert spec.by_name["layer1.eta"].shape == shape


def test_flat_named_round_trip_single_and_population():
    cfg = small_config(["genome.evolve_init_weights=true", "rule.name=abcd", "network.hidden=[5]"])
    spec = build_genome_spec(cfg, 4, 2)
    pop = torch.randn(6, spec.dim)
    named = spec.split(pop)
    assert named["layer1.weight"].shape == (6, 5, 4)
    assert torch.equal(spec.join(named), pop)
    # decode -> encode inverts the transforms (sigmoid, exp, identity)
    torch.testing.assert_close(spec.encode(spec.decode(pop)), pop, rtol=1e-4, atol=1e-4)
    # a population decodes exactly like its members one at a time
    one = spec.decode(pop[3])
    for name, value in spec.decode(pop).items():
        torch.testing.assert_close(value[3], one[name])


@pytest.mark.parametrize("transform", ["identity", "exp", "softplus", "sigmoid"])
def test_transforms_invert(transform):
    seg = Segment("x", (5,), torch.zeros(5), transform, 0.3)
    g = torch.linspace(-3, 3, 5)
    torch.testing.assert_close(seg.to_genome(seg.to_value(g)), g, rtol=1e-4, atol=1e-4)
    if transform in ("exp", "softplus", "sigmoid"):
        assert (seg.to_value(g) > 0).all()


def test_fixed_segments_come_from_the_seed_and_do_not_depend_on_what_is_evolved():
    a = build_genome_spec(small_config(["seed=3"]), 11, 1)
    b = build_genome_spec(small_config(["seed=3", "genome.evolve_init_weights=true"]), 11, 1)
    c = build_genome_spec(small_config(["seed=4"]), 11, 1)
    assert torch.equal(a.by_name["layer1.weight"].init, b.by_name["layer1.weight"].init)
    assert not torch.equal(a.by_name["layer1.weight"].init, c.by_name["layer1.weight"].init)
    # the fixed initial weights reach the decoded model unchanged
    assert torch.equal(a.decode(a.initial_vector())["layer1.weight"], a.by_name["layer1.weight"].init)
    # re-choosing what is trained keeps every value
    both = a.with_evolved(all_segments=True)
    vals = both.decode(both.initial_vector())
    for name, v in a.decode(a.initial_vector()).items():
        torch.testing.assert_close(vals[name], v)


def test_wrong_genome_length_is_reported():
    spec = build_genome_spec(small_config(), 11, 1)
    with pytest.raises(ValueError, match="expects 168"):
        spec.decode(torch.zeros(3, 100))


@pytest.mark.parametrize("fused", [False, True])
def test_without_hidden_feedback_the_hidden_layers_learn_from_forward_activity_alone(fused):
    """genome.hidden_feedback=false (the ablation 'feedback to hidden layers vs none'): the hidden layers'
    B, c and beta leave the genome, beta is exactly 0, and their update no longer depends on B."""
    from evoplast.learners import PlasticLearner

    base = ["network.hidden=[6,5]", "network.plastic_layers=[]", "rule.name=hebb", "genome.evolve_init_weights=false"]
    taught = build_genome_spec(small_config(base), 3, 1)
    untaught = build_genome_spec(small_config(base + ["genome.hidden_feedback=false"]), 3, 1)
    assert taught.dim - untaught.dim == 2 * (6 + 5) + 2          # hidden B [6,1] [5,1], c [6] [5], beta x 2
    x, y = torch.randn(2, 4, 3), torch.randn(2, 4, 1)

    def step(spec, feedback_scale):
        values = spec.decode(spec.initial_vector().expand(2, -1))
        values["layer1.feedback"] = values["layer1.feedback"] * feedback_scale
        values["layer1.eta"] = torch.full_like(values["layer1.eta"], 0.1)
        learner = PlasticLearner(spec.model, fused=fused)
        with torch.no_grad():
            state = learner.step(values, learner.init_state(values), x, y)
        return values, state.weights[0].clone()

    values, w = step(untaught, 1.0)
    assert values["layer1.beta"].eq(0).all() and values["layer2.beta"].eq(0).all()
    assert values["layer3.beta"].eq(0.5).all()                    # the output layer is still taught
    torch.testing.assert_close(step(untaught, 10.0)[1], w)        # B of a hidden layer has no effect
    assert not torch.allclose(step(taught, 10.0)[1], step(taught, 1.0)[1])

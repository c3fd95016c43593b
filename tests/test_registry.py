"""Everything registered improves a toy task: every searcher, and every rule under one searcher.

In-process (no Ray, no MLflow): the ES trainer over the evaluator, a few dozen generations on a tiny
continual sinusoid task. "Improves" is measured on held-out episodes, against the search's own start.
"""

import pytest


from evoplast.evaluation import Evaluator
from evoplast.trainers.searchers import SEARCHERS
from evoplast.trainers.es import ESTrainer
from evoplast.rules import COEFFICIENTS
from .conftest import small_config

TOY = ["task.num_tasks=3", "task.batches_per_task=6", "task.batch_size=4", "task.query_size=8",
       "network.hidden=[12,12]", "network.plastic_layers=[3]", "rule.eta_init=1.0", "rule.eta_scale=0.03",
       "genome.evolve_init_weights=true", "evaluation.episodes=4", "evaluation.heldout_episodes=8",
       "search.popsize=16", "search.stdev_init=0.05", "ray.num_actors=0"]


def evolve(cfg, generations):
    """``(held-out loss of the start, of the center after evolving, the evaluator)``."""
    ev = Evaluator(cfg)
    start = ev.spec.initial_vector()
    trainer = ESTrainer(cfg, start, ev.fitness)
    for _ in range(generations):
        trainer.step()
    held = lambda g: ev.score(g.reshape(1, -1)).loss.item()     # noqa: E731
    return held(start), held(trainer.center()), ev, trainer


@pytest.mark.parametrize("algorithm", sorted(SEARCHERS))
def test_every_searcher_improves_the_toy_task(algorithm):
    extra = {"cmaes": [], "pgpe": ["search.center_learning_rate=0.2", "search.stdev_learning_rate=0.1"]}.get(algorithm, [])
    cfg = small_config(TOY + ["rule.name=hebb", f"search.algorithm={algorithm}", *extra])
    start, end, _, trainer = evolve(cfg, 40)
    assert end < start - 0.5, (algorithm, start, end)
    assert trainer.history[-1]["median"] > trainer.history[0]["median"], algorithm


@pytest.mark.parametrize("rule", sorted(COEFFICIENTS))
def test_every_rule_improves_the_toy_task_and_learns_in_its_lifetime(rule):
    extra = ["rule.terms=[hebb,error_hebb]", "rule.term_scale=0.03"] if rule == "terms" else []
    cfg = small_config(TOY + [f"rule.name={rule}", "search.algorithm=cmaes", *extra])
    start, end, ev, trainer = evolve(cfg, 40)
    assert end < start - 0.2, (rule, start, end)              # oja gains least: 4.65 -> 4.38 measured
    measures = ev.learning_measures(trainer.center())
    assert measures["learning_gain"] > 0.1, (rule, measures)       # plasticity on beats plasticity off

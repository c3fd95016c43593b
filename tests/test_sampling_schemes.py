"""search.sampling: rows (the default since row sampling) or population (EvoTorch's one generator, which made
every number published before it). The published default run is reproduced with the latter."""

from evoplast.config import load_config
from evoplast.runs.evolve import run_evolution


def test_population_sampling_reproduces_the_published_first_generation(tmp_path):
    """README (before row sampling): 'best training fitness -4.349 (generation 1)' of the default run."""
    common = ["search.generations=2", "finetune.after_evolution=false", "ray.num_actors=0",
              f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db", f"checkpoint.dir={tmp_path}/ck"]
    # stop_after: the generation only, not the final held-out report
    old = run_evolution(load_config(None, [*common, "search.sampling=population"]), out=lambda line: None, stop_after=1)
    new = run_evolution(load_config(None, common), out=lambda line: None, stop_after=1)
    assert round(old.history[0]["best"], 3) == -4.349
    assert new.history[0]["best"] != old.history[0]["best"]       # the schemes draw different populations

"""Ray for real: a local cluster, actor-count determinism, a lost actor, impossible resources."""

import dataclasses
import os
import threading
import time

import pytest
import ray
import torch


from mlflow.tracking import MlflowClient

from evoplast.evaluation import Evaluator
from evoplast.parallel.ray_pool import RayPool, RayUnavailable
from evoplast.runs.evolve import run_evolution

from .test_evolution import TINY
from .conftest import small_config

pytestmark = pytest.mark.slow          # every test here uses the module's local Ray


@pytest.fixture(scope="module")
def local_ray():
    """A throwaway local Ray (2 CPUs, no dashboard), stopped through the API at the end. ``address="local"``:
    a new one even while another test process's cluster runs on this machine (pytest -n 2)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def test_same_fitness_history_with_0_1_2_actors(local_ray, store, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)      # the module's Ray has 2 CPUs, whatever the machine
    runs = {}
    lines = {}
    # 'auto': no cluster to join -> in-process; "auto, ray.address=''": a private local Ray, here the
    # module's (2 CPUs) -> one actor of 2 CPUs
    for actors, extra in ((0, []), (1, []), (2, []), ("auto", []), ("auto-local", ["ray.address=''"])):
        cfg = small_config(TINY + ["search.generations=6", f"ray.num_actors={str(actors)[:4]}"] + extra)
        lines[actors] = []
        runs[actors] = run_evolution(cfg, out=lines[actors].append)
        lines[actors] = [line for line in lines[actors] if line.startswith("evoplast: run ")]   # the first line
    assert lines["auto"][0].endswith("in-process on cpu, 1 thread (no Ray cluster; 2 cores)") or "light work" in lines["auto"][0]
    assert lines["auto-local"][0].endswith("local Ray: 1 Ray actors x 2 CPU (ray.address='': 2 cores)"), lines["auto-local"][0]
    assert lines[2][0].endswith("local Ray: 2 Ray actors x 1 CPU (ray.num_actors=2, no Ray cluster)"), lines[2][0]
    ref = runs[0]
    # where a generation's time went, in MLflow: per actor and critical path on Ray, the driver's sampling always
    client = MlflowClient(store)          # not the process-wide URI: an earlier test may have set mlflow's
    ray_metrics = client.get_run(runs[2].run_id).data.metrics
    for key in ("sample", "evaluate", "transfer"):
        assert len(client.get_metric_history(runs[2].run_id, f"speed/{key}_s")) == 6
        assert 0 <= ray_metrics[f"speed/{key}_max_s"] <= ray_metrics[f"speed/{key}_s"]
    assert ray_metrics["speed/evaluate_s"] > 0 and ray_metrics["speed/sample_s"] > 0
    assert ray_metrics["speed/chunks"] == 4 and 0 < ray_metrics["speed/bytes_sent"] <= 3 * Evaluator(
        small_config(TINY)).spec.dim * 4     # PGPE: a recipe of mu and sigma; 2 actors x 2 chunks of 16 lifetimes
    assert 0 <= ray_metrics["speed/straggler_wait_s"] <= ray_metrics["speed/evaluate_wall_s"]
    local = client.get_run(runs[0].run_id).data.metrics
    assert local["speed/sample_driver_s"] > 0 and "speed/evaluate_s" not in local
    for actors in (1, 2, "auto", "auto-local"):
        # tolerance: exact. Each genome's lifetime is computed alone in its slice of the batch, with the
        # same kernels whatever the slice size, so the fitness bits do not depend on the split.
        assert [h["best"] for h in runs[actors].history] == [h["best"] for h in ref.history]
        assert [h["median"] for h in runs[actors].history] == [h["median"] for h in ref.history]
        assert torch.equal(runs[actors].center, ref.center)


def test_lost_actor_mid_generation_is_replaced_and_its_slice_evaluated_again(local_ray):
    cfg = small_config(["network.hidden=[128,128]", "task.batches_per_task=80", "search.popsize=16",
                             "evaluation.episodes=8", "ray.num_actors=2"])
    events = []
    pool = RayPool(cfg, on_event=lambda kind, details: events.append(kind))
    try:
        spec = Evaluator(cfg).spec
        genomes = spec.initial_vector() + 0.01 * torch.randn(16, spec.dim, generator=torch.Generator().manual_seed(0))
        # the reference: the same generation without a loss (that it equals the in-process fitness is
        # test_same_fitness_history_with_0_1_2_actors's); the kill is timed from it (in-process time says little
        # about the actors': on a busy 2-core machine a 2-thread process can be 50x slower than two 1-thread actors)
        t0 = time.perf_counter()
        expected, _ = pool.evaluate(genomes, 3)
        seconds = time.perf_counter() - t0
        print(f"reference generation: {seconds:.2f} s")
        assert seconds > 0.5, "the workload is too light to kill an actor in the middle of it"
        victim = pool.actors[0]
        killer = threading.Timer(seconds / 4, lambda: ray.kill(victim, no_restart=True))
        killer.start()
        t0 = time.perf_counter()
        fitness, _ = pool.evaluate(genomes, 3)
        killer.join()
        assert "actor_lost" in events and "actor_replaced" in events, events
        torch.testing.assert_close(fitness, expected, rtol=0, atol=0)
        assert time.perf_counter() - t0 < 120
        # the replacement keeps serving later generations
        again, _ = pool.evaluate(genomes, 3)
        assert torch.equal(again, expected)
    finally:
        pool.shutdown()


@pytest.mark.parametrize("algorithm", ["pgpe", "snes"])
def test_actors_regenerate_their_slices_from_the_recipe(local_ray, algorithm):
    """PGPE / SNES: the actors get the search distribution and the seed (O(D)), not the genomes (O(P*D)),
    and the fitness is the in-process fitness, bit for bit, over several generations."""
    from evoplast.trainers.es import ESTrainer

    cfg = small_config(TINY + [f"search.algorithm={algorithm}", "search.popsize=16", "ray.num_actors=2"])
    ev = Evaluator(cfg)
    pool = RayPool(cfg)
    sent = []

    def evaluate(genomes, generation, recipe=None):
        fitness, nonfinite = pool.evaluate(genomes, generation, recipe=recipe)
        expected, _ = ev.fitness(genomes, generation)
        assert torch.equal(fitness, expected)
        sent.append(dict(pool.last_bytes))
        return fitness, nonfinite

    try:
        trainer = ESTrainer(cfg, ev.spec.initial_vector(), evaluate, recipes=True)
        for _ in range(3):
            trainer.step()
    finally:
        pool.shutdown()
    d = ev.spec.dim
    assert sent == [{"recipe": 2 * d * 4, "genomes": 0}] * 3, (sent, d)    # mu and sigma, float32
    assert pool.use_recipes


def test_chunks_of_any_count_give_the_in_process_fitness_and_a_slow_actor_takes_fewer(local_ray):
    """1, 2 or 3 chunks per actor: the same fitness as in-process, bit for bit (PGPE and separable CMA-ES,
    sampled by the actors from the recipe); with actor 0 made 4x slower, actor 1 evaluates more chunks."""
    from evoplast.trainers.es import ESTrainer

    cfg = small_config(TINY + ["search.popsize=12", "ray.num_actors=2", "ray.num_cpus_per_actor=0.5"])  # 2 pools, 2 CPUs
    ev = Evaluator(cfg)
    pools = {n: RayPool(cfg.replace(**{"ray.chunks_per_actor": n})) for n in (1, 3)}
    slow = pools[3]
    counts = {}
    last = {}

    def evaluate(genomes, generation, recipe=None):
        last.update(genomes=genomes.clone(), generation=generation, recipe=recipe)
        expected, _ = ev.fitness(genomes, generation)
        for n, pool in pools.items():
            fitness, _ = pool.evaluate(genomes, generation, recipe=recipe)
            assert torch.equal(fitness, expected), n
            assert pool.last_bytes["genomes"] == 0 and pool.last_timing["chunks"] == 2 * n
            counts[n] = pool.last_chunks
        return expected, torch.zeros(len(genomes), dtype=torch.bool)

    try:
        pgpe = ESTrainer(cfg, ev.spec.initial_vector(), evaluate, recipes=True)
        cmaes = ESTrainer(cfg.replace(**{"search.algorithm": "cmaes"}), ev.spec.initial_vector(), evaluate,
                                 recipes=True)
        for trainer in (pgpe, cmaes, cmaes):
            trainer.step()
        # real fitness, plus 50 ms per genome (the tiny lifetimes take ~1 ms), actor 0 four times as long
        ray.get([slow.actors[0].simulate.remote(0.05, 4.0, True), slow.actors[1].simulate.remote(0.05, 1.0, True)])
        pgpe.step()
        assert counts[1] == [1, 1] and sum(counts[3]) == 6 and counts[3][1] > counts[3][0], counts
        # two chunks per actor, split in the middle of PGPE pairs: still the same fitness
        pools.pop(1).shutdown()
        pools[2] = RayPool(cfg.replace(**{"ray.chunks_per_actor": 2}))
        pgpe.step()
        # a recipe that does not describe the genomes (another seed): every chunk's checksum differs, the
        # chunks are evaluated again from the genomes, recipes are turned off
        events = []
        pools[2].on_event = lambda kind, details: events.append(kind)
        wrong = dataclasses.replace(last["recipe"], seed=last["recipe"].seed + 1)
        fitness, _ = pools[2].evaluate(last["genomes"], last["generation"], recipe=wrong)
        assert torch.equal(fitness, ev.fitness(last["genomes"], last["generation"])[0])
        assert events.count("recipe_mismatch") == 4 and not pools[2].use_recipes
        assert pools[2].last_bytes["genomes"] == last["genomes"].numel() * 4
    finally:
        for pool in pools.values():
            pool.shutdown()


def test_impossible_resources_fail_fast_with_one_line(local_ray):
    cfg = small_config(TINY + ["ray.num_actors=1", "ray.num_gpus_per_actor=4"])
    t0 = time.perf_counter()
    with pytest.raises(RayUnavailable) as info:
        RayPool(cfg)
    assert "ray.num_gpus_per_actor=4" in str(info.value) and "\n" not in str(info.value)
    assert time.perf_counter() - t0 < 10


def test_actors_that_cannot_be_placed_give_up_in_bounded_time(local_ray):
    cfg = small_config(TINY + ["ray.num_actors=3", "ray.num_cpus_per_actor=2"])  # 2 CPUs in the cluster
    t0 = time.perf_counter()
    with pytest.raises(RayUnavailable, match=r"[23] of 3 Ray actors could not be placed within 2 s: no node has room "
                                             r"for an actor of 2 CPU"):
        RayPool(cfg, start_timeout=2)
    assert time.perf_counter() - t0 < 30
    # the actors that did start were given back: a feasible pool starts afterwards
    pool = RayPool(small_config(TINY + ["ray.num_actors=2"]), start_timeout=60)
    pool.shutdown()


def test_a_slice_that_keeps_losing_its_actor_stops_with_one_line(local_ray):
    from evoplast.parallel.ray_pool import ActorsLost

    cfg = small_config(TINY + ["ray.num_actors=2"])
    pool = RayPool(cfg, max_retries=0)
    try:
        ev = Evaluator(cfg)
        ray.kill(pool.actors[1], no_restart=True)
        with pytest.raises(ActorsLost, match=r"chunk \d of generation 0 lost its actor 1 times"):
            pool.evaluate(ev.spec.initial_vector().reshape(1, -1).repeat(4, 1), 0)
    finally:
        pool.shutdown()

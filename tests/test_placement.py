"""Where evaluation runs (``ray.num_actors: auto``): the decision from what is there, checked as pure
functions; then the entry point itself (``scripts/evolve.py``'s ``main``, in-process) with no cluster,
and on a real multi-node Ray on this machine whose nodes advertise GPUs (there is no CUDA here)."""

import json
import socket
import time

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from evoplast.config import load_config
from evoplast.parallel import placement as pl
from evoplast.parallel import ray_pool
from evoplast.parallel.ray_pool import START_DELAY_ENV, RayPool
from evoplast.parallel.recipes import PopulationRecipe, checksum, recipe_of

from . import scripts
from .conftest import REPO, small_config
from .test_evolution import TINY

NO_ENV: dict = {}


def cfg(*overrides: str):
    return small_config(["ray.num_actors=auto", *TINY, *overrides])   # placement decides


# ---------------------------------------------------------------------------------------------------
# the decision, as pure functions


def test_no_cluster_few_cores_or_light_work_runs_in_process():
    two = pl.choose(cfg(), gflop=1000.0, environ=NO_ENV, cpu_count=2)
    assert (two.where, two.num_actors, two.address) == ("in-process", 0, "")
    assert two.threads == 1      # a team of 2 OpenMP threads on a busy 2-core machine was 5x slower than 1
    assert two.reason == "no Ray cluster; 2 cores" and two.describe() == "in-process on cpu, 1 thread (no Ray cluster; 2 cores)"
    light = pl.choose(cfg(), gflop=0.5, environ=NO_ENV, cpu_count=64)
    assert light.where == "in-process" and "light work" in light.reason
    # several cores and heavy work: a private local Ray pays; one actor per 4 CPUs
    heavy = pl.choose(cfg(), gflop=100.0, environ=NO_ENV, cpu_count=16)
    assert (heavy.where, heavy.address, heavy.num_actors, heavy.num_cpus_per_actor) == ("local Ray", "local", 4, 4.0)
    assert light.threads == 0    # many cores: torch's own thread count
    # a process that sees a GPU evaluates on it
    gpu = pl.choose(cfg(), gflop=1.0, environ=NO_ENV, cpu_count=2, cuda=True)
    assert (gpu.where, gpu.device) == ("in-process", "cuda")


def test_a_cluster_is_joined_and_sized_from_its_nodes():
    env = {"RAY_ADDRESS": "10.0.1.23:6379"}
    joined = pl.choose(cfg(), gflop=0.1, environ=env, cpu_count=2)
    assert (joined.where, joined.address, joined.num_actors) == ("cluster", "10.0.1.23:6379", None)
    assert joined.reason == "joined via $RAY_ADDRESS"
    # cluster/aws.yaml: a head without CPUs for actors and 4 workers of 4 CPUs and 1 GPU
    head = {"Alive": True, "Resources": {"CPU": 0.0}}
    gpu_worker = {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}}
    dead = {"Alive": False, "Resources": {"CPU": 4.0, "GPU": 1.0}}
    sized = pl.size(joined, [head] + [gpu_worker] * 4 + [dead])
    assert (sized.num_actors, sized.num_gpus_per_actor, sized.num_cpus_per_actor, sized.device) == (4, 1.0, 1.0, "cuda")
    assert "one actor per GPU (4 GPUs)" in sized.describe()
    assert sized.params()["placement.num_actors"] == "4" and sized.params()["placement.where"] == "cluster"
    applied = sized.apply(cfg())
    assert (applied.ray.num_actors, applied.ray.num_gpus_per_actor, applied.ray.address) == (4, 1.0, "10.0.1.23:6379")
    # CPU-only nodes: one actor per 4 CPUs on each (a 2-CPU node holds one of 2 CPUs, and sets the size)
    cpu = pl.size(joined, [head, {"Resources": {"CPU": 8.0}}, {"Resources": {"CPU": 16.0}}])
    assert (cpu.num_actors, cpu.num_cpus_per_actor, cpu.num_gpus_per_actor) == (6, 4.0, 0.0)
    assert pl.size(joined, [{"Resources": {"CPU": 2.0}}] * 2).num_actors == 2
    with pytest.raises(ValueError, match="no node of the Ray cluster has a CPU or a GPU"):
        pl.size(joined, [head])


def test_explicit_settings_win():
    env = {"RAY_ADDRESS": "10.0.1.23:6379"}
    assert pl.choose(cfg("ray.num_actors=0"), gflop=1e6, environ=env, cpu_count=64).where == "in-process"
    three = pl.choose(cfg("ray.num_actors=3"), gflop=0.1, environ=env)
    assert (three.where, three.num_actors) == ("cluster", 3)
    assert pl.size(three, [{"Resources": {"GPU": 8.0}}]).num_actors == 3        # not resized
    private = pl.choose(cfg("ray.address=''"), gflop=0.1, environ=env, cpu_count=2)
    assert (private.where, private.address, private.num_actors, private.num_cpus_per_actor) == ("local Ray", "local", 1, 2.0)
    assert pl.choose(cfg("ray.address=''", "ray.num_actors=2"), gflop=0.1, environ=NO_ENV).num_actors == 2
    named = pl.choose(cfg("ray.address=auto"), gflop=0.1, environ=NO_ENV)
    assert (named.where, named.address, named.num_actors) == ("cluster", "auto", None)
    alone = pl.choose(cfg("ray.num_actors=2"), gflop=0.1, environ=NO_ENV, cpu_count=2)
    assert (alone.where, alone.num_actors) == ("local Ray", 2)


def test_a_cluster_started_on_this_node_is_found_and_a_stale_one_is_not(tmp_path):
    (tmp_path / "ray").mkdir()
    with socket.socket() as server:   # something answering where `ray start` said its GCS is
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}\n")
        assert pl.detect_cluster({"RAY_TMPDIR": str(tmp_path)}) == (f"127.0.0.1:{port}", "`ray start` on this node")
    assert pl.detect_cluster({"RAY_TMPDIR": str(tmp_path)}) == ("", "")       # closed: that cluster stopped
    assert pl.detect_cluster({"RAY_TMPDIR": str(tmp_path / "none")}) == ("", "")


def test_the_default_config_is_light_and_the_cluster_config_heavy():
    default = load_config(f"{REPO}/configs/default.yaml")
    cluster = load_config(f"{REPO}/configs/cluster.yaml")
    assert default.ray.num_actors == "auto" and default.ray.address is None
    assert pl.generation_gflop(default, (11, 40, 40, 1)) < pl.HEAVY_GFLOP
    assert pl.generation_gflop(cluster, (11, 300, 300, 1)) > 100 * pl.HEAVY_GFLOP


# ---------------------------------------------------------------------------------------------------
# populations as recipes


@pytest.mark.parametrize("algorithm", ["pgpe", "snes", "cem", "cmaes"])
def test_a_recipe_regenerates_the_population_bit_for_bit(algorithm):
    from evoplast.evaluation import Evaluator
    from evoplast.trainers.es import ESTrainer

    c = cfg(f"search.algorithm={algorithm}", "search.elite_ratio=0.5")
    ev = Evaluator(c)
    seen = []

    def evaluate(genomes, generation, recipe=None):
        assert isinstance(recipe, PopulationRecipe) and recipe.nbytes < genomes.numel() * 4
        seen.append(torch.equal(recipe.sample(), genomes) and checksum(recipe.sample()) == checksum(genomes))
        return ev.fitness(genomes, generation)

    trainer = ESTrainer(c, ev.spec.initial_vector(), evaluate, recipes=True)
    for _ in range(3):
        trainer.step()
    assert seen == [True] * 3
    assert checksum(torch.ones(2, 3)) != checksum(torch.ones(2, 3).index_put_((torch.tensor(1), torch.tensor(2)),
                                                                            torch.tensor(1.0000001)))


def test_searchers_without_an_o_d_recipe_send_genomes():
    from evoplast.evaluation import Evaluator
    from evoplast.trainers.es import ESTrainer

    for algorithm in ("cmaes", "xnes"):
        c = cfg(f"search.algorithm={algorithm}", "search.separable=false")
        trainer = ESTrainer(c, Evaluator(c).spec.initial_vector(), Evaluator(c).fitness, recipes=True)
        trainer.step()      # the in-process evaluate takes no recipe: it would fail if one were passed
        assert recipe_of(trainer.searcher, 8, 0) is None


@pytest.mark.parametrize("algorithm", ["pgpe", "snes", "cem", "cmaes"])
def test_rows_of_any_chunking_are_the_population_and_pairs_stay_pairs(algorithm, monkeypatch):
    """Row sampling: the rows of 1, 2 or 3 chunks (pair-splitting bounds included) are the driver's
    population, bit for bit; each actor draws only its rows; PGPE's antithetic rows stay +e/-e pairs."""
    from evoplast.evaluation import Evaluator
    from evoplast.parallel import rows
    from evoplast.trainers.es import ESTrainer

    c = cfg(f"search.algorithm={algorithm}", "search.popsize=12", "search.elite_ratio=0.5")
    ev = Evaluator(c)
    recipes, drawn = [], []

    def evaluate(genomes, generation, recipe=None):
        recipes.append((recipe, genomes.clone()))
        return ev.fitness(genomes, generation)

    trainer = ESTrainer(c, ev.spec.initial_vector(), evaluate, recipes=True)
    trainer.step()
    trainer.step()          # a moved distribution (sigma != its initial value)
    recipe, genomes = recipes[-1]
    assert recipe.scheme == rows.SCHEME and recipe.nbytes <= 3 * ev.spec.dim * 4     # O(D)
    real = rows.row_seed
    monkeypatch.setattr(rows, "row_seed", lambda key, r: drawn.append(r) or real(key, r))   # one per row drawn
    for bounds in ([0, 12], [0, 5, 12], [0, 3, 7, 12]):
        for a, b in zip(bounds, bounds[1:]):
            drawn.clear()
            part = recipe.sample(a, b)
            assert torch.equal(part, genomes[a:b]), (a, b)
            # each chunk draws only its own rows (PGPE: the directions of its rows, once each)
            assert 0 < len(drawn) <= b - a and len(set(drawn)) == len(drawn), (a, b, drawn)
    if algorithm == "pgpe":
        noise = rows.symmetric_rows(recipe.seed, 0, 12, ev.spec.dim)
        assert torch.equal(noise[0::2], -noise[1::2]) and not torch.equal(noise[0], noise[2])
        mu = recipe.parameters["mu"]
        torch.testing.assert_close(genomes[0::2] - mu, -(genomes[1::2] - mu), rtol=0, atol=1e-6)


def test_a_checkpoint_keeps_its_sampling_scheme():
    """A checkpoint records the scheme; one from before row sampling resumes with EvoTorch's own
    sampler (the population it would have drawn then); an unknown scheme is refused in one line."""
    from evoplast.evaluation import Evaluator
    from evoplast.parallel.recipes import POPULATION, sampling_of
    from evoplast.trainers.es import ESTrainer

    c = cfg("search.algorithm=pgpe", "search.popsize=8")
    ev = Evaluator(c)
    first = ESTrainer(c, ev.spec.initial_vector(), ev.fitness)
    first.step()
    state = first.state_dict()
    assert state["sampling"] == "rows-v1"
    old = dict(state)
    del old["sampling"]                              # as written before row sampling
    legacy = ESTrainer(c, ev.spec.initial_vector(), ev.fitness)
    legacy.load_state_dict(old)
    assert sampling_of(legacy.searcher) == POPULATION
    rows_run = ESTrainer(c, ev.spec.initial_vector(), ev.fitness)
    rows_run.load_state_dict(state)
    legacy.step()
    rows_run.step()
    a, b = legacy.population()[0], rows_run.population()[0]
    assert a.shape == b.shape and not torch.equal(a, b)      # the two schemes draw different populations
    assert legacy.state_dict()["sampling"] == POPULATION      # and it stays with its scheme
    with pytest.raises(ValueError, match="sampling scheme 'rows-v9' is unknown") as info:
        ESTrainer(c, ev.spec.initial_vector(), ev.fitness).load_state_dict(dict(state, sampling="rows-v9"))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------
# the entry point, in-process


def _evolve_main():
    return scripts.load("evolve").main


SHORT = ["--print-every", "1"] + TINY + ["search.generations=3", "tracking.gain_every=3"]


def _first_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("evoplast: run "))


def test_without_a_cluster_the_default_runs_in_process(store, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))          # no `ray start` address file either
    if ray.is_initialized():
        ray.shutdown()
    threads = torch.get_num_threads()
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert _evolve_main()(SHORT) == 0
    assert torch.get_num_threads() == threads          # the run's 1 thread was given back
    first = _first_line(capsys.readouterr().out)
    assert first.endswith("in-process on cpu, 1 thread (no Ray cluster; 2 cores)"), first
    run_id = first.split()[2]
    params = MlflowClient(store).get_run(run_id).data.params
    assert params["placement.where"] == "in-process" and params["ray.num_actors"] == "auto"
    assert params["placement.threads"] == "1" and params["placement.reason"] == "no Ray cluster; 2 cores"
    assert not ray.is_initialized()


# ---------------------------------------------------------------------------------------------------
# a multi-node Ray whose nodes advertise GPUs


@pytest.fixture(scope="module")
def gpu_nodes():
    """A head without resources (like cluster/aws.yaml's) and two workers of 2 CPUs and 1 advertised GPU
    each, on this machine; joined by the code under test through $RAY_ADDRESS. Stopped through the API."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        workers = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_evolve_joins_the_cluster_one_actor_per_gpu_with_cpu_fallback(gpu_nodes, store, monkeypatch, capsys):
    cluster, workers = gpu_nodes
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    main = _evolve_main()
    assert main(SHORT + ["ray.num_actors=0"]) == 0        # the reference: in-process, same seed
    alone = _first_line(capsys.readouterr().out).split()[2]
    assert main(SHORT) == 0
    out = capsys.readouterr().out
    first = _first_line(out)
    assert f"Ray cluster {cluster.address}: 2 Ray actors x 1 GPU + 1 CPU (joined via $RAY_ADDRESS; one actor per GPU (2 GPUs))" in first, first
    fallback = [line for line in out.splitlines() if "CPU fallback" in line]
    assert len(fallback) == 2 and all("assigned by Ray but no CUDA" in line for line in fallback), out
    run_id = first.split()[2]
    client = MlflowClient(store)
    run = client.get_run(run_id).data
    assert run.params["placement.where"] == "cluster" and run.params["placement.num_actors"] == "2"
    assert run.params["placement.num_gpus_per_actor"] == "1" and run.params["placement.address"] == cluster.address
    assert len(json.loads(run.tags["evoplast.gpu_fallback"])) == 2
    actors = [json.loads(run.tags[f"evoplast.actor.{i}"]) for i in range(2)]
    assert sorted(a["node_id"] for a in actors) == sorted(w.node_id for w in workers)
    assert all(a["device"] == "cpu" and "no CUDA" in a["fallback"] for a in actors)
    # the same history as in-process (PGPE: the actors regenerated their slices from the recipe)
    for key in ("search/best", "search/median", "search/worst"):
        assert ([m.value for m in client.get_metric_history(run_id, key)] ==
                [m.value for m in client.get_metric_history(alone, key)]), key
    assert client.get_run(run_id).data.metrics["heldout/loss"] == client.get_run(alone).data.metrics["heldout/loss"]


@pytest.mark.slow
def test_actors_slow_to_start_are_waited_for_and_said_to_be_starting(gpu_nodes, store, monkeypatch):
    cluster, _ = gpu_nodes
    monkeypatch.setenv(START_DELAY_ENV, "4.5")
    lines = []
    c = cfg(f"ray.address='{cluster.address}'", "ray.num_actors=2")
    from evoplast.parallel.ray_pool import init_ray

    init_ray(c.ray)
    t0 = time.perf_counter()
    # placement may take 3 s at most, but placed actors that start slowly are waited for past it
    pool = RayPool(c, start_timeout=3, progress=lines.append, progress_every=1)
    try:
        assert time.perf_counter() - t0 >= 4.5
        assert lines and all("placed and still starting" in line for line in lines), lines
        # placement itself (a worker process leased) can take a second or two on a busy machine, and then
        # a line says "waiting for a node"; past the placement timeout no line says so (the pool would
        # have given up), and the actors are still said to be starting
        late = [line for line in lines if int(line.split("(")[1].split(" s)")[0]) > 3]
        assert late and not any("waiting for a node" in line for line in late), lines
        assert "0 of 2 ready, 2 placed and still starting" in late[0], lines
    finally:
        pool.shutdown()
    # and the whole command: the run waits and finishes (a delay past the pool's time between progress lines,
    # so that a line is due however fast the machine imports)
    monkeypatch.setattr(ray_pool, "WAIT_LINE_SECONDS", 1.0)
    monkeypatch.setenv(START_DELAY_ENV, "2.5")
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    out = []
    from evoplast.runs.evolve import run_evolution

    result = run_evolution(load_config(f"{REPO}/configs/default.yaml", TINY + ["search.generations=2"]), out=out.append)
    assert result.status == "FINISHED" and result.generations == 2
    waiting = [line for line in out if line.startswith("evoplast: waiting for Ray actors")]
    assert waiting and "placed and still starting" in waiting[0], "\n".join(out)


@pytest.mark.slow
def test_an_impossible_request_fails_in_one_line_within_seconds(gpu_nodes, store, monkeypatch, capsys):
    from evoplast.cli import run_main

    cluster, _ = gpu_nodes
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    main = _evolve_main()
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(SHORT + ["ray.num_actors=1", "ray.num_gpus_per_actor=2"]))
    assert exit_info.value.code == 1 and time.perf_counter() - t0 < 15
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("evoplast")]   # MLflow logs its store's creation
    assert "Traceback" not in stderr and err == ["evoplast: error: ray.num_gpus_per_actor=2 but no node of the Ray cluster has more than 1 GPUs; "
                   "lower it or add GPU nodes"], err
    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert not experiments or not client.search_runs(experiments)      # no run left behind


def test_speed_metrics_and_the_progress_note_say_where_a_generation_went():
    from evoplast.parallel.ray_pool import speed_metrics, speed_note

    timing = {"wall": 1.0, "compute_max": 0.9, "sample_sum": 0.5, "sample_max": 0.2, "evaluate_sum": 2.4,
              "evaluate_max": 0.7, "transfer_sum": 0.04, "transfer_max": 0.01, "straggler_wait": 0.1,
              "chunks": 8.0, "actors_used": 4.0, "bytes": 753640.0}
    row = speed_metrics(timing, 1.6, 0.25)
    assert row["speed/driver_s"] == pytest.approx(0.6) and row["speed/sample_driver_s"] == 0.25
    assert (row["speed/evaluate_s"], row["speed/evaluate_max_s"], row["speed/straggler_wait_s"]) == (2.4, 0.7, 0.1)
    assert row["speed/bytes_sent"] == 753640.0 and row["speed/chunks"] == 8.0
    # terms under 5% of the generation (moving data: 0.01 s of 1.6) are left out of the line
    assert speed_note(timing, 1.6) == "eval 0.70 driver 0.60 sample 0.20 wait 0.10 s"
    assert speed_note({}, 1.6) == "" and speed_metrics({}, 1.6) == {}       # in-process: nothing (NaN dropped)

"""Running on a Ray cluster: the AWS launcher config, checked offline by Ray's own config code and by
evoplast's security rules; a real multi-node Ray on this machine (actors spread over the nodes, the
same fitness as one process, a worker node lost in the middle of a generation, resources that no node
has); and the GPU check script's answer where there is no CUDA."""

import copy
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from evoplast.config import RayConfig, load_config
from evoplast.parallel.ray_pool import RayUnavailable, init_ray
from evoplast.runs.evolve import run_evolution

from . import scripts
from .conftest import REPO, small_config
from .test_evolution import TINY, quiet

AWS_YAML = Path(REPO) / "cluster" / "aws.yaml"
CLUSTER_CONFIG = Path(REPO) / "configs" / "cluster.yaml"


def aws() -> dict:
    return yaml.safe_load(AWS_YAML.read_text())


def strings(node, path=""):
    """Every string in a YAML tree, with its dotted path: ``[(path, value)]``."""
    if isinstance(node, dict):
        return [item for k, v in node.items() for item in strings(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [item for i, v in enumerate(node) for item in strings(v, f"{path}[{i}]")]
    return [(path, node)] if isinstance(node, str) else []


def commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in cfg.get(k) or []]


# ---------------------------------------------------------------------------------------------------
# cluster/aws.yaml, offline


def test_aws_yaml_passes_rays_own_preparation_and_schema():
    """``ray up`` runs prepare_config and validate_config before it talks to AWS; both run offline.

    prepare_config merges Ray's AWS defaults (a YAML file inside the ray package), the shared setup
    commands and each node type's min/max workers; validate_config checks ray-schema.json and the node
    types. What ``ray up`` does next (the AWS provider's bootstrap_config: key pair, subnets, security
    group, IAM profile, AMI) calls AWS with credentials, so it is not run here.
    """
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = aws()
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws" and prepared["head_node_type"] == "head"
    assert prepared["available_node_types"]["head"]["max_workers"] == 0
    # our commands replace the defaults' (which install a Ray nightly wheel into an anaconda env)
    assert not any("ray-wheels" in c or "anaconda3" in c for c in commands(prepared))
    assert prepared["worker_setup_commands"] == raw["setup_commands"]
    # the validator is live: a misspelt key, or workers beyond the cluster's maximum, are refused
    typo = copy.deepcopy(prepared)
    typo["idle_timeout_minute"] = 5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(typo)
    crowded = copy.deepcopy(prepared)
    crowded["available_node_types"]["gpu"]["min_workers"] = crowded["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        validate_config(crowded)


def test_aws_yaml_opens_only_ssh_and_keeps_ray_token_auth():
    cfg = aws()
    # no rule of ours opens anything to the world (the YAML has no CIDR at all)
    for path, value in strings(cfg):
        assert "0.0.0.0/0" not in value and "::/0" not in value, path
    assert not cfg["provider"].get("security_group", {}).get("IpPermissions")
    # the inbound rules the launcher will create for the cluster's security group, computed by Ray's own
    # function: everything from the group itself, and from the world only SSH
    pytest.importorskip("boto3")  # ray's AWS module imports it (no call to AWS is made)
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    rules = _create_default_inbound_rules(["sg-cluster"], cfg["provider"].get("security_group", {})
                                          .get("IpPermissions", []))
    world = [r for r in rules if any(ip.get("CidrIp") == "0.0.0.0/0" for ip in r.get("IpRanges", []))
             or any(ip.get("CidrIpv6") == "::/0" for ip in r.get("Ipv6Ranges", []))]
    assert world and all((r["FromPort"], r["ToPort"], r["IpProtocol"]) == (22, 22, "tcp") for r in world), world
    assert any(r.get("UserIdGroupPairs") == [{"GroupId": "sg-cluster"}] for r in rules)

    cmds = commands(cfg)
    assert not any("0.0.0.0" in c for c in cmds), "a service binds every interface"
    # dashboard: off, or bound to the head's loopback (reached through `ray dashboard`'s SSH tunnel)
    head = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head
    hosts = re.findall(r"--dashboard-host[= ](\S+)", head)
    assert "--include-dashboard=false" in head or (hosts and set(hosts) <= {"127.0.0.1", "localhost"})
    # MLflow: on the head's private IP (or loopback), sqlite and artifacts on the head's disk
    mlflow = [c for c in cfg["head_start_ray_commands"] if "mlflow server" in c]
    assert len(mlflow) == 1
    host = re.search(r"--host\s+(\"[^\"]*\"|\S+)", mlflow[0]).group(1).strip('"')
    assert host in ("$(hostname -I | awk '{print $1}')", "127.0.0.1"), host
    assert "--port 5000" in mlflow[0] and "nohup" in mlflow[0]
    exported = [c for c in cfg["head_start_ray_commands"] if "MLFLOW_TRACKING_URI=" in c]
    assert len(exported) == 1 and f"MLFLOW_TRACKING_URI=http://{host}:5000" in exported[0]
    assert "--backend-store-uri sqlite:////home/ubuntu/" in mlflow[0]
    assert "--artifacts-destination /home/ubuntu/" in mlflow[0]
    # Ray token authentication stays on: never disabled, every node starts in token mode with the token
    assert not any("RAY_AUTH_MODE=disabled" in v for _, v in strings(cfg))
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_aws_yaml_installs_evoplast_on_gpu_workers_with_room_for_the_cluster_config():
    cfg = aws()
    assert cfg["file_mounts"]["~/evoplast"] == "."          # the checkout `ray up` is run from
    setup = cfg["setup_commands"]
    assert any(re.search(r"pip install .*-e ~/evoplast\b", c) for c in setup)
    torch_installs = [c for c in setup if re.search(r"pip install .*\btorch\b", c)]
    assert torch_installs and not any("whl/cpu" in c or "+cpu" in c for c in torch_installs)
    types = cfg["available_node_types"]
    gpu_types = {name: t for name, t in types.items()
                 if name != cfg["head_node_type"] and t.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu_types, "no worker node type has a GPU"
    assert types[cfg["head_node_type"]]["resources"].get("CPU") == 0    # no actor on the head
    run = load_config(CLUSTER_CONFIG)
    assert run.ray.address == "auto" and run.ray.num_gpus_per_actor >= 1 and run.ray.num_actors == "auto"
    for t in gpu_types.values():
        assert 0 < t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
        # one actor per GPU (ray.num_actors: auto), each with its CPU
        assert t["resources"]["CPU"] >= t["resources"]["GPU"] * run.ray.num_cpus_per_actor
        # a generation keeps every GPU busy: at least 512 lifetimes per GPU with every worker up (an H200
        # reached 0.84 of its plateau at 512 lifetimes of this model, 0.96 at 1,024: docs/cluster.md)
        gpus = t["resources"]["GPU"] * t["max_workers"]
        assert run.search.popsize * run.evaluation.episodes / gpus >= 512
    assert run.tracking.tracking_uri == ""      # the server's URI comes from $MLFLOW_TRACKING_URI


# ---------------------------------------------------------------------------------------------------
# scripts/gpu_check.py


def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_2():
    proc = subprocess.run([sys.executable, f"{REPO}/scripts/gpu_check.py"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device, nothing checked: "), lines
    assert "Traceback" not in proc.stderr


def _gpu_check():
    return scripts.load("gpu_check")


def test_gpu_check_reports_a_device_that_disagrees_and_exits_1(monkeypatch, capsys):
    """The comparison can fail: the device under test's eager evaluator (the one built with
    evaluation.cuda_graph=false) made 1% off, and every row says MISMATCH, the exit code is 1."""
    from evoplast.evaluation import Evaluator

    fitness = Evaluator.fitness

    def off_by_one_percent(self, genomes, generation):
        f, bad = fitness(self, genomes, generation)
        return (f * 1.01 if not self.cfg.evaluation.cuda_graph else f), bad

    monkeypatch.setattr(Evaluator, "fitness", off_by_one_percent)
    gpu_check = _gpu_check()
    monkeypatch.setattr(gpu_check, "correctness_configs", lambda quick: [
        ("hebb", None, gpu_check.QUICK_STREAM + ["network.hidden=[8]", "rule.name=hebb"], 4, 2)])
    results = {}
    assert gpu_check.check_correctness("cpu", True, results) is False
    (row,) = results["correctness"]
    assert not row["ok"] and row["rel_eager"] == pytest.approx(0.01, rel=1e-3) and row["rel_graph"] == 0
    assert "MISMATCH" in capsys.readouterr().out


def test_gpu_check_steps_run_on_the_cpu(tmp_path):
    """The check's own code, on the CPU with tiny shapes, in-process: every part runs and writes its
    tables (the CPU compared with itself agrees exactly; the test above shows a disagreement is caught)."""
    import json

    gpu_check = _gpu_check()
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = results["correctness"]
    assert len(rows) == 4 * 3 + 3                      # every rule x granularity, default, two paper-width
    assert all(r["ok"] and r["rel_eager"] == 0 and r["rel_graph"] == 0 for r in rows)
    assert all(r["learning_moves_loss"] > 0 for r in rows)       # the update did something in every config
    modes = {r["mode"]: r for r in results["throughput"]}
    assert set(modes) == {"eager", "tf32", "bf16"}
    eager = modes["eager"]
    assert eager["B"] == 16 and eager["lifetimes_per_s"] > 0 and eager["bmm_gflops"] > 0
    assert eager["flop_fraction"] == pytest.approx(eager["gflops"] / eager["bmm_gflops"], rel=1e-6)
    assert 0 < modes["bf16"]["loss_rel_error"] < 0.05 and modes["tf32"]["loss_rel_error"] == 0   # no TF32 on a CPU
    assert "| generation |" in (tmp_path / "gpu_check.md").read_text()


# ---------------------------------------------------------------------------------------------------
# a multi-node Ray on this machine


@pytest.fixture(scope="module")
def two_nodes():
    """A Ray cluster of three nodes on this machine, joined by address as ``ray.address`` does: a head
    with no CPUs (like cluster/aws.yaml's, so no actor lands there) and two workers of 2 CPUs each (room
    for a second actor when the other worker is lost). Started and stopped through Ray's API.

    The GCS checks a node's health every second instead of every 3 s (5 failed checks in a row mean
    dead; each check still waits Ray's default timeout for an answer, so a busy node is not taken for
    dead): a node that dies unannounced is declared dead in about 5 s instead of 15.
    """
    if ray.is_initialized():          # another module's Ray (tests/test_ray.py shuts its own down)
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}})
    try:
        workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
        cluster.wait_for_nodes()
        init_ray(RayConfig(address=cluster.address))      # evoplast's own join by host:port
        yield SimpleNamespace(cluster=cluster, workers=workers, address=cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()


def on_cluster(nodes, *extra: str, base: list[str] = TINY):
    return small_config(["ray.num_actors=auto", *base, f"ray.address='{nodes.address}'", *extra])


def actor_nodes(store_uri: str, run_id: str, actors: int) -> list[str]:
    """Node id of each evaluator actor, read back from the MLflow run's ``evoplast.actor.<i>`` tags."""
    tags = MlflowClient(store_uri).get_run(run_id).data.tags
    return [json.loads(tags[f"evoplast.actor.{i}"])["node_id"] for i in range(actors)]


FITNESS = ("best", "mean", "median", "worst")


@pytest.mark.slow
def test_actors_spread_over_both_workers_and_fitness_equals_one_process(two_nodes, store):
    alone = run_evolution(small_config(TINY + ["search.generations=6", "ray.num_actors=0"]), out=quiet)
    spread = run_evolution(on_cluster(two_nodes, "search.generations=6", "ray.num_actors=2"), out=quiet)
    assert sorted(actor_nodes(store, spread.run_id, 2)) == sorted(w.node_id for w in two_nodes.workers)
    # tolerance: exact, as for 0/1/2 local actors (tests/test_ray.py): each genome's lifetime does not
    # depend on which process, or node, computes it
    for key in FITNESS:
        assert [h[key] for h in spread.history] == [h[key] for h in alone.history], key
    assert torch.equal(spread.center, alone.center)
    assert spread.report["loss"] == alone.report["loss"]


@pytest.mark.slow
def test_resources_that_no_single_node_has_fail_fast_in_one_line(two_nodes, store):
    """4 CPUs in the cluster but 2 per node: an actor of 3 CPUs would wait forever; so would a GPU one."""
    for override, fragment in (("ray.num_cpus_per_actor=3", "ray.num_cpus_per_actor=3"),
                               ("ray.num_gpus_per_actor=1", "ray.num_gpus_per_actor=1")):
        t0 = time.perf_counter()
        with pytest.raises(RayUnavailable) as info:
            run_evolution(on_cluster(two_nodes, "ray.num_actors=1", override), out=quiet)
        message = str(info.value)
        assert fragment in message and "\n" not in message, message
        assert time.perf_counter() - t0 < 30
    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert not experiments or not client.search_runs(experiments)      # no run left behind


@pytest.mark.slow
def test_worker_node_lost_mid_generation(two_nodes, store):
    """A worker node dies without warning while its actor computes, as when a machine is lost: the
    actor's process and the node's raylet are killed at once. The generation completes on the surviving
    node, the fitness history is the uninterrupted run's, and the MLflow run records the loss and the
    replacement."""
    # oja on every layer of 11-128-128-1, 2,400 steps of 8: about 2 s per actor and generation on 1 thread
    heavy = on_cluster(two_nodes, "network.hidden=[128,128]", "task.batches_per_task=240", "search.popsize=16",
                       "evaluation.episodes=8", "search.generations=4", "tracking.gain_every=100",
                       "ray.num_actors=2", base=[])
    # uninterrupted, on both workers; stop_after skips the final held-out report (not compared here)
    whole = run_evolution(heavy, out=quiet, stop_after=2)
    seconds = min(h["seconds"] for h in whole.history)
    assert seconds > 1.0, f"a generation takes {seconds:.2f} s: too short to lose a node in the middle of it"

    cluster = two_nodes.cluster
    state = {}

    def watch(line: str) -> None:
        """Progress lines of the run: find actor 0's node once the run exists, kill it during generation 2."""
        started = re.match(r"evoplast: run (\w+) ", line)
        if started:
            state["run_id"] = started.group(1)
            node_id = actor_nodes(store, state["run_id"], 2)[0]
            state["victim"] = next(w for w in two_nodes.workers if w.node_id == node_id)
            state["survivor"] = next(w for w in two_nodes.workers if w.node_id != node_id)
            state["pid"] = json.loads(MlflowClient(store).get_run(state["run_id"]).data.tags["evoplast.actor.0"])["pid"]
        if line.startswith("gen    1/"):   # generation 1 done: generation 2 starts now
            state["killer"] = threading.Timer(seconds / 3, lose_node)
            state["killer"].start()

    def lose_node() -> None:
        os.kill(state["pid"], signal.SIGKILL)     # the actor's process (started by this test's Ray)
        cluster.remove_node(state["victim"], allow_graceful=False)

    # the module's last test: the lost worker is not added back (a test after this one would find one worker)
    hit = run_evolution(heavy, out=watch, stop_after=2)
    state["killer"].join()
    survivor = state["survivor"]
    assert hit.run_id == state["run_id"] and hit.generations == 2
    for key in FITNESS:
        assert [h[key] for h in hit.history] == [h[key] for h in whole.history], key
    assert torch.equal(hit.center, whole.center)
    # the MLflow run says what happened: actor 0 lost in generation index 1, replaced on the survivor
    tags = MlflowClient(store).get_run(hit.run_id).data.tags
    lost = [json.loads(v) for k, v in sorted(tags.items()) if k.startswith("evoplast.event.actor_lost.1.0.")]
    replaced = [json.loads(v) for k, v in tags.items() if k.startswith("evoplast.event.actor_replaced.1.0.")]
    assert lost and lost[0]["node_id"] == state["victim"].node_id, tags
    assert len(replaced) == 1 and replaced[0]["node_id"] == survivor.node_id, tags
    assert actor_nodes(store, hit.run_id, 2) == [survivor.node_id, survivor.node_id]

import os
import subprocess
import sys

import pytest

from evoplast.config import Config, ConfigError, flatten, from_dict, load_config, to_dict, to_yaml

from .conftest import REPO


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("network:\n  hidden: [16, 16]\nrule:\n  name: hebb\n")
    cfg = load_config(path, ["network.hidden=[64,64,64]", "rule.granularity=neuron", "search.stdev_init=0.2"])
    assert cfg.network.hidden == (64, 64, 64)
    assert cfg.rule.name == "hebb"          # from the YAML
    assert cfg.rule.granularity == "neuron"  # from the override
    assert cfg.search.stdev_init == 0.2
    assert cfg.task.num_tasks == 10          # default


def test_yaml_round_trip():
    cfg = load_config(None, ["network.hidden=[3,4]", "task.order=iid", "search.center_learning_rate=0.1"])
    import yaml

    assert from_dict(yaml.safe_load(to_yaml(cfg))) == cfg
    assert flatten(cfg)["network.hidden"] == [3, 4]
    assert from_dict(to_dict(cfg)) == cfg


def test_replace():
    cfg = Config().replace(**{"task.order": "iid", "network.hidden": (5,), "network.plastic_layers": [2], "seed": 3})
    assert cfg.task.order == "iid" and cfg.network.hidden == (5,) and cfg.network.plastic_layers == (2,)
    assert cfg.seed == 3 and Config().seed == 0                       # a copy; the original is unchanged
    with pytest.raises(ConfigError, match=r"^search.popsize=1 is invalid: must be >= 2$"):
        cfg.replace(**{"search.popsize": 1})                            # validated, not only copied
    with pytest.raises(ConfigError, match="did you mean 'search.popsize'"):
        cfg.replace(**{"search.popsiz": 8})
    assert cfg.ray.replace(num_actors=2).num_actors == 2
    with pytest.raises(Exception):
        cfg.seed = 4                                                    # frozen


def test_one_default():
    """load_config() with no file is configs/default.yaml: what the scripts, the README and the tests use."""
    cfg = load_config()
    assert load_config(f"{REPO}/configs/default.yaml") == cfg
    assert (cfg.search.algorithm, cfg.rule.name, cfg.network.plastic_layers) == ("pgpe", "hebb", (3,))
    assert (cfg.genome.evolve_init_weights, cfg.finetune.after_evolution, cfg.ray.num_actors) == (True, True, "auto")


def test_configs_pickle_and_compare():
    import pickle

    cfg = load_config(None, ["network.hidden=[3,4]"])
    assert pickle.loads(pickle.dumps(cfg)) == cfg and hash(pickle.loads(pickle.dumps(cfg))) == hash(cfg)
    assert cfg != load_config()


def test_term_names_match_the_rules():
    from evoplast.config import TERM_NAMES
    from evoplast.rules import TERMS

    assert tuple(TERMS) == TERM_NAMES


def test_reference_is_generated_and_committed(capsys):
    from evoplast.config import main, markdown, reference

    rows = reference()
    keys = [r[0] for r in rows]
    assert len(keys) == len(set(keys)) == len(flatten(load_config()))   # every key once
    assert ("search.popsize", "an integer >= 2 and <= 1,000,000", 32) == rows[keys.index("search.popsize")][:3]
    assert rows[keys.index("evaluation.chunk_size")][1] == "an integer >= 1 or null"
    with open(f"{REPO}/docs/configuration.md") as f:
        assert f.read() == markdown(), "regenerate: python -m evoplast.config --markdown > docs/configuration.md"
    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(keys) and lines[keys.index("rule.name")].startswith("rule.name = hebb  (one of 'hebb'")


def test_cli_and_config_import_nothing_heavy():
    code = ("import sys, evoplast.cli, evoplast.config; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'mlflow', 'evotorch', 'numpy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": REPO}, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("override, fragments", [
    (["network.hiden=64"], ["unknown key 'network.hiden'", "did you mean 'network.hidden'"]),
    (["network.width=64"], ["unknown key 'network.width'", "known keys in network: hidden"]),
    (["netwrk.hidden=[4]"], ["unknown key 'netwrk'"]),
    (["rule.name=ojaa"], ["rule.name='ojaa'", "one of 'hebb', 'oja', 'abcd', 'terms'", "did you mean 'oja'"]),
    (["task.num_tasks=ten"], ["task.num_tasks='ten'", "expected an integer"]),
    (["task.num_tasks=0"], ["task.num_tasks=0", "must be >= 1"]),
    (["search.stdev_init=0"], ["search.stdev_init=0", "must be > 0"]),
    (["search.stdev_init=-1"], ["must be > 0"]),
    (["genome.evolve_init_weights=yes please"], ["genome.evolve_init_weights", "true or false"]),
    (["network.hidden=[4,0]"], ["network.hidden[1]=0", "must be >= 1"]),
    (["task.amplitude=[5,1]"], ["task.amplitude=[5, 1]", "low < high"]),
    (["network.plastic_layers=[7]"], ["network.plastic_layers contains 7", "layers 1..3"]),
    (["rule.terms=[hebb,magic]"], ["rule.terms[1]='magic'", "one of 'hebb', 'error_hebb'"]),
    (["search.elite_ratio=1.5"], ["search.elite_ratio=1.5", "must be <= 1"]),
    (["hidden"], ["override 'hidden' is not of the form key=value"]),
    (["search.distributed=true"], ["unknown key 'search.distributed'"]),
    (["evaluation.chunk_size=0"], ["evaluation.chunk_size=0", "write null"]),
    (["finetune.bptt_window=0"], ["finetune.bptt_window=0", "write null"]),
    (["task.output_classes=0"], ["task.output_classes=0", "write null"]),
    (["finetune.after_evolution_steps=0"], ["finetune.after_evolution_steps=0", "write null"]),
    (["ray.num_actors=-1"], ["ray.num_actors=-1", "expected 'auto' or an integer >= 0"]),
    (["task.num_tasks=true"], ["task.num_tasks=True", "expected an integer"]),
    (["search.stdev_init=.nan"], ["search.stdev_init=nan", "expected a finite number"]),
    (["task=3"], ["task must be a mapping of keys, got 3"]),
    (["network.hidden=[64]"], ["network.plastic_layers contains 3", "layers 1..2"]),
])
def test_bad_values_give_one_line(override, fragments):
    with pytest.raises(ConfigError) as info:
        load_config(None, override)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("network: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listy)


def test_every_shipped_config_loads():
    import glob

    paths = glob.glob(f"{REPO}/configs/*.yaml")
    assert paths
    for path in paths:
        load_config(path)


@pytest.mark.parametrize("args, fragment", [
    (["rule.name=ojaa"], "rule.name='ojaa'"),
    (["--config", "configs/nope.yaml"], "does not exist"),
    (["--no-such-flag"], "unrecognized arguments"),
])
def test_script_bad_input_exits_2_with_one_line(args, fragment, tmp_path):
    proc = subprocess.run([sys.executable, f"{REPO}/scripts/evolve.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("evoplast: error:") and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m.db").exists()  # no MLflow run left behind


def test_configs_stored_by_an_older_evoplast_still_load():
    """Runs and checkpoints written before null replaced 0 (and before search.distributed went) stay readable."""
    from evoplast.config import upgrade

    old = to_dict(load_config())
    old["search"]["distributed"] = False
    old["evaluation"]["chunk_size"] = old["finetune"]["bptt_window"] = old["task"]["output_classes"] = 0
    old["finetune"]["after_evolution_steps"] = 0
    with pytest.raises(ConfigError, match="task.output_classes=0 is invalid: 0 no longer means all/off/the same"):
        from_dict(old)
    assert from_dict(upgrade(old)) == load_config(None, ["finetune.after_evolution_steps=null"])   # 0 meant "= steps"
    assert old["search"]["distributed"] is False                       # upgrade copies
    old["search"]["distributed"] = True                                # a run that really used it: refused
    with pytest.raises(ConfigError, match="unknown key 'search.distributed'"):
        from_dict(upgrade(old))

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
    cfg = Config().replace(**{"task.order": "iid", "network.hidden": (5,)})
    assert cfg.task.order == "iid" and cfg.network.hidden == (5,)


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
    (["rule.terms=[hebb,magic]"], ["rule.terms contains 'magic'"]),
    (["search.elite_ratio=1.5"], ["search.elite_ratio=1.5", "must be <= 1"]),
    (["hidden"], ["override 'hidden' is not of the form key=value"]),
    (["search.distributed=true"], ["search.distributed=true", "cmaes"]),
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

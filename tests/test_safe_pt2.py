"""Received rule files cannot run code: crafted files are refused in one line, and nothing in them runs.

The corpus (``tests/pt2_craft.py``) is built from a genuine export: one file per class of attack (pickles
in every place torch unpickles, strings torch turns into code, the zip read two ways, resources at load and
at call, rule data inconsistent with itself). ``load_rule`` refuses every one of them (it reads a rule as
data and never calls torch's loader); ``check_pt2`` refuses every one that torch would read. For the live
routes the test also shows that plain ``torch.export.load`` does run the payload, so the file really is an
attack and the test can fail.
"""

import ast
import io
import os
import zipfile

import pytest
import torch

from evoplast.export import RuleExportError, export_rule, load_rule
from evoplast.safe_pt2 import UnsafePt2, check_pt2, read_canonical_zip

from . import pt2_craft
from . import scripts
from .conftest import REPO
from .test_export import _genome

DATA_ONLY = pt2_craft.DATA_ONLY


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    cfg, ev, g = _genome()
    return export_rule(ev.spec.model, ev.spec.decode(g), tmp_path_factory.mktemp("good") / "rule.pt2")


def test_the_crafting_writer_lays_out_a_zip_exactly_as_torch_does(good):
    """The corpus reaches the checks behind the zip layer only if its writer is torch's layout, byte for byte."""
    data = good.read_bytes()
    assert pt2_craft.write_canonical(pt2_craft.entries_of(data)) == data
    assert [n.split("/", 1)[1] for n in read_canonical_zip(data)] == \
        [n.split("/", 1)[1] for n in zipfile.ZipFile(good).namelist()]


@pytest.mark.parametrize("attack", list(pt2_craft.ATTACKS))
def test_crafted_file_is_refused_in_one_line_and_runs_nothing(tmp_path, good, attack):
    marker = tmp_path / "marker"
    path = tmp_path / "crafted.pt2"
    path.write_bytes(pt2_craft.ATTACKS[attack](good.read_bytes(), marker))
    with pytest.raises(RuleExportError) as info:
        load_rule(path)
    message = str(info.value)
    assert "refused, not loaded" in message and "\n" not in message, message
    if attack not in DATA_ONLY:
        with pytest.raises(UnsafePt2) as info:
            check_pt2(path)
        assert "\n" not in str(info.value), str(info.value)
    else:
        check_pt2(path)                        # torch never reads these entries: nothing for it to refuse
    assert not marker.exists()


# (attack, what the one-line refusal names, what plain torch must do for the payload to run)
LIVE = {
    "pickled sample inputs": ("pickled sample inputs", "load"),
    "pickled constant": ("constant 'c' is pickled", "load"),
    "opaque constant": ("opaque constant", "load"),
    "pickled weight": ("weight 'layer1.bias' is pickled", "load"),
    "sympy size": ("sympy evaluates it as Python", "load"),
    "forward argument names": ("is not an identifier", "module"),
}


@pytest.mark.parametrize("attack", list(LIVE))
def test_live_routes_run_their_payload_under_plain_torch(tmp_path, good, attack):
    fragment, trigger = LIVE[attack]
    marker = tmp_path / "marker"
    path = tmp_path / "crafted.pt2"
    path.write_bytes(pt2_craft.ATTACKS[attack](good.read_bytes(), marker))
    with pytest.raises(RuleExportError, match="refused, not loaded") as info:
        load_rule(path)
    assert fragment in str(info.value), str(info.value)
    assert not marker.exists()
    try:
        torch.export.load(path).module()
    except Exception:
        pass
    assert marker.exists(), f"the crafted {attack} file did not run its payload under torch.export.load"


def test_stack_traces_of_printable_text_pass(good):
    """Files exported before evoplast stripped stack traces carry one per node; printable lines still pass."""
    def add(doc):
        for node in pt2_craft.nodes(doc):
            node.setdefault("metadata", {})["stack_trace"] = 'File "/home/u/evoplast/export.py", line 90, in forward\n' \
                                                             "    return y_hat, torch.cat([w.reshape(n, -1)])"
    data = pt2_craft.edit(good.read_bytes(), lambda e: pt2_craft.edit_json(e, "models/model.json", add))
    check_pt2(data)
    path = good.with_name("traced.pt2")
    path.write_bytes(data)
    assert load_rule(path)[1]["rule"] == "oja"


def test_version_1_manifest_loads_with_its_granularity_read_off_the_coefficients(good):
    """Version 1 wrote no granularity and one feedback activation: the rule is still rebuilt exactly."""
    def v1(doc):
        doc["version"] = 1
        doc.pop("granularity")
        doc["feedback_activation"] = doc.pop("hidden_feedback_activation")
    path = good.with_name("v1.pt2")
    path.write_bytes(pt2_craft.edit(good.read_bytes(), lambda e: pt2_craft.edit_json(e, "extra/evoplast.json", v1)))
    old, _ = load_rule(path)
    new, _ = load_rule(good)
    state = new.get_buffer("initial_state").expand(2, -1).clone()
    x, y = torch.randn(2, 3, 4), torch.randn(2, 3, 1)
    assert all(torch.equal(a, b) for a, b in zip(old(state, x, y), new(state, x, y)))


def test_check_rule_script_answers_one_line_per_file(tmp_path, good, capsys):
    """scripts/check_rule.py: a genuine rule and its .safetensors twin pass (exit 0); a crafted file is one
    line and exit 2, and nothing in it runs."""
    from evoplast.export import data_path

    assert scripts.run("check_rule", [str(good), str(data_path(good))]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all("a oja rule on layers" in line for line in out), out
    marker = tmp_path / "marker"
    crafted = tmp_path / "crafted.pt2"
    crafted.write_bytes(pt2_craft.ATTACKS["sympy size"](good.read_bytes(), marker))
    assert scripts.run("check_rule", [str(good), str(crafted)]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "refused, not loaded" in err and "sympy" in err, err
    assert not marker.exists()


def test_evoplast_file_passes_and_holds_no_pickle(tmp_path, good):
    check_pt2(good)
    entries = {n.split("/", 1)[1]: len(v) for n, v in read_canonical_zip(good.read_bytes()).items()}
    assert entries.get("data/sample_inputs/model.pt", 0) == 0
    assert not any(n.endswith((".pkl", ".pt")) and size for n, size in entries.items()), entries
    step, manifest = load_rule(good)
    state = step.get_buffer("initial_state").expand(3, -1).clone()
    y_hat, new = step(state, torch.randn(3, 5, 4), torch.randn(3, 5, 1))
    assert y_hat.shape == (3, 5, 1) and new.shape == state.shape
    # a checked file loads with plain torch from the same bytes
    torch.export.load(io.BytesIO(good.read_bytes())).module()


def test_checker_needs_only_the_standard_library():
    import evoplast.safe_pt2 as mod

    tree = ast.parse(open(mod.__file__).read())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "binascii", "json", "keyword", "re", "struct"}, imported


def test_conv_classification_terms_file_passes(tmp_path):
    """The widest file evoplast writes (frozen conv stack, 'terms' with pseudo-gradients, per synapse, guards
    with 'or') passes the checker and loads."""
    from evoplast.config import load_config
    from evoplast.genome import build_genome_spec
    from evoplast.tasks import make_task

    cfg = load_config(os.path.join(REPO, "configs", "glyphs.yaml"), [
        "network.features=conv", "network.conv_channels=[4,4]", "rule.granularity=synapse", "rule.name=terms",
        "rule.terms=[hebb,pseudo_grad,oja_subspace]", "network.plastic_layers=[1,2]"])
    task = make_task(cfg.task)
    spec = build_genome_spec(cfg, task.n_in, task.n_out, task.kind)
    path = export_rule(spec.model, spec.decode(spec.initial_vector()), tmp_path / "conv.pt2")
    check_pt2(path)
    step, manifest = load_rule(path)
    assert manifest["granularity"] == "synapse" and manifest["feedback_activation"] == {"layer1": "relu",
                                                                                          "layer2": "linear"}


def test_mlflow_model_is_the_checked_file(tmp_path, store, good):
    """mlflow.pytorch's pt2 format pickles the sample inputs (3,745 bytes here); the model scripts/export.py
    logs holds evoplast's own file instead, byte for byte, and MLflow loads it to the same step."""
    import mlflow
    import mlflow.pytorch

    from evoplast.export import RuleStep

    script = scripts.load("export")
    cfg, ev, g = _genome()
    reference = RuleStep(ev.spec.model, ev.spec.decode(g)).eval()
    step, manifest = load_rule(good)
    mlflow.set_tracking_uri(store)
    with mlflow.start_run():
        info = mlflow.models.Model.log(
            artifact_path=None, name="rule", flavor=script._same_file_flavor(good), pytorch_model=reference,
            serialization_format="pt2", input_example=tuple(t.numpy() for t in reference.example_inputs(n=2, m=3)),
            signature=script._signature(manifest), pip_requirements=["torch"])
    local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl"))
    logged = os.path.join(local, "data", "model.pt2")
    assert open(logged, "rb").read() == good.read_bytes()
    from evoplast.export import data_path

    twin = os.path.join(local, "data", "rule.safetensors")           # the registry carries the rule as data too
    assert open(twin, "rb").read() == data_path(good).read_bytes() and load_rule(twin)[1] == manifest
    model = mlflow.pytorch.load_model(info.model_uri)
    state = step.get_buffer("initial_state").expand(2, -1).clone()
    x, y = torch.randn(2, 3, 4), torch.randn(2, 3, 1)
    for a, b in zip(model(state, x, y), step(state, x, y)):
        torch.testing.assert_close(a, b)

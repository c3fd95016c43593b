"""Received rule files cannot run code: crafted .pt2 files are refused in one line, before torch reads them.

Each crafted file is a real evoplast export with one entry changed so that ``torch.export.load`` (or the
``.module()`` / first call a user makes next) would create a marker file. The test first shows that
evoplast and the standard-library checker refuse it with the marker absent, then that plain torch does
run the payload (so the file really is an attack, and the test can fail).
"""

import ast
import io
import json
import os
import pickle
import zipfile

import pytest
import torch

from evoplast.export import RuleExportError, export_rule, load_rule
from evoplast.safe_pt2 import UnsafePt2, check_pt2

from . import scripts
from .conftest import REPO
from .test_export import _genome


class Payload:
    """Unpickling this creates ``path`` (what an attacker's file would do instead)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('pwned')",)


def _torch_pickle(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    cfg, ev, g = _genome()
    return export_rule(ev.spec.model, ev.spec.decode(g), tmp_path_factory.mktemp("good") / "rule.pt2")


def _rewrite(good, out, edit):
    """Copy the archive ``good`` to ``out`` with ``edit(entries)`` applied to ``{relative name: bytes}``."""
    with zipfile.ZipFile(good) as z:
        root = z.namelist()[0].split("/")[0]
        entries = {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}
    edit(entries)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for rel, data in entries.items():
            z.writestr(f"{root}/{rel}", data)
    return out


def _edit_json(entries, rel, fn):
    doc = json.loads(entries[rel])
    fn(doc)
    entries[rel] = json.dumps(doc).encode()


def _sample_inputs(marker):
    def edit(e):
        e["data/sample_inputs/model.pt"] = _torch_pickle(((Payload(marker),), {}))
    return edit


def _pickled_constant(marker):
    def edit(e):
        e["data/constants/tensor_0"] = _torch_pickle(Payload(marker))
        _edit_json(e, "data/constants/model_constants_config.json", lambda d: d["config"].update(
            {"c": {"path_name": "tensor_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}))
    return edit


def _opaque_constant(marker):
    def edit(e):
        e["data/constants/opaque_obj_0"] = pickle.dumps(Payload(marker))
        _edit_json(e, "data/constants/model_constants_config.json", lambda d: d["config"].update(
            {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}))
    return edit


def _pickled_weight(marker):
    def edit(e):
        e["data/weights/weight_99"] = _torch_pickle(Payload(marker))

        def point(d):
            d["config"]["layer1.bias"].update(path_name="weight_99", use_pickle=True)
        _edit_json(e, "data/weights/model_weights_config.json", point)
    return edit


def _sympy_size(marker):
    def edit(e):
        text = e["models/model.json"].decode()
        old = "Symbol('s17', positive=True, integer=True)"
        new = f"Symbol('s17', positive=True, integer=True) + 0*open(r'{marker}', 'w').write('x')"
        assert old in text
        e["models/model.json"] = text.replace(json.dumps(old), json.dumps(new), 1).encode()
    return edit


def _arg_names(marker):
    def edit(e):
        def inject(d):
            sig = d["graph_module"]["module_call_graph"][0]["signature"]
            # the name lands twice in the generated source: in `def forward(..., NAME):` and in a list
            # `[..., NAME]`; a triple-quoted string spans from the first to the second, so the default
            # value after it (run when .module() compiles the code) opens the marker
            sig["forward_arg_names"][-1] = (f"y='''" f" + str(open(r'{marker}', 'w').write('x'))):\n"
                                            "    z = (([")
        _edit_json(e, "models/model.json", inject)
    return edit


def _guards(marker):
    """guards_code becomes Python source once the file has sample inputs, even weights_only-safe ones."""
    def edit(e):
        _edit_json(e, "models/model.json", lambda d: d["guards_code"].append(
            f"open(r'{marker}', 'w').write('x') > 0"))
        e["data/sample_inputs/model.pt"] = _torch_pickle(((torch.zeros(2, 204), torch.zeros(2, 3, 4),
                                                           torch.zeros(2, 3, 1)), {}))
    return edit


# (crafted file, what the one-line refusal names, what plain torch must do for the payload to run)
LIVE = {
    "sample inputs": (_sample_inputs, "pickled sample inputs", "load"),
    "use_pickle constant": (_pickled_constant, "constant 'c' is pickled", "load"),
    "opaque constant": (_opaque_constant, "opaque constant", "load"),
    "use_pickle weight": (_pickled_weight, "weight 'layer1.bias' is pickled", "load"),
    "sympy size": (_sympy_size, "sympy evaluates it as Python", "load"),
    "forward argument names": (_arg_names, "is not an identifier", "module"),
    "guards code, tensor sample inputs": (_guards, "pickled sample inputs", "call"),
}


@pytest.mark.parametrize("route", list(LIVE))
def test_crafted_file_is_refused_and_its_payload_never_runs(tmp_path, good, route):
    craft, fragment, trigger = LIVE[route]
    marker = tmp_path / "marker"
    path = _rewrite(good, tmp_path / "crafted.pt2", craft(marker))
    with pytest.raises(RuleExportError) as info:
        load_rule(path)
    message = str(info.value)
    assert "refused, not loaded" in message and fragment in message and "\n" not in message, message
    with pytest.raises(UnsafePt2):
        check_pt2(path)
    assert not marker.exists()
    # plain torch runs it: the crafted file is a real attack
    try:
        module = torch.export.load(path).module()
        if trigger == "call":
            state = module.get_buffer("initial_state").expand(2, -1).clone()
            module(state, torch.randn(2, 3, 4), torch.randn(2, 3, 1))
    except Exception:
        pass
    assert marker.exists(), f"the crafted {route} file did not run its payload under torch.export.load"


def _aoti(e):
    e["data/aotinductor/model/model.so"] = b"\x7fELF"


def _foreign_call(e):
    def edit(d):
        d["graph_module"]["graph"]["nodes"][0]["target"] = "torch.load"
    _edit_json(e, "models/model.json", edit)


def _enum_spec(e):
    def edit(d):
        sig = d["graph_module"]["module_call_graph"][0]["signature"]
        spec = json.loads(sig["out_spec"])
        spec[1]["context"] = json.dumps({"__enum__": True, "fqn": "antigravity:X", "name": "A"})
        sig["out_spec"] = json.dumps(spec)
    _edit_json(e, "models/model.json", edit)


def _guard_only(e):
    _edit_json(e, "models/model.json", lambda d: d["guards_code"].append("__import__('os').getpid() > 0"))


def _range_key(e):
    _edit_json(e, "models/model.json", lambda d: d["range_constraints"].update({"s1 + f()": {}}))


@pytest.mark.parametrize("craft, fragment", [
    (_aoti, "AOTInductor: compiled code"),
    (_guard_only, "is not a size comparison"),
    (_range_key, "not a symbol name"),
    (_foreign_call, "graph node calls 'torch.load', not an aten operator"),
    (_enum_spec, "not a list of keys"),
])
def test_other_code_routes_are_refused(tmp_path, good, craft, fragment):
    path = _rewrite(good, tmp_path / "crafted.pt2", craft)
    with pytest.raises(UnsafePt2) as info:
        check_pt2(path)
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_legacy_layout_is_refused(tmp_path):
    """torch 2.7's layout (entries at the top, a pickled serialized_example_inputs.pt) is loaded with
    weights_only=False as a fallback when the new reader fails."""
    path = tmp_path / "legacy.pt2"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("version", "8.20")
        z.writestr("serialized_exported_program.json", "{}")
        z.writestr("serialized_example_inputs.pt", pickle.dumps(Payload(tmp_path / "marker")))
    with pytest.raises(UnsafePt2, match="outside the archive's folder"):
        check_pt2(path)
    with pytest.raises(RuleExportError, match="refused, not loaded"):
        load_rule(path)
    assert not (tmp_path / "marker").exists()


def test_duplicate_entries_are_refused(tmp_path, good):
    out = tmp_path / "dup.pt2"
    with zipfile.ZipFile(good) as z, zipfile.ZipFile(out, "w") as w:
        for name in z.namelist():
            w.writestr(name, z.read(name))
        with pytest.warns(UserWarning):
            w.writestr(z.namelist()[0], b"")
    with pytest.raises(UnsafePt2, match="appears twice"):
        check_pt2(out)


def test_evoplast_file_passes_and_holds_no_pickle(tmp_path, good):
    check_pt2(good)
    with zipfile.ZipFile(good) as z:
        sizes = {n.split("/", 1)[1]: i.file_size for n, i in zip(z.namelist(), z.infolist())}
    assert sizes.get("data/sample_inputs/model.pt", 0) == 0
    assert not any(n.endswith((".pkl", ".pt")) and sizes[n] for n in sizes), sizes
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
    assert imported <= {"__future__", "json", "re", "zipfile"}, imported


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
    model = mlflow.pytorch.load_model(info.model_uri)
    state = step.get_buffer("initial_state").expand(2, -1).clone()
    x, y = torch.randn(2, 3, 4), torch.randn(2, 3, 1)
    for a, b in zip(model(state, x, y), step(state, x, y)):
        torch.testing.assert_close(a, b)

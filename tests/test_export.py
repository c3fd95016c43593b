"""Export: a .pt2 that replays evoplast's lifetime with torch alone; bad files; the MLflow model."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from mlflow.tracking import MlflowClient


from evoplast.evaluation import Evaluator
from evoplast.export import RuleExportError, export_rule, load_rule
from evoplast.learners import state_predict
from evoplast.lifetime import expand_params, run_lifetime
from evoplast.seeding import Purpose

from . import scripts
from .conftest import REPO, small_config
from .test_evolution import TINY, quiet

REPLAY = textwrap.dedent("""
    import sys
    sys.modules["evoplast"] = None            # evoplast cannot be imported here, whatever sys.path says
    try:
        import evoplast  # noqa: F401
        raise SystemExit("evoplast was importable")
    except ImportError:
        pass
    import io
    import torch
    from safe_pt2 import check_pt2            # the README's way: evoplast/safe_pt2.py copied next to the script
    data = torch.load(sys.argv[2], weights_only=True)
    received = io.BytesIO(open(sys.argv[1], "rb").read())
    check_pt2(received)
    step = torch.export.load(received).module()
    state = step.get_buffer("initial_state").unsqueeze(0).clone()       # reset: the initial weights
    steps = []
    for x, y in zip(data["x"], data["y"]):                             # the stream, one mini-batch at a time
        y_hat, state = step(state, x.unsqueeze(0), y.unsqueeze(0))
        steps.append(y_hat[0])
    query, _ = step(state, data["query"].unsqueeze(0), torch.zeros(1, data["query"].shape[0], 1))
    names = sorted(n for n, _ in step.named_buffers())
    torch.save({"steps": torch.stack(steps), "query": query[0], "names": names}, sys.argv[3])
""")


def _genome(*extra):
    cfg = small_config(TINY + ["network.plastic_layers=[]", "rule.name=oja", "rule.eta_scale=0.003", *extra])
    ev = Evaluator(cfg)
    g = ev.spec.initial_vector() + 0.05 * torch.randn(ev.spec.dim, generator=torch.Generator().manual_seed(3))
    return cfg, ev, g


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["oja", "abcd"])
def test_exported_file_replays_the_lifetime_without_evoplast(tmp_path, rule):
    cfg, ev, g = _genome(f"rule.name={rule}", "rule.granularity=neuron")
    segments = ev.spec.decode(g)
    path = export_rule(ev.spec.model, segments, tmp_path / "rule.pt2")
    eps = ev.episodes(Purpose.HELDOUT, 0, 1)
    # evoplast's own lifetime: predictions of every step, then of the query after the last step
    params = expand_params(ev.spec.decode(g.reshape(1, -1)), 1)
    state = ev.learner.init_state(params)
    own_steps = []
    with torch.no_grad():
        for t in range(eps.num_steps):
            state, y_hat = ev.learner.step_and_predict(params, state, eps.stream_x[:, t], eps.stream_y[:, t])
            own_steps.append(y_hat[0])
        final = run_lifetime(ev.learner, params, eps, 1).final
        own_query = state_predict(final, eps.query_x.reshape(1, -1, eps.n_in))[0]
    torch.save({"x": eps.stream_x[0], "y": eps.stream_y[0], "query": eps.query_x[0].reshape(-1, eps.n_in)},
               tmp_path / "stream.pt")
    shutil.copy(os.path.join(REPO, "evoplast", "safe_pt2.py"), tmp_path / "safe_pt2.py")
    proc = subprocess.run([sys.executable, "-c", REPLAY, str(path), str(tmp_path / "stream.pt"),
                           str(tmp_path / "out.pt")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    replay = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.isfinite(torch.stack(own_steps)).all()
    torch.testing.assert_close(replay["steps"], torch.stack(own_steps), rtol=0, atol=1e-5)
    torch.testing.assert_close(replay["query"], own_query, rtol=0, atol=1e-5)
    assert {"layer1.weight", "layer2.feedback", "layer3.eta", "layer3.beta"} <= set(replay["names"])


def test_exported_buffers_are_the_genome_and_reset_is_the_initial_weights(tmp_path):
    cfg, ev, g = _genome()
    segments = ev.spec.decode(g)
    step, manifest = load_rule(export_rule(ev.spec.model, segments, tmp_path / "r.pt2", note="x"))
    for name, value in segments.items():
        torch.testing.assert_close(step.get_buffer(name), value)
    layout = manifest["state_layout"]
    init = step.get_buffer("initial_state")
    for row in layout:
        n = row["shape"][0] * row["shape"][1]
        torch.testing.assert_close(init[row["offset"]:row["offset"] + n].reshape(row["shape"]), segments[row["name"]])
    assert manifest["note"] == "x" and manifest["rule"] == "oja"
    # a batch of learners and of rows works as well as one of each
    state = init.expand(4, -1).clone()
    y_hat, new = step(state, torch.randn(4, 7, cfg.task.num_tasks + 1), torch.randn(4, 7, 1))
    assert y_hat.shape == (4, 7, 1) and new.shape == state.shape and not torch.equal(new, state)


def _manifest_file(tmp_path, manifest):
    class Tiny(torch.nn.Module):
        def forward(self, x):
            return x + 1

    path = tmp_path / "other.pt2"
    program = torch.export.export(Tiny(), (torch.ones(2),))
    program.example_inputs = None                      # as evoplast writes: nothing pickled
    torch.export.save(program, path,
                      extra_files={"evoplast.json": json.dumps(manifest)} if manifest is not None else None)
    return path


def test_bad_export_files_give_one_line(tmp_path):
    cfg, ev, g = _genome()
    good = export_rule(ev.spec.model, ev.spec.decode(g), tmp_path / "good.pt2")
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"\x00" * 1000)
    cases = {
        truncated: "refused, not loaded: not a .pt2 archive as torch writes it: corrupt, truncated",
        garbage: "refused, not loaded: not a .pt2 archive as torch writes it: corrupt, truncated",
        tmp_path / "missing.pt2": "does not exist",
        _manifest_file(tmp_path, None): "not an evoplast rule",
    }
    newer = tmp_path / "newer"
    newer.mkdir()
    cases[_manifest_file(newer, {"format": "evoplast.rule", "version": 99})] = "incompatible evoplast (rule format version 99"
    plain = tmp_path / "plain.pt2"                     # torch.export.save as is pickles the sample inputs
    torch.export.save(torch.export.export(torch.nn.ReLU(), (torch.ones(2),)), plain)
    cases[plain] = "refused, not loaded: pickled sample inputs"
    cases[tmp_path] = "is a directory"
    for path, fragment in cases.items():
        with pytest.raises(RuleExportError) as info:
            load_rule(path)
        assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def _script(name, args, capsys):
    """``(exit code, stdout, stderr)`` of ``scripts/<name>.py args``, in this process."""
    code = scripts.run(name, args)
    out, err = capsys.readouterr()
    return code, out, err


def test_evolve_finetune_export_end_to_end_with_registry(store, capsys):
    code, out, err = _script("evolve", TINY + ["search.generations=20", "finetune.after_evolution=false"], capsys)
    assert code == 0, err[-2000:]
    run_id = out.split("MLflow run ")[1].split(":")[0]
    code, _, err = _script("export", ["--run-id", run_id, "--which", "finetuned", "--out", "r.pt2"], capsys)
    assert code == 1 and "has no finished fine-tune" in scripts.error_line(err), err[-2000:]
    code, out, err = _script("finetune", ["--run-id", run_id, "--top-k", "2", "finetune.steps=10"], capsys)
    assert code == 0, err[-2000:]
    assert "<- kept" in out and "population #1" in out
    runs = [_script("export", ["--run-id", run_id, "--out", "best.pt2"], capsys),
            _script("export", ["--run-id", run_id, "--which", "finetuned", "--out", "tuned.pt2", "--name", "my-rule"],
                    capsys),
            _script("export", ["--run-id", run_id, "--which", "finetuned", "--out", "tuned2.pt2", "--name", "my-rule"],
                    capsys)]
    for code, _, err in runs:
        assert code == 0, err[-2000:]
    first, third = runs[0][1], runs[2][1]
    assert "registered as 'evoplast-rule' version 1" in first
    assert "registered as 'my-rule' version 2" in third
    client = MlflowClient(store)
    versions = client.search_model_versions("name='my-rule'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    # the registered model loads through MLflow and computes the same step as the file
    import mlflow

    mlflow.set_tracking_uri(store)
    model = mlflow.pytorch.load_model("models:/my-rule/2")
    step, manifest = load_rule("tuned2.pt2")
    assert manifest["transforms_applied"]["layer3.beta"] == {"transform": "sigmoid", "scale": 1.0}
    assert manifest["granularity"] == "layer" and manifest["feedback_activation"]["layer3"] == "linear"
    state = step.get_buffer("initial_state").expand(2, -1).clone()
    x, y = torch.randn(2, 3, 4), torch.randn(2, 3, 1)
    for a, b in zip(model(state, x, y), step(state, x, y)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("args, fragment", [
    (["--run-id", "feedbeef", "--out", "r.pt2"], "run 'feedbeef': no MLflow store at sqlite:///"),
    (["--run-id", "x", "--out", "r.txt"], "should end in .pt2"),
])
def test_export_bad_input_is_one_line(tmp_path, monkeypatch, capsys, args, fragment):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = _script("export", args, capsys)
    assert code in (1, 2) and fragment in scripts.error_line(err), err
    assert not (tmp_path / "mlflow.db").exists()


def test_run_without_genomes_is_one_line(store, capsys):
    from evoplast.runs.evolve import run_evolution

    part = run_evolution(small_config(TINY + ["search.generations=10"]), out=quiet, stop_after=2)
    for script, extra in (("export", ["--out", "r.pt2"]), ("finetune", [])):
        code, _, err = _script(script, ["--run-id", part.run_id, *extra], capsys)
        assert code == 1 and "has no artifact 'best_genome.pt'" in scripts.error_line(err), err[-2000:]

"""The manifest is truthful: the step rebuilt from the manifest and the file's tensors alone (plain torch,
no evoplast) matches the exported file's step at every step of a lifetime."""

import pytest
import torch
import torch.nn.functional as F

from evoplast.export import export_rule, load_rule
from evoplast.network import ModelSpec
from evoplast.rules import coefficient_names


def rebuilt_step(manifest: dict, tensors: dict, state, x, y):
    """One step of the rule from ``manifest`` (a dict from JSON) and ``tensors`` (name -> tensor) only.

    state [N, S], x [N, m, n_in], y [N, m, n_out] or labels [N, m] -> (y_hat [N, m, n_out], new state [N, S]).
    Uses nothing but torch: this is what a reader of the manifest has to write.
    """
    n, m = x.shape[0], x.shape[1]
    layers = manifest["layers"]
    weights, counts = [], {}
    for row in manifest["state_layout"]:
        size = row["shape"][0] * (row["shape"][1] if len(row["shape"]) == 2 else 1)
        part = state[:, row["offset"]:row["offset"] + size].reshape(n, *row["shape"])
        if row["name"].endswith(".count"):
            counts[row["name"]] = part
        else:
            weights.append(part)
    hs, h = [x], x
    for l, (w, row) in enumerate(zip(weights, layers), start=1):
        a = h @ w.transpose(1, 2) + tensors[row["bias"]]
        h = torch.relu(a) if row["activation"] == "relu" else a
        hs.append(h)
    y_hat = hs[-1]
    n_out = manifest["sizes"][-1]
    if manifest["kind"] == "regression":
        s = y - y_hat if manifest["teaching_signal"] == "error" else y
    else:
        onehot = F.one_hot(y, n_out).to(y_hat.dtype)
        s = onehot - torch.softmax(y_hat, -1) if manifest["teaching_signal"] == "error" else onehot
    new = list(weights)
    for l, (w, row) in enumerate(zip(weights, layers), start=1):
        if not row["plastic"]:
            continue
        raw = s @ tensors[row["feedback"]].T                                 # [N, m, out]
        f = raw + tensors[row["feedback_bias"]]
        f = torch.relu(f) if row["feedback_activation"] == "relu" else f
        h_l, pre = hs[l], hs[l - 1]
        beta = tensors[row["beta"]]
        post = s if row["post"] == "teaching signal" else beta * f + (1 - beta) * h_l
        if manifest.get("gated"):
            post = post * torch.sigmoid(s @ tensors[row["gate"]].T + tensors[row["gate_bias"]])
        hebb = post.transpose(1, 2) @ pre                                    # [N, out, in]: sum over rows
        sq = (post * post).sum(1).unsqueeze(-1)                              # [N, out, 1]
        c = {k: tensors[v] for k, v in row["coefficients"].items()}
        if manifest.get("count_normalised"):
            count = counts[row["count"]] + sq.squeeze(-1)                      # [N, out]
            counts[row["count"]] = count
            total = tensors[row["count_offset"]].reshape(()) + count
            scale = torch.where(total > 0, 1 / total.clamp_min(1e-12), torch.zeros_like(total))
            key = "theta" if manifest["rule"] == "terms" else "eta"
            c[key] = c[key] * scale.unsqueeze(-1) if c[key].dim() == 2 else \
                (c[key] * scale[:, None, :, None]).transpose(0, 1)             # theta [R, N, out, b]
        rule = manifest["rule"]
        if rule == "hebb":
            dw = c["eta"] * hebb
        elif rule == "oja":
            dw = c["eta"] * (hebb - sq * w)
        elif rule == "abcd":
            dw = c["eta"] * (c["A"] * hebb + c["B"] * post.sum(1).unsqueeze(-1) + c["C"] * pre.sum(1).unsqueeze(1)
                             + c["D"] * m)
        else:
            is_output = row["activation"] == "none"
            terms = {"hebb": lambda: hebb, "error_hebb": lambda: (post - h_l).transpose(1, 2) @ pre,
                     "oja_decay": lambda: -sq * w, "oja_subspace": lambda: -(post.transpose(1, 2) @ post) @ w,
                     "pseudo_grad": lambda: (raw if is_output else raw * (h_l > 0)).transpose(1, 2) @ pre,
                     "decay": lambda: -w}
            dw = sum(c["theta"][r] * terms[t]() for r, t in enumerate(manifest["terms"]))
        if manifest["batch_reduction"] == "mean":
            dw = dw / m
        new[l - 1] = w + dw
    return y_hat, torch.cat([w.reshape(n, -1) for w in (*new, *counts.values())], dim=1)


def _segments(model: ModelSpec, granularity: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    seg = {}
    for l in range(1, model.num_layers + 1):
        out, inp = model.sizes[l], model.sizes[l - 1]
        seg[f"layer{l}.weight"] = torch.randn(out, inp, generator=g) / inp ** 0.5
        seg[f"layer{l}.bias"] = 0.1 * torch.randn(out, generator=g)
        if l in model.plastic_layers:
            shape = {"layer": (1, 1), "neuron": (out, 1), "synapse": (out, inp)}[granularity]
            seg[f"layer{l}.feedback"] = torch.randn(out, model.n_out, generator=g)
            seg[f"layer{l}.feedback_bias"] = 0.1 * torch.randn(out, generator=g)
            seg[f"layer{l}.beta"] = torch.rand(1, 1, generator=g)
            if model.count_normalised:
                seg[f"layer{l}.count_offset"] = torch.rand(1, 1, generator=g)
            if model.gated:
                seg[f"layer{l}.gate"] = torch.randn(out, model.n_out, generator=g)
                seg[f"layer{l}.gate_bias"] = torch.randn(out, generator=g)
            for c in coefficient_names(model.rule):
                if c == "theta":
                    seg[f"layer{l}.theta"] = 0.01 * torch.randn(len(model.terms), *shape, generator=g)
                elif c == "eta":
                    seg[f"layer{l}.eta"] = 0.01 * torch.rand(*shape, generator=g)
                else:
                    seg[f"layer{l}.{c}"] = torch.randn(*shape, generator=g)
    return seg


TERMS = ("hebb", "error_hebb", "oja_decay", "oja_subspace", "pseudo_grad", "decay")
MODELS = {
    "oja, every layer, relu feedback, per neuron": (ModelSpec((5, 7, 6, 1), (1, 2, 3), "oja"), "neuron"),
    "hebb, target signal, linear feedback": (ModelSpec((5, 7, 1), (1, 2), "hebb", teaching_signal="target",
                                                       feedback_activation="linear"), "layer"),
    "abcd, output only, per synapse": (ModelSpec((5, 7, 2), (2,), "abcd"), "synapse"),
    "terms, hidden only": (ModelSpec((5, 6, 4, 1), (1, 2), "terms", terms=TERMS), "neuron"),
    "classification, error signal": (ModelSpec((5, 8, 4), (1, 2), "oja", teaching_signal="error",
                                               kind="classification"), "neuron"),
    "classification, one-hot target": (ModelSpec((5, 8, 4), (1, 2), "hebb", kind="classification"), "layer"),
    "count-normalised oja, every layer, per neuron": (ModelSpec((5, 8, 4), (1, 2), "oja", kind="classification",
                                                               count_normalised=True), "neuron"),
    "count-normalised terms, regression": (ModelSpec((5, 6, 1), (1, 2), "terms", terms=TERMS,
                                                     count_normalised=True), "layer"),
    "gated oja, every layer, regression": (ModelSpec((5, 7, 6, 1), (1, 2, 3), "oja", gated=True), "neuron"),
    "gated and counted hebb, classification": (ModelSpec((5, 8, 4), (1, 2), "hebb", kind="classification",
                                                         count_normalised=True, gated=True), "layer"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_step_rebuilt_from_manifest_matches_the_file_over_a_lifetime(tmp_path, name):
    model, granularity = MODELS[name]
    step, manifest = load_rule(export_rule(model, _segments(model, granularity, 1), tmp_path / "r.pt2"))
    tensors = dict(step.named_buffers())
    assert manifest["granularity"] == granularity and manifest["batch_reduction"] == "sum"
    assert manifest["version"] == (3 if model.count_normalised or model.gated else 2)   # older readers refuse 3
    assert model.num_layers not in model.plastic_layers or \
        manifest["feedback_activation"][f"layer{model.num_layers}"] == "linear"
    g = torch.Generator().manual_seed(2)
    n, m, T = 3, 4, 40
    state_file = state_rebuilt = tensors["initial_state"].expand(n, -1).clone()
    for t in range(T):
        x = torch.rand(n, m, model.sizes[0], generator=g)
        y = torch.randint(0, model.n_out, (n, m), generator=g) if model.kind == "classification" else \
            torch.randn(n, m, model.n_out, generator=g)
        y_file, state_file = step(state_file, x, y)
        y_rebuilt, state_rebuilt = rebuilt_step(manifest, tensors, state_rebuilt, x, y)
        torch.testing.assert_close(y_rebuilt, y_file, rtol=1e-4, atol=1e-5, msg=f"{name}: y_hat at step {t}")
        torch.testing.assert_close(state_rebuilt, state_file, rtol=1e-4, atol=1e-5, msg=f"{name}: state at step {t}")
    changed = (state_file - tensors["initial_state"]).abs().max().item()
    assert torch.isfinite(state_file).all() and changed > 1e-3, changed   # the rule did learn something


def test_manifest_as_it_was_written_would_not_rebuild_the_step(tmp_path):
    """The test can fail: the old manifest (one 'relu' feedback activation for every layer, the output
    layer included) gives another step."""
    model, granularity = MODELS["oja, every layer, relu feedback, per neuron"]
    step, manifest = load_rule(export_rule(model, _segments(model, granularity, 1), tmp_path / "r.pt2"))
    tensors = dict(step.named_buffers())
    old = {**manifest, "layers": [{**r, "feedback_activation": "relu"} if r["plastic"] else r
                                  for r in manifest["layers"]]}
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(3, 4, 5, generator=g), torch.randn(3, 4, 1, generator=g) - 3
    state = tensors["initial_state"].expand(3, -1).clone()
    assert not torch.allclose(rebuilt_step(old, tensors, state, x, y)[1], step(state, x, y)[1], atol=1e-5)


def test_batch_reduction_field_follows_the_model(tmp_path):
    """'mean' (the other half of issue 11) divides the update by the rows m; the field reads the model's."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class MeanSpec(ModelSpec):
        batch_reduction: str = "mean"

    model = MeanSpec((5, 7, 1), (2,), "hebb")
    from evoplast.export import RuleStep, manifest_of

    module = RuleStep(model, _segments(model, "layer", 3))
    assert manifest_of(module)["batch_reduction"] == "mean"


@pytest.mark.parametrize("name", list(MODELS))
def test_rule_read_as_data_equals_torch_export_load_bit_for_bit(tmp_path, name):
    """load_rule never calls torch's loader; its step (evoplast's own, from the file's data) computes exactly
    what torch.export.load of the same file computes, step by step over a lifetime, from the .pt2 and from
    its .safetensors twin."""
    from evoplast.export import data_path

    model, granularity = MODELS[name]
    path = export_rule(model, _segments(model, granularity, 1), tmp_path / "r.pt2")
    program = torch.export.load(path).module()
    from_pt2, manifest = load_rule(path)
    from_data, manifest_data = load_rule(data_path(path))
    assert manifest_data == manifest and type(from_pt2).__name__ == "RuleStep"
    assert {n: b for n, b in from_pt2.named_buffers()}.keys() == {n: b for n, b in program.named_buffers()}.keys()
    g = torch.Generator().manual_seed(5)
    n, m = 3, 4
    states = [program.get_buffer("initial_state").expand(n, -1).clone() for _ in range(3)]
    for t in range(40):
        x = torch.rand(n, m, model.sizes[0], generator=g)
        y = torch.randint(0, model.n_out, (n, m), generator=g) if model.kind == "classification" else \
            torch.randn(n, m, model.n_out, generator=g)
        outs = [step(s, x, y) for step, s in zip((program, from_pt2, from_data), states)]
        for y_hat, new in outs[1:]:
            assert torch.equal(y_hat, outs[0][0]) and torch.equal(new, outs[0][1]), f"{name}: step {t}"
        states = [o[1] for o in outs]
    assert torch.isfinite(states[0]).all() and not torch.equal(states[0], program.get_buffer("initial_state").expand(n, -1))


def test_safetensors_twin_reads_with_the_safetensors_package(tmp_path):
    """Someone without evoplast reads the rule with ``safetensors`` + json (docs/safe_rule_files.md), and
    evoplast's strict reader reads a file the ``safetensors`` package wrote."""
    import json

    safetensors_torch = pytest.importorskip("safetensors.torch")
    from safetensors import safe_open

    from evoplast.export import data_path
    from evoplast.rule_data import read_safetensors

    model, granularity = MODELS["abcd, output only, per synapse"]
    path = export_rule(model, _segments(model, granularity, 6), tmp_path / "r.pt2")
    tensors = safetensors_torch.load_file(str(data_path(path)))
    with safe_open(str(data_path(path)), "pt") as f:
        manifest = json.loads(f.metadata()["evoplast"])
    step, ours = load_rule(path)
    assert manifest == ours and set(tensors) == {n for n, _ in step.named_buffers()}
    for name, buf in step.named_buffers():
        assert torch.equal(tensors[name], buf), name
    safetensors_torch.save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"evoplast": json.dumps(manifest)})
    read, meta = read_safetensors((tmp_path / "theirs.safetensors").read_bytes())
    assert json.loads(meta["evoplast"]) == manifest and all(torch.equal(read[k], tensors[k]) for k in tensors)
    assert load_rule(tmp_path / "theirs.safetensors")[1] == manifest

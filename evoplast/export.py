"""A learned rule as one ``.pt2`` file (``torch.export``) that anyone with PyTorch can load and use.

The file holds a pure step function of N independent learners::

    (state, x, y) -> (y_hat, new_state)
    state  [N, S]          every layer's current weights, flattened and concatenated (layer 1 first)
    x      [N, m, n_in]    a mini-batch of m rows per learner (pixels for image tasks)
    y      [N, m, n_out]   its targets (regression), or integer labels [N, m] (classification)
    y_hat  [N, m, n_out]   the prediction of the current weights (before this step's update)

N and m are dynamic (any size >= 1). ``initial_state`` (a buffer, ``[S]``) is where every lifetime
starts: reset = start again from it. The genome's tensors are buffers of the loaded module, named as in
evoplast: ``layer{l}.weight`` (the initial weights), ``layer{l}.bias``, and for each plastic layer
``layer{l}.feedback`` (B), ``layer{l}.feedback_bias`` (c), ``layer{l}.beta`` and the rule's
coefficients (``layer{l}.eta``; ``A``/``B``/``C``/``D`` for abcd; ``theta`` for terms). A manifest
(``evoplast.json`` inside the file) describes the architecture, the rule, the names and the layout of
``state`` (offset and shape of each layer's weights).

Why torch.export and not TorchScript: the step is a pure function of tensors, so ``torch.export``
expresses it fully (no control flow depends on data); the state stays outside the program.
The step is traced from evoplast's own :class:`~evoplast.learners.PlasticLearner`, so the file
computes exactly what evoplast's lifetime computes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import WorldError
from .learners import NetState, PlasticLearner
from .network import ModelSpec
from .rule_data import MANIFEST_KEY, RuleDataError, read_rule, write_safetensors
from .safe_pt2 import MAX_FILE_BYTES, UnsafePt2, check_pt2

FORMAT = "evoplast.rule"
VERSION = 2                  # 2: per-layer feedback activation, layers, granularity, batch reduction, step
VERSION_WITH_OPTIONS = 3     # 3: a count-normalised or gated rule (counts in the state): older readers refuse it
READABLE_VERSIONS = (1, 2, 3)   # version 1's manifest only described the step less well
MANIFEST = "evoplast.json"
MAX_WIDTH = 1 << 16          # a layer's width in a rule file
MAX_LAYERS = 64


class RuleExportError(WorldError):
    """An export file that cannot be used; the message says why in one line."""


class RuleStep(nn.Module):
    """The batched one-step learner of one genome, as an ``nn.Module`` with the genome as buffers."""

    def __init__(self, model: ModelSpec, segments: dict[str, Tensor]):
        super().__init__()
        self.model = model
        self.learner = PlasticLearner(model)
        for name, value in sorted(segments.items()):   # "layer2.eta" -> submodule layer2, buffer eta
            *path, leaf = name.split(".")
            owner = self
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            owner.register_buffer(leaf, value.detach().float().contiguous().clone())
        self.shapes = [tuple(segments[f"layer{l}.weight"].shape) for l in range(1, model.num_layers + 1)]
        # a count-normalised rule's counts ride in the state after the weights, zero at the start
        self.counted = [l for l in model.plastic_layers] if getattr(model, "count_normalised", False) else []
        self.register_buffer("initial_state", torch.cat([
            segments[f"layer{l}.weight"].detach().float().reshape(-1) for l in range(1, model.num_layers + 1)]
            + [torch.zeros(sum(model.sizes[l] for l in self.counted))]))

    def layout(self) -> list[dict[str, Any]]:
        """Where each layer's weights (then each counted layer's counts) sit in ``state``:
        ``[{"name", "offset", "shape"}]``."""
        rows, offset = [], 0
        for l, shape in enumerate(self.shapes, start=1):
            rows.append({"name": f"layer{l}.weight", "offset": offset, "shape": list(shape)})
            offset += shape[0] * shape[1]
        for l in self.counted:
            rows.append({"name": f"layer{l}.count", "offset": offset, "shape": [self.model.sizes[l]]})
            offset += self.model.sizes[l]
        return rows

    def forward(self, state: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        if self.model.features == "conv":   # the frozen conv stack turns pixels into features
            from .features import extract

            convs = {name: buf.unsqueeze(0) for name, buf in self.named_buffers() if name.startswith("features.")}
            x = extract(convs, x, self.model.image_size, self.model.conv_channels)
        parts = tuple(state[:, r["offset"]:r["offset"] + math.prod(r["shape"])].reshape(n, *r["shape"])
                      for r in self.layout())
        L = self.model.num_layers
        params = {name: buf.expand(n, *buf.shape) for name, buf in self.named_buffers()
                  if name.startswith("layer")}
        biases = tuple(params[f"layer{l}.bias"] for l in range(1, L + 1))
        new, y_hat = self.learner.step_and_predict(params, NetState(parts[:L], biases, parts[L:]), x, y,
                                                   inplace=False)
        return y_hat, torch.cat([t.reshape(n, -1) for t in (*new.weights, *new.counts)], dim=1)

    def example_inputs(self, n: int = 2, m: int = 3) -> tuple[Tensor, Tensor, Tensor]:
        g = torch.Generator().manual_seed(0)
        n_in = self.model.image_size ** 2 if self.model.features == "conv" else self.model.sizes[0]
        x = torch.rand(n, m, n_in, generator=g)
        if self.model.kind == "classification":
            y = torch.randint(0, self.model.n_out, (n, m), generator=g)
        else:
            y = torch.randn(n, m, self.model.n_out, generator=g)
        return self.initial_state.expand(n, -1).clone(), x, y


STEP = (
    "forward: h0 = x; a_l = h_{l-1} W_l^T + b_l; h_l = relu(a_l) for l < L; y_hat = a_L (returned, from the "
    "weights before this step's update). "
    "teaching signal s: regression 'error' y - y_hat, 'target' y; classification 'target' onehot(y), "
    "'error' onehot(y) - softmax(y_hat). "
    "plastic layer l: f_l = g_l(s B_l^T + c_l) with g_l = layers[l-1].feedback_activation ('linear' for the "
    "output layer); post p_l = beta_l f_l + (1 - beta_l) h_l (h_L = y_hat), or p_L = s for a classification "
    "output; pre = h_{l-1}. "
    "rule (sums over the m rows of the mini-batch): hebb dW = eta * p^T pre; oja dW = eta * (p^T pre - "
    "diag(sum_rows p^2) W); abcd dW = eta * (A * p^T pre + B * colsum(p)^T 1 + C * 1 colsum(pre) + D * m); "
    "terms dW = sum_r theta_r * F_r with F: hebb p^T pre, error_hebb (p - h_l)^T pre, oja_decay "
    "-diag(sum_rows p^2) W, oja_subspace -(p^T p) W, pseudo_grad (raw feedback s B_l^T, times relu'(a_l) for "
    "hidden layers)^T pre, decay -W. "
    "batch_reduction 'mean': dW / m. count_normalised: per plastic layer a count n [out] rides in the state "
    "(layer{l}.count, zero at the start); each step n += sum_rows p^2, then the rule's coefficient (eta, or "
    "theta for terms) of post-neuron i is divided by (count_offset + n_i) (a rate of 0 where that is 0). "
    "gated: before the rule (and the count) p_l = p_l * sigmoid(s G_l^T + h_l) (layer{l}.gate, .gate_bias). "
    "Every plastic layer updates from the pre-update weights; biases never "
    "change. Coefficients (eta, beta, A..D, theta) are stored as model values: their transforms from the "
    "genome (exp, softplus, sigmoid, scale) are already applied.")


def _granularity(model: ModelSpec, module: RuleStep) -> str | None:
    """'layer', 'neuron' or 'synapse' from the shape of the first plastic layer's coefficient."""
    if not model.plastic_layers:
        return None
    l = model.plastic_layers[0]
    name = "theta" if model.rule == "terms" else "eta"
    shape = tuple(module.get_buffer(f"layer{l}.{name}").shape[-2:])
    out, inp = model.sizes[l], model.sizes[l - 1]
    return "layer" if shape == (1, 1) else "neuron" if shape == (out, 1) else "synapse" if shape == (out, inp) \
        else None


def manifest_of(module: RuleStep, **extra: Any) -> dict[str, Any]:
    """Everything needed to rebuild the step from the manifest and the file's tensors alone (see :data:`STEP`).

    ``feedback_activation`` is per plastic layer (``{"layer3": "linear", ...}``): the output layer's
    feedback is always linear. ``batch_reduction`` is the rule's (``'sum'`` unless the model says
    ``'mean'``). ``layers`` lists, for every layer, its tensors, activation and plastic role.
    """
    from . import __version__
    from .rules import coefficient_names

    m = module.model
    L = m.num_layers
    layers = []
    for l in range(1, L + 1):
        row: dict[str, Any] = {"layer": l, "weight": f"layer{l}.weight", "bias": f"layer{l}.bias",
                               "shape": [m.sizes[l], m.sizes[l - 1]], "activation": "relu" if l < L else "none",
                               "plastic": l in m.plastic_layers}
        if l in m.plastic_layers:
            row.update({
                "feedback": f"layer{l}.feedback", "feedback_bias": f"layer{l}.feedback_bias",
                "feedback_activation": "linear" if l == L else m.feedback_activation, "beta": f"layer{l}.beta",
                "post": "teaching signal" if l == L and m.kind == "classification" else "beta*f + (1-beta)*h",
                "coefficients": {c: f"layer{l}.{c}" for c in coefficient_names(m.rule)}})
            if getattr(m, "count_normalised", False):
                row.update({"count_offset": f"layer{l}.count_offset", "count": f"layer{l}.count"})
            if getattr(m, "gated", False):
                row.update({"gate": f"layer{l}.gate", "gate_bias": f"layer{l}.gate_bias"})
        layers.append(row)
    return {
        "format": FORMAT, "evoplast_version": __version__,
        "version": VERSION_WITH_OPTIONS if getattr(m, "count_normalised", False) or getattr(m, "gated", False)
        else VERSION,
        "torch_version": torch.__version__,
        "sizes": list(m.sizes), "plastic_layers": list(m.plastic_layers), "rule": m.rule, "terms": list(m.terms),
        "granularity": _granularity(m, module), "batch_reduction": getattr(m, "batch_reduction", "sum"),
        "count_normalised": bool(getattr(m, "count_normalised", False)), "gated": bool(getattr(m, "gated", False)),
        "teaching_signal": m.teaching_signal, "kind": m.kind,
        "feedback_activation": {f"layer{r['layer']}": r["feedback_activation"] for r in layers if r["plastic"]},
        "hidden_feedback_activation": m.feedback_activation,
        "layers": layers, "step": STEP, "coefficients": "model values (genome transforms already applied)",
        "features": m.features, "image_size": m.image_size, "conv_channels": list(m.conv_channels),
        "state_layout": module.layout(), "state_size": int(module.initial_state.numel()),
        "inputs": "state [N, S], x [N, m, n_in], y [N, m, n_out] (regression) or integer labels [N, m] "
                  "(classification)",
        "outputs": "y_hat [N, m, n_out] (from the current weights), new_state [N, S]",
        "tensors": {name: list(buf.shape) for name, buf in module.named_buffers()},
        **extra,
    }


def export_rule(model: ModelSpec, segments: dict[str, Tensor], path: str | Path, **manifest_extra: Any) -> Path:
    """Write the rule of one genome (``segments``: model values by name) to ``path`` (a ``.pt2`` file) and
    the same rule as data beside it (``path`` with the suffix ``.safetensors``: the tensors, with the
    manifest in the header's metadata). Returns ``path``.

    Each file is written to a temporary file first and renamed, so an interrupted export never leaves half a
    file. Nothing is pickled: the program is saved without its sample inputs (torch would pickle them) and
    without the stack traces of its nodes (free text with this machine's paths), every tensor is a buffer
    written as raw bytes, and the ``.pt2`` must pass :func:`~evoplast.safe_pt2.check_pt2` before it
    replaces ``path``.
    """
    path = Path(path)
    check_writable(path)
    module = RuleStep(model, segments).eval()
    learners = torch.export.Dim("learners", min=1, max=1 << 20)
    rows = torch.export.Dim("rows", min=1, max=1 << 20)
    dynamic = ({0: learners}, {0: learners, 1: rows}, {0: learners, 1: rows})
    program = torch.export.export(module, module.example_inputs(), dynamic_shapes=dynamic)
    program.example_inputs = None          # torch.export.save would pickle them
    for node in program.graph.nodes:       # free text (and this machine's paths) that no reader needs
        node.meta.pop("stack_trace", None)
    manifest = manifest_of(module, **manifest_extra)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write_pt2(tmp: Path) -> None:
        torch.export.save(program, tmp, extra_files={MANIFEST: json.dumps(manifest)})
        try:
            check_pt2(tmp)
        except UnsafePt2 as exc:   # a torch that writes more than evoplast checks for: never ship it
            raise RuleExportError(f"the exported file fails evoplast's own safety check ({exc})") from None

    _write_atomically(path, write_pt2)
    data = write_safetensors(dict(module.named_buffers()), {"format": "pt", MANIFEST_KEY: json.dumps(manifest)})
    _write_atomically(data_path(path), lambda tmp: tmp.write_bytes(data))
    return path


def data_path(path: str | Path) -> Path:
    """The ``.safetensors`` twin of a ``.pt2`` rule file."""
    return Path(path).with_suffix(".safetensors")


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        try:
            write(tmp)
        except (OSError, RuntimeError) as exc:   # torch's zip writer raises RuntimeError
            why = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RuleExportError(f"cannot write {str(path)!r} ({why[:100]})") from None
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(path: str | Path) -> None:
    """Raise :class:`RuleExportError` (one line) unless a file can be created at ``path``: probes the
    nearest existing folder with a temporary file (removed at once), so it holds for root and for
    read-only file systems alike, and leaves nothing behind."""
    import tempfile

    target = Path(path)
    if target.is_dir():
        raise RuleExportError(f"{str(target)!r} is a directory, not a file name")
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise RuleExportError(f"cannot write {str(target)!r}: {str(folder)!r} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise RuleExportError(f"cannot write {str(target)!r}: {exc.strerror or exc} in {str(folder)!r}") from None


# ------------------------------------------------------------------- a rule file's data -> the step

def model_of(manifest: dict[str, Any]):
    """The :class:`~evoplast.network.ModelSpec` a manifest describes, every field checked, and its
    coefficient granularity."""
    from .rules import COEFFICIENTS, TERMS

    if not isinstance(manifest, dict):
        raise RuleDataError("the manifest is not a JSON object")

    def field(key, ok, default=None, *, required=True):
        if key not in manifest:
            if required:
                raise RuleDataError(f"the manifest has no {key!r}")
            return default
        value = manifest[key]
        if not ok(value):
            raise RuleDataError(f"the manifest's {key!r} is {value!r:.60}, which evoplast cannot build")
        return value

    def ints(lo, hi, n_min, n_max):
        return lambda v: isinstance(v, list) and n_min <= len(v) <= n_max and all(
            type(i) is int and lo <= i <= hi for i in v)

    sizes = tuple(field("sizes", ints(1, MAX_WIDTH, 2, MAX_LAYERS + 1)))
    layers = len(sizes) - 1
    plastic = tuple(field("plastic_layers", lambda v: ints(1, layers, 0, layers)(v) and v == sorted(set(v))))
    rule = field("rule", lambda v: isinstance(v, str) and v in COEFFICIENTS)
    terms = tuple(field("terms", lambda v: isinstance(v, list) and len(v) <= 16 and all(
        isinstance(t, str) and t in TERMS for t in v),
                        [], required=False))
    if rule == "terms" and not terms:
        raise RuleDataError("the manifest's rule is 'terms' but it lists no terms")
    kind = field("kind", lambda v: v in ("regression", "classification"))
    signal = field("teaching_signal", lambda v: v in ("error", "target"))
    hidden = manifest.get("hidden_feedback_activation", manifest.get("feedback_activation"))
    if hidden not in ("relu", "linear"):
        raise RuleDataError(f"the manifest's hidden feedback activation is {str(hidden)[:40]!r}")
    reduction = field("batch_reduction", lambda v: v in ("sum", "mean"), "sum", required=False)
    features = field("features", lambda v: v in ("none", "conv"), "none", required=False)
    image_size = field("image_size", lambda v: type(v) is int and 0 <= v <= 1024, 0, required=False)
    channels = tuple(field("conv_channels", ints(1, 1024, 0, 8), [], required=False))
    if features == "conv" and (kind != "classification" or not channels or image_size < 1):
        raise RuleDataError("the manifest's conv features need a classification task, channels and an image size")
    granularity = field("granularity", lambda v: v in ("layer", "neuron", "synapse", None), None, required=False)
    counted = field("count_normalised", lambda v: isinstance(v, bool), False, required=False)
    gated = field("gated", lambda v: isinstance(v, bool), False, required=False)
    return ModelSpec(sizes, plastic, rule, terms, signal, hidden, kind, features,
                     image_size if features == "conv" else 0, channels if features == "conv" else (),
                     reduction, counted, gated), granularity


def expected_shapes(model, granularity: str | None) -> dict[str, tuple[int, ...]]:
    """Every tensor an evoplast rule of ``model`` holds, by name, with its shape."""
    from .features import conv_shapes
    from .rules import coefficient_names

    shapes: dict[str, tuple[int, ...]] = {}
    if model.features == "conv":
        for i, (c_out, c_in) in enumerate(conv_shapes(model.conv_channels), start=1):
            shapes[f"features.conv{i}.weight"] = (c_out, c_in, 3, 3)
            shapes[f"features.conv{i}.bias"] = (c_out,)
    for l in range(1, model.num_layers + 1):
        shapes[f"layer{l}.weight"] = (model.sizes[l], model.sizes[l - 1])
        shapes[f"layer{l}.bias"] = (model.sizes[l],)
    for l in model.plastic_layers:
        out, inp = model.sizes[l], model.sizes[l - 1]
        gran = {"layer": (1, 1), "neuron": (out, 1), "synapse": (out, inp)}[granularity]
        shapes[f"layer{l}.feedback"] = (out, model.n_out)
        shapes[f"layer{l}.feedback_bias"] = (out,)
        shapes[f"layer{l}.beta"] = (1, 1)
        for c in coefficient_names(model.rule):
            shapes[f"layer{l}.{c}"] = (len(model.terms), *gran) if c == "theta" else gran
        if model.count_normalised:
            shapes[f"layer{l}.count_offset"] = (1, 1)
        if model.gated:
            shapes[f"layer{l}.gate"] = (out, model.n_out)
            shapes[f"layer{l}.gate_bias"] = (out,)
    counts = sum(model.sizes[l] for l in model.plastic_layers) if model.count_normalised else 0
    shapes["initial_state"] = (sum(model.sizes[l] * model.sizes[l - 1] for l in range(1, model.num_layers + 1))
                               + counts,)
    return shapes


def _granularity_of(model, tensors: dict[str, Tensor]) -> str:
    l = model.plastic_layers[0]
    coefficient = tensors.get(f"layer{l}.theta" if model.rule == "terms" else f"layer{l}.eta")
    shape = tuple(coefficient.shape[-2:]) if coefficient is not None else ()
    out, inp = model.sizes[l], model.sizes[l - 1]
    for name, expected in (("layer", (1, 1)), ("neuron", (out, 1)), ("synapse", (out, inp))):
        if shape == expected:
            return name
    raise RuleDataError(f"the coefficients of layer {l} have shape {list(shape)}: no granularity of this architecture")


def rule_from_data(tensors: dict[str, Tensor], manifest: dict[str, Any]):
    """:class:`~evoplast.export.RuleStep` of a rule file's tensors and manifest, after checking that the
    tensors are exactly those the manifest's architecture has (names and shapes) and that ``initial_state``
    is the initial weights."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RuleDataError(f"not an evoplast rule (no {FORMAT!r} manifest)")
    if manifest.get("version") not in READABLE_VERSIONS:
        raise RuleDataError(f"written by an incompatible evoplast (rule format version "
                            f"{str(manifest.get('version'))[:20]}; this evoplast reads versions "
                            f"{', '.join(map(str, READABLE_VERSIONS))}); re-export it")
    model, granularity = model_of(manifest)
    if model.plastic_layers and granularity is None:     # a version-1 manifest: read it off the coefficients
        granularity = _granularity_of(model, tensors)
    expected = expected_shapes(model, granularity)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise RuleDataError(f"the tensors do not match the manifest's architecture (missing {missing[:3]}, "
                            f"unexpected {extra[:3]})")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise RuleDataError(f"tensor {name!r} has shape {list(tensors[name].shape)}, the manifest's "
                                f"architecture needs {list(shape)}")
    segments = {name: t for name, t in tensors.items() if name != "initial_state"}
    step = RuleStep(model, segments).eval()
    if not torch.equal(step.initial_state, tensors["initial_state"]):
        raise RuleDataError("initial_state is not the layers' initial weights (an inconsistent file)")
    return step

def load_rule(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(step module, manifest)`` of a rule file (``.pt2`` or ``.safetensors``), with one-line errors.

    The file is read as data and never given to ``torch.export.load`` or a pickle: the manifest and the raw
    tensors are read strictly (:mod:`evoplast.rule_data`), checked against each other and against caps, and
    the step is evoplast's own :class:`RuleStep` built from them, so a crafted file cannot run code, and
    its loading is bounded in time and memory. The step computes exactly what ``torch.export.load`` of the
    same ``.pt2`` computes (tested bit for bit). For a file you trust and a machine without evoplast,
    ``torch.export.load`` works as before.
    """
    path = Path(path)
    if path.is_dir():
        raise RuleExportError(f"{str(path)!r} is a directory, not a rule file")
    if not path.is_file():
        raise RuleExportError(f"rule file {str(path)!r} does not exist")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise RuleExportError(f"{str(path)!r} is larger than {MAX_FILE_BYTES} bytes; refused, not loaded")
        data = path.read_bytes()
    except OSError as exc:
        raise RuleExportError(f"cannot read {str(path)!r} ({exc.strerror})") from None
    try:
        tensors, manifest = read_rule(data, path.suffix)
        step = rule_from_data(tensors, manifest)
    except RuleDataError as exc:
        raise RuleExportError(f"{str(path)!r} refused, not loaded: {' '.join(str(exc).split())}") from None
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, RecursionError) as exc:
        # a shape of data no check expected: refuse it (fail closed), never a traceback
        raise RuleExportError(f"{str(path)!r} refused, not loaded: malformed rule file ({type(exc).__name__})") from None
    return step, manifest

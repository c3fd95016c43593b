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

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .learners import NetState, PlasticLearner
from .network import ModelSpec
from .safe_pt2 import UnsafePt2, check_pt2

FORMAT = "evoplast.rule"
VERSION = 1
MANIFEST = "evoplast.json"


class RuleExportError(RuntimeError):
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
        self.register_buffer("initial_state", torch.cat([
            segments[f"layer{l}.weight"].detach().float().reshape(-1) for l in range(1, model.num_layers + 1)]))

    def layout(self) -> list[dict[str, Any]]:
        """Where each layer's weights sit in ``state``: ``[{"name", "offset", "shape"}]``."""
        rows, offset = [], 0
        for l, shape in enumerate(self.shapes, start=1):
            rows.append({"name": f"layer{l}.weight", "offset": offset, "shape": list(shape)})
            offset += shape[0] * shape[1]
        return rows

    def forward(self, state: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        if self.model.features == "conv":   # the frozen conv stack turns pixels into features
            from .features import extract

            convs = {name: buf.unsqueeze(0) for name, buf in self.named_buffers() if name.startswith("features.")}
            x = extract(convs, x, self.model.image_size, self.model.conv_channels)
        weights = tuple(state[:, r["offset"]:r["offset"] + r["shape"][0] * r["shape"][1]].reshape(n, *r["shape"])
                        for r in self.layout())
        params = {name: buf.expand(n, *buf.shape) for name, buf in self.named_buffers()
                  if name.startswith("layer")}
        biases = tuple(params[f"layer{l}.bias"] for l in range(1, self.model.num_layers + 1))
        new, y_hat = self.learner.step_and_predict(params, NetState(weights, biases), x, y, inplace=False)
        return y_hat, torch.cat([w.reshape(n, -1) for w in new.weights], dim=1)

    def example_inputs(self, n: int = 2, m: int = 3) -> tuple[Tensor, Tensor, Tensor]:
        g = torch.Generator().manual_seed(0)
        n_in = self.model.image_size ** 2 if self.model.features == "conv" else self.model.sizes[0]
        x = torch.rand(n, m, n_in, generator=g)
        if self.model.kind == "classification":
            y = torch.randint(0, self.model.n_out, (n, m), generator=g)
        else:
            y = torch.randn(n, m, self.model.n_out, generator=g)
        return self.initial_state.expand(n, -1).clone(), x, y


def manifest_of(module: RuleStep, **extra: Any) -> dict[str, Any]:
    from . import __version__

    m = module.model
    return {
        "format": FORMAT, "version": VERSION, "evoplast_version": __version__,
        "torch_version": torch.__version__,
        "sizes": list(m.sizes), "plastic_layers": list(m.plastic_layers), "rule": m.rule, "terms": list(m.terms),
        "teaching_signal": m.teaching_signal, "feedback_activation": m.feedback_activation, "kind": m.kind,
        "features": m.features, "image_size": m.image_size, "conv_channels": list(m.conv_channels),
        "state_layout": module.layout(), "state_size": int(module.initial_state.numel()),
        "inputs": "state [N, S], x [N, m, n_in], y [N, m, n_out] (regression) or integer labels [N, m] "
                  "(classification)",
        "outputs": "y_hat [N, m, n_out] (from the current weights), new_state [N, S]",
        "tensors": {name: list(buf.shape) for name, buf in module.named_buffers()},
        **extra,
    }


def export_rule(model: ModelSpec, segments: dict[str, Tensor], path: str | Path, **manifest_extra: Any) -> Path:
    """Write the rule of one genome (``segments``: model values by name) to ``path`` (a ``.pt2`` file).

    Written to a temporary file first and renamed, so an interrupted export never leaves half a file.
    Nothing in it is pickled: the program is saved without its sample inputs (torch would pickle them),
    every tensor is a buffer written as raw bytes, and the file must pass :func:`~evoplast.safe_pt2.check_pt2`
    before it replaces ``path``.
    """
    path = Path(path)
    check_writable(path)
    module = RuleStep(model, segments).eval()
    learners = torch.export.Dim("learners", min=1, max=1 << 20)
    rows = torch.export.Dim("rows", min=1, max=1 << 20)
    dynamic = ({0: learners}, {0: learners, 1: rows}, {0: learners, 1: rows})
    program = torch.export.export(module, module.example_inputs(), dynamic_shapes=dynamic)
    program.example_inputs = None          # torch.export.save would pickle them
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.pt2")
    try:
        try:
            torch.export.save(program, tmp, extra_files={MANIFEST: json.dumps(manifest_of(module, **manifest_extra))})
        except (OSError, RuntimeError) as exc:   # torch's zip writer raises RuntimeError
            first = (getattr(exc, "strerror", None) or str(exc).strip().splitlines() or [type(exc).__name__])
            raise RuleExportError(f"cannot write {str(path)!r} ({first if isinstance(first, str) else first[0]})") from None
        try:
            check_pt2(tmp)
        except UnsafePt2 as exc:   # a torch that writes more than evoplast checks for: never ship it
            raise RuleExportError(f"the exported file fails evoplast's own safety check ({exc})") from None
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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


def load_rule(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(step module, manifest)`` of an export file, with one-line errors for bad files.

    The file is read once; its bytes pass :func:`~evoplast.safe_pt2.check_pt2` (nothing pickled, no
    code-bearing strings) before ``torch.export.load`` sees them, so a crafted file cannot run code.
    """
    path = Path(path)
    if path.is_dir():
        raise RuleExportError(f"{str(path)!r} is a directory, not a .pt2 file")
    if not path.is_file():
        raise RuleExportError(f"export file {str(path)!r} does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RuleExportError(f"cannot read {str(path)!r} ({exc.strerror})") from None
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise RuleExportError(f"{str(path)!r} is corrupt or truncated (not a .pt2 archive)")
    try:
        check_pt2(io.BytesIO(data))
    except UnsafePt2 as exc:
        raise RuleExportError(f"{str(path)!r} refused, not loaded: {exc}") from None
    extra = {MANIFEST: ""}
    try:
        program = torch.export.load(io.BytesIO(data), extra_files=extra)
    except Exception as exc:  # torch raises many kinds for damaged archives
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuleExportError(f"{str(path)!r} is corrupt or truncated ({first[:100]})") from None
    try:
        manifest = json.loads(extra[MANIFEST]) if extra[MANIFEST] else {}
    except json.JSONDecodeError:
        manifest = {}
    if manifest.get("format") != FORMAT:
        raise RuleExportError(f"{str(path)!r} is a torch.export file but not an evoplast rule (no {MANIFEST})")
    if manifest.get("version") != VERSION:
        raise RuleExportError(f"{str(path)!r} was written by an incompatible evoplast (rule format version "
                              f"{manifest.get('version')}; this evoplast reads version {VERSION}); re-export it")
    return program.module(), manifest

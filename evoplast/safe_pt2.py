"""Check a ``.pt2`` archive before ``torch.export.load`` touches it. Python standard library only.

This file imports nothing from evoplast or torch: copy it next to your script and call
``check_pt2(path)`` before ``torch.export.load(path)`` on a file you received. It is a filter for people
who will call torch anyway; evoplast's own loader (``evoplast.export.load_rule``) never hands a received
file to torch and is the only loader whose safety does not depend on what torch reads
(docs/safe_rule_files.md says what each promises).

The checker is an allow-list over what torch 2.13 *does* read, not over what it should read:

zip      the archive must be laid out exactly as torch's own writer lays it out (stored entries, 64-byte
         aligned data with ``FB`` padding, data descriptors, one zip64 end record, its locator and the end
         record at the very end, nothing before the first entry or between the parts) and every record
         must agree with every other (names, offsets, sizes, CRCs), so Python's ``zipfile`` and torch's C++
         reader cannot see different entries: there is only one way to read such a file.
entries  the plain layout only (no pickles, no compiled code, no directory or compressed entries), each
         entry's size within a cap, every weight a raw tensor whose declared size is its byte count.
json     duplicate keys, NaN and deep nesting are refused; every string of ``models/model.json`` is at a key
         this checker knows and matches that key's narrow grammar (names are lower-case identifiers, node
         targets are allow-listed aten operators, symbolic sizes are small sympy constructors of symbols and
         integers, guards are size comparisons, tree specs are tuples/lists/dicts): torch pastes several of
         them into Python source or hands them to ``sympy.sympify`` (an ``eval``).
sizes    constant sizes in the graph are bounded, the number of nodes and of tensors is bounded.

What it cannot promise: that a call of the loaded step allocates little (allow-listed operators on
shapes the caller chooses can still be combined into large products), or anything about a torch other
than the versions in :data:`VERIFIED_TORCH`. :class:`UnsafePt2` names the first thing found, in one line.
"""

from __future__ import annotations

import binascii
import json
import keyword
import re
import struct

__all__ = ["UnsafePt2", "check_pt2", "check_entries", "read_canonical_zip", "VERIFIED_TORCH"]

VERIFIED_TORCH = ("2.13",)          # torch releases whose loader this checker was written against
MAX_FILE_BYTES = 512 << 20          # a whole archive
MAX_JSON_BYTES = 64 << 20           # models/model.json or a payload config
MAX_EXTRA_BYTES = 16 << 20          # an extra/ entry (the manifest)
MAX_TENSOR_BYTES = 256 << 20        # all weights together
MAX_ENTRIES = 4096
MAX_NODES = 100_000
MAX_DIM = 1 << 20                   # a constant size, index or dimension in the graph (the export's own max)
MAX_ELEMENTS = 1 << 26              # the product of a constant size list in the graph
MAX_STRING = 4096

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_KEY = re.compile(rf"{_IDENT}\Z")
_VAR = re.compile(r"[a-z_][a-z0-9_]{0,99}\Z")                   # graph value names: become Python variables
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+){0,15}\Z")
_SYMBOL = re.compile(r"s[0-9]{1,6}\Z")
_ENTRY = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.\-]{0,99}(/[A-Za-z0-9_.][A-Za-z0-9_.\-]{0,99}){1,7}\Z")
_OP = re.compile(r"torch\.ops\.aten\.([a-z0-9_]+)\.([A-Za-z0-9_]+)\Z")
# every aten operator an evoplast export uses (collected from exports of every rule, teaching signal,
# granularity, task kind and feature stack); a graph calling anything else is refused
ALLOWED_OPS = frozenset({
    "_assert_tensor_metadata.default", "adaptive_avg_pool2d.default", "add.Tensor", "addcmul.default",
    "baddbmm.default", "bmm.default", "cat.default", "clamp_min.default", "conv2d.default", "div.Tensor",
    "expand.default", "flatten.using_ints", "gt.Scalar", "lerp.Tensor", "linalg_vecdot.default", "mul.Tensor",
    "neg.default", "one_hot.default", "reciprocal.default", "relu.default", "relu_.default", "reshape.default",
    "select.int", "sigmoid.default", "slice.Tensor", "softmax.int", "sub.Tensor", "sum.dim_IntList", "sym_size.int", "to.dtype",
    "transpose.int", "unsqueeze.default",
})
_SYMPY_TOKEN = re.compile(r" +|[0-9]{1,10}|'s[0-9]{1,6}'|[A-Za-z]+|[(),=+\-*]")
_SYMPY_NAMES = {"Symbol", "Integer", "Mul", "Add", "Min", "Max", "positive", "integer", "nonnegative",
                "True", "False"}
_GUARD_INPUT = re.compile(rf"L\['{_IDENT}'\](\.(size|stride)\(\))?")
_GUARD_WORDS = re.compile(r"\b(and|or|not)\b")
_GUARD_REST = re.compile(r"[ 0-9()\[\]*+\-<>=!]*\Z")
_TREE_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict"}
_META = {"nn_module_stack": re.compile(r"[A-Za-z0-9_.,<>]{0,500}\Z"),
         # FX's verbose code printer pastes a stack trace line into a comment: printable ASCII and \n only,
         # so no line of it can end the comment ('\r' would); evoplast's own exports carry none
         "stack_trace": re.compile(r"[ -~\n]{0,4096}\Z"),
         "torch_fn": re.compile(r"[A-Za-z0-9_.;<>]{0,200}\Z")}
_SMALL = {"archive_format": re.compile(rb"pt2\Z"), "archive_version": re.compile(rb"[0-9]{1,4}\Z"),
          "byteorder": re.compile(rb"(little|big)\Z"), ".data/version": re.compile(rb"[0-9]{1,4}\n?\Z"),
          ".data/serialization_id": re.compile(rb"[0-9A-Za-z]{1,64}\Z")}
_CONFIGS = ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json")
_RAW = {"data/weights/": re.compile(r"weight_\d{1,6}\Z"), "data/constants/": re.compile(r"tensor_\d{1,6}\Z")}
_DTYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 12: 1, 13: 2}   # torch's serialized ScalarType
_STRIDED = 7


class UnsafePt2(ValueError):
    """An archive that ``torch.export.load`` could run code from, or that this checker cannot prove it reads
    the way torch does; one line."""


# --------------------------------------------------------------------------------------------- the zip

_LOCAL = struct.Struct("<IHHHHHIIIHH")              # 30 bytes
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")      # 46 bytes
_DESCRIPTOR = struct.Struct("<IIII")                # 16 bytes: signature, crc, sizes (32-bit)
_Z64_END = struct.Struct("<IQHHIIQQQQ")             # 56 bytes
_Z64_LOCATOR = struct.Struct("<IIQI")               # 20 bytes
_END = struct.Struct("<IHHHHIIH")                   # 22 bytes


def read_canonical_zip(data: bytes) -> dict[str, memoryview]:
    """``{entry name: its bytes}`` of an archive laid out exactly as torch's writer lays it out, else
    :class:`UnsafePt2`. Every byte of the file belongs to one record, in order: local header, data,
    descriptor for each entry from byte 0, then the central directory, the zip64 end record, its locator and
    the end record, which ends the file. All records must agree (names, offsets, sizes, CRCs), so any zip
    reader that accepts the file reads these entries and no others."""
    size = len(data)
    if size < _END.size or size > MAX_FILE_BYTES:
        raise UnsafePt2(f"archive of {size} bytes (a .pt2 is between {_END.size} and {MAX_FILE_BYTES})")
    view = memoryview(data)
    end_at = size - _END.size
    sig, disk, cd_disk, n_disk, n, cd_size, cd_offset, comment = _END.unpack_from(data, end_at)
    if sig != 0x06054B50 or disk or cd_disk or comment or n_disk != n:
        raise UnsafePt2("the archive does not end with one plain end-of-central-directory record")
    loc_at = end_at - _Z64_LOCATOR.size
    z64_at = loc_at - _Z64_END.size
    if z64_at < 0:
        raise UnsafePt2("no zip64 end record where torch writes one")
    lsig, ldisk, z64_offset, disks = _Z64_LOCATOR.unpack_from(data, loc_at)
    zsig, zlen, _, _, zdisk, zcd_disk, zn_disk, zn, zcd_size, zcd_offset = _Z64_END.unpack_from(data, z64_at)
    if lsig != 0x07064B50 or ldisk or disks != 1 or z64_offset != z64_at:
        raise UnsafePt2("the zip64 locator does not point at the zip64 end record just before it")
    if zsig != 0x06064B50 or zlen != 44 or zdisk or zcd_disk or zn_disk != zn:
        raise UnsafePt2("malformed zip64 end record")
    if (zn, zcd_size, zcd_offset) != (n, cd_size, cd_offset) or cd_offset + cd_size != z64_at:
        raise UnsafePt2("the zip64 and the plain end records disagree about the central directory")
    if not 1 <= n <= MAX_ENTRIES:
        raise UnsafePt2(f"{n} entries (1 to {MAX_ENTRIES} allowed)")
    entries: dict[str, memoryview] = {}
    folded: set[str] = set()                    # names compared without case, as a case-blind reader would
    pos, cd = 0, cd_offset                      # pos: where the next local header must start
    for _ in range(n):
        if cd + _CENTRAL.size > z64_at:
            raise UnsafePt2("the central directory is shorter than its entry count")
        (csig, made, need, flags, method, mtime, mdate, crc, csize, usize, nlen, xlen, clen, cdisk, iattr, eattr,
         offset) = _CENTRAL.unpack_from(data, cd)
        name = _name(bytes(view[cd + 46:cd + 46 + nlen]), cd)
        if csig != 0x02014B50 or made or need or method or mtime or mdate or xlen or clen or cdisk or iattr \
                or eattr or csize != usize or flags not in (0x808, 0x800):
            raise UnsafePt2(f"the directory record of {name!r} is not as torch writes it (compression {method}, "
                            f"flags {flags:#x})")
        cd += _CENTRAL.size + nlen
        if name in entries or name.lower() in folded:
            raise UnsafePt2(f"entry {name!r} appears twice (readers could disagree on which one is loaded)")
        folded.add(name.lower())
        if offset != pos:
            raise UnsafePt2(f"entry {name!r} is not where the previous record ends (bytes between entries)")
        if pos + _LOCAL.size > cd_offset:
            raise UnsafePt2(f"entry {name!r} points past the entries")
        lsig, lneed, lflags, lmethod, lt, ld, lcrc, lcs, lus, lnlen, lxlen = _LOCAL.unpack_from(data, pos)
        if lsig != 0x04034B50 or bytes(view[pos + 30:pos + 30 + lnlen]) != name.encode() or lflags != flags \
                or lneed or lmethod or lt or ld or lcrc or lcs or lus:
            raise UnsafePt2(f"the local header of {name!r} disagrees with the directory")
        _padding(bytes(view[pos + 30 + lnlen:pos + 30 + lnlen + lxlen]), name)
        start = pos + _LOCAL.size + lnlen + lxlen
        stop = start + usize
        if start % 64:
            raise UnsafePt2(f"entry {name!r}: data not 64-byte aligned as torch writes it")
        if flags == 0x800:                      # torch writes an empty entry without a descriptor
            if usize or crc:
                raise UnsafePt2(f"entry {name!r} has data but no descriptor")
            pos = start
        else:
            if stop + _DESCRIPTOR.size > cd_offset:
                raise UnsafePt2(f"entry {name!r} runs into the central directory")
            dsig, dcrc, dcs, dus = _DESCRIPTOR.unpack_from(data, stop)
            if dsig != 0x08074B50 or (dcrc, dcs, dus) != (crc, csize, usize):
                raise UnsafePt2(f"the data descriptor of {name!r} disagrees with the directory")
            if binascii.crc32(view[start:stop]) != crc:
                raise UnsafePt2(f"entry {name!r} fails its CRC check")
            pos = stop + _DESCRIPTOR.size
        entries[name] = view[start:stop]
    if pos != cd_offset or cd != z64_at:
        raise UnsafePt2("bytes between the last entry and the central directory, or inside the directory")
    return entries


def _name(raw: bytes, at: int) -> str:
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise UnsafePt2(f"an entry name at byte {at} is not ASCII") from None
    if name.endswith("/"):
        raise UnsafePt2(f"entry {name[:80]!r} is a directory entry (torch's writer writes none)")
    if not _ENTRY.match(name) or ".." in name:
        raise UnsafePt2(f"entry name {name[:80]!r} is not a plain relative path")
    return name


def _padding(extra: bytes, name: str) -> None:
    """torch's only extra field: ``FB``, a length, then that many ``Z`` (alignment padding)."""
    if not extra:
        return
    if len(extra) < 4 or extra[:2] != b"FB" or struct.unpack_from("<H", extra, 2)[0] != len(extra) - 4 \
            or extra[4:].strip(b"Z"):
        raise UnsafePt2(f"entry {name!r} has an extra field torch's writer does not write")


# ------------------------------------------------------------------------------------------ the archive

def check_pt2(f) -> None:
    """Raise :class:`UnsafePt2` unless ``f`` (a path, bytes, or a binary file object) is a plain, pickle-free
    ``.pt2`` of one exported program, laid out as torch writes it, within the caps above. A file object is
    read to its end and left at the position it had (``torch.export.load`` reads from there)."""
    data = _read(f)
    try:
        check_entries(archive_entries(data))
    except RecursionError:
        raise UnsafePt2("a JSON entry is nested too deeply") from None
    except UnsafePt2 as exc:
        raise UnsafePt2(" ".join(str(exc).split())) from None       # one line, whatever the file held
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, struct.error) as exc:
        # a shape of data no check above expected: refuse it (fail closed), never a traceback
        raise UnsafePt2(f"malformed archive ({type(exc).__name__}: {_show(str(exc))})") from None


def _read(f) -> bytes:
    if isinstance(f, (bytes, bytearray, memoryview)):
        return bytes(f)
    if hasattr(f, "read"):
        start = f.tell()
        try:
            data = f.read(MAX_FILE_BYTES + 1)
        finally:
            f.seek(start)
    else:
        try:
            with open(f, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise UnsafePt2(f"cannot read {str(f)!r} ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise UnsafePt2(f"larger than {MAX_FILE_BYTES} bytes")
    return data


def archive_entries(data: bytes) -> dict[str, memoryview]:
    """``{name relative to the archive's folder: bytes}`` of a canonical archive with one top folder."""
    entries = read_canonical_zip(data)
    root = next(iter(entries)).split("/", 1)[0]
    out = {}
    for name, value in entries.items():
        head, _, rel = name.partition("/")
        if head != root:
            raise UnsafePt2(f"entry {name!r} lies outside the archive's folder {root!r}")
        out[rel] = value
    return out


def check_entries(entries: dict[str, memoryview]) -> None:
    """Everything but the zip layer: the entries (relative names), the payload configs, the program."""
    for rel, value in entries.items():
        if rel in _SMALL:
            if not _SMALL[rel].match(bytes(value)):
                raise UnsafePt2(f"{rel!r} holds {bytes(value[:40])!r}, not what torch writes there")
        elif rel in _CONFIGS or rel == "models/model.json":
            continue
        elif rel == "data/sample_inputs/model.pt":
            if len(value):
                raise UnsafePt2(f"pickled sample inputs (data/sample_inputs/model.pt, {len(value)} bytes): "
                                "torch unpickles them with weights_only=False if the safe load fails")
        elif rel.startswith("extra/") and rel.count("/") == 1:
            if len(value) > MAX_EXTRA_BYTES:
                raise UnsafePt2(f"extra entry {rel!r} is {len(value)} bytes (over {MAX_EXTRA_BYTES})")
        else:
            folder, _, leaf = rel.rpartition("/")
            if not (folder + "/" in _RAW and _RAW[folder + "/"].match(leaf)):
                raise UnsafePt2(f"unexpected entry {rel!r}{_why(rel)}")
    for required in ("archive_format", "models/model.json", *_CONFIGS):
        if required not in entries:
            raise UnsafePt2(f"no {required!r}: not a torch.export archive of one program")
    used, total = set(), 0
    for config_name in _CONFIGS:
        folder = config_name.rsplit("/", 1)[0] + "/"
        kind = "weight" if "weights" in folder else "constant"
        config = parse_json(entries[config_name], config_name)
        items = config.get("config") if isinstance(config, dict) and set(config) == {"config"} else None
        if not isinstance(items, dict):
            raise UnsafePt2(f"{config_name} is not a payload config")
        for fqn, meta in items.items():
            if not _DOTTED.match(fqn):
                raise UnsafePt2(f"{kind} name {fqn[:80]!r} is not a dotted identifier")
            if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
                raise UnsafePt2(f"{kind} {fqn!r} is pickled (use_pickle)")
            path = meta.get("path_name")
            if not (isinstance(path, str) and _RAW[folder].match(path) and folder + path in entries):
                raise UnsafePt2(f"{kind} {fqn!r} points to {str(path)[:80]!r}, not a raw tensor file of the archive")
            if folder + path in used:
                raise UnsafePt2(f"{kind} {fqn!r} shares its file {path!r} with another tensor")
            used.add(folder + path)
            total += tensor_bytes(meta.get("tensor_meta"), len(entries[folder + path]), f"{kind} {fqn!r}")
            if total > MAX_TENSOR_BYTES:
                raise UnsafePt2(f"the tensors declare more than {MAX_TENSOR_BYTES} bytes")
    unused = [rel for rel in entries if rel.startswith(tuple(_RAW)) and rel not in _CONFIGS and rel not in used]
    if unused:
        raise UnsafePt2(f"entry {unused[0]!r} is no tensor of the payload configs")
    check_program(parse_json(entries["models/model.json"], "models/model.json"))


def tensor_bytes(meta, stored: int, what: str) -> int:
    """Bytes of a raw tensor whose serialized ``tensor_meta`` is ``meta``; it must be a dense, contiguous,
    non-empty CPU tensor of a plain dtype whose byte count is exactly ``stored``."""
    if not isinstance(meta, dict):
        raise UnsafePt2(f"{what} has no tensor description")
    dtype, layout = meta.get("dtype"), meta.get("layout")
    if type(dtype) is not int or dtype not in _DTYPE_BYTES or layout != _STRIDED or meta.get("device") not in (
            {"type": "cpu", "index": None}, {"type": "cpu"}):
        raise UnsafePt2(f"{what} is not a dense CPU tensor of a plain dtype (dtype {dtype}, layout {layout})")
    sizes = [_int_of(s, what) for s in _list(meta.get("sizes"), what)]
    strides = [_int_of(s, what) for s in _list(meta.get("strides"), what)]
    if len(sizes) != len(strides) or len(sizes) > 8 or _int_of(meta.get("storage_offset"), what) != 0:
        raise UnsafePt2(f"{what}: sizes, strides and offset do not describe a plain tensor")
    numel, expected = 1, []
    for s in reversed(sizes):
        expected.insert(0, numel)
        numel *= s
    if any(s < 1 for s in sizes) or numel > MAX_TENSOR_BYTES or strides != expected:
        raise UnsafePt2(f"{what}: sizes {sizes} and strides {strides} are not a non-empty contiguous tensor")
    nbytes = numel * _DTYPE_BYTES[dtype]
    if nbytes != stored:
        raise UnsafePt2(f"{what} declares {nbytes} bytes but its file holds {stored}")
    return nbytes


def _show(value, n: int = 60) -> str:
    """A value from the file, for a message: its repr (no raw newlines), cut to ``n`` characters."""
    return repr(value)[:n]


def _list(value, what: str) -> list:
    if not isinstance(value, list):
        raise UnsafePt2(f"{what}: a size list is not a list")
    return value


def _int_of(value, what: str) -> int:
    if not (isinstance(value, dict) and set(value) == {"as_int"} and type(value["as_int"]) is int
            and 0 <= value["as_int"] <= MAX_TENSOR_BYTES):
        raise UnsafePt2(f"{what}: a size is not a plain bounded integer ({_show(value)})")
    return value["as_int"]


def _why(rel: str) -> str:
    if "aotinductor" in rel or rel.endswith((".so", ".dll", ".dylib")):
        return " (AOTInductor: compiled code)"
    if "opaque_obj_" in rel:
        return " (an opaque constant: plain pickle)"
    if "custom_obj_" in rel:
        return " (a TorchBind constant: pickled)"
    if rel.endswith((".pt", ".pkl")):
        return " (a pickle)"
    if rel.endswith("/"):
        return " (a directory entry)"
    return ""


def parse_json(raw: memoryview, name: str):
    """JSON with no duplicate keys, no NaN/Infinity, no more than :data:`MAX_JSON_BYTES`."""
    if len(raw) > MAX_JSON_BYTES:
        raise UnsafePt2(f"{name!r} is {len(raw)} bytes (over {MAX_JSON_BYTES})")

    def pairs(items):
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            raise UnsafePt2(f"{name!r} repeats the key {next(k for k in keys if keys.count(k) > 1)[:60]!r}")
        return dict(items)

    def constant(word):
        raise UnsafePt2(f"{name!r} holds {word}")

    try:
        return json.loads(bytes(raw).decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except RecursionError:
        raise UnsafePt2(f"{name!r} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, UnsafePt2):
            raise
        raise UnsafePt2(f"{name!r} is not valid JSON ({str(exc)[:80]})") from None


# ------------------------------------------------------------------------------------------ the program

def check_program(model) -> None:
    """Every string, key and number of ``models/model.json``, by where it sits."""
    if not isinstance(model, dict) or not isinstance(model.get("graph_module"), dict):
        raise UnsafePt2("models/model.json is not a serialized ExportedProgram")
    graph = model["graph_module"].get("graph")
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
        raise UnsafePt2(f"the graph has no node list, or more than {MAX_NODES} nodes")
    constraints = model.get("range_constraints") or {}
    if not isinstance(constraints, dict):
        raise UnsafePt2("range_constraints is not a map")
    for key in constraints:
        if not _SYMBOL.match(key):
            raise UnsafePt2(f"range constraint on {key[:80]!r}, not a symbol name")
    guards = model.get("guards_code") or []
    if not isinstance(guards, list):
        raise UnsafePt2("guards_code is not a list")
    for node in nodes:
        _check_node(node)
    _walk(model, ())


def _check_node(node) -> None:
    target = node.get("target") if isinstance(node, dict) else None
    m = _OP.match(target) if isinstance(target, str) else None
    if not m or f"{m.group(1)}.{m.group(2)}" not in ALLOWED_OPS:
        raise UnsafePt2(f"graph node calls {str(target)[:80]!r}, not an aten operator evoplast exports use")
    for item in node.get("inputs") or []:
        arg = item.get("arg") if isinstance(item, dict) else None
        if not isinstance(arg, dict) or len(arg) != 1:
            raise UnsafePt2(f"a {target} argument is not one serialized value")
        (kind, value), = arg.items()
        if kind == "as_int":
            _bounded([value], target)
        elif kind in ("as_ints", "as_sym_ints"):
            if not isinstance(value, list):
                raise UnsafePt2(f"a {target} size list is not a list")
            consts = [v if kind == "as_ints" else v.get("as_int") for v in value
                      if kind == "as_ints" or (isinstance(v, dict) and "as_int" in v)]
            _bounded(consts, target)
            product = 1
            for c in consts:
                product *= max(abs(c), 1)
            if product > MAX_ELEMENTS:
                raise UnsafePt2(f"{target} is given sizes {consts[:8]} (over {MAX_ELEMENTS} elements)")
        elif kind in ("as_float", "as_floats"):
            for v in value if isinstance(value, list) else [value]:
                if not isinstance(v, (int, float)) or v != v or abs(v) > 1e30:
                    raise UnsafePt2(f"{target} is given the number {str(v)[:40]}")


def _bounded(values, target) -> None:
    for v in values:
        if type(v) is not int or abs(v) > MAX_DIM:
            raise UnsafePt2(f"{target} is given the constant {str(v)[:40]} (over {MAX_DIM})")


# the grammar of each string, by the last keys of its path ('*' stands for a value-table name)
_STRINGS = {
    ("name",): _VAR, ("as_name",): _VAR, ("buffer_name",): _DOTTED, ("parameter_name",): _DOTTED,
    ("tensor_constant_name",): _DOTTED, ("forward_arg_names",): _VAR, ("verifiers",): re.compile(r"[A-Z_]{1,40}\Z"),
    ("torch_version",): re.compile(r"[0-9]{1,3}\.[0-9]{1,3}(\.[0-9]{1,3})?[A-Za-z0-9.+]{0,40}\Z"),
    ("fqn",): re.compile(r"(|[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+){0,15})\Z"),
    ("device", "type"): re.compile(r"cpu\Z"), ("as_device", "type"): re.compile(r"cpu\Z"),
    ("metadata", "nn_module_stack"): _META["nn_module_stack"], ("metadata", "torch_fn"): _META["torch_fn"],
    ("metadata", "stack_trace"): _META["stack_trace"],
}
_MAPS = {"tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values", "range_constraints",
         "custom_obj_values", "treespec_namedtuple_fields", "metadata", "nn_module_stack"}


def _walk(node, path: tuple) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if not _KEY.match(key) or len(key) > 100 or keyword.iskeyword(key):
                raise UnsafePt2(f"key {key[:80]!r} at {'/'.join(path[-3:])} is not an identifier")
            if key == "custom_obj_values" and value:
                raise UnsafePt2("the graph holds TorchBind objects (pickled)")
            if path and path[-1] in _MAPS and path[-1] not in ("metadata",) and not (
                    _VAR.match(key) or _SYMBOL.match(key)):
                raise UnsafePt2(f"value name {key[:80]!r} is not a lower-case identifier")
            _walk(value, path + (key,))
    elif isinstance(node, list):
        for item in node:
            _walk(item, path + (path[-1] if path else "",))
    elif isinstance(node, str):
        _check_string(node, path)
    elif isinstance(node, bool) or node is None:
        return
    elif isinstance(node, int):
        if abs(node) > 1 << 62:
            raise UnsafePt2(f"the number {str(node)[:40]} at {'/'.join(path[-3:])} is out of range")
    elif isinstance(node, float):
        if abs(node) > 1e300:
            raise UnsafePt2(f"the number {node} at {'/'.join(path[-3:])} is out of range")


def _check_string(text: str, path: tuple) -> None:
    key = path[-1] if path else ""
    where = "/".join(p for p in path[-3:] if p)
    if key == "target":
        return                                  # checked against the allow-list in _check_node
    if key == "expr_str":
        return _check_sympy(text)
    if key in ("in_spec", "out_spec"):
        return _check_treespec(text)
    if key == "guards_code":
        if len(text) > MAX_STRING or not _GUARD_REST.match(_GUARD_WORDS.sub(" ", _GUARD_INPUT.sub(" ", text))):
            raise UnsafePt2(f"guard {text[:80]!r} is not a size comparison (it becomes Python code)")
        return
    if key == "forward_arg_names" and not (_VAR.match(text) and not keyword.iskeyword(text)):
        raise UnsafePt2(f"forward argument name {text[:80]!r} is not an identifier (it becomes Python source)")
    grammar = _STRINGS.get(tuple(path[-2:])) or _STRINGS.get((key,))
    if key == "name" and len(path) >= 2 and path[-2] == "inputs":
        grammar = _KEY                          # an operator's argument name ('self', 'other', 'tensors')
    if grammar is None:
        raise UnsafePt2(f"unexpected text at {where} ({text[:60]!r}): nothing evoplast writes goes there")
    if len(text) > MAX_STRING or not grammar.match(text) or (grammar is _VAR and keyword.iskeyword(text)):
        raise UnsafePt2(f"{where} {text[:80]!r} does not match its grammar (torch may paste it into code)")


def _check_sympy(expr) -> None:
    """``expr_str`` goes to ``sympy.sympify`` (an eval): small constructors of symbols and integers only."""
    if not isinstance(expr, str) or len(expr) > 200:
        raise UnsafePt2(f"symbolic size {str(expr)[:80]!r} is not a short sympy expression")
    pos, depth = 0, 0
    while pos < len(expr):
        m = _SYMPY_TOKEN.match(expr, pos)
        word = m.group(0) if m else expr[pos]
        if m is None or (word[0].isalpha() and word not in _SYMPY_NAMES):
            raise UnsafePt2(f"symbolic size {expr[:80]!r} has {word!r} (sympy evaluates it as Python)")
        if word.isdigit() and int(word) > MAX_DIM:
            raise UnsafePt2(f"symbolic size {expr[:80]!r} has the integer {word} (over {MAX_DIM})")
        depth += word == "("
        depth -= word == ")"
        if depth > 4:
            raise UnsafePt2(f"symbolic size {expr[:80]!r} is nested too deeply")
        pos = m.end()


def _check_treespec(spec) -> None:
    """A pytree spec (JSON) may name any type, and enum contexts import modules: allow tuples/lists/dicts."""
    if len(spec) > 100_000:
        raise UnsafePt2("tree spec too long")
    try:
        protocol, tree = json.loads(spec)
    except (TypeError, ValueError):
        raise UnsafePt2(f"tree spec {str(spec)[:80]!r} is not JSON") from None
    stack = [tree]
    while stack:
        t = stack.pop()
        if not isinstance(t, dict) or t.get("type") not in _TREE_TYPES:
            raise UnsafePt2(f"tree spec has type {t.get('type') if isinstance(t, dict) else t!r} "
                            "(only tuple, list and dict are allowed)")
        context = t.get("context")
        try:
            ctx = json.loads(context) if isinstance(context, str) else context
        except ValueError:
            raise UnsafePt2(f"tree spec context {context[:80]!r} is not JSON") from None
        if ctx is not None and not (isinstance(ctx, list) and all(
                isinstance(c, int) or (isinstance(c, str) and _KEY.match(c)) for c in ctx)):
            raise UnsafePt2(f"tree spec context {str(context)[:80]!r} is not a list of keys")
        stack.extend(t.get("children_spec") or [])

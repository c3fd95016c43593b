"""Check a ``.pt2`` archive before ``torch.export.load`` touches it. Python standard library only.

This file imports nothing from evoplast or torch: copy it next to your script and call
``check_pt2(path)`` before ``torch.export.load(path)`` on a file you received.

``torch.export.load`` (torch 2.13) runs code from a crafted archive on several routes, all refused here:
  pickles    sample inputs (unpickled with ``weights_only=False`` when the safe load fails), weights or
             constants marked ``use_pickle``, opaque (``pickle.loads``) and TorchBind constants, the
             legacy (torch 2.7) layout; AOTInductor entries are compiled shared libraries
  strings    symbolic sizes are parsed with ``sympy.sympify`` (an ``eval``), ``guards_code`` and
             ``forward_arg_names`` become Python source that ``.module()`` executes, tree specs may
             import modules by name, graph nodes may call any ``torch.*``/``math.*``/``operator.*``
An archive passes only if it is the plain layout (``archive_format``, ``models/model.json``, raw
``weight_N``/``tensor_N`` files, an EMPTY sample-inputs file, ``extra/*``), every graph node is an
``torch.ops.aten`` operator, and every such string matches a narrow grammar. Otherwise
:class:`UnsafePt2` names the first thing found, in one line.
"""

from __future__ import annotations

import json
import re
import zipfile

__all__ = ["UnsafePt2", "check_pt2"]

MAX_JSON_BYTES = 256 << 20          # a model.json or payload config larger than this is refused

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = re.compile(rf"{_IDENT}(\.[A-Za-z0-9_]+)*\Z")
_NAME = re.compile(rf"{_IDENT}\Z")
_OP = re.compile(r"torch\.ops\.aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+\Z")
_DENIED_OPS = ("from_file",)       # aten ops that reach the file system
_SYMPY_TOKEN = re.compile(rf"\s+|\d+(\.\d+)?|'{_IDENT}'|{_IDENT}|[(),=+\-*/]")
_SYMPY_NAMES = {"Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Max", "Min", "Mod", "Abs",
                "FloorDiv", "CeilDiv", "CleanDiv", "PythonMod", "ModularIndexing", "FloorToInt", "CeilToInt",
                "TruncToInt", "IntTrueDiv", "FloatTrueDiv", "ToFloat", "Identity",
                "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "True", "False"}
_GUARD_INPUT = re.compile(rf"L\['{_IDENT}'\](\.(size|stride)\(\))?")
_GUARD_WORDS = re.compile(r"\b(and|or|not|True|False)\b")
_GUARD_REST = re.compile(r"[\s0-9()\[\]*+\-/%<>=!,]*\Z")
_TREE_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict"}
_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id",
          "models/model.json", "data/weights/model_weights_config.json",
          "data/constants/model_constants_config.json", "data/sample_inputs/model.pt"}
_RAW = {"data/weights/": re.compile(r"weight_\d+\Z"), "data/constants/": re.compile(r"tensor_\d+\Z")}


class UnsafePt2(ValueError):
    """An archive that ``torch.export.load`` could run code from (or that is not a plain .pt2); one line."""


def check_pt2(f) -> None:
    """Raise :class:`UnsafePt2` unless ``f`` (a path or a binary file object) is a plain, pickle-free
    ``.pt2`` of one exported program. Reads the archive's index and its JSON entries only; a file object
    is left at the position it had (``torch.export.load`` reads from there)."""
    start = f.tell() if hasattr(f, "tell") else None
    try:
        with zipfile.ZipFile(f) as z:
            _check_archive(z)
    except zipfile.BadZipFile as exc:
        raise UnsafePt2(f"not a .pt2 (zip) archive ({exc})") from None
    except (NotImplementedError, RuntimeError, OSError, EOFError) as exc:   # encrypted, unknown compression
        raise UnsafePt2(f"unreadable archive ({type(exc).__name__}: {str(exc)[:80]})") from None
    except RecursionError:
        raise UnsafePt2("models/model.json is nested too deeply") from None
    finally:
        if start is not None:
            f.seek(start)


def _check_archive(z: zipfile.ZipFile) -> None:
    infos = z.infolist()
    names = [i.filename for i in infos]
    if not names:
        raise UnsafePt2("empty archive")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UnsafePt2(f"entry {dup!r} appears twice (readers could disagree on which one is loaded)")
    root = names[0].split("/", 1)[0]
    entries = {}
    for info in infos:
        head, _, rel = info.filename.partition("/")
        if head != root or not rel:
            raise UnsafePt2(f"entry {info.filename!r} lies outside the archive's folder {root!r}")
        entries[rel] = info
    for rel in entries:
        if rel in _FIXED or rel.startswith("extra/") or rel.endswith("/"):
            continue
        folder, _, leaf = rel.rpartition("/")
        if _RAW.get(folder + "/", re.compile("x\\A")).match(leaf):
            continue
        raise UnsafePt2(f"unexpected entry {rel!r}{_why(rel)}")
    for required in ("archive_format", "models/model.json", "data/weights/model_weights_config.json",
                     "data/constants/model_constants_config.json"):
        if required not in entries:
            raise UnsafePt2(f"no {required!r}: not a torch.export archive of one program")
    if z.read(entries["archive_format"]).strip() != b"pt2":
        raise UnsafePt2("archive_format is not 'pt2'")
    sample = entries.get("data/sample_inputs/model.pt")
    if sample is not None and (sample.file_size or sample.compress_size):
        raise UnsafePt2(f"pickled sample inputs (data/sample_inputs/model.pt, {sample.file_size} bytes): "
                        "torch unpickles them with weights_only=False if the safe load fails")
    for folder, kind in (("data/weights/", "weight"), ("data/constants/", "constant")):
        config = _json(z, entries[f"{folder}model_{kind}s_config.json"])
        items = config.get("config") if isinstance(config, dict) else None
        if not isinstance(items, dict):
            raise UnsafePt2(f"{folder}model_{kind}s_config.json is not a payload config")
        for fqn, meta in items.items():
            if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
                raise UnsafePt2(f"{kind} {fqn!r} is pickled (use_pickle)")
            path = meta.get("path_name")
            if not (isinstance(path, str) and _RAW[folder].match(path) and folder + path in entries):
                raise UnsafePt2(f"{kind} {fqn!r} points to {path!r}, not a raw tensor file of the archive")
            if not _DOTTED.match(str(fqn)):
                raise UnsafePt2(f"{kind} name {fqn!r} is not a dotted identifier")
    _check_program(_json(z, entries["models/model.json"]))


def _why(rel: str) -> str:
    if "aotinductor" in rel or rel.endswith((".so", ".dll", ".dylib")):
        return " (AOTInductor: compiled code)"
    if "opaque_obj_" in rel:
        return " (an opaque constant: plain pickle)"
    if "custom_obj_" in rel:
        return " (a TorchBind constant: pickled)"
    if rel.endswith((".pt", ".pkl")):
        return " (a pickle)"
    return ""


def _json(z: zipfile.ZipFile, info: zipfile.ZipInfo):
    if info.file_size > MAX_JSON_BYTES:
        raise UnsafePt2(f"{info.filename!r} is {info.file_size} bytes (over {MAX_JSON_BYTES})")
    try:
        return json.loads(z.read(info))
    except (ValueError, RecursionError) as exc:
        raise UnsafePt2(f"{info.filename!r} is not valid JSON ({str(exc)[:80]})") from None


def _check_program(model) -> None:
    """The strings of ``models/model.json`` that torch turns into code or imports."""
    if not isinstance(model, dict) or not isinstance(model.get("graph_module"), dict):
        raise UnsafePt2("models/model.json is not a serialized ExportedProgram")
    for key in model.get("range_constraints") or {}:
        if not _NAME.match(str(key)):
            raise UnsafePt2(f"range constraint on {key!r}, not a symbol name")
    guards = model.get("guards_code") or []
    if not isinstance(guards, list):
        raise UnsafePt2("guards_code is not a list")
    for guard in guards:
        if not isinstance(guard, str) or not _GUARD_REST.match(_GUARD_WORDS.sub(" ", _GUARD_INPUT.sub(" ", guard))):
            raise UnsafePt2(f"guard {str(guard)[:80]!r} is not a size comparison (it becomes Python code)")
    _walk(model["graph_module"])


def _walk(node) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == "nodes" and isinstance(value, list):
            for n in value:
                target = n.get("target") if isinstance(n, dict) else None
                if not (isinstance(target, str) and _OP.match(target)) or \
                        target.split(".")[3] in _DENIED_OPS:
                    raise UnsafePt2(f"graph node calls {str(target)[:80]!r}, not an aten operator")
        elif key == "expr_str":
            _check_sympy(value)
        elif key in ("in_spec", "out_spec") and value is not None:
            _check_treespec(value)
        elif key == "forward_arg_names" and value is not None:
            bad = [a for a in value if not (isinstance(a, str) and _NAME.match(a))] if isinstance(value, list) \
                else [value]
            if bad:
                raise UnsafePt2(f"forward argument name {str(bad[0])[:80]!r} is not an identifier "
                                "(it becomes Python source)")
        elif key in ("buffer_name", "parameter_name", "tensor_constant_name") and \
                not (isinstance(value, str) and _DOTTED.match(value)):
            raise UnsafePt2(f"{key} {str(value)[:80]!r} is not a dotted identifier")
        elif key == "custom_obj_values" and value:
            raise UnsafePt2("the graph holds TorchBind objects (pickled)")
        _walk(value)


def _check_sympy(expr) -> None:
    """``expr_str`` goes to ``sympy.sympify`` (an eval): allow sympy constructors of symbols and numbers."""
    if not isinstance(expr, str) or len(expr) > 10_000:
        raise UnsafePt2(f"symbolic size {str(expr)[:80]!r} is not a sympy expression")
    pos = 0
    while pos < len(expr):
        m = _SYMPY_TOKEN.match(expr, pos)
        word = m.group(0) if m else expr[pos]
        if m is None or (word[0].isalpha() or word[0] == "_") and word not in _SYMPY_NAMES:
            raise UnsafePt2(f"symbolic size {expr[:80]!r} has {word!r} (sympy evaluates it as Python)")
        pos = m.end()


def _check_treespec(spec) -> None:
    """A pytree spec (JSON) may name any type, and enum contexts import modules: allow tuples/lists/dicts."""
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
        if ctx is not None and not (isinstance(ctx, list) and all(isinstance(c, (str, int)) for c in ctx)):
            raise UnsafePt2(f"tree spec context {str(context)[:80]!r} is not a list of keys")
        stack.extend(t.get("children_spec") or [])

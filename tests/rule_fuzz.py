"""A seeded mutation fuzzer of rule files, run in its own process so that its time and memory are its own.

    python -m tests.rule_fuzz GENUINE.pt2 CORPUS_DIR SEED CASES OUT.json

Loads every file of CORPUS_DIR (the crafted attacks), then CASES mutants of GENUINE.pt2 and of its
``.safetensors`` twin (byte flips, truncations, inserted or deleted bytes, edits of the zip records,
JSON edits re-zipped canonically so that they reach the checks behind the zip layer), each through
``evoplast.export.load_rule`` and ``evoplast.safe_pt2.check_pt2``. Writes to OUT.json: per corpus file
and in total, what was refused, the slowest case, the process's peak resident memory, and every outcome
that is neither a one-line refusal nor a load (``crashes``).
"""

from __future__ import annotations

import json
import random
import resource
import struct
import sys
import tempfile
import time
from pathlib import Path

NASTY = [10 ** 30, -1, 0, 1 << 63, 1 << 31, 1e308, -0.0, "x\ny", "\r", "__import__('os').system('true')", "s17",
         "Symbol('s1')", "Pow(Integer(10), Integer(99))", [], {}, None, True, "a" * 5000, "torch.ops.aten.empty.default",
         "builtins.eval", "../../etc/passwd", "layer1.weight", [1] * 50, {"as_int": 1 << 40}, {"as_expr": {}}]


def mutate(rng: random.Random, data: bytes, kind: str) -> bytes:
    b = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        return bytes(b[:rng.randrange(len(b))])
    elif kind == "insert":
        at = rng.randrange(len(b))
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 70)))
    elif kind == "delete":
        at = rng.randrange(len(b))
        del b[at:at + rng.randint(1, 70)]
    elif kind == "zip":
        return _zip_edit(rng, b)
    return bytes(b)


def _zip_edit(rng: random.Random, b: bytearray) -> bytes:
    """Overwrite one field of one zip record (end records, a directory or local header) with a boundary value."""
    signatures = [b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06", b"PK\x01\x02", b"PK\x03\x04", b"PK\x07\x08"]
    sig = rng.choice(signatures)
    spots, at = [], b.find(sig)
    while at >= 0 and len(spots) < 64:
        spots.append(at)
        at = b.find(sig, at + 1)
    if not spots:
        return bytes(b)
    at = rng.choice(spots) + rng.randrange(4, 24)
    width = rng.choice([1, 2, 4])
    if at + width > len(b):
        return bytes(b)
    old = int.from_bytes(b[at:at + width], "little")
    new = rng.choice([0, 1, old + 1, old - 1, old + 64, (1 << (8 * width)) - 1, old * 2]) % (1 << (8 * width))
    b[at:at + width] = new.to_bytes(width, "little")
    return bytes(b)


def json_edit(rng: random.Random, entries: list[tuple[str, bytes]], names: list[str]) -> list[tuple[str, bytes]]:
    """One random edit of one JSON entry (the program, the weights config or the manifest)."""
    target = rng.choice(names)
    out = []
    for name, data in entries:
        if name == target:
            doc = json.loads(data)
            _edit_doc(rng, doc)
            data = json.dumps(doc).encode()
        out.append((name, data))
    return out


def _edit_doc(rng: random.Random, doc) -> None:
    # walk down a random path, then change what is there
    parent, key, node = None, None, doc
    for _ in range(rng.randint(1, 12)):
        if isinstance(node, dict) and node:
            k = rng.choice(list(node))
        elif isinstance(node, list) and node:
            k = rng.randrange(len(node))
        else:
            break
        parent, key, node = node, k, node[k]
    if parent is None:
        return
    op = rng.random()
    if op < 0.6:
        parent[key] = rng.choice(NASTY)
    elif op < 0.75 and isinstance(parent, dict):
        del parent[key]
    elif op < 0.85 and isinstance(parent, dict):
        parent[rng.choice(["__class__", "x y", "s1 + 1", key + "_"])] = node
    elif isinstance(parent, list):
        parent.insert(key, node)
    else:
        parent[key] = [node, node]


def peak_rss_mib() -> float:
    """This process's peak resident memory. ``VmHWM`` belongs to the process image since ``exec``; Linux's
    ``ru_maxrss`` would also count what the parent held when it forked this process."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> int:
    import torch

    from evoplast.export import RuleExportError, data_path, load_rule
    from evoplast.safe_pt2 import UnsafePt2, check_pt2
    from tests.pt2_craft import entries_of, write_canonical
    from evoplast.rule_data import write_safetensors, read_safetensors

    genuine, corpus, seed, cases, out = Path(argv[0]), Path(argv[1]), int(argv[2]), int(argv[3]), Path(argv[4])
    torch.set_num_threads(1)
    report = {"corpus": {}, "cases": 0, "refused_by_load_rule": 0, "refused_by_check_pt2": 0, "loaded": 0,
              "slowest_s": 0.0, "slowest_case": "", "crashes": [], "multi_line": []}
    scratch = Path(tempfile.mkdtemp())

    def attempt(label: str, data: bytes, suffix: str) -> tuple[bool, bool]:
        path = scratch / f"case{suffix}"
        path.write_bytes(data)
        start = time.perf_counter()
        refused = checked_refused = False
        try:
            step, manifest = load_rule(path)
            state = step.get_buffer("initial_state").expand(2, -1).clone()
            n_in = step.model.image_size ** 2 if step.model.features == "conv" else step.model.sizes[0]
            step(state, torch.rand(2, 3, n_in), torch.randn(2, 3, step.model.n_out))
        except RuleExportError as exc:
            refused = True
            if "\n" in str(exc):
                report["multi_line"].append(f"{label}: {str(exc)[:200]}")
        except Exception as exc:  # noqa: BLE001 - anything else is a finding
            report["crashes"].append(f"{label}: load_rule {type(exc).__name__}: {str(exc)[:200]}")
        if suffix == ".pt2":
            try:
                check_pt2(data)
            except UnsafePt2 as exc:
                checked_refused = True
                if "\n" in str(exc):
                    report["multi_line"].append(f"{label}: {str(exc)[:200]}")
            except Exception as exc:  # noqa: BLE001
                report["crashes"].append(f"{label}: check_pt2 {type(exc).__name__}: {str(exc)[:200]}")
        seconds = time.perf_counter() - start
        if seconds > report["slowest_s"]:
            report["slowest_s"], report["slowest_case"] = seconds, label
        return refused, checked_refused

    for path in sorted(corpus.glob("*.pt2")):
        refused, checked = attempt(f"corpus {path.name}", path.read_bytes(), ".pt2")
        report["corpus"][path.name] = {"load_rule_refused": refused, "check_pt2_refused": checked}

    rng = random.Random(seed)
    pt2 = genuine.read_bytes()
    st = data_path(genuine).read_bytes()
    entries = entries_of(pt2)
    json_names = [n for n, _ in entries if n.endswith((".json",))]
    tensors, metadata = read_safetensors(st)
    kinds = ["flip", "truncate", "insert", "delete", "zip", "json", "json", "json", "st-flip", "st-truncate",
             "st-header"]
    for i in range(cases):
        kind = rng.choice(kinds)
        if kind == "json":
            data, suffix = write_canonical(json_edit(rng, entries, json_names)), ".pt2"
        elif kind == "st-header":
            header_len = struct.unpack_from("<Q", st)[0]
            header = json.loads(st[8:8 + header_len])
            _edit_doc(rng, header)
            text = json.dumps(header).encode()
            data, suffix = struct.pack("<Q", len(text)) + text + st[8 + header_len:], ".safetensors"
        elif kind.startswith("st-"):
            data, suffix = mutate(rng, st, kind[3:]), ".safetensors"
        else:
            data, suffix = mutate(rng, pt2, kind), ".pt2"
        refused, checked = attempt(f"case {i} ({kind})", data, suffix)
        report["cases"] += 1
        report["refused_by_load_rule"] += refused
        report["refused_by_check_pt2"] += checked
        report["loaded"] += not refused
    del tensors, metadata
    report["peak_rss_mib"] = peak_rss_mib()
    out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

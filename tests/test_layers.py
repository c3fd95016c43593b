"""The package's layers: a module imports only its own layer and those below it (docs/architecture.md).

Every import counts, those inside functions too. A new module must be given a layer here (the test fails
for a module it does not know), so the picture in the docs and the code cannot drift apart.
"""

import ast
from pathlib import Path

from .conftest import REPO

# bottom to top; a module may import its own layer and every layer before it
LAYERS = {
    "core": ["evoplast", "errors", "config", "seeding", "features", "rules", "network", "genome", "learners",
             "fused", "graphs", "runtime", "stats", "safe_pt2", "rule_data", "tasks", "tasks.episodes",
             "tasks.sinusoid", "tasks.images", "tasks.classification"],
    "lifetime": ["lifetime"],
    "scoring": ["evaluation", "baselines"],
    "parallel evaluation": ["evolution", "evolution.placement", "evolution.ray_pool", "evolution.sampling",
                            "evolution.rows"],
    "outer trainers": ["trainers", "trainers.base", "trainers.loop", "trainers.es", "trainers.bptt",
                       "trainers.pes", "trainers.hybrid", "evolution.problem", "evolution.searchers",
                       "evolution.trainer", "metatrain"],
    "science and benchmarks": ["analysis", "seeds", "benchmarking", "trainers.compare", "export", "reproduction"],
    "runs": ["cli", "session", "tracking", "describe", "plots", "checkpoint", "progress", "signals", "preflight",
             "runs", "trainers.callbacks", "evolution.run", "finetune", "training", "model_links", "portable"],
}
LAYER_OF = {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}
NAMES = list(LAYERS)


def _modules() -> dict[str, Path]:
    root = Path(REPO) / "evoplast"
    out = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(parts) or "evoplast"] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = [p for p in package.split(".") if p]
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("evoplast"):
                target = node.module[len("evoplast."):] if node.module != "evoplast" else "evoplast"
            else:
                continue
            for candidate in [target] + [f"{target}.{a.name}" if target else a.name for a in node.names]:
                if candidate in known and candidate != name:
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("evoplast."):
                    target = a.name[len("evoplast."):]
                    if target in known and target != name:
                        found.add(target)
    return found


def test_every_module_has_a_layer():
    unknown = sorted(set(_modules()) - set(LAYER_OF))
    assert not unknown, f"give these modules a layer in tests/test_layers.py and docs/architecture.md: {unknown}"


def test_no_module_imports_a_higher_layer():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        for target in _imports(name, path, set(modules)):
            if LAYER_OF.get(target, -1) > LAYER_OF.get(name, len(NAMES)):
                upward.append(f"{name} ({NAMES[LAYER_OF[name]]}) imports {target} ({NAMES[LAYER_OF[target]]})")
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The test can fail: a core module that imported the tracking layer would be reported."""
    fake = tmp_path / "rules.py"
    fake.write_text("from .tracking import Tracker\n")
    assert "tracking" in _imports("rules", fake, {"rules", "tracking"})
    assert LAYER_OF["tracking"] > LAYER_OF["rules"]

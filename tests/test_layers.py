"""The package's layers: a module imports only its own layer and those below it (docs/architecture.md).

Every import counts, those inside functions too. A new module must be given a layer here (the test fails
for a module it does not know), so the picture in the docs and the code cannot drift apart.
"""

import ast
from pathlib import Path

from .conftest import REPO

# bottom to top; a module may import its own layer and every layer before it
LAYERS = {
    "core": ["errors", "config", "seeding", "features", "rules", "network", "genome", "learners",
             "fused", "cuda_graphs", "malloc", "safe_pt2", "rule_data", "tasks", "tasks.episodes",
             "tasks.sinusoid", "tasks.images", "tasks.classification"],
    "lifetime": ["lifetime"],
    "scoring": ["evaluation"],
    "parallel evaluation": ["parallel", "parallel.placement", "parallel.ray_pool", "parallel.recipes",
                            "parallel.rows"],
    "outer trainers": ["trainers", "trainers.base", "trainers.loop", "trainers.es", "trainers.bptt",
                       "trainers.pes", "trainers.nres", "trainers.hybrid", "trainers.searchers"],
    "science and benchmarks": ["science", "science.report", "science.baselines", "science.analysis",
                               "science.stats", "science.over_seeds", "science.reproduction", "bench", "bench.timing",
                               "bench.compare", "bench.workloads", "bench.verdict",
                               "export"],
    "runs": ["runs", "cli", "runs.guards", "runs.tracking", "runs.run_page", "runs.plots", "runs.checkpoint",
             "runs.progress", "runs.signals", "runs.preflight", "runs.artifacts", "runs.callbacks", "runs.evolve",
             "runs.finetune", "runs.train", "runs.model_links", "runs.portable", "runs.session", "runs.pipeline",
             "runs.evaluate"],
    "front door": ["evoplast"],          # the package itself: evoplast.evolve (scripts sit beside it)
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
    package = "" if package == "evoplast" else package           # the root package's own modules: "runs", ...
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


def test_the_package_front_door_is_seen_importing_the_runs(tmp_path):
    """``evoplast/__init__.py`` imports the pipeline (``evoplast.evolve``): the check resolves its relative imports."""
    assert "runs.pipeline" in _imports("evoplast", Path(REPO) / "evoplast" / "__init__.py", set(_modules()))


def test_the_check_sees_an_upward_import(tmp_path):
    """The test can fail: a core module that imported the tracking layer would be reported."""
    fake = tmp_path / "rules.py"
    fake.write_text("from .runs.tracking import Tracker\n")
    assert "runs.tracking" in _imports("rules", fake, {"rules", "runs.tracking"})
    assert LAYER_OF["runs.tracking"] > LAYER_OF["rules"]


def _named_paths(text: str) -> list[str]:
    """Repository paths a text names: ``evoplast/...``, ``scripts/...``, ``tests/...``, ``configs/...``,
    ``docs/...``, ``cluster/...`` (placeholders such as ``<run id>`` aside)."""
    import re

    pattern = r"(?<![\w/.-])((?:evoplast|scripts|tests|configs|docs|cluster)/[\w./-]*\w)"
    return [m.group(1) for m in re.finditer(pattern, text)
            if not set(text[m.end():m.end() + 2]) & set("*<{") and not re.search(r"(?<![a-z])[A-Z]{3,}(?![a-z])", m.group(1))]


def _exists(root: Path, named: str) -> bool:
    """A file or folder, or an output prefix (``--out docs/reproduction/blocked`` writes ``blocked.md``, ...)."""
    return any((root / (named + ext)).exists() for ext in ("", ".md", ".json", ".png"))


def test_docs_and_code_name_only_files_that_exist():
    """No reference to a file that is not in the repository (a moved module, a design note kept elsewhere)."""
    root = Path(REPO)
    texts = [root / "README.md", *root.glob("docs/*.md"), *root.glob("evoplast/**/*.py"), *root.glob("scripts/*.py"),
             *root.glob("configs/*.yaml")]
    missing = sorted({f"{p} (in {t.relative_to(root)})" for t in texts for p in _named_paths(t.read_text())
                      if not _exists(root, p)})
    assert not missing, "\n".join(missing)
    assert not [t for t in texts if "DESIGN §" in t.read_text() or "DESIGN.md" in t.read_text()]


def test_the_reference_check_sees_a_missing_file():
    assert _named_paths("see `evoplast/evolution/run.py`, scripts/bench_*.py, scripts/bench_<name>.py and "
                        "scripts/bench_NAME.py") == ["evoplast/evolution/run.py"]
    assert not (Path(REPO) / "evoplast" / "evolution" / "run.py").exists()

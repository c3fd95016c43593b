"""Run <-> registered model: a version whose source run is the run that produced the rule, a parent run that
lists its versions, an export run that says what it is, a registered model with a description, tags and a
``recommended`` alias (``scripts/export.py``).

Everything goes through an ``MlflowClient`` (:attr:`evoplast.runs.tracking.Tracker.client`); the text comes from
:mod:`evoplast.runs.run_page`.
"""

from __future__ import annotations

from typing import Any, Optional

from .run_page import model_link, run_link

RECOMMENDED = "recommended"     # the alias of the version of the genome its run recommends


def model_description(name: str) -> str:
    """The registered model's description: what its versions are and how to load one."""
    return "\n".join([
        f"Learned local plasticity rules exported by evoplast (`scripts/export.py`), one version per export. "
        f"Each version's description writes the rule out with its coefficients and links the run that produced "
        f"it; its tags give the task, the rule, the held-out query loss and which genome it is.", "",
        f"The alias `{RECOMMENDED}` is the latest export of the genome its run recommends (the fine-tuned one "
        f"when fine-tuning helped on held-out episodes).", "",
        "```", f"step = mlflow.pytorch.load_model('models:/{name}@{RECOMMENDED}')   # or torch.export.load(file)",
        "```"])


def register_version(client, name: str, model_uri: str, model_id: Optional[str], *, source_run: str,
                     description: str, tags: dict[str, Any]):
    """A new version of ``name`` (created with a description and tags when missing) whose source run is
    ``source_run`` (the run that produced the genome, not the export run that logged the file)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, tags={"project": "evoplast"}, description=model_description(name))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(name, source=model_uri, run_id=source_run, description=description,
                                       tags={k: str(v) for k, v in tags.items()},
                                       model_id=model_id)


def tag_model(client, name: str, version: Any, *, task: str, rule: str, recommended: bool) -> None:
    """The registered model's tags (tasks and rules of its versions) and the ``recommended`` alias."""
    model = client.get_registered_model(name)
    for key, value in (("tasks", task), ("rules", rule)):
        have = [v for v in (model.tags.get(key) or "").split(", ") if v]
        if value not in have:
            client.set_registered_model_tag(name, key, ", ".join([*have, value]))
    if not model.description:
        client.update_registered_model(name, description=model_description(name))
    if recommended:
        client.set_registered_model_alias(name, RECOMMENDED, str(version))


def list_version_on_run(client, run_id: str, name: str, version: Any, which: str) -> None:
    """The run (an evolution run) lists its registered versions: a tag ``registered_versions``
    (``evoplast-rule v1 (finetuned), ...``) and a line of links in its description, above its next commands."""
    run = client.get_run(run_id)
    entry = f"{name} v{version} ({which})"
    have = [v for v in (run.data.tags.get("registered_versions") or "").split(", ") if v]
    client.set_tag(run_id, "registered_versions", ", ".join([*have, entry]))
    note = run.data.tags.get("mlflow.note.content", "")
    link = f"{model_link(name, version)} ({which})"
    marker = "**Registered versions**: "
    if marker in note:
        head, tail = note.split(marker, 1)
        line, rest = (tail.split("\n", 1) + [""])[:2]
        note = f"{head}{marker}{line}, {link}\n{rest}".rstrip("\n")
    elif "\n### Next" in note:
        head, tail = note.split("\n### Next", 1)
        note = f"{head.rstrip()}\n\n{marker}{link}\n\n### Next{tail}"
    else:
        note = f"{note.rstrip()}\n\n{marker}{link}"
    client.set_tag(run_id, "mlflow.note.content", note)


def export_description(*, which: str, evolution_run: str, source_run: str, experiment_id: str, name: str,
                       version: Any, score: str, file: str, equations, legend: str) -> str:
    """The export run's description: what was exported from which run, where it is registered."""
    source = (f"from the fine-tune {run_link(experiment_id, source_run)} of the evolution run "
              f"{run_link(experiment_id, evolution_run)}" if source_run != evolution_run else
              f"from the evolution run {run_link(experiment_id, evolution_run)}")
    return "\n".join([f"**Export of the {which} rule**, held-out query loss **{score}**, registered as "
                      f"{model_link(name, version)}; {source}. File `{file}` (torch.export, no pickles).", "",
                      "```", *equations, "```", legend])

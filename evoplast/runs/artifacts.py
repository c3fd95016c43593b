"""Reading what an evolution (or fine-tune) run left behind: its config and its genomes.

Everything is loaded with ``torch.load(weights_only=True)`` or ``yaml.safe_load``: a run's artifacts
are data, never code.
"""

from __future__ import annotations

import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import yaml

from .checkpoint import CheckpointError, load_checkpoint
from ..config import Config, from_dict, merge_overrides, upgrade
from ..errors import WorldError
from .tracking import Tracker


class RunArtifactsError(WorldError):
    """A run (or file) that does not hold what was asked for; the message says what is missing."""


@dataclass
class Candidates:
    """Genomes to continue from, best first, with where they came from."""

    cfg: Config
    genomes: torch.Tensor            # [k, D] in the evolution spec of cfg
    labels: list[str]                # e.g. "center", "population #1"
    run_id: Optional[str]            # the evolution run, if any


def _safe_load(path: str | Path, what: str) -> dict:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunArtifactsError(f"{what} is corrupt or truncated ({first[:100]})") from None
    if not isinstance(data, dict):
        raise RunArtifactsError(f"{what} is not an evoplast file")
    return data


def download(tracker: Tracker, run_id: str, artifact: str, dst: str | Path) -> Path:
    """Download one artifact of a run, or explain in one line that the run does not have it."""
    names = {a.path for a in tracker.client.list_artifacts(run_id)}
    if artifact not in names:
        hint = (f"; fine-tune its checkpoint with --checkpoint checkpoints/{run_id}/latest.pt"
                if "checkpoint" in names else "")
        raise RunArtifactsError(f"run {run_id} has no artifact {artifact!r} (it has: {', '.join(sorted(names)) or 'none'}): "
                                f"it has not finished — resume it with scripts/evolve.py --resume {run_id}{hint}")
    return Path(tracker.client.download_artifacts(run_id, artifact, str(dst)))


def config_of_run(tracker: Tracker, run_id: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    tracker.get_run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        text = download(tracker, run_id, "config.yaml", tmp).read_text()
    return from_dict(merge_overrides(upgrade(yaml.safe_load(text)), overrides))


def candidates_from_run(tracker: Tracker, run_id: str, top_k: int,
                        overrides: list[str] | tuple[str, ...] = ()) -> Candidates:
    """The run's recommended genome (the search center) and then its last population, best first."""
    cfg = config_of_run(tracker, run_id, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        best = _safe_load(download(tracker, run_id, "best_genome.pt", tmp), f"best_genome.pt of run {run_id}")
        genomes, labels = [best["genome"].reshape(1, -1)], ["center"]
        if top_k > 1:
            pop = _safe_load(download(tracker, run_id, "population.pt", tmp), f"population.pt of run {run_id}")
            _check_top_k(top_k, len(pop["genomes"]), f"run {run_id}")
            genomes.append(pop["genomes"][:top_k - 1])
            labels += [f"population #{i + 1}" for i in range(min(top_k - 1, len(pop["genomes"])))]
    return Candidates(cfg, torch.cat(genomes).float(), labels, run_id)


def candidates_from_checkpoint(path: str | Path, top_k: int,
                               overrides: list[str] | tuple[str, ...] = ()) -> Candidates:
    """The same, from an evolution checkpoint file (its searcher state is rebuilt on the CPU)."""
    from ..evaluation import Evaluator
    from ..trainers.es import ESTrainer

    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise RunArtifactsError(str(exc)) from None
    cfg = from_dict(merge_overrides(upgrade(yaml.safe_load(ckpt["config_yaml"])), overrides))
    local = cfg.replace(**{"ray.num_actors": 0})
    ev = Evaluator(local)
    trainer = ESTrainer(local, ev.spec.initial_vector(), ev.fitness)
    trainer.load_state_dict(ckpt["trainer"])
    pop, _ = trainer.population()
    if top_k > 1:
        _check_top_k(top_k, len(pop), f"checkpoint {str(path)!r}")
    genomes = torch.cat([trainer.center().reshape(1, -1), pop[:top_k - 1]])
    labels = ["center"] + [f"population #{i + 1}" for i in range(len(genomes) - 1)]
    return Candidates(cfg, genomes, labels, ckpt.get("mlflow_run_id"))


def _check_top_k(top_k: int, population: int, where: str) -> None:
    """More genomes asked for than the center and the last population hold: refused (exit 2), not clamped."""
    if top_k > population + 1:
        from ..errors import UsageError

        raise UsageError(f"top-k {top_k} (--top-k or finetune.top_k) asks for more genomes than {where} holds: "
                         f"{population + 1} (the center and a population of {population}); ask for at most "
                         f"{population + 1}")


def genome_record(genome: torch.Tensor, spec, cfg: Config, generation: int, heldout_loss: Optional[float]) -> dict:
    """What ``best_genome.pt`` holds (``torch.save`` it; :func:`load_genome_file` reads it back): the flat
    genome ``[D]``, its segments by name (``spec.decode``), the config and where the run was."""
    from ..config import to_yaml

    values = spec.decode(genome.to(torch.float32))
    return {"format": "evoplast.genome", "version": 1, "genome": genome,
            "segments": {k: v.contiguous() for k, v in values.items()}, "config_yaml": to_yaml(cfg),
            "generation": generation, "heldout_loss": heldout_loss}


def load_genome_file(path: str | Path, what: str) -> dict:
    """A ``best_genome.pt`` / ``finetuned_genome.pt`` file: ``segments`` by name, ``config_yaml``, ..."""
    data = _safe_load(path, what)
    if data.get("format") not in ("evoplast.genome", "evoplast.finetuned_genome") or "segments" not in data:
        raise RunArtifactsError(f"{what} is not an evoplast genome file")
    return data


def genome_of_run(tracker: Tracker, run_id: str, which: str = "best") -> tuple[dict, str]:
    """``(genome file, run it came from)``: the run's ``best_genome.pt``, or for ``which="finetuned"`` the
    ``finetuned_genome.pt`` of the run itself (a fine-tune run) or of its latest finished nested fine-tune."""
    run = tracker.get_run(run_id)
    source, artifact = run_id, "best_genome.pt"
    if which == "finetuned":
        artifact = "finetuned_genome.pt"
        if artifact not in {a.path for a in tracker.client.list_artifacts(run_id)}:
            children = tracker.client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'",
                                                  order_by=["attributes.start_time DESC"])
            tuned = [r.info.run_id for r in children if r.info.status == "FINISHED" and
                     artifact in {a.path for a in tracker.client.list_artifacts(r.info.run_id)}]
            if not tuned:
                raise RunArtifactsError(f"run {run_id} has no finished fine-tune; run "
                                        f"`python scripts/finetune.py --run-id {run_id}` first")
            source = tuned[0]
    with tempfile.TemporaryDirectory() as tmp:
        genome = load_genome_file(download(tracker, source, artifact, tmp), f"{artifact} of run {source}")
    return genome, source

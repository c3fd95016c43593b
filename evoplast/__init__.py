"""evoplast: discover local plasticity rules with meta-learned feedback, by evolution strategies.

The default pipeline is one call (what ``python scripts/evolve.py`` runs)::

    from evoplast import evolve
    from evoplast.config import load_config

    result = evolve(load_config("configs/default.yaml"))      # ES, then BPTT from the search center
    result.evolution.report["loss"], result.finetune.after[0]["loss"]

The package's layers (docs/architecture.md): the core lifetime at the top level (``config``, ``genome``,
``network``, ``rules``, ``learners``, ``lifetime``, ``tasks``, ``evaluation``: pure tensor code, neither Ray
nor MLflow), then ``parallel/`` (placement, Ray pool), ``trainers/`` (ES, BPTT, PES, hybrid, the outer loop),
``science/`` and ``bench/``, and ``runs/`` (the run session, tracking, checkpoints, the commands).
"""

__version__ = "0.1.0"


def __getattr__(name):
    # ``evoplast.evolve`` without importing torch, MLflow and Ray on ``import evoplast``
    if name == "evolve":
        from .runs.pipeline import evolve

        return evolve
    raise AttributeError(f"module 'evoplast' has no attribute {name!r}")


__all__ = ["evolve", "__version__"]

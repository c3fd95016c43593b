"""A store that can be copied or moved: artifact locations relative to the working directory.

MLflow writes every experiment's artifact location as an absolute path (``<cwd>/mlruns/<id>``), so a copied
``mlflow.db`` + ``mlruns/`` still points at the original's files (or at nothing once it is moved). For the
default store, ``sqlite:///mlflow.db`` (a path relative to the working directory, like ``./mlruns``), an
experiment evoplast creates gets the relative location ``mlruns/<id>`` instead: its runs' artifacts, logged
models and registered versions are then found beside the database wherever the folder is, by any process
started in it (``mlflow ui --backend-store-uri sqlite:///mlflow.db`` included). Stores named by an absolute
path or a server keep MLflow's absolute locations (docs/tracking-ux.md says how to move those).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path


def relative_sqlite_path(uri: str) -> str | None:
    """``"sqlite:///mlflow.db" -> "mlflow.db"``; None for an absolute path (``sqlite:////...``) or another store."""
    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:////"):
        return None
    return uri[len("sqlite:///"):].split("?", 1)[0]


def make_relative(uri: str, experiment_id: str, location: str) -> str:
    """Store the artifact location of experiment ``experiment_id`` as ``mlruns/<id>`` when the store ``uri`` is a
    relative sqlite path and ``location`` is MLflow's default (``<cwd>/mlruns/<id>``, a path or ``file://`` URI);
    returns the location now stored (unchanged otherwise)."""
    db = relative_sqlite_path(uri)
    plain = location[len("file://"):] if location.startswith("file://") else location
    default = Path.cwd() / "mlruns" / str(experiment_id)
    if db is None or Path(plain) != default:
        return location
    relative = f"mlruns/{experiment_id}"
    with closing(sqlite3.connect(db, timeout=30)) as con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                    (relative, int(experiment_id)))
        con.commit()
    return relative

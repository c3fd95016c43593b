"""Atomic, self-describing checkpoint files that load with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import WorldError

FORMAT = "evoplast.runs.checkpoint"
VERSION = 1


class CheckpointError(WorldError):
    """A checkpoint that cannot be used; the message says why in one line."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same directory, fsync, rename.

    A kill at any moment leaves either the previous file or the new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():          # a failed write leaves no stray file behind
            tmp.unlink()
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:           # unreadable, or a truncated zip that torch reports as a file error
        if exc.filename and exc.strerror:
            raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({exc.strerror})") from None
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated ({_first(exc)[:120]})") from None
    except Exception as exc:         # every other way a damaged file fails to unpickle
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated ({_first(exc)[:120]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an evoplast checkpoint")
    if data.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format version {data.get('version')}, "
                              f"this evoplast reads version {VERSION}")
    return data


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

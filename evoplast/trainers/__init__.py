"""Outer trainers, peers over one lifetime: ES, BPTT (full / truncated / checkpointed), PES, NRES, hybrid.

Each follows :class:`~evoplast.trainers.base.OuterTrainer`; :func:`make_trainer` builds one by name.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..config import Config
from .base import METRICS, OuterTrainer
from .bptt import BPTTTrainer
from .es import ESTrainer
from .hybrid import HybridTrainer
from .nres import NRESTrainer
from .pes import PESTrainer

TRAINERS = {"es": ESTrainer, "bptt": BPTTTrainer, "pes": PESTrainer, "hybrid": HybridTrainer, "nres": NRESTrainer}

__all__ = ["METRICS", "OuterTrainer", "ESTrainer", "BPTTTrainer", "PESTrainer", "NRESTrainer", "HybridTrainer", "TRAINERS",
           "make_trainer"]


def make_trainer(name: str, cfg: Config, genome: Optional[Tensor] = None, **kwargs) -> OuterTrainer:
    """The trainer ``name`` (one of :data:`TRAINERS`) for ``cfg``, from ``genome [D]`` (default: the
    spec's initial vector); ``kwargs`` go to its constructor."""
    if name not in TRAINERS:
        raise ValueError(f"unknown trainer {name!r}: expected one of {', '.join(map(repr, TRAINERS))}")
    return TRAINERS[name](cfg, genome, **kwargs)

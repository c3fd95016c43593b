"""The hybrid: ES for a share of the budget, then BPTT from the ES center (the mission's evolve -> fine-tune)."""

from __future__ import annotations

import time
from typing import Any, Optional

from torch import Tensor

from ..config import Config
from .bptt import BPTTTrainer
from .es import ES_METRICS, ESTrainer


class HybridTrainer:
    """ES (``cfg.search``) until ``es_generations`` generations or ``es_seconds`` CPU seconds of ES steps
    (``time.process_time``: wall-clock on an idle core with one thread, whatever else a shared machine
    runs), whichever comes first, then BPTT (``cfg.finetune`` and the keyword arguments) from the ES center.

    The switch is a state (``phase``), so a resumed hybrid switches where the uninterrupted one did. Its
    steps carry the common metrics plus ``phase`` (0 = ES, 1 = BPTT).
    """

    name = "hybrid"

    def __init__(self, cfg: Config, genome: Optional[Tensor] = None, *, es_generations: Optional[int] = None,
                 es_seconds: Optional[float] = None, **bptt_kwargs):
        if es_generations is None and es_seconds is None:
            raise ValueError("the hybrid needs es_generations or es_seconds (when to switch to BPTT)")
        self.cfg = cfg
        self.es = ESTrainer(cfg, genome)
        self.es_generations, self.es_seconds = es_generations, es_seconds
        self.bptt_kwargs = bptt_kwargs
        self.bptt: Optional[BPTTTrainer] = None
        self.es_elapsed = 0.0

    @property
    def phase(self) -> int:
        return 0 if self.bptt is None else 1

    def _switch_due(self) -> bool:
        g = self.es.generation
        return ((self.es_generations is not None and g >= self.es_generations) or
                (self.es_seconds is not None and self.es_elapsed >= self.es_seconds))

    def step(self) -> dict[str, float]:
        if self.bptt is None and self._switch_due():
            self.bptt = BPTTTrainer(self.cfg, self.es.best(), **self.bptt_kwargs)
        if self.bptt is None:
            t0 = time.process_time()
            m = {k: v for k, v in self.es.step().items() if k in ES_METRICS}
            self.es_elapsed += time.process_time() - t0
        else:
            m = self.bptt.step()
        return {**m, "phase": float(self.phase)}

    def best(self) -> Tensor:
        return self.es.best() if self.bptt is None else self.bptt.best()

    def state_dict(self) -> dict[str, Any]:
        return {"trainer": self.name, "es": self.es.state_dict(), "es_elapsed": self.es_elapsed,
                "bptt": None if self.bptt is None else self.bptt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.es.load_state_dict(state["es"])
        self.es_elapsed = float(state["es_elapsed"])
        self.bptt = None
        if state["bptt"] is not None:
            self.bptt = BPTTTrainer(self.cfg, self.es.best(), **self.bptt_kwargs)
            self.bptt.load_state_dict(state["bptt"])

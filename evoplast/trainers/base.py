"""The protocol every outer trainer follows (docs/architecture.md), as in learned_optimization.

An outer trainer consumes the inner problem (the batched lifetime of :mod:`evoplast.lifetime`), which
knows nothing of it. Every trainer has:

* ``step() -> dict[str, float]``: one update of the genome(s); the dict always has :data:`METRICS`;
* ``state_dict()`` / ``load_state_dict(state)``: everything that changes during a run, so that running
  N steps equals running k steps, saving, loading into a fresh trainer and running N - k (bit for bit);
* ``best() -> Tensor [D]``: the genome the trainer recommends now (flat, in the config's genome spec).

Randomness is derived from ``(seed, step)``, never carried in a global generator.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

# Metric names every trainer's step() returns:
#   meta_loss: the loss the trainer optimised in this step (ES: mean over the population; BPTT: the
#              meta-loss; PES: mean over the particles of the truncation's loss), lower is better
#   lifetimes: lifetimes' worth of lifetime steps simulated in this step (B lifetimes x steps / T)
#   seconds:   wall-clock seconds of the step
METRICS = ("meta_loss", "lifetimes", "seconds")


@runtime_checkable
class OuterTrainer(Protocol):
    name: str

    def step(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def best(self) -> Tensor: ...


def optimizer_state(optimizer) -> dict[str, Any]:
    """A deep copy of ``optimizer.state_dict()`` (its tensors keep changing in place otherwise)."""
    return copy.deepcopy(optimizer.state_dict())

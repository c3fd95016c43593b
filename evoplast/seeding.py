"""Derived randomness: every random stream of a run comes from ``(run seed, purpose, indices)``.

Nothing random is carried between processes: an actor that evaluates generation ``g`` rebuilds its
episodes from ``derive_seed(seed, Purpose.TRAIN, g, episode)``, so results do not depend on which
process (or how many) evaluates a genome.
"""

from __future__ import annotations

import enum

import numpy as np
import torch


class Purpose(enum.IntEnum):
    """Independent random streams of one run."""

    INIT = 0       # fixed / initial network parameters of the genome spec
    TRAIN = 1      # episodes of an evolution generation
    HELDOUT = 2    # held-out evaluation episodes (the same for every report of a run)
    SEARCH = 3     # the searcher's own sampling
    BASELINE = 4   # random parts of baselines (feedback-alignment matrices)
    FINETUNE = 5   # episodes of gradient meta-training steps
    VALIDATION = 6 # episodes that choose between candidates (never the held-out ones)


def derive_seed(seed: int, purpose: Purpose, *indices: int) -> int:
    """A 63-bit seed that depends on ``(seed, purpose, *indices)`` and on nothing else.

    Uses NumPy's SeedSequence, so nearby inputs give statistically independent streams.
    """
    seq = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(purpose), *map(int, indices)))
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def generator(seed: int, purpose: Purpose, *indices: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed`.

    CPU on purpose: a CUDA generator gives other numbers for the same seed, and streams must be
    identical whichever device evaluates them. Generated tensors are small and are moved afterwards.
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(seed, purpose, *indices))
    return gen

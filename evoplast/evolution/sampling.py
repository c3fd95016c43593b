"""A population as a recipe: the search distribution and the seed that sampled it, O(D) instead of O(P·D).

EvoTorch's Gaussian searchers (PGPE: ``SymmetricSeparableGaussian``; SNES: ``ExpSeparableGaussian``; CEM: ``SeparableGaussian``)
sample a generation as ``distribution.sample(out=values [P, D], generator=problem)``, and evoplast
reseeds the problem's generator from ``(seed, generation)`` before every generation
(:meth:`~evoplast.evolution.problem.LifetimeProblem.begin_generation`), with no other draw in between.
So the distribution's parameters (``mu``, ``sigma``: 2·D numbers) and that seed regenerate the whole
population bit for bit in any process: a Ray actor receives the recipe once per generation and samples
its own slice. :func:`checksum` lets the driver confirm that the slice an actor evaluated is the slice
EvoTorch sampled.

CMA-ES (its own sampler, a D×D covariance unless separable) and XNES (a D×D ``A`` matrix) have no
O(D) recipe here: their genomes are sent as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass
class PopulationRecipe:
    """What regenerates a population ``[popsize, D]``: a distribution class, its parameters, a seed."""

    distribution: type
    parameters: dict[str, Any]      # mu [D], sigma [D] and scalar options, plain CPU tensors
    solution_length: int
    popsize: int
    seed: int

    def sample(self) -> torch.Tensor:
        """``[popsize, D]`` float32 on the CPU: exactly the values EvoTorch sampled in the driver."""
        dist = self.distribution(dict(self.parameters), solution_length=self.solution_length,
                                 dtype=torch.float32, device="cpu")
        out = torch.empty(self.popsize, self.solution_length, dtype=torch.float32)
        dist.sample(out=out, generator=torch.Generator(device="cpu").manual_seed(self.seed))
        return out.as_subclass(torch.Tensor)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors it carries (what crosses the network, beside a few hundred of framing)."""
        return sum(v.numel() * v.element_size() for v in self.parameters.values() if isinstance(v, torch.Tensor))


def supported(searcher: Any) -> bool:
    """Whether ``searcher`` samples from a separable Gaussian through the problem's generator."""
    from evotorch.algorithms.distributed.gaussian import GaussianSearchAlgorithm
    from evotorch.distributions import ExpSeparableGaussian, SeparableGaussian, SymmetricSeparableGaussian

    dist = getattr(searcher, "_distribution", None)
    kinds = (SeparableGaussian, SymmetricSeparableGaussian, ExpSeparableGaussian)   # mu + sigma * N(0, 1)
    return (isinstance(searcher, GaussianSearchAlgorithm) and type(dist) in kinds
            and getattr(searcher, "_num_interactions", None) is None)


def recipe_of(searcher: Any, popsize: int, seed: int) -> Optional[PopulationRecipe]:
    """The recipe of the population ``searcher`` has just sampled with a generator seeded ``seed``, or
    None when the searcher is not :func:`supported`."""
    if not supported(searcher):
        return None
    dist = searcher._distribution
    params = {k: (v.detach().cpu().as_subclass(torch.Tensor).clone() if isinstance(v, torch.Tensor) else v)
              for k, v in dist.parameters.items()}
    return PopulationRecipe(type(dist), params, int(dist.solution_length), int(popsize), int(seed))


def checksum(values: torch.Tensor) -> int:
    """An exact fingerprint of float32 ``values [n, D]``: the sum of their bit patterns (int64).
    Equal for bit-identical tensors; any sampling difference changes it except by a vanishing chance."""
    v = values.detach().contiguous().to(torch.float32).as_subclass(torch.Tensor)
    bits = v.view(torch.int32).to(torch.int64)
    weights = torch.arange(1, bits.shape[-1] + 1, dtype=torch.int64) if bits.dim() else 1
    return int((bits * weights).sum())

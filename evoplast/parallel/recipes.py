"""A population as a recipe: the search distribution and the seed that sampled it, O(D) instead of O(P·D).

evoplast reseeds the problem's generator from ``(seed, generation)`` before every generation
(:meth:`~evoplast.trainers.es.LifetimeProblem.begin_generation`). With the ``rows-v1`` sampling
scheme (:mod:`~evoplast.parallel.rows`, every run since it exists) each row of the population is drawn
from its own generator keyed by that seed and the row index, so a Ray actor that receives the recipe
(the distribution's ``mu``, ``sigma`` and the seed: O(D) numbers) samples **only the rows it evaluates**,
bit for bit the rows the driver sampled, whatever the number of actors or chunks.

The row distributions are EvoTorch's, with their sampler replaced (:func:`set_sampling`):
PGPE (``SymmetricSeparableGaussian``: antithetic pairs stay pairs, rows ``2k``/``2k+1`` share ``e_k``),
SNES (``ExpSeparableGaussian``), CEM (``SeparableGaussian``) and separable CMA-ES (``x = m + sigma·(A·z)``
with a diagonal ``A``). Full CMA-ES and XNES (D×D matrices) send their genomes.

Runs checkpointed before ``rows-v1`` used the ``population`` scheme (EvoTorch's own sampler: one
generator for the whole population); they resume with it, and their recipes regenerate the whole
population to take a slice, as they did then. :func:`checksum` lets the driver confirm that the slice
an actor evaluated is the slice the searcher sampled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
from evotorch.algorithms import CMAES
from evotorch.distributions import ExpSeparableGaussian, SeparableGaussian, SymmetricSeparableGaussian

from .rows import SCHEME, normal_rows, symmetric_rows

POPULATION = "population"        # the scheme before rows-v1: EvoTorch's sampler, one generator
SCHEMES = (POPULATION, SCHEME)


def _key(generator: Any) -> int:
    """The generation's key: the seed the problem's generator was set to (``begin_generation``)."""
    gen = getattr(generator, "generator", generator)
    if not isinstance(gen, torch.Generator):
        raise RuntimeError("row sampling needs the problem's seeded generator")
    return int(gen.initial_seed())


def gaussian_rows(parameters: dict, key: int, start: int, stop: int, dim: int, *, symmetric: bool,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Rows ``start:stop`` ``[n, D]`` of ``mu + sigma * e`` (``e`` antithetic when ``symmetric``)."""
    values = (symmetric_rows if symmetric else normal_rows)(key, start, stop, dim, device)
    values.mul_(parameters["sigma"].to(values.device))        # two ops, in place: the same bits everywhere
    return values.add_(parameters["mu"].to(values.device))


def cmaes_rows(parameters: dict, key: int, start: int, stop: int, dim: int,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Separable CMA-ES rows ``start:stop``: ``(z, y = A·z, x = m + sigma·y)``, each ``[n, D]``."""
    zs = normal_rows(key, start, stop, dim, device)
    ys = parameters["A"].to(zs.device).unsqueeze(0) * zs
    xs = parameters["m"].to(zs.device).unsqueeze(0) + parameters["sigma"].to(zs.device) * ys
    return zs, ys, xs


class _RowFill:
    """Mixin: ``_fill`` draws the population row by row (:func:`gaussian_rows`)."""

    SYMMETRIC = False

    def _fill(self, out: torch.Tensor, *, generator: Optional[torch.Generator] = None):
        t0 = time.perf_counter()
        out.copy_(gaussian_rows(self.parameters, _key(generator), 0, out.shape[0], out.shape[1],
                                symmetric=self.SYMMETRIC, device=out.device))
        _timed(generator, t0)


def _timed(problem: Any, t0: float) -> None:
    """Tell the problem (``LifetimeProblem.sample_seconds``) how long the driver's sampling took."""
    if hasattr(problem, "sample_seconds"):
        problem.sample_seconds = time.perf_counter() - t0


class RowSeparableGaussian(_RowFill, SeparableGaussian):
    """CEM's distribution, sampled row by row."""


class RowSymmetricSeparableGaussian(_RowFill, SymmetricSeparableGaussian):
    """PGPE's antithetic distribution, sampled row by row (pairs stay pairs)."""

    SYMMETRIC = True


class RowExpSeparableGaussian(_RowFill, ExpSeparableGaussian):
    """SNES's distribution, sampled row by row."""


_ROW_OF = {SeparableGaussian: RowSeparableGaussian, SymmetricSeparableGaussian: RowSymmetricSeparableGaussian,
           ExpSeparableGaussian: RowExpSeparableGaussian}
_PLAIN_OF = {v: k for k, v in _ROW_OF.items()}


class RowCMAES(CMAES):
    """Separable CMA-ES whose ``z`` are drawn row by row (:func:`cmaes_rows`); otherwise EvoTorch's."""

    def sample_distribution(self, num_samples: Optional[int] = None):
        if not self.separable:
            return super().sample_distribution(num_samples)
        n = self.popsize if num_samples is None else num_samples
        t0 = time.perf_counter()
        zs, ys, xs = cmaes_rows({"A": self.A, "m": self.m, "sigma": self.sigma}, _key(self._problem), 0, n,
                                self._problem.solution_length, device=self.m.device)
        _timed(self._problem, t0)
        return zs, ys, xs


def set_sampling(searcher: Any, scheme: str) -> None:
    """Make ``searcher`` sample with ``scheme`` (``rows-v1`` or ``population``); searchers without a
    row sampler (full CMA-ES, XNES) are left as they are. Raises ValueError for an unknown scheme."""
    if scheme not in SCHEMES:
        raise ValueError(f"sampling scheme {scheme!r} is unknown to this evoplast (it knows {', '.join(SCHEMES)})")
    if isinstance(searcher, CMAES):
        if searcher.separable:
            searcher.__class__ = RowCMAES if scheme == SCHEME else CMAES
        return
    dist = getattr(searcher, "_distribution", None)
    if dist is None:
        return
    table = _ROW_OF if scheme == SCHEME else _PLAIN_OF
    cls = table.get(type(dist))
    if cls is not None:
        searcher._distribution = cls(parameters=dict(dist.parameters), dtype=dist.dtype, device=dist.device)


def sampling_of(searcher: Any) -> str:
    """The scheme ``searcher`` samples with now."""
    if isinstance(searcher, RowCMAES) or type(getattr(searcher, "_distribution", None)) in _PLAIN_OF:
        return SCHEME
    return POPULATION


@dataclass
class PopulationRecipe:
    """What regenerates a population ``[popsize, D]``: a distribution class, its parameters, a seed."""

    distribution: type              # an EvoTorch distribution class, or RowCMAES
    parameters: dict[str, Any]      # mu [D], sigma [D] (CMA-ES: m [D], sigma [], A [D]) and scalar options
    solution_length: int
    popsize: int
    seed: int
    scheme: str = POPULATION

    def sample(self, start: int = 0, stop: Optional[int] = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """Rows ``start:stop`` ``[n, D]`` float32: exactly the values the driver sampled. ``rows-v1`` draws
        only those rows; ``population`` draws the whole population on the CPU and slices it."""
        stop = self.popsize if stop is None else stop
        if self.scheme == SCHEME:
            if self.distribution is RowCMAES:
                return cmaes_rows(self.parameters, self.seed, start, stop, self.solution_length, device)[2]
            return gaussian_rows(self.parameters, self.seed, start, stop, self.solution_length,
                                 symmetric=issubclass(self.distribution, SymmetricSeparableGaussian), device=device)
        dist = self.distribution(dict(self.parameters), solution_length=self.solution_length,
                                 dtype=torch.float32, device="cpu")
        out = torch.empty(self.popsize, self.solution_length, dtype=torch.float32)
        dist.sample(out=out, generator=torch.Generator(device="cpu").manual_seed(self.seed))
        return out.as_subclass(torch.Tensor)[start:stop].to(device)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors it carries (what crosses the network, beside a few hundred of framing)."""
        return sum(v.numel() * v.element_size() for v in self.parameters.values() if isinstance(v, torch.Tensor))


def supported(searcher: Any) -> bool:
    """Whether ``searcher`` has an O(D) recipe: a separable Gaussian sampled through the problem's
    generator (either scheme), or separable CMA-ES sampled by rows."""
    from evotorch.algorithms.distributed.gaussian import GaussianSearchAlgorithm

    if isinstance(searcher, RowCMAES):
        return bool(searcher.separable)
    dist = getattr(searcher, "_distribution", None)
    kinds = (*_ROW_OF, *_PLAIN_OF)              # mu + sigma * N(0, 1)
    return (isinstance(searcher, GaussianSearchAlgorithm) and type(dist) in kinds
            and getattr(searcher, "_num_interactions", None) is None)


def _plain(v: Any) -> Any:
    return v.detach().cpu().as_subclass(torch.Tensor).clone() if isinstance(v, torch.Tensor) else v


def recipe_of(searcher: Any, popsize: int, seed: int) -> Optional[PopulationRecipe]:
    """The recipe of the population ``searcher`` has just sampled with a generator seeded ``seed``, or
    None when the searcher is not :func:`supported`."""
    if not supported(searcher):
        return None
    if isinstance(searcher, RowCMAES):
        params = {"m": _plain(searcher.m), "sigma": _plain(torch.as_tensor(searcher.sigma)), "A": _plain(searcher.A)}
        return PopulationRecipe(RowCMAES, params, int(searcher.m.numel()), int(popsize), int(seed), SCHEME)
    dist = searcher._distribution
    params = {k: _plain(v) for k, v in dist.parameters.items()}
    return PopulationRecipe(type(dist), params, int(dist.solution_length), int(popsize), int(seed),
                            SCHEME if type(dist) in _PLAIN_OF else POPULATION)


def checksum(values: torch.Tensor) -> int:
    """An exact fingerprint of float32 ``values [n, D]``: the bit patterns (int32), summed over rows and
    weighted by column (1..D), modulo 2**64. Equal for bit-identical tensors; any sampling difference
    changes it except by a vanishing chance. One pass over the values (0.08 s for 128 x 94,205 here)."""
    v = values.detach().contiguous().cpu().to(torch.float32).as_subclass(torch.Tensor)
    bits = v.view(torch.int32).reshape(-1, v.shape[-1] if v.dim() else 1)
    columns = bits.sum(0, dtype=torch.int64)
    return int((columns * torch.arange(1, bits.shape[-1] + 1, dtype=torch.int64)).sum())

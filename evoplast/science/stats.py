"""Confidence intervals for results that are claims: means over seeds, paired differences over episodes.

Every table that compares learners reports a mean with a 95% confidence interval (Student's t, so three
seeds give a wide interval, as they should), and every comparison with a baseline is the *paired*
difference (the same seeds or the same episodes on both sides), whose interval says whether the gap
could be zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class Interval:
    """``mean ± half_width`` at ``confidence``, over ``n`` values (half_width is NaN for n < 2)."""

    mean: float
    half_width: float
    n: int
    confidence: float = 0.95

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (a difference that is not noise)."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def __str__(self) -> str:
        return format_interval(self)


def t_quantile(confidence: float, df: int) -> float:
    """Two-sided Student-t critical value: ``P(|T| <= q) = confidence`` with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def mean_ci(values: Sequence[float] | Tensor, confidence: float = 0.95) -> Interval:
    """Mean and t-interval of independent values (one per seed, or one per episode)."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = x.numel()
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, n, confidence)
    sem = float(x.std(unbiased=True)) / math.sqrt(n)
    return Interval(mean, t_quantile(confidence, n - 1) * sem, n, confidence)


def paired_ci(a: Sequence[float] | Tensor, b: Sequence[float] | Tensor, confidence: float = 0.95) -> Interval:
    """Interval of the mean of ``a - b``, paired element by element (same seed or same episode on both sides).

    Pairing removes what both sides share (an easy episode is easy for every learner), so the interval of
    the difference is usually far narrower than the two intervals side by side suggest.
    """
    a_t = torch.as_tensor(a, dtype=torch.float64).flatten()
    b_t = torch.as_tensor(b, dtype=torch.float64).flatten()
    if a_t.shape != b_t.shape:
        raise ValueError(f"paired_ci needs values paired one to one, got {a_t.numel()} and {b_t.numel()}")
    return mean_ci(a_t - b_t, confidence)


def format_interval(interval: Interval, digits: int = 3) -> str:
    """``'1.753 ± 0.070'`` (or ``'1.753'`` when there is one value)."""
    if interval.n < 2 or math.isnan(interval.half_width):
        return f"{interval.mean:.{digits}f}"
    return f"{interval.mean:.{digits}f} ± {interval.half_width:.{digits}f}"

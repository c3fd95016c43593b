import math

import pytest
import torch

from evoplast.science.stats import mean_ci, paired_ci, t_quantile


def test_t_interval_matches_hand_computation():
    # values 1, 2, 3: mean 2, sample std 1, sem 1/sqrt(3), t(0.975, 2) = 4.3027
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == pytest.approx(2.0)
    assert ci.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert t_quantile(0.95, 1000) == pytest.approx(1.962, abs=1e-3)


def test_pairing_removes_shared_variation():
    gen = torch.Generator().manual_seed(0)
    episode_difficulty = 10 * torch.randn(64, generator=gen)
    a = episode_difficulty + 0.1 * torch.randn(64, generator=gen)
    b = episode_difficulty + 0.5 + 0.1 * torch.randn(64, generator=gen)
    unpaired = mean_ci(a).half_width + mean_ci(b).half_width
    paired = paired_ci(a, b)
    assert paired.half_width < unpaired / 20
    assert paired.excludes_zero() and paired.high < 0
    assert not mean_ci([1.0, -1.0, 0.5]).excludes_zero()


def test_one_value_has_no_interval_and_mismatched_pairs_are_refused():
    ci = mean_ci([1.5])
    assert ci.n == 1 and math.isnan(ci.half_width) and str(ci) == "1.500"
    with pytest.raises(ValueError, match="paired one to one"):
        paired_ci([1.0, 2.0], [1.0])

"""Coverage and z-scores of posterior draws (diffinv.calibration) against their definitions."""
import math

import torch

from diffinv.calibration import LEVELS, calibration, calibration_curve, coverage_2std, plot_calibration


def _draws(scale: float, n_pixels: int = 20000, n_samples: int = 64, seed: int = 0):
    """Per pixel a truth and draws of the same N(mu, 1) law, the draws' spread scaled by ``scale``."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n_pixels, generator=g, dtype=torch.float64)
    truth = mu + torch.randn(n_pixels, generator=g, dtype=torch.float64)
    draws = mu + scale * torch.randn(n_samples, n_pixels, generator=g, dtype=torch.float64)
    return draws, truth[None]


def test_calibrated_draws_cover_at_the_nominal_levels():
    """20,000 independent pixels: the observed coverage of a calibrated posterior is the nominal level up to the
    binomial error sqrt(a (1 - a) / n) < 0.0036 and the t-versus-normal effect of 64 draws (< 1 %); 0.02 allows both."""
    draws, truth = _draws(1.0)
    c = calibration(draws, truth)
    assert all(abs(o - a) < 0.02 for o, a in zip(c["coverage"], LEVELS)), c["coverage"]
    assert sum(c["z_counts"]) == 20000 and c["z_counts"][0] + c["z_counts"][-1] < 20
    centre = c["z_counts"][10] + c["z_counts"][11]          # |z| < 0.5: P = 0.383
    assert abs(centre / 20000 - 0.383) < 0.02
    assert abs(coverage_2std(draws, truth) - 0.9545) < 0.02


def test_narrow_wide_and_collapsed_posteriors_are_told_apart():
    narrow = calibration(*_draws(0.5))["coverage"]
    wide = calibration(*_draws(2.0))["coverage"]
    assert all(o < a - 0.1 for o, a in zip(narrow, LEVELS)), narrow
    assert all(o > a for o, a in zip(wide, LEVELS[:-1])), wide
    draws, truth = _draws(1.0)
    collapsed = draws.mean(0, keepdim=True).expand(8, -1)
    assert max(calibration(collapsed, truth)["coverage"]) == 0.0
    assert all(math.isnan(v) for v in calibration(draws[:1], truth)["coverage"])   # one draw claims nothing


def test_curve_and_plot():
    items = [calibration(*_draws(1.0, 2000, 16, seed)) for seed in range(3)] + [calibration(*_draws(1.0, 2000, 1))]
    curve = calibration_curve(items)
    assert curve["items"] == 4 and all(abs(o - a) < 0.05 for o, a in zip(curve["coverage"], LEVELS))
    png = plot_calibration(curve, "test")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000

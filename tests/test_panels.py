"""Panels: the black-hole sky in microarcseconds with the array's beam, brightness in mJy per pixel, negative
posterior means shown instead of clipped, the std on its own scale; Navier–Stokes std with its unit; titles
that read the chi-squares and the misfit against their noise levels."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from diffinv.operators import GaussianNoise
from diffinv.operators.blackhole import BlackHoleImaging
from diffinv.operators.eht_array import simulate_observation
from diffinv.operators.navier_stokes import NavierStokes
from lightning_modules.panels import (fit_beam, measurement_view, metric_text, panel_figure, panel_info,
                                      render_item)

N = 32
UAS = math.pi / 180.0 / 3600.0 * 1e-6


@pytest.fixture(scope="module")
def bh():
    return BlackHoleImaging(npix=N, fov_uas=160.0, tadv_s=1800.0)


def ring(n: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(n) - n / 2 + 0.5, torch.arange(n) - n / 2 + 0.5, indexing="ij")
    img = torch.exp(-0.5 * (((xx**2 + yy**2).sqrt() - n / 6) / (n / 24)) ** 2)
    return (2 * img / img.max() - 1)[None].float()


def colorbar_label(fig, image_axes) -> str:
    image = image_axes.images[0]
    return image.colorbar.ax.get_ylabel()


def test_beam_matches_ehtim_fit_beam(bh):
    obs = simulate_observation(bh.setup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = obs.fit_beam()                      # (fwhm_maj, fwhm_min, theta) in radians, Powell fit
    maj, mnr, pa = fit_beam(bh.tables.u, bh.tables.v)
    assert maj == pytest.approx(ref[0], rel=1e-3) and mnr == pytest.approx(ref[1], rel=1e-3)
    assert abs(math.remainder(pa - ref[2], math.pi)) < math.radians(0.5)
    assert 10 < mnr / UAS < maj / UAS < 40          # the EHT's ~20 uas resolution at 230 GHz


def test_blackhole_panel_is_on_the_sky(bh):
    x = ring(N)
    y = bh.measure(x[None], torch.Generator().manual_seed(0))
    mean = x.clone()
    mean[0, :4, :4] = -2.5                       # a posterior mean that dips below zero brightness
    std = torch.full_like(x, 0.02)
    std[0, 10, 10] = 0.3
    y_view, y_label = measurement_view(bh, y, x.shape)
    info = panel_info(bh, y)
    assert info["fov_uas"] == 160.0 and info["psize_uas"] == 5.0 and len(info["beam_uas"]) == 3
    fig = panel_figure(x, mean, std, y_view, y_label, "blackhole", "title", info=info)
    truth_ax, dirty_ax, mean_ax, std_ax = [a for a in fig.axes if a.images][:4]
    mjy = 1e3 * bh.jy_per_unit
    # sky axes: microarcseconds, east to the left
    for ax in (truth_ax, dirty_ax, mean_ax, std_ax):
        assert "μas" in ax.get_xlabel() and "μas" in ax.get_ylabel()
        assert ax.get_xlim() == (80.0, -80.0) and ax.get_ylim() == (-80.0, 80.0)
    # brightness in mJy / pixel; the mean's negative dip is on the colour scale, shared with the truth
    mean_norm = mean_ax.images[0].norm
    assert mean_norm.vmin == pytest.approx(mjy * (-2.5 + 1) / 2) and mean_norm.vmax == pytest.approx(mjy)
    assert truth_ax.images[0].norm.vmin == mean_norm.vmin and truth_ax.images[0].norm.vmax == mean_norm.vmax
    assert np.asarray(mean_ax.images[0].get_array()).min() == pytest.approx(mjy * (-2.5 + 1) / 2)
    # the std on its own scale, in the same unit
    std_norm = std_ax.images[0].norm
    assert std_norm.vmin == 0.0 and std_norm.vmax == pytest.approx(mjy * 0.3 / 2)
    for ax in (truth_ax, mean_ax, std_ax):
        assert colorbar_label(fig, ax) == "mJy / pixel"
    assert std_ax.images[0].get_cmap().name != mean_ax.images[0].get_cmap().name
    # the beam is drawn on the dirty image and the mean; the caption gives the field of view and the beam
    assert len(dirty_ax.patches) == 1 and len(mean_ax.patches) == 1 and not truth_ax.patches
    caption = fig.get_suptitle()
    assert "field of view 160 μas" in caption and "32 × 5 μas pixels" in caption
    assert f"beam {info['beam_uas'][0]:.1f} × {info['beam_uas'][1]:.1f} μas" in caption


def test_navier_stokes_panel_units_and_misfit_reference():
    op = NavierStokes(resolution=16, time=0.05, downsample=4, noise=GaussianNoise(1.0))
    x = torch.randn((1, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    y = op.measure(x, torch.Generator().manual_seed(1))
    info = panel_info(op, y)
    assert info == {}
    y_view, y_label = measurement_view(op, y, x.shape[1:])
    item = {"id": "ns-0", "sampler": "DPS", "num_samples": 4, "metrics": {"rel_l2": 0.7, "misfit": 789.5},
            "x_true": x[0], "mean": 0.5 * x[0], "std": 0.1 + 0 * x[0], "y_view": y_view, "y_label": y_label,
            "kind": "navier_stokes", "panel": info,
            "checks": {"misfit": {"value": 789.5, "reference": 8.0, "flagged": True}}}   # m = 4 x 4 values
    png = render_item(item)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    fig = panel_figure(item["x_true"], item["mean"], item["std"], y_view, y_label, "navier_stokes", info=info)
    std_ax = [a for a in fig.axes if a.images][3]
    assert colorbar_label(fig, std_ax) == "vorticity / 10" and "vorticity / 10" in std_ax.get_title()
    assert "misfit 789.5 (noise level m/2 = 8)" in metric_text(item["metrics"], info, item["checks"])
    assert "m/2" not in metric_text(item["metrics"], info)


def test_blackhole_misfit_reference_is_the_closure_weights(bh):
    y = bh.measure(ring(N)[None], torch.Generator().manual_seed(0))
    info = panel_info(bh, y)
    assert info["misfit_reference"] == 2.0
    assert "misfit 9.9 (noise level w_CP + w_logCA = 2)" in metric_text({"misfit": 9.9}, info)


def test_titles_read_chi_squares_and_missing_metrics():
    text = metric_text({"chi2_cphase": 1.21, "chi2_logcamp": 0.98, "lpips": None, "misfit": 3.0}, {})
    assert "χ²_CP 1.21" in text and "χ²_logCA 0.98" in text and "1 = fits the noise" in text
    assert "lpips n/a" in text and "m/2" not in text

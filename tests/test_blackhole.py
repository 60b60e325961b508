"""Black-hole imaging operator: agreement with ehtim, gain invariance of closures, chi-square calibration,
gradients, metrics and bad input."""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch

from diffinv.operators.blackhole import (BlackHoleImaging, align_images, blur_circular, blurred_psnr,
                                         closure_chi2)
from diffinv.operators.eht_array import import_ehtim, simulate_observation, template_image
from operator_checks import check_operator
from operators_bh import SMALL_OPERATORS

NPIX = 32
COARSE = dict(npix=NPIX, fov_uas=160.0, tadv_s=1800.0, jy_per_unit=0.012)  # scans every 30 min; ~0.6 Jy


def ring_image(npix: int, seed: int = 0) -> torch.Tensor:
    """An asymmetric ring (crescent) plus texture, peak-normalised and mapped to [-1, 1]: [1, 1, npix, npix]."""
    g = torch.Generator().manual_seed(seed)
    c = (npix - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(npix) - c, torch.arange(npix) - c, indexing="ij")
    r = (xx**2 + yy**2).sqrt()
    rad, width = npix / 8, npix / 32
    ring = torch.exp(-0.5 * ((r - rad) / width) ** 2) * (1 + 0.6 * (xx + 0.3 * yy) / (r + 1e-3))
    ring = ring.clamp_min(0) + 0.05 * torch.rand((npix, npix), generator=g, dtype=torch.float64)
    ring = ring / ring.max()
    return (2 * ring - 1)[None, None].to(torch.float64)


@pytest.fixture(scope="module")
def setup64():
    """Float64 operator, ehtim observation of the same image on the same schedule."""
    op = copy.deepcopy(BlackHoleImaging(**COARSE)).to(torch.float64)
    x = ring_image(NPIX)
    im = template_image(op.setup)
    im.ivec = op.image_jy(x)[0, 0].numpy().ravel().copy()
    obs = simulate_observation(op.setup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs_im = im.observe_same_nonoise(obs, ttype="direct", verbose=False)
        cp = obs_im.c_phases(count="min", ang_unit="rad")
        lca = obs_im.c_amplitudes(ctype="logcamp", count="min", debias=False)
    return op, x, obs_im, cp, lca


# ---------------------------------------------------------------------------------------- ehtim agreement
def test_visibilities_match_ehtim(setup64):
    op, x, obs_im, _, _ = setup64
    v = op.visibilities(x)[0].numpy()
    ref = obs_im.data["vis"]
    assert v.shape == ref.shape
    assert np.abs(v - ref).max() / np.abs(ref).max() < 1e-6
    assert (np.abs(v - ref) / np.abs(ref)).max() < 1e-5           # every visibility, relative
    # the flux entry is the image's total flux (the zero-spacing visibility)
    assert op(x)[0, -1].item() == pytest.approx(float(op.image_jy(x).sum()), rel=1e-12)


def test_closure_quantities_match_ehtim(setup64):
    op, x, _, cp, lca = setup64
    y = op(x)
    ours_cp = op.noise.closure_phases(y)[0].numpy()
    ours_lca = op.noise.log_closure_amplitudes(y)[0].numpy()
    assert ours_cp.shape == cp["cphase"].shape and ours_lca.shape == lca["camp"].shape
    dphi = np.angle(np.exp(1j * (ours_cp - cp["cphase"])))       # radians, wrap-safe
    assert np.abs(dphi).max() < 1e-6
    assert np.abs(ours_lca - lca["camp"]).max() < 1e-6
    sig_cp, sig_lca = op.noise.closure_sigmas(y)
    np.testing.assert_allclose(sig_cp[0].numpy(), cp["sigmacp"], rtol=1e-6)
    np.testing.assert_allclose(sig_lca[0].numpy(), lca["sigmaca"], rtol=1e-6)
    assert np.abs(cp["cphase"]).max() > 0.1                       # the test image has non-trivial closures


def test_float32_operator_matches_ehtim_to_1e4(setup64):
    op64, x, obs_im, cp, _ = setup64
    op = BlackHoleImaging(**COARSE)
    y = op(x.float())
    v = op.noise.visibilities(y)[0].to(torch.complex128).numpy()
    ref = obs_im.data["vis"]
    assert np.abs(v - ref).max() / np.abs(ref).max() < 1e-4
    dphi = np.angle(np.exp(1j * (op.noise.closure_phases(y)[0].double().numpy() - cp["cphase"])))
    assert np.abs(dphi).max() < 1e-4


def test_default_observation_counts():
    op = BlackHoleImaging()   # 64 x 64, 160 uas, M87, EHT 2017, 24 h, 10 s / 600 s
    assert op.input_shape == (1, 64, 64)
    assert op.psize_uas == pytest.approx(2.5)
    c = op.counts
    assert c == {"vis": 826, "cphase": 500, "logcamp": 420}, c
    assert op(ring_image(64).float()).shape == (1, 2 * 826 + 1)
    assert set(op.tables.stations) == {"ALMA", "APEX", "JCMT", "LMT", "PV", "SMA", "SMT", "SPT"}


# ---------------------------------------------------------------------------------------- noise physics
def test_closures_invariant_to_station_gains(setup64):
    op, x, _, _, _ = setup64
    y = op(x).expand(4, -1)
    g = torch.Generator().manual_seed(7)
    gains = torch.polar(0.5 + torch.rand((4, 8, 64), generator=g, dtype=torch.float64),
                        2 * math.pi * torch.rand((4, 8, 64), generator=g, dtype=torch.float64))
    yc = op.noise.apply_gains(y, gains)
    assert not torch.allclose(yc, y)                               # the visibilities did change
    dcp = op.noise.closure_phases(yc) - op.noise.closure_phases(y)
    assert torch.atan2(dcp.sin(), dcp.cos()).abs().max() < 1e-9
    assert (op.noise.log_closure_amplitudes(yc) - op.noise.log_closure_amplitudes(y)).abs().max() < 1e-9


def test_chi_square_of_truth_near_one(setup64):
    """chi2/N of N independent unit-variance data has std sqrt(2/N); K noise draws divide it by sqrt(K).
    Closure quantities sharing a baseline are correlated, which inflates that std (about 1.3x measured),
    so the tolerance is 5 sqrt(2 / (N K))."""
    op, x, _, _, _ = setup64
    K = 40
    y = op(x)
    y_obs = op.noise(y.expand(K, -1), torch.Generator().manual_seed(0))
    chi_cp, chi_lca, chi_f = op.noise.chi_squares(y.expand(K, -1), y_obs)
    for chi in (chi_cp, chi_lca):
        n = chi.shape[1]
        assert abs(chi.mean().item() - 1.0) < 5 * math.sqrt(2.0 / (n * K)), (chi.mean().item(), n)
    assert chi_f.abs().max() == 0                                  # flux is measured exactly (InverseBench)
    # a noise twice too large is detected
    op2 = copy.deepcopy(op)
    op2.noise.sigma_vis.mul_(2.0)
    y2 = op2.noise(y.expand(K, -1), torch.Generator().manual_seed(0))
    assert op.noise.chi_squares(y.expand(K, -1), y2)[0].mean() > 3.0


def test_measure_is_seeded_and_noise_free_option(setup64):
    op, x, _, _, _ = setup64
    a = op.measure(x, torch.Generator().manual_seed(3))
    b = op.measure(x, torch.Generator().manual_seed(3))
    c = op.measure(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    resid = (a - op(x))[0, :-1]
    sig = torch.cat([op.noise.sigma_vis, op.noise.sigma_vis])
    assert abs((resid / sig).std().item() - 1.0) < 0.15
    quiet = BlackHoleImaging(**COARSE, thermal=False)
    assert torch.equal(quiet.measure(x.float()), quiet(x.float()))
    assert quiet.sigma == 0.0 and op.sigma > 0


def test_loss_reductions_and_weights(setup64):
    op, x, _, _, _ = setup64
    y_obs = op.measure(x, torch.Generator().manual_seed(1))
    xs = (x + 0.05 * torch.randn((3, 1, NPIX, NPIX), generator=torch.Generator().manual_seed(2),
                                 dtype=torch.float64)).clamp(-1, 1)
    y_hat = op(xs)
    chi_cp, chi_lca, chi_f = op.noise.chi_squares(y_hat, y_obs)
    mean = op.loss(y_hat, y_obs)
    assert mean.shape == (3,)
    torch.testing.assert_close(mean, chi_cp.mean(1) + chi_lca.mean(1) + 0.5 * chi_f)
    n = copy.deepcopy(op.noise)
    n.reduction = "sum"
    torch.testing.assert_close(n.loss(y_hat, y_obs), chi_cp.sum(1) + chi_lca.sum(1) + 0.5 * chi_f)
    n.reduction = "nll"
    torch.testing.assert_close(n.loss(y_hat, y_obs), 0.5 * (chi_cp.sum(1) + chi_lca.sum(1) + 0.5 * chi_f))
    # y_obs with batch 1 is shared by every y_hat
    torch.testing.assert_close(op.loss(y_hat, y_obs), op.loss(y_hat, y_obs.expand(3, -1)))
    assert op.loss(op(x), op(x)).abs().max() < 1e-10               # zero at the noise-free truth


def test_gradient_flows(setup64):
    op, x, _, _, _ = setup64
    y_obs = op.measure(x, torch.Generator().manual_seed(1))
    xs = (0.9 * x + 0.05).clone().requires_grad_(True)
    loss = op.loss(op(xs), y_obs)
    loss.sum().backward()
    assert torch.isfinite(xs.grad).all() and xs.grad.abs().max() > 0
    # a small step against the gradient lowers the misfit
    with torch.no_grad():
        step = xs - 1e-4 * xs.grad / xs.grad.abs().max()
        assert op.loss(op(step), y_obs).item() < loss.item()
    # gradient with respect to the measurement (what EnKG uses)
    yh = op(x).detach().requires_grad_(True)
    (gy,) = torch.autograd.grad(op.loss(yh, y_obs).sum(), yh)
    assert torch.isfinite(gy).all() and gy[:, :-1].abs().max() > 0


# ---------------------------------------------------------------------------------------- contract, inputs
@pytest.mark.parametrize("name,factory", SMALL_OPERATORS, ids=[n for n, _ in SMALL_OPERATORS])
def test_small_operators_pass_contract(name, factory):
    check_operator(factory())


def test_bad_input_raises(setup64):
    op, x, _, _, _ = setup64
    with pytest.raises(ValueError, match="shape"):
        op(x[:, :, :-1])
    with pytest.raises(ValueError, match="shape"):
        op(x[0])
    bad = x.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        op(bad)
    with pytest.raises(ValueError, match="shape"):
        op.loss(op(x)[:, :-1], op(x))
    with pytest.raises(ValueError, match="batch"):
        op.loss(op(x).expand(3, -1), op(x).expand(2, -1))
    y = op(x).clone()
    y[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        op.noise(y)
    with pytest.raises(ValueError, match="source"):
        BlackHoleImaging(npix=16, source="Vega")
    with pytest.raises(ValueError, match="jy_per_unit"):
        BlackHoleImaging(npix=16, tadv_s=3600.0, jy_per_unit=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        BlackHoleImaging(npix=16, tadv_s=3600.0, reduction="median")
    with pytest.raises(ValueError, match="noise_scale"):
        BlackHoleImaging(npix=16, tadv_s=3600.0, noise_scale=0.0)


def test_uvfits_round_trip(tmp_path):
    pytest.importorskip("astropy")
    op = BlackHoleImaging(npix=16, tadv_s=3600.0)
    obs = simulate_observation(op.setup)
    path = tmp_path / "obs.uvfits"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs.save_uvfits(str(path))
    op2 = BlackHoleImaging(npix=16, tadv_s=3600.0, uvfits=str(path))
    assert op2.counts == op.counts
    torch.testing.assert_close(op2.u, op.u, rtol=1e-5, atol=1.0)
    x = ring_image(16).float()
    torch.testing.assert_close(op2(x), op(x), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------- metrics
def test_blur_matches_ehtim_blur_circ():
    eh = import_ehtim()
    op = BlackHoleImaging(npix=NPIX, tadv_s=3600.0)
    x01 = (ring_image(NPIX) + 1) / 2
    im = template_image(op.setup)
    im.ivec = x01[0, 0].numpy().ravel().copy()
    for fwhm in (10.0, 20.0):
        ref = im.blur_circ(fwhm * eh.RADPERUAS).imarr()
        ours = blur_circular(x01, fwhm, op.psize_uas)[0, 0].numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_blurred_psnr_and_alignment():
    x = ring_image(NPIX)
    assert blurred_psnr(x, x).min() > 100
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)).clamp(-1, 1)
    p0, p20 = blurred_psnr(noisy, x, fwhm_uas=0.0), blurred_psnr(noisy, x, fwhm_uas=20.0)
    assert p20 > p0                                                # blurring forgives pixel noise
    shifted = torch.roll(x, shifts=(2, -3), dims=(2, 3))
    assert blurred_psnr(shifted, x, align=True) > blurred_psnr(shifted, x) + 10
    x01, s01 = (x + 1) / 2, (shifted + 1) / 2
    back = align_images(s01, x01, max_shift_px=4.0, steps=9)       # the grid contains the exact shift
    assert (back - x01)[..., 4:-4, 4:-4].abs().max() < 1e-6


def test_closure_chi2_metric(setup64):
    op, x, _, _, _ = setup64
    y_obs = op.measure(x, torch.Generator().manual_seed(5))
    scaled = ((x + 1) * 1.5 - 1)                                   # flux x1.5, closures unchanged
    m_true = closure_chi2(op, x, y_obs)
    m_scaled = closure_chi2(op, scaled, y_obs)
    torch.testing.assert_close(m_true["cphase"], m_scaled["cphase"])
    torch.testing.assert_close(m_true["logcamp"], m_scaled["logcamp"])
    assert 0.5 < m_true["cphase"].item() < 2.0 and 0.5 < m_true["logcamp"].item() < 2.0
    blank = torch.full_like(x, -0.5)
    assert closure_chi2(op, blank, y_obs)["cphase"].item() > m_true["cphase"].item()
    norm = closure_chi2(op, x, y_obs, normalize=True)
    assert (norm["cphase"] >= 1).all() and (norm["logcamp"] >= 1).all()

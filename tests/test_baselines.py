"""The classical baselines against closed forms: prior draws, the fitted Gaussian, regularised least squares with
the discrepancy principle, and ensemble Kalman inversion."""
from __future__ import annotations

import math

import pytest
import torch

import posterior_checks as pc
from diffinv.operators import dense_matrix
from diffinv.samplers import EKI, PriorSamples, Tikhonov
from diffinv.samplers.gaussian_fit import DiagonalGaussian, StationaryGaussian, fit_gaussian

F64 = torch.float64


@pytest.fixture(scope="module")
def problem():
    return pc.gaussian_problem("dense", dtype=F64)


def test_prior_samples_follow_the_prior(problem):
    """Whitened by the prior's own covariance, 512 draws have mean 0 and unit spread up to the Monte Carlo limits
    (plus 3 % for the solver: 64 Heun steps with the exact denoiser; the default 18 widen the directions of
    smallest prior variance, 0.05 std, by 10 %)."""
    prior = problem.prior
    lam, Q = torch.linalg.eigh(prior.covariance().double())
    as_posterior = pc.Problem("prior", prior, problem.operator, problem.y, problem.x_true, prior.mean.reshape(-1).double(),
                              Q, lam)
    out = PriorSamples(num_steps=64).sample(problem.y, problem.operator, prior, num_samples=512,
                                generator=torch.Generator().manual_seed(0))
    stats = pc.posterior_stats(out, as_posterior)
    assert not pc.violations(stats, pc.Expect(spread=(0.97, 1.03))), stats
    assert pc.violations(pc.posterior_stats(out, problem), pc.Expect(mean_error=1.0, spread=(0.5, 2.0)))  # no data


def test_stationary_gaussian_recovers_a_known_spectrum():
    """Draws of a periodic GRF with spectrum P(k) = (1 + |k|^2)^-2: the ring-averaged periodogram of 400 draws is
    P within 4 standard errors of a ring mean (a periodogram value is exponential: relative std 1 / sqrt(count))."""
    n, h = 400, 32
    k = torch.fft.fftfreq(h, dtype=F64) * h
    P = ((1 + k[:, None] ** 2 + k[None] ** 2) ** -2)[None]
    truth = StationaryGaussian(torch.zeros(1, h, h, dtype=F64), P)
    g = torch.Generator().manual_seed(1)
    fit = fit_gaussian(truth.sample(n, g))
    assert isinstance(fit, StationaryGaussian)
    ring = torch.sqrt(k[:, None] ** 2 + k[None] ** 2).floor()
    for r in (1, 3, 8):
        sel = ring == r
        count = int(sel.sum()) * n
        rel = float((fit.spectrum[0][sel].mean() - P[0][sel].mean()) / P[0][sel].mean())
        assert abs(rel) < 4 / math.sqrt(count) + 0.15 * (P[0][sel].std() / P[0][sel].mean()), (r, rel)
    x = truth.sample(3, g)
    assert torch.allclose(fit.color(fit.whiten(x)), x, atol=1e-10)
    vec = fit_gaussian(torch.randn(50, 7, generator=g, dtype=F64))
    assert isinstance(vec, DiagonalGaussian) and vec.mean.shape == (7,)


def test_tikhonov_is_the_closed_form_minimiser_and_follows_the_discrepancy_principle(problem):
    op, y = problem.operator, problem.y
    fixed = Tikhonov(lam_max=0.5, lam_min=0.5, tau=1e-9, max_iter=500)        # one weight: lam = 0.5
    x = fixed.sample(y, op, problem.prior, num_samples=1, generator=torch.Generator().manual_seed(2))
    gauss = fixed._gaussians[next(iter(fixed._gaussians))].to(torch.zeros((), dtype=F64))
    d = pc.D
    C = gauss.color(torch.eye(d, dtype=F64).reshape(d, *pc.SHAPE)) - gauss.mean      # columns of C^(1/2)
    C = C.reshape(d, d).T @ C.reshape(d, d)
    A, m, s2 = dense_matrix(op), gauss.mean.reshape(-1), op.sigma**2
    # argmin ||A x - y||^2 / (2 s^2) + (lam / 2) (x - m)^T C^-1 (x - m) = m + (C / lam) A^T (A (C / lam) A^T + s^2 I)^-1 (y - A m)
    Cl = C / 0.5
    closed = m + Cl @ A.T @ torch.linalg.solve(A @ Cl @ A.T + s2 * torch.eye(A.shape[0], dtype=F64), y[0] - A @ m)
    assert torch.allclose(x.reshape(-1), closed, rtol=0, atol=1e-6 * float(closed.abs().max()))
    dp = Tikhonov()
    dp.sample(y, op, problem.prior, num_samples=1, generator=torch.Generator().manual_seed(2))
    misfits = [row["misfit"][0] for row in dp.log]
    target = dp.log[0]["target"]
    assert misfits[-1] <= target < misfits[-2], (misfits, target)      # the largest weight that fits the noise


def test_eki_from_the_prior_is_the_kalman_posterior(problem):
    """One perturbed-observation update of 2048 prior draws is the linear-Gaussian posterior up to the ensemble's
    sampling error (measured: mean error 0.16 posterior std, spreads 1.00-1.06): bounds 0.25 and [0.95, 1.12]."""
    eki = EKI(num_iterations=1, tau=None, init="prior")
    out = eki.sample(problem.y, problem.operator, problem.prior, num_samples=2048,
                     generator=torch.Generator().manual_seed(0))
    stats = pc.posterior_stats(out, problem)
    assert not pc.violations(stats, pc.Expect(mean_error=0.25, spread=(0.95, 1.12))), stats
    assert eki.iterations_run == 1 and eki.cost.grad_calls == 0


def test_eki_stops_by_the_discrepancy_principle(problem):
    """It stops at the first iteration whose ensemble mean fits the data to the noise level (m / 2)."""
    op, y = problem.operator, problem.y
    misfits = []
    eki = EKI(num_iterations=30, dt=0.02)
    eki.sample(y, op, problem.prior, num_samples=256, generator=torch.Generator().manual_seed(1),
               callback=lambda i, n, u: misfits.append(float(op.loss(op(u.reshape(256, -1).mean(0).reshape(1, *pc.SHAPE)),
                                                                       y))))
    target = y[0].numel() / 2
    assert 2 <= eki.iterations_run < 30 and len(misfits) == eki.iterations_run
    assert misfits[-1] <= target < misfits[-2], (misfits, target)


def test_eki_needs_gaussian_noise(problem):
    from diffinv.operators import MatrixOperator, PoissonNoise

    op = MatrixOperator(dense_matrix(problem.operator).abs(), input_shape=pc.SHAPE, noise=PoissonNoise(10.0))
    with pytest.raises(ValueError, match="GaussianNoise"):
        EKI().sample(problem.y.abs(), op, problem.prior, num_samples=4)


def test_ehtim_rml_images_the_closure_data():
    """ehtim's own imager on the item's noisy closure data: after one short round the closure chi-squares are near
    the noise level (1; the Gaussian start image is at 10-100) and the image is much closer to the truth than the
    start (blurred PSNR up by more than 5 dB)."""
    from diffinv.datasets.blackhole_synthetic import SyntheticBlackHoles
    from diffinv.metrics import evaluate
    from diffinv.operators import BlackHoleImaging
    from diffinv.samplers.ehtim_rml import EhtimRML

    op = BlackHoleImaging()
    x = torch.as_tensor(SyntheticBlackHoles().image("val", 0))[None].float()
    y = op.measure(x, torch.Generator().manual_seed(0))
    names = ["chi2_cphase", "chi2_logcamp", "blurred_psnr_20"]
    sampler = EhtimRML(rounds=1, maxit=60)
    out = sampler.sample(y, op, None, num_samples=2)
    assert out.shape == (2, 1, 64, 64) and torch.equal(out[0], out[1])
    got = evaluate(names, out, x, y, op)
    start = EhtimRML(rounds=1, maxit=1)
    first = evaluate(names, start.sample(y, op, None), x, y, op)
    assert got["chi2_cphase"] < 2.5 and got["chi2_logcamp"] < 2.5, got
    assert got["blurred_psnr_20"] > first["blurred_psnr_20"] + 5, (got, first)
    with pytest.raises(ValueError, match="interferometric"):
        EhtimRML().check(pc.make_operator("dense"))

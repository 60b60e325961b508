"""The diffusion core against the papers' closed forms."""
import math

import pytest
import torch

from diffinv.diffusion import (Cost, DiscreteVPSchedule, EDMSDE, VESDE, VPEpsilonDenoiser, VPSDE, ddim_step, ddpm_step,
                               karras_sigmas, linear_betas, make_sde, sample_ddim, sample_ddpm, sample_sde,
                               sqrt_linear_betas)
from diffinv.priors import GaussianPrior, random_gmm_prior

f64 = torch.float64


def test_schedules_match_their_definitions():
    b = linear_betas()
    assert b.shape == (1000,) and b[0] == 1e-4 and abs(b[-1] - 0.02) < 1e-15
    s = sqrt_linear_betas()
    assert abs(s[0] - 0.0015) < 1e-15 and abs(s[-1] - 0.0195) < 1e-15
    assert torch.allclose(s.sqrt().diff(), s.sqrt().diff()[0].expand(999))  # linear in sqrt(beta)
    k = karras_sigmas(80)
    assert k.shape == (81,) and k[0] == 80 and abs(k[-2] - 0.002) < 1e-12 and k[-1] == 0
    # EDM Eq. 5: sigma^(1/rho) is linear in i
    assert torch.allclose(k[:-1].pow(1 / 7).diff(), k[:-1].pow(1 / 7).diff()[0].expand(79))


def test_sigma_timestep_round_trip():
    sched = DiscreteVPSchedule("linear")
    t = torch.tensor([0.0, 1.0, 10.0, 500.0, 999.0], dtype=f64)
    assert torch.allclose(sched.sigma_to_t(sched.t_to_sigma(t)), t, atol=1e-9)
    # sigma on the grid maps to its integer timestep
    assert torch.equal(sched.sigma_to_t(sched.sigmas[[3, 700]]), torch.tensor([3.0, 700.0], dtype=f64))
    # a fractional t lies between its neighbours
    s = sched.t_to_sigma(torch.tensor([10.5], dtype=f64))
    assert sched.sigmas[10] < s < sched.sigmas[11]


def _ho_posterior(betas, t, x_t, x0):
    """q(x_{t-1} | x_t, x0) by multiplying q(x_t | x_{t-1}) and q(x_{t-1} | x0) (Ho et al. 2020, Eqs. 6-7)."""
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    prec = alphas[t] / betas[t] + 1 / (1 - abar[t - 1])
    mean = (alphas[t].sqrt() / betas[t] * x_t + abar[t - 1].sqrt() / (1 - abar[t - 1]) * x0) / prec
    return mean, 1 / prec


def test_ddpm_step_equals_closed_form_posterior():
    g = torch.Generator().manual_seed(0)
    betas = linear_betas()
    abar = torch.cumprod(1 - betas, 0)
    x_t, x0, z = (torch.randn(4, 3, 5, 5, generator=g, dtype=f64) for _ in range(3))
    for t in (1, 37, 500, 999):
        mean, var = _ho_posterior(betas, t, x_t, x0)
        got = ddpm_step(x_t, x0, abar[t], abar[t - 1], z)
        assert torch.allclose(got, mean + var.sqrt() * z, rtol=0, atol=1e-10), t


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_equals_song_eq12(eta):
    g = torch.Generator().manual_seed(1)
    abar = DiscreteVPSchedule("linear").alphas_cumprod
    x_t, eps, z = (torch.randn(3, 2, 4, 4, generator=g, dtype=f64) for _ in range(3))
    for t, tp in ((999, 979), (500, 480), (20, 0)):
        a, ap = abar[t], abar[tp]
        x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        sig = eta * ((1 - ap) / (1 - a) * (1 - a / ap)).sqrt()           # Eq. 16
        ref = ap.sqrt() * (x_t - (1 - a).sqrt() * eps) / a.sqrt() + (1 - ap - sig**2).sqrt() * eps + sig * z  # Eq. 12
        assert torch.allclose(ddim_step(x_t, x0, a, ap, eta, z), ref, rtol=0, atol=1e-10)
    if eta == 1.0:  # eta = 1 on consecutive timesteps is the DDPM ancestral step (Song et al. 2021, Sec. 4.1)
        betas = linear_betas()
        for t in (1, 500, 999):
            x0 = (x_t - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
            mean, var = _ho_posterior(betas, t, x_t, x0)                   # q(x_{t-1} | x_t, x0), Ho et al. Eq. 7
            got = ddim_step(x_t, x0, abar[t], abar[t - 1], 1.0, z)
            assert torch.allclose(got, mean + var.sqrt() * z, rtol=0, atol=1e-10), t


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(), EDMSDE()], ids=["vp", "ve", "edm"])
def test_sde_derivatives_match_finite_differences(sde):
    t = torch.tensor([0.05, 0.3, 0.7, 1.0], dtype=f64)
    h = 1e-6
    fd_sigma = (sde.sigma(t + h) - sde.sigma(t - h)) / (2 * h)
    fd_scale = (sde.scale(t + h) - sde.scale(t - h)) / (2 * h)
    assert torch.allclose(sde.sigma_deriv(t), fd_sigma, rtol=1e-7, atol=1e-9)
    assert torch.allclose(sde.scale_deriv(t), fd_scale, rtol=1e-7, atol=1e-9)
    assert torch.allclose(sde.sigma_inv(sde.sigma(t)), t, rtol=1e-10)
    if isinstance(sde, VPSDE):  # s(t) = 1 / sqrt(1 + sigma(t)^2) for the VP family
        assert torch.allclose(sde.scale(t), 1 / (1 + sde.sigma(t) ** 2).sqrt())


def test_vp_epsilon_adapter_recovers_the_denoiser():
    """An epsilon network built from an exact prior, seen through the adapter, gives the prior's denoiser
    back, also with a learned-variance (2C-channel) output."""
    prior = GaussianPrior(torch.zeros(3, 4, 4, dtype=f64), 0.5)
    sched = DiscreteVPSchedule("linear").double()

    class EpsNet(torch.nn.Module):
        def __init__(self, learned_sigma):
            super().__init__()
            self.learned_sigma = learned_sigma

        def forward(self, x_t, t):
            sigma = sched.t_to_sigma(t)
            x = x_t * (1 + sigma**2).sqrt().view(-1, 1, 1, 1)
            eps = (x - prior.denoise(x, sigma)) / sigma.view(-1, 1, 1, 1)
            return torch.cat([eps, torch.full_like(eps, 7.0)], 1) if self.learned_sigma else eps

    x = torch.randn(2, 3, 4, 4, dtype=f64)
    sigma = torch.tensor([0.3, 4.0], dtype=f64)
    for learned in (False, True):
        d = VPEpsilonDenoiser(EpsNet(learned), sched)
        assert torch.allclose(d(x, sigma), prior.denoise(x, sigma), atol=1e-9)


def test_unconditional_samplers_on_a_gaussian_and_nfe():
    """Each unconditional sampler draws from N(1, 0.25) in 1-D (a mean error of 4 standard errors is the
    tolerance: 4000 draws give standard error 0.5 / sqrt(4000) = 0.008 for the mean)."""
    prior = GaussianPrior(torch.ones(1, dtype=f64), 0.25)
    sched = DiscreteVPSchedule("linear")
    n = 4000
    runs = {
        "ddpm": (lambda c, g: sample_ddpm(prior, (n, 1), sched, None, g, c, dtype=f64), 1000),
        "ddim": (lambda c, g: sample_ddim(prior, (n, 1), sched, 50, 0.5, g, c, dtype=f64), 50),
        "heun_ode": (lambda c, g: sample_sde(prior, (n, 1), karras_sigmas(30), "edm", 0.0, "heun", g, c, dtype=f64), 59),
        "euler_sde": (lambda c, g: sample_sde(prior, (n, 1), karras_sigmas(200), "vp", 1.0, "euler", g, c, dtype=f64), 200),
        "heun_sde_ve": (lambda c, g: sample_sde(prior, (n, 1), karras_sigmas(60, 0.01, 50.0), "ve", 0.5, "heun", g, c,
                                                dtype=f64), 119),
    }
    for name, (run, nfe) in runs.items():
        cost = Cost()
        x = run(cost, torch.Generator().manual_seed(3))
        assert cost.nfe == nfe, (name, cost.nfe)
        se_mean = 0.5 / math.sqrt(n)
        assert abs(x.mean() - 1.0) < 4 * se_mean, (name, float(x.mean()))
        # the sample variance of n Gaussian draws has relative std sqrt(2 / n) = 2.2%; allow 4 of those plus
        # a 3% discretisation margin for the coarse stochastic schedules
        assert abs(x.var() / 0.25 - 1) < 4 * math.sqrt(2 / n) + 0.03, (name, float(x.var()))


def test_heun_recovers_mixture_weights_and_means():
    """25-component mixture in d = 8, Heun on the probability-flow ODE with 50 steps.
    Components are 8 apart with unit variance, so assigning each draw to its nearest mean errs with
    probability < 1e-4. With N draws, the count of component k is Binomial(N, w_k): its frequency has
    standard error sqrt(w_k (1 - w_k) / N); each coordinate of a component's sample mean has standard
    error 1 / sqrt(n_k). 4.5 standard errors over 25 + 200 comparisons leave a false-alarm rate < 2e-3,
    and the seed is fixed. The ODE is deterministic, so it carries any mismatch of its start over to the end:
    sigma_max must make N(0, sigma_max^2) a good match of the smoothed mixture, whose means reach norm 45
    here; at sigma_max = 80 the start alone biases some weights by 5 standard errors, at 1000 it is negligible."""
    g = torch.Generator().manual_seed(0)
    prior = random_gmm_prior(8, generator=g)
    n = 20000
    cost = Cost()
    x = sample_sde(prior, (n, 8), karras_sigmas(50, 0.002, 1000.0), "edm", 0.0, "heun", g, cost, dtype=f64)
    assert cost.nfe == 99
    labels = torch.cdist(x, prior.means).argmin(1)
    counts = torch.bincount(labels, minlength=25).double()
    w = prior.weights
    assert ((counts / n - w).abs() <= 4.5 * (w * (1 - w) / n).sqrt()).all()
    for k in range(25):
        if counts[k] >= 20:
            mean_k = x[labels == k].mean(0)
            assert ((mean_k - prior.means[k]).abs() <= 4.5 / counts[k].sqrt()).all(), k


def test_bad_input_raises_value_error():
    prior = GaussianPrior(torch.zeros(3, 4, 4), 1.0)
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="sigma"):
        prior.denoise(x, -0.1)
    with pytest.raises(ValueError, match="sigma"):
        prior.denoise(x, torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match="event shape"):
        prior.denoise(torch.zeros(2, 1, 4, 4), 0.5)
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        DiscreteVPSchedule("cosine")
    with pytest.raises(ValueError, match="unknown SDE"):
        make_sde("subvp")
    with pytest.raises(ValueError, match="alpha"):
        sample_sde(prior, (1, 3, 4, 4), karras_sigmas(3), alpha=2.0)

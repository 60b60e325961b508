"""Ground-truth tests of ULA, SKRock, PnP-DM, RED-diff and the posterior SDE, and of the uncertainty helpers.

The MCMC chains target ``p(y | x) p_s(x)`` with the prior smoothed at the denoiser's noise level s. For a
Gaussian prior N(m, S) that target is exact: p_s = N(m, S + s^2 I), so the chain's target is the Gaussian
posterior of ``GaussianPrior(m, S + s^2).posterior(...)``, with precision P and mean P^-1 b. For a
Gaussian target ULA is the linear recursion x' = (1 - delta lam) x + sqrt(2 delta) xi along each eigenvector of P
(eigenvalue lam), whose stationary variance 2 delta / (1 - (1 - delta lam)^2) is its exact law. The tests compare
the returned draws with those laws by z-tests: the draws are the final states of independent chains, so the
standard error of a mean is sqrt(var / n) and that of a variance var sqrt(2 / (n - 1)); 5 standard errors keeps
the chance of a false alarm below 1e-5 for the handful of coordinates tested while a wrong coefficient (a bias of
tens of percent) fails clearly.
"""
from __future__ import annotations

import math

import pytest
import torch

from diffinv.operators import GaussianNoise, MatrixOperator, Operator
from diffinv.priors import GaussianPrior
from diffinv.samplers.mcmc import SKRock, ULA
from diffinv.samplers.pnp_dm import PnPDM
from diffinv.samplers.posterior_sde import PosteriorSDE
from diffinv.samplers.red_diff import REDDiff
from diffinv.samplers.uncertainty import draw_posterior, effective_sample_size

from test_sampler_contract import CountingPrior

Z = 5.0




def _gaussian_problem(d=4, dy=2, sigma_y=0.5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    var = 0.5 + torch.rand(d, generator=g, dtype=torch.float64)
    A = 0.5 * torch.randn(dy, d, generator=g, dtype=torch.float64)
    prior = GaussianPrior(mean.to(dtype), var.to(dtype))
    op = MatrixOperator(A.to(dtype), noise=GaussianNoise(sigma_y))
    y = op.measure(prior.sample(1, g).to(dtype), g)
    return prior, op, y, (mean, var, A)


def _target(prior_params, A, sigma_y, y, s):
    """Precision P and mean of the smoothed posterior p(y | x) N(x; m, S + s^2 I)."""
    mean, var, _ = prior_params
    P = A.T @ A / sigma_y**2 + torch.diag(1.0 / (var + s**2))
    b = A.T @ y.reshape(-1).double() / sigma_y**2 + mean / (var + s**2)
    return P, torch.linalg.solve(P, b)


def _ula_coefficients(lam, delta):
    return 1 - delta * lam, 1.0                                        # x' = (1 - delta lam) x + sqrt(2 delta) xi


def _stationary_cov(P, delta, coeff):
    lam, Q = torch.linalg.eigh(P)
    v = []
    for l in lam.tolist():
        a, c = coeff(l, delta)
        assert abs(a) < 1, "unstable step in the test setup"
        v.append(c * c * 2 * delta / (1 - a * a))
    return Q @ torch.diag(torch.tensor(v, dtype=P.dtype)) @ Q.T


def _ztest(draws, mean, cov, what):
    n = draws.shape[0]
    m_hat, v_hat = draws.mean(0), draws.var(0)
    v = cov.diagonal()
    z_mean = (m_hat - mean) / (v / n).sqrt()
    z_var = (v_hat - v) / (v * math.sqrt(2 / (n - 1)))
    assert z_mean.abs().max() < Z, f"{what}: mean z-scores {z_mean.tolist()}"
    assert z_var.abs().max() < Z, f"{what}: variance z-scores {z_var.tolist()} (ratios {(v_hat / v).tolist()})"


def test_ula_matches_the_gaussian_posterior():
    """ULA from a broad start on a small Gaussian problem reaches its closed-form stationary law (the draws are final
    states of independent chains: z-tests at 5 standard errors). SK-ROCK's stationary law is checked on the image
    test bed (tests/test_posterior_exact.py) and its step against the published recursion
    (tests/test_reference_equivalence.py)."""
    s, sigma_y, n = 0.3, 0.5, 2000
    prior, op, y, params = _gaussian_problem(sigma_y=sigma_y)
    P, mean = _target(params, params[2], sigma_y, y, s)
    L = float(torch.linalg.eigvalsh(P).max())
    # the draws' law also equals the closed-form posterior of the analytic prior smoothed at s
    exact = GaussianPrior(params[0], params[1] + s**2).posterior(op, y)
    assert torch.allclose(exact.mean().double(), mean, atol=1e-8)
    delta = 0.5 / L
    sampler = ULA(sigma=s, num_steps=600, step_size=delta)
    cov = _stationary_cov(P, delta, _ula_coefficients)
    draws = sampler.sample(y, op, prior, num_samples=n, generator=torch.Generator().manual_seed(1)).double()
    _ztest(draws, mean, cov, "ULA")
    # the discretisation bias is modest at this step: stationary variances within 35% of the exact posterior's
    ratio = cov.diagonal() / exact.covariance().diagonal()
    assert ((ratio - 1).abs() < 0.35).all(), ratio


def test_mcmc_automatic_step_is_stable_and_close():
    """Default step (half the stability limit, L by power iteration) on the same problem: right mean."""
    s, sigma_y, n = 0.3, 0.5, 500
    prior, op, y, params = _gaussian_problem(sigma_y=sigma_y)
    _, mean = _target(params, params[2], sigma_y, y, s)
    P, _ = _target(params, params[2], sigma_y, y, s)
    sk = SKRock(sigma=s, num_steps=150, num_stages=5)   # the damped Chebyshev peaks contract by ~(1 - eta) per step
    draws = sk.sample(y, op, prior, num_samples=n, generator=torch.Generator().manual_seed(2)).double()
    var = torch.linalg.inv(P).diagonal()
    z = (draws.mean(0) - mean) / (1.5 * var / n).sqrt()      # variance of the chain <= 1.5 x the target's here
    assert z.abs().max() < Z, z


def test_sample_chain_and_effective_sample_size():
    prior, op, y, _ = _gaussian_problem()
    ula = ULA(sigma=0.3, num_steps=200, burn_in=50, thinning=5)
    traj = ula.sample_chain(y, op, prior, num_chains=8, generator=torch.Generator().manual_seed(0))
    assert traj.shape == (30, 8, 4)                       # states 54, 59, ..., 199
    ess = effective_sample_size(traj)
    assert ess.shape == (4,) and bool((ess > 1).all()) and bool((ess <= 8 * 30 * math.log10(240)).all())
    # an AR(1) process x' = phi x + e has ESS = n (1 - phi) / (1 + phi)
    phi, T, C = 0.8, 4000, 16
    g = torch.Generator().manual_seed(0)
    e = torch.randn(T, C, generator=g, dtype=torch.float64)
    x = torch.zeros(T, C, dtype=torch.float64)
    x[0] = e[0] / math.sqrt(1 - phi**2)
    for t in range(1, T):
        x[t] = phi * x[t - 1] + e[t]
    expect = C * T * (1 - phi) / (1 + phi)
    assert abs(float(effective_sample_size(x)) / expect - 1) < 0.15


def test_draw_posterior_is_one_batched_call():
    prior, op, y, _ = _gaussian_problem(dtype=torch.float32)
    y2 = torch.cat([y, y + 1])
    calls = []

    class Spy(ULA):
        def _sample(self, *args):
            calls.append(args[3])
            return super()._sample(*args)

    samples, mean, std = draw_posterior(Spy(sigma=0.3, num_steps=50), y2, op, prior, num_samples=7,
                                        generator=torch.Generator().manual_seed(0))
    assert calls == [7] and samples.shape == (14, 4) and mean.shape == (2, 4) and std.shape == (2, 4)
    per = samples.reshape(7, 2, 4)
    assert torch.allclose(mean, per.mean(0)) and torch.allclose(std, per.std(0))


# ----------------------------------------------------------------------------- PnP-DM
def test_pnp_dm_likelihood_steps_are_exact():
    """z | x ~ N(Q^-1 (A^T y / s_y^2 + x / rho^2), Q^-1), Q = A^T A / s_y^2 + I / rho^2, by SVD and by CG."""
    prior, op, y, params = _gaussian_problem(sigma_y=0.5)
    A, rho, n = params[2], 0.7, 4000
    Q = A.T @ A / 0.25 + torch.eye(4, dtype=torch.float64) / rho**2
    cov = torch.linalg.inv(Q)
    x = torch.linspace(-1, 1, 4, dtype=torch.float64).repeat(n, 1)
    mean = cov @ (A.T @ y[0] / 0.25 + x[0] / rho**2)
    yr = y.repeat(n, 1)
    pnp = PnPDM()
    z_svd = pnp._svd_step(x, yr, op, rho, torch.Generator().manual_seed(0), op.Ut(yr))
    _ztest(z_svd, mean, cov, "svd likelihood step")

    class NoSVD(MatrixOperator):
        has_svd = False

    op_cg = NoSVD(A, noise=GaussianNoise(0.5))
    z_cg = pnp._cg_step(x, yr, op_cg, rho, torch.Generator().manual_seed(1))
    _ztest(z_cg, mean, cov, "cg likelihood step")


def test_pnp_dm_at_fixed_coupling_samples_its_augmented_target():
    """With rho fixed, the x-chain of the split Gibbs sampler targets p(x) N(y; A x, s_y^2 I + rho^2 A A^T)
    (Wu et al. 2024, Eq. 5 marginalised over z); the prior step is a Heun SDE solve, accurate here."""
    prior, op, y, params = _gaussian_problem(sigma_y=0.5)
    mean0, var, A = params
    rho, n = 0.5, 2000
    S = torch.diag(var)
    noise = 0.25 * torch.eye(2, dtype=torch.float64) + rho**2 * A @ A.T
    gain = S @ A.T @ torch.linalg.inv(A @ S @ A.T + noise)
    mean = mean0 + gain @ (y[0] - A @ mean0)
    cov = S - gain @ A @ S
    pnp = PnPDM(num_iters=30, rho=rho, rho_decay=1.0, rho_min=rho, num_diffusion_steps=100, solver="heun")
    draws = pnp.sample(y, op, prior, num_samples=n, generator=torch.Generator().manual_seed(3)).double()
    _ztest(draws, mean, cov, "PnP-DM at fixed rho")


def test_pnp_dm_langevin_likelihood_step_on_a_nonlinear_operator_counts_calls():
    class Cubic(Operator):
        calls = 0

        def forward(self, x):
            Cubic.calls += 1
            return x[:, :2] + 0.1 * x[:, 2:] ** 3

    prior, _, _, _ = _gaussian_problem(dtype=torch.float32)
    op = Cubic((4,), GaussianNoise(0.3))
    y = op.measure(torch.ones(1, 4))
    Cubic.calls = 0
    pnp = PnPDM(num_iters=3, rho=1.0, rho_min=0.5, langevin_steps=7, num_diffusion_steps=10)
    out = pnp.sample(y, op, CountingPrior(prior), num_samples=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 4) and torch.isfinite(out).all()
    assert pnp.cost.forward_calls == Cubic.calls, (pnp.cost.forward_calls, Cubic.calls)
    assert pnp.cost.forward_calls == 20 + 3 * 7                     # power iteration (20) + Langevin steps
    assert pnp.cost.grad_calls == 2 * 20 + 3 * 7


# ----------------------------------------------------------------------------- every sampler of this file
class CountingMatrix(MatrixOperator):
    calls = 0

    def forward(self, x):
        CountingMatrix.calls += 1
        return super().forward(x)


MINE = {
    "ULA": lambda: ULA(sigma=0.2, num_steps=15, power_iterations=4),
    "SKRock": lambda: SKRock(sigma=0.2, num_steps=3, num_stages=4, power_iterations=4),
    "REDDiff": lambda: REDDiff(num_steps=12),
    "PnPDM": lambda: PnPDM(num_iters=4, rho=1.0, rho_min=0.3, num_diffusion_steps=12),
    "PosteriorSDE": lambda: PosteriorSDE(num_steps=8),
    "PosteriorSDE-vp-heun": lambda: PosteriorSDE(sde="vp", solver="heun", num_steps=6, guidance="loss"),
}


@pytest.mark.parametrize("name", sorted(MINE))
def test_shapes_reproducibility_and_exact_cost(name):
    prior, op, y, params = _gaussian_problem(dtype=torch.float32)
    op = CountingMatrix(params[2].float(), noise=GaussianNoise(0.5))
    y = torch.cat([y, -y])
    counted = CountingPrior(prior)
    CountingMatrix.calls = 0
    sampler = MINE[name]()
    out = sampler.sample(y, op, counted, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, 4) and out.dtype == torch.float32
    assert sampler.cost.nfe == counted.calls
    if name != "PnPDM":                      # PnP-DM's exact SVD step counts its V / V^T applications instead
        assert sampler.cost.forward_calls == CountingMatrix.calls, (sampler.cost, CountingMatrix.calls)
    again = MINE[name]().sample(y, op, prior, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_red_diff_weights_and_gradient_form():
    """With the linear SNR weighting the regulariser's gradient is lam (mu - D(mu + sigma eps, sigma)) (RED-diff's
    stop-gradient score term, module docstring): with the measurement term switched off (obs_weight 0) and plain SGD
    in place of Adam, one step from mu moves it by exactly -lr lam (mu - D(mu + sigma eps, sigma)), and the reference's
    element-averaged objective moves it by that divided by d."""
    red = REDDiff(num_steps=10)
    sig = red.sigmas()
    assert len(sig) == 10 and sig == sorted(sig, reverse=True)
    with pytest.raises(ValueError, match="weighting"):
        REDDiff(weighting="cubic")
    prior, op, y, _ = _gaussian_problem(dtype=torch.float64)
    for reference_scaling, factor in ((False, 1.0), (True, 1.0 / 4)):
        sampler = REDDiff(num_steps=1, lr=0.3, lam=2.0, obs_weight=0.0, init="zeros", init_std=1.0,
                          reference_scaling=reference_scaling)
        sigma = sampler.sigmas()[0]
        steps = []

        class SGD(torch.optim.SGD):
            def __init__(self, params, lr, betas, weight_decay):
                super().__init__(params, lr=lr)

        original = torch.optim.Adam
        torch.optim.Adam = SGD
        try:
            out = sampler.sample(y, op, prior, num_samples=5, generator=torch.Generator().manual_seed(9),
                                 callback=lambda i, n, m: steps.append(m.clone()))
        finally:
            torch.optim.Adam = original
        g = torch.Generator().manual_seed(9)
        mu0 = torch.randn(5, 4, generator=g, dtype=torch.float64)
        eps = torch.randn(5, 4, generator=g, dtype=torch.float64)
        d = prior.denoise(mu0 + sigma * eps, sigma)
        # lam w(t) (eps_hat - eps) with w(t) = sigma and eps_hat - eps = (mu - D) / sigma: lam (mu - D)
        expected = mu0 - 0.3 * factor * 2.0 * (mu0 - d)
        assert torch.allclose(out, expected, rtol=0, atol=1e-12), (out - expected).abs().max()
        assert len(steps) == 1 and torch.equal(steps[0], out)


def test_posterior_sde_needs_noise_for_the_automatic_norm_weight():
    prior, _, y, params = _gaussian_problem(dtype=torch.float32)
    op = MatrixOperator(params[2].float(), noise=GaussianNoise(0.0))
    with pytest.raises(ValueError, match="weight"):
        PosteriorSDE(num_steps=3).sample(y, op, prior)
    out = PosteriorSDE(num_steps=3, weight=1.0).sample(y, op, prior)
    assert out.shape == (1, 4)

"""Exact analytic priors: denoisers, sampling and posteriors against independent computations."""
import math

import pytest
import torch

from diffinv.operators import GaussianNoise, MatrixOperator
from diffinv.priors import GaussianMixturePrior, GaussianPrior

f64 = torch.float64


def _mixture(d=3, k=3, seed=0, diagonal=True):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g, dtype=f64) * 3
    var = torch.rand(k, d, generator=g, dtype=f64) + 0.3 if diagonal else torch.rand(k, generator=g, dtype=f64) + 0.3
    return GaussianMixturePrior(torch.rand(k, generator=g, dtype=f64) + 0.2, means, var)


def test_mixture_denoiser_is_the_posterior_mean_by_quadrature():
    """In 1-D, E[x0 | x] computed by brute-force quadrature of p(x0) N(x; x0, sigma^2)."""
    prior = GaussianMixturePrior(torch.tensor([0.3, 0.7], dtype=f64), torch.tensor([[-2.0], [1.5]], dtype=f64),
                                 torch.tensor([0.5, 0.2], dtype=f64))
    grid = torch.linspace(-12, 12, 200001, dtype=f64)
    dens = sum(w * torch.exp(-0.5 * (grid - m) ** 2 / v) / math.sqrt(2 * math.pi * v)
               for w, m, v in zip(prior.weights, prior.means[:, 0], prior.variances[:, 0]))
    x = torch.tensor([[-3.0], [0.1], [2.0]], dtype=f64)
    for sigma in (0.05, 0.7, 5.0):
        lik = torch.exp(-0.5 * (x - grid) ** 2 / sigma**2)
        ref = (lik * dens * grid).sum(1) / (lik * dens).sum(1)
        assert torch.allclose(prior.denoise(x, sigma)[:, 0], ref, atol=1e-8)
    assert torch.allclose(prior.denoise(x, 0.0), x, atol=1e-14)


def test_lowrank_gaussian_denoiser_and_sampling():
    g = torch.Generator().manual_seed(2)
    d = 6
    mean = torch.randn(d, generator=g, dtype=f64)
    U = torch.randn(d, 2, generator=g, dtype=f64)
    prior = GaussianPrior(mean, torch.rand(d, generator=g, dtype=f64) + 0.1, U)
    S = prior.covariance()
    x = torch.randn(4, d, generator=g, dtype=f64)
    sig = torch.tensor([0.1, 0.5, 1.0, 3.0], dtype=f64)
    ref = torch.stack([mean + S @ torch.linalg.solve(S + s**2 * torch.eye(d, dtype=f64), xi - mean) for xi, s in zip(x, sig)])
    assert torch.allclose(prior.denoise(x, sig), ref, atol=1e-10)
    # 40000 draws: the sample covariance entries have standard error <= sqrt((S_ii S_jj + S_ij^2) / n); 5 of them
    n = 40000
    z = prior.sample(n, g)
    emp = torch.cov(z.T)
    se = ((torch.diag(S)[:, None] * torch.diag(S)[None] + S**2) / n).sqrt()
    assert ((emp - S).abs() <= 5 * se).all()


def test_posterior_matches_brute_force_gaussian_algebra():
    prior = _mixture(d=3, k=3)
    g = torch.Generator().manual_seed(5)
    A = torch.randn(2, 3, generator=g, dtype=f64)
    y = torch.randn(2, generator=g, dtype=f64)
    s2 = 0.3**2
    post = prior.posterior(A, y, 0.3)
    for k in range(3):
        Sk = torch.diag(prior.variances[k])
        prec = torch.linalg.inv(Sk) + A.T @ A / s2
        cov = torch.linalg.inv(prec)
        mean = cov @ (torch.linalg.solve(Sk, prior.means[k]) + A.T @ y / s2)
        assert torch.allclose(post.covs[k], cov, atol=1e-10) and torch.allclose(post.means[k], mean, atol=1e-10)


def test_mixture_posterior_agrees_with_importance_sampling():
    """Self-normalised importance sampling from the prior with the likelihood as weight. Its estimate of a
    posterior expectation has standard error about sqrt(Var_post / ESS) with ESS = (sum w)^2 / sum w^2;
    we allow 5 of those (the seed is fixed)."""
    prior = _mixture(d=2, k=3, seed=1)
    g = torch.Generator().manual_seed(7)
    A = torch.tensor([[1.0, 0.5]], dtype=f64)
    op = MatrixOperator(A, noise=GaussianNoise(1.0))
    y = op.measure(prior.sample(1, g), g)
    post = prior.posterior(op, y)
    n = 400000
    k = torch.multinomial(prior.weights, n, replacement=True, generator=g)
    x = prior._component_sample(k, g)
    logw = -0.5 * ((x @ A.T - y) ** 2).sum(1) / op.sigma**2
    w = torch.softmax(logw, 0)
    ess = 1 / (w**2).sum()
    assert ess > 5000
    mean_is = (w[:, None] * x).sum(0)
    var_post = torch.diagonal(post.covariance())
    assert ((mean_is - post.mean()).abs() <= 5 * (var_post / ess).sqrt()).all()
    weights_is = torch.zeros(3, dtype=f64).index_add_(0, k, w)
    assert ((weights_is - post.weights).abs() <= 5 * (post.weights * (1 - post.weights) / ess).sqrt() + 1e-12).all()
    # and exact posterior draws agree with the exact moments
    z = post.sample(100000, g)
    assert ((z.mean(0) - post.mean()).abs() <= 5 * (var_post / 1e5).sqrt()).all()


def test_image_shaped_gaussian_posterior():
    prior = GaussianPrior(torch.zeros(1, 4, 4, dtype=f64), 1.0)
    g = torch.Generator().manual_seed(3)
    op = MatrixOperator(torch.randn(5, 16, generator=g, dtype=f64), input_shape=(1, 4, 4), noise=GaussianNoise(0.1))
    y = op.measure(prior.sample(1, g), g)
    post = prior.posterior(op, y)
    assert post.sample(3, g).shape == (3, 1, 4, 4) and post.mean().shape == (1, 4, 4)
    # with identity prior covariance: posterior mean = A^T (A A^T + s^2 I)^-1 y
    A = op.matrix
    ref = A.T @ torch.linalg.solve(A @ A.T + 0.01 * torch.eye(5, dtype=f64), y[0])
    assert torch.allclose(post.mean().reshape(-1), ref, atol=1e-10)


def test_bad_prior_parameters():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixturePrior(torch.tensor([-1.0, 1.0]), torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match="variances"):
        GaussianMixturePrior(torch.ones(2), torch.zeros(2, 3), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="sigma_y"):
        _mixture().posterior(torch.ones(1, 3, dtype=f64), torch.ones(1, dtype=f64), -1.0)

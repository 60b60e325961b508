"""ReSample, Latent-DPS and PSLD on a tiny random latent prior; ReSample's hard-consistency optimisers and
resampling step on problems with known answers."""
from __future__ import annotations

import pytest
import torch

from diffinv.diffusion import sample_ddim
from diffinv.operators import GaussianNoise, MatrixOperator
from diffinv.priors import GaussianPrior
from diffinv.samplers.latent_dps import LatentDPS
from diffinv.samplers.psld import PSLD
from diffinv.samplers.resample import (ReSample, _optimise, latent_optimization, pixel_optimization,
                                       stochastic_resample)
from test_latent_prior import tiny_latent_prior


def _problem(prior, d_y: int = 64, sigma: float = 0.01, seed: int = 1):
    """A random Gaussian matrix on 16 x 16 x 3 images; the truth is a decoded random latent (in the decoder's range)."""
    g = torch.Generator().manual_seed(seed)
    op = MatrixOperator.random(d_y, 3 * 16 * 16, generator=g, noise=GaussianNoise(sigma))
    op.input_shape = prior.pixel_shape
    with torch.no_grad():
        x = prior.decode(torch.randn(2, *prior.event_shape, generator=g))
    return op, x, op.measure(x, g)


def _relative_residual(op, x, y):
    return ((op(x) - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1))


@pytest.fixture(scope="module")
def prior():
    return tiny_latent_prior(quantize_decode=False)


def test_consistency_schedule_matches_reference():
    s = ReSample()                                    # N = 500: indices 330, 320, ..., 10; pixel for >= 166
    spaces = {i: s.consistency_space(i) for i in range(500)}
    pixel = sorted(i for i, v in spaces.items() if v == "pixel")
    latent = sorted(i for i, v in spaces.items() if v == "latent")
    assert pixel == list(range(170, 331, 10)) and latent == list(range(10, 161, 10))


def test_stochastic_resample_is_the_gaussian_posterior():
    abar, s = torch.tensor(0.6), torch.tensor(0.3)
    z0, zp = torch.full((1,), 0.8), torch.full((1,), -0.5)
    n = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    draws = stochastic_resample(z0, zp, abar, s, n)
    # prior N(sqrt(abar) z0, 1 - abar), observation z' = z + sqrt(s) n: posterior precision-weighted mean / variance
    var = 1 / (1 / (1 - abar) + 1 / s)
    mean = var * (abar.sqrt() * z0 / (1 - abar) + zp / s)
    assert abs(draws.mean() - mean) < 5e-3 and abs(draws.var() - var) < 5e-3
    big = stochastic_resample(z0, zp, abar, torch.tensor(1e9), torch.zeros(1))   # s -> inf: forward-process mean
    assert torch.allclose(big, abar.sqrt() * z0, atol=1e-6)


def test_pixel_optimizer_reaches_the_least_squares_solution():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(96, 48, generator=g, dtype=torch.float64) / 48**0.5 + torch.eye(96, 48, dtype=torch.float64)
    op = MatrixOperator(a.float(), input_shape=(3, 4, 4))
    x_true = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    y = op(x_true)
    x, info = pixel_optimization(torch.zeros_like(x_true), y, op, weight_decay=0.0)
    assert bool((info["final_loss"] < 1e-6).all()) and bool((info["iterations"] < 2000).all())
    smin = torch.linalg.svdvals(a)[-1].item()
    err = (x - x_true).flatten(1).norm(dim=1)
    assert bool((err <= (1e-6 * 96) ** 0.5 / smin * 1.5).all()), err   # ||A e||^2 = d_y MSE < d_y tol


def test_latent_optimizer_through_a_linear_decoder_and_per_sample_stopping():
    g = torch.Generator().manual_seed(0)
    dec = torch.randn(48, 12, generator=g) / 12**0.5 + torch.eye(48, 12)
    decode = lambda z: (z.flatten(1) @ dec.T).reshape(-1, 3, 4, 4)    # noqa: E731  (a linear "decoder")
    op = MatrixOperator(torch.randn(24, 48, generator=g) / 48**0.5 + torch.eye(24, 48), input_shape=(3, 4, 4))
    z_true = torch.randn(2, 3, 2, 2, generator=g)
    y = op(decode(z_true))
    z_init = torch.stack([torch.zeros(3, 2, 2), z_true[1]])            # sample 1 starts at the solution
    z, info = latent_optimization(z_init, y, op, decode, lr=0.05, max_iters=3000, weight_decay=0.0)
    assert bool((info["final_loss"] < 1e-6).all())
    assert info["iterations"].tolist()[1] == 1 and torch.equal(z[1], z_init[1])    # frozen after its first check
    assert (z[0] - z_true[0]).norm() < 1e-2 * z_true[0].norm() + 1e-2


def test_patience_rule_stops_when_the_loss_rose_since_patience_iterations():
    calls = []

    def rising(v):                                    # a loss that only goes up
        calls.append(1)
        return v.flatten(1).sum(1) * 0 + len(calls)

    _, info = _optimise(torch.zeros(2, 3), rising, lr=1e-3, max_iters=500, tol=0.0, patience=20, weight_decay=0.0,
                        cost=None)
    assert info["iterations"].tolist() == [21, 21]


@torch.no_grad()
def _unconditional_residual(prior, op, y, num_steps: int):
    """Relative residual of 2 unconditional DDIM samples: what the data-consistent samplers must beat."""
    z = sample_ddim(prior, (2, *prior.event_shape), prior.schedule, num_steps=num_steps,
                    generator=torch.Generator().manual_seed(3))
    return _relative_residual(op, prior.decode(z), y)


def test_resample_beats_unconditional_ddim_on_the_residual(prior):
    op, x, y = _problem(prior)
    ddim = _unconditional_residual(prior, op, y, num_steps=20)
    sampler = ReSample(num_steps=20, consistency_every=2, time_travel_steps=2, pixel_max_iters=100,
                       latent_max_iters=50, latent_lr=0.05, latent_patience=None)
    out = sampler.sample(y, op, prior, generator=torch.Generator().manual_seed(4))
    res = _relative_residual(op, out, y)
    assert out.shape == (2, 3, 16, 16)                            # decoded samples
    assert bool((res < 0.1 * ddim).all()), (res, ddim)            # measured: about 0.02 vs 1.3 (some 60x lower)
    spaces = [e["space"] for e in sampler.consistency_log]
    assert spaces == ["pixel"] * 5 + ["latent"] * 2 + ["final"]
    assert set(sampler.timings) == {"unet", "decoder", "optimisation"}
    assert sampler.cost.nfe == 20 + 7 * 2 and sampler.cost.grad_calls > 20


def test_latent_samplers_refuse_pixel_priors_and_wrong_shapes(prior):
    op = MatrixOperator.random(8, 12)
    for sampler in (ReSample(), LatentDPS(), PSLD()):
        with pytest.raises(ValueError, match="latent prior"):
            sampler.check(op, GaussianPrior(torch.zeros(12), torch.ones(12)))
    with pytest.raises(ValueError, match="decodes"):
        ReSample(num_steps=2).sample(torch.zeros(1, 8), op, prior)
    with pytest.raises(ValueError, match="x0_estimate"):
        ReSample(x0_estimate="pseudo")

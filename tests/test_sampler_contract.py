"""One registry of every sampler, looped through the same contract checks (``docs/conventions.md#sampler-contract``):
output shape and sample-major order, seeded reproducibility, the callback, NFE equal to the counted
denoiser calls, and capability errors raised before any work. Every module of ``diffinv.samplers`` is
imported, so a new algorithm joins these tests automatically; it must add its fast settings to
``FAST_KWARGS`` (a few steps, so the whole file stays quick)."""
from __future__ import annotations

import pytest
import torch

from diffinv.diffusion import DiscreteVPSchedule
from diffinv.operators import GaussianNoise, MatrixOperator, Operator
from diffinv.priors import GaussianPrior, Prior
from diffinv.samplers.evaluation import load_all_samplers

SAMPLERS = load_all_samplers()

# Few-step settings per algorithm: enough for the measurement to dominate on the toy problems below.
FAST_KWARGS: dict[str, dict] = {
    "ULA": dict(sigma=0.1, num_steps=20, power_iterations=5),
    "SKRock": dict(sigma=0.1, num_steps=4, num_stages=3, power_iterations=5),
    "REDDiff": dict(num_steps=30, lr=0.5, lam=1.0),
    "PnPDM": dict(num_iters=3, rho=2.0, rho_min=0.2, num_diffusion_steps=10),
    "PosteriorSDE": dict(num_steps=10),
    "DDRM": dict(num_steps=5),
    "DiffPIR": dict(num_steps=5),
    "DPS": dict(num_steps=20, scale_by_sigma_y=True),
    "PiGDM": dict(num_steps=5),
    "DAPS": dict(num_steps=4, ode_steps=2, langevin_steps=10, lr=5e-3),
    "EnKG": dict(num_steps=6, num_updates=1, max_ode_steps=2, batch_size=None),
    "LatentDPS": dict(num_steps=20),
    "PSLD": dict(num_steps=20),
    "ReSample": dict(num_steps=20, pixel_max_iters=5, latent_max_iters=5, latent_patience=None),
    "PriorSamples": dict(num_steps=4),
    "Tikhonov": dict(lam_max=10.0, lam_min=0.1, max_iter=5, fit_samples=8),
    "EKI": dict(num_iterations=3, fit_samples=8),
    "DPG": dict(num_steps=20, num_mc_samples=8, guidance_scale=20.0, batch_size=16),
    "SCG": dict(num_steps=20, num_candidates=4, batch_size=5),
    "DPSGSG": dict(num_steps=20, num_queries=8, guidance_scale=1.0, batch_size=16),
    "DDNM": dict(num_steps=5),
    "LGD": dict(num_steps=20, num_mc_samples=2, guidance_scale=0.01),
    "MCGdiff": dict(num_steps=10),
    "TDS": dict(num_steps=10),
    "FPSSMC": dict(num_steps=10),
}
# samplers of one problem family are tested with it (EhtimRML: tests/test_baselines.py)
NAMES = sorted(n for n, c in SAMPLERS.items() if "interferometry" not in c.requires)
D, D_LATENT, NUM_SAMPLES = 6, 4, 3




# ----------------------------------------------------------------------------- counting wrappers
class CountingPrior(Prior):
    """Counts batched denoiser calls (``denoise`` and ``score`` both end in ``_denoise``)."""

    def __init__(self, inner: Prior):
        super().__init__(inner.event_shape)
        self.inner, self.calls = inner, 0

    def _denoise(self, x, sigma):
        self.calls += 1
        return self.inner._denoise(x, sigma)


class CountingLatentPrior(CountingPrior):
    """The same for a latent prior: exposes ``encode`` / ``decode`` / ``pixel_shape`` of the inner prior."""

    def encode(self, x):
        return self.inner.encode(x)

    def decode(self, z):
        return self.inner.decode(z)

    @property
    def pixel_shape(self):
        return self.inner.pixel_shape

    @property
    def latent_shape(self):
        return self.inner.event_shape

    @property
    def schedule(self):
        return self.inner.schedule


def counting(prior: Prior) -> CountingPrior:
    return CountingLatentPrior(prior) if hasattr(prior, "encode") else CountingPrior(prior)


class ToyLatentPrior(GaussianPrior):
    """A Gaussian latent prior N(0, 4 I) in R^4 with the linear decoder x = W z (images in R^6), and the
    discrete VP schedule latent samplers read from ``prior.schedule`` (as ``LatentPrior`` has)."""

    def __init__(self):
        super().__init__(torch.zeros(D_LATENT), torch.full((D_LATENT,), 4.0))
        self.schedule = DiscreteVPSchedule("sqrt_linear")
        w = torch.linalg.qr(torch.randn(D, D_LATENT, generator=torch.Generator().manual_seed(7)))[0]
        self.register_buffer("W", w)

    @property
    def pixel_shape(self):
        return (D,)

    @property
    def latent_shape(self):
        return (D_LATENT,)

    def encode(self, x):
        return x.reshape(x.shape[0], -1) @ self.W

    def decode(self, z):
        return z @ self.W.T


# ----------------------------------------------------------------------------- toy operators lacking capabilities
class NonDifferentiableOp(Operator):
    differentiable = False

    def forward(self, x):
        return torch.sign(x) * x.abs().sqrt()


class LinearNoSVD(MatrixOperator):
    has_svd = False


class NonlinearOp(Operator):
    def forward(self, x):
        return torch.tanh(x)


def _problem(latent: bool):
    """Two measurements of very different signals (x = +3 and x = -3 in every coordinate), observed by an
    invertible matrix with small noise, so that every sampler's draws for measurement b sit near x_b."""
    g = torch.Generator().manual_seed(0)
    prior = ToyLatentPrior() if latent else GaussianPrior(torch.zeros(D), torch.full((D,), 4.0))
    a = torch.eye(D) + 0.2 * torch.randn(D, D, generator=g)
    op = MatrixOperator(a, noise=GaussianNoise(0.1))
    if latent:
        z = torch.stack([torch.full((D_LATENT,), 3.0), torch.full((D_LATENT,), -3.0)])
        x = prior.decode(z)
    else:
        x = torch.stack([torch.full((D,), 3.0), torch.full((D,), -3.0)])
    return prior, op, op.measure(x, g), x


def _runnable(name):
    cls = SAMPLERS[name]
    return _problem("latent" in cls.requires)


def _make(name):
    return SAMPLERS[name](**FAST_KWARGS.get(name, {}))


def test_every_registered_sampler_has_fast_settings():
    missing = sorted(set(NAMES) - set(FAST_KWARGS))
    assert not missing, f"add few-step settings for {missing} to FAST_KWARGS"
    for name, kwargs in FAST_KWARGS.items():
        if name in SAMPLERS:
            SAMPLERS[name](**kwargs)  # __init__ takes only hyperparameters


@pytest.mark.parametrize("name", NAMES)
def test_shape_order_callback_and_nfe(name):
    prior, op, y, x = _runnable(name)
    sampler = _make(name)
    counted = counting(prior)
    steps = []
    out = sampler.sample(y, op, counted, num_samples=NUM_SAMPLES, generator=torch.Generator().manual_seed(1),
                         callback=lambda i, n, xi: steps.append((i, n, tuple(xi.shape))))
    B = y.shape[0]
    assert out.shape == (NUM_SAMPLES * B, *x.shape[1:]), f"{name}: shape {list(out.shape)}"
    assert out.dtype == torch.float32
    # sample-major: out.view(N, B, ...)[s, b] is draw s of measurement b
    per = out.reshape(NUM_SAMPLES, B, -1)
    for b in range(B if getattr(sampler, "uses_data", True) else 0):     # PriorSamples ignores the data
        dist_own = (per[:, b] - x[b].reshape(-1)).norm(dim=-1).mean()
        dist_other = (per[:, b] - x[1 - b].reshape(-1)).norm(dim=-1).mean()
        assert dist_own < dist_other, f"{name}: draws of measurement {b} are not sample-major ({dist_own} vs {dist_other})"
    # NFE = batched denoiser calls actually made
    assert sampler.cost.nfe == counted.calls, f"{name}: cost.nfe={sampler.cost.nfe} but {counted.calls} denoiser calls"
    # callback: once per outer step, steps 0, 1, ... with a constant n (a stopping rule may end before n)
    assert steps, f"{name}: callback never called"
    n = steps[0][1]
    assert [s[0] for s in steps] == list(range(len(steps))) and len(steps) <= n and all(s[1] == n for s in steps), \
        f"{name}: callback steps {steps[:5]}..."
    if not getattr(SAMPLERS[name], "baseline", False):
        assert len(steps) == n, f"{name}: callback steps {steps[:5]}..."


@pytest.mark.parametrize("name", NAMES)
def test_seeded_reproducibility(name):
    prior, op, y, _ = _runnable(name)
    runs = [_make(name).sample(y, op, prior, num_samples=2, generator=torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1]), f"{name}: same seed, different samples"
    assert not torch.equal(runs[0], runs[2]), f"{name}: different seeds, identical samples"


@pytest.mark.parametrize("name", NAMES)
def test_capability_errors_before_any_work(name):
    from diffinv.samplers.base import capabilities

    cls = SAMPLERS[name]
    g = torch.Generator().manual_seed(0)
    gauss = GaussianPrior(torch.zeros(D), torch.ones(D))
    latent = ToyLatentPrior()
    ops = [NonDifferentiableOp((D,), GaussianNoise(0.1)), NonlinearOp((D,), GaussianNoise(0.1)),
           LinearNoSVD(torch.randn(3, D, generator=g), noise=GaussianNoise(0.1)),
           MatrixOperator(torch.randn(3, D, generator=g), noise=GaussianNoise(0.1))]
    checked = 0
    for prior in (gauss, latent):
        for op in ops:
            if cls.requires <= capabilities(op, prior):
                continue
            counted = counting(prior)
            y = torch.zeros(2, *op(torch.zeros(1, D)).shape[1:])
            with pytest.raises(ValueError, match=name):
                _make(name).sample(y, op, counted, num_samples=2, generator=torch.Generator().manual_seed(0))
            assert counted.calls == 0, f"{name}: {counted.calls} denoiser calls before the capability error"
            checked += 1
    assert checked or not cls.requires  # every sampler with requirements meets at least one refusal here


def test_num_samples_must_be_positive():
    prior, op, y, _ = _problem(False)
    with pytest.raises(ValueError, match="num_samples"):
        _make("ULA").sample(y, op, prior, num_samples=0)

"""The exact test bed every sampler goes through: linear-Gaussian problems whose posterior is known in closed
form, and the statistics that tell a right posterior from a wrong one.

Problems (``gaussian_problem(name)``): an image-shaped Gaussian prior on 1 x 16 x 16 with a smooth stationary
covariance (a squared-exponential kernel of length 2 pixels plus a small nugget; eigenvalues spread over three
decades) and a non-zero mean, observed through
  * ``dense``:   a random Gaussian 64 x 256 matrix, sigma_y 0.1;
  * ``inpaint``: a fixed random half of the pixels, sigma_y 0.05;
  * ``sr``:      2 x 2 average pooling (8 x 8 observations), sigma_y 0.05.
The prior's exact denoiser is linear, so the only errors a sampler can make are its own.

Statistics (``posterior_stats``), in the exact posterior's principal basis ``Sigma = Q diag(lam) Q^T``: every draw
is whitened, ``c = (x - mu)^T Q / sqrt(lam)``, so that exact draws have ``c ~ N(0, I)``. Then
  * ``mean_error``: RMS over the d directions of the sample mean of c (the posterior-mean error in units of the
    exact posterior std). Exact draws: about ``1 / sqrt(N)``.
  * ``spread``: RMS over the directions of the sample std of c (1 for exact draws), and the same over the 16
    directions of largest posterior variance (``spread_top``, where the prior dominates) and of smallest
    (``spread_bottom``, where the data dominate).
The statistical tolerance comes from the sample size: for N independent exact draws the sample mean of each c_k
has std 1 / sqrt(N) and the sample variance std sqrt(2 / (N - 1)); ``limits(N)`` turns that into bounds at 5
standard errors of the RMS statistics (the RMS over 16 or 256 directions concentrates further), which an exact
sampler exceeds with probability below 1e-5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffinv.operators import GaussianNoise, Masking, MatrixOperator, PoolingSuperResolution
from diffinv.priors import GaussianPrior

SHAPE = (1, 16, 16)
D = math.prod(SHAPE)
PROBLEMS = ("dense", "inpaint", "sr")
EDGE = 16                      # directions in spread_top / spread_bottom


def image_prior(dtype=torch.float64) -> GaussianPrior:
    """N(m, K + 0.05^2 I) on 16 x 16, K_ij = 0.5^2 exp(-|p_i - p_j|^2 / (2 * 2^2)), m a smooth ramp."""
    ij = torch.stack(torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij"), -1).reshape(-1, 2)
    dist2 = ((ij[:, None] - ij[None]) ** 2).sum(-1).double()
    cov = 0.25 * torch.exp(-dist2 / 8.0) + 0.05**2 * torch.eye(D, dtype=torch.float64)
    mean = 0.3 * torch.sin(ij[:, 0] / 3.0).double() * torch.cos(ij[:, 1] / 5.0).double()
    return GaussianPrior.from_covariance(mean.reshape(SHAPE).to(dtype), cov).to(dtype)


def make_operator(name: str, dtype=torch.float64):
    g = torch.Generator().manual_seed(7)
    if name == "dense":
        a = torch.randn(64, D, generator=g, dtype=torch.float64) / math.sqrt(D) * 4.0
        return MatrixOperator(a.to(dtype), input_shape=SHAPE, noise=GaussianNoise(0.1))
    if name == "inpaint":
        mask = (torch.rand(16, 16, generator=g) < 0.5).float()
        return Masking(mask, input_shape=SHAPE, noise=GaussianNoise(0.05)).to(dtype)
    if name == "sr":
        return PoolingSuperResolution(SHAPE, scale_factor=2, noise=GaussianNoise(0.05)).to(dtype)
    raise KeyError(name)


@dataclass
class Problem:
    name: str
    prior: GaussianPrior
    operator: object
    y: Tensor
    x_true: Tensor
    mean: Tensor        # exact posterior mean [d]
    Q: Tensor           # principal directions [d, d], columns by increasing variance
    lam: Tensor         # posterior variances along them [d]

    @property
    def sigma_y(self) -> float:
        return float(self.operator.sigma)


def gaussian_problem(name: str, seed: int = 0, dtype=torch.float32) -> Problem:
    prior = image_prior(torch.float64)
    op = make_operator(name, torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = prior.sample(1, g)
    y = op.measure(x, g)
    post = prior.posterior(op, y)
    lam, Q = torch.linalg.eigh(post.covs[0])
    return Problem(name, prior.to(dtype), op.to(dtype), y.to(dtype), x.to(dtype), post.means[0], Q, lam.clamp_min(1e-30))


def whiten(samples: Tensor, problem: Problem) -> Tensor:
    x = samples.reshape(samples.shape[0], -1).double()
    return (x - problem.mean) @ problem.Q / problem.lam.sqrt()


def posterior_stats(samples: Tensor, problem: Problem) -> dict[str, float]:
    c = whiten(samples, problem)
    m, s = c.mean(0), c.std(0)
    rms = lambda v: float(v.pow(2).mean().sqrt())  # noqa: E731
    return {"mean_error": rms(m), "spread": rms(s), "spread_top": rms(s[-EDGE:]), "spread_bottom": rms(s[:EDGE]),
            "n": samples.shape[0]}


def limits(n: int, d: int = D) -> dict[str, float]:
    """Bounds an exact sampler with n independent draws stays within (5 standard errors, see the module docstring).
    mean_error^2 is a mean of d squared N(0, 1/n) values: mean 1/n, std sqrt(2/d)/n. A spread^2 over k directions is
    a mean of k sample variances: mean 1, std sqrt(2/((n-1) k))."""
    z = 5.0
    mean_err = math.sqrt((1 + z * math.sqrt(2 / d)) / n)
    band = lambda k: z * math.sqrt(2 / ((n - 1) * k)) / 2   # noqa: E731 - half of the std of spread^2: std of spread
    return {"mean_error": mean_err, "spread": band(d), "spread_edge": band(EDGE)}


@dataclass(frozen=True)
class Expect:
    """What a sampler must reach on a problem: its posterior-mean error at most ``mean_error`` (in posterior std
    units, beyond the Monte Carlo part ``limits``) and each spread ratio within ``[lo, hi]`` (widened by the Monte
    Carlo band). An exact sampler has mean_error 0 and spreads (1, 1)."""

    mean_error: float = 0.0
    spread: tuple[float, float] = (1.0, 1.0)
    spread_top: tuple[float, float] | None = None
    spread_bottom: tuple[float, float] | None = None


def violations(stats: dict, expect: Expect) -> list[str]:
    """The ways ``stats`` (of ``posterior_stats``) falls outside ``expect``: an empty list means it passes."""
    lim = limits(stats["n"])
    out = []
    # the Monte Carlo part and the allowed bias add in quadrature (independent errors)
    allowed = math.sqrt(lim["mean_error"] ** 2 + expect.mean_error**2)
    if not stats["mean_error"] <= allowed:
        out.append(f"mean error {stats['mean_error']:.3f} posterior std > {allowed:.3f}")
    for key, band, mc in (("spread", expect.spread, lim["spread"]),
                          ("spread_top", expect.spread_top or expect.spread, lim["spread_edge"]),
                          ("spread_bottom", expect.spread_bottom or expect.spread, lim["spread_edge"])):
        lo, hi = band[0] - mc, band[1] + mc
        if not lo <= stats[key] <= hi:
            out.append(f"{key} {stats[key]:.3f} outside [{lo:.3f}, {hi:.3f}]")
    return out


class LinearLatentPrior(GaussianPrior):
    """The image prior seen through a linear "autoencoder": latents ``z = x / 2`` carry N(m / 2, S / 4) and
    ``decode(z) = 2 z``, so decoded draws have the image prior and the exact posterior is the pixel problem's. The
    discrete VP schedule latent samplers read from ``prior.schedule`` is latent diffusion's."""

    def __init__(self, pixel_prior: GaussianPrior):
        cov = pixel_prior.covariance().double() / 4
        lam, Q = torch.linalg.eigh(cov)
        nugget = 0.5 * float(lam.min())
        super().__init__(pixel_prior.mean / 2, torch.full_like(pixel_prior.mean, nugget),
                         (Q * (lam - nugget).clamp_min(0).sqrt()).to(pixel_prior.mean.dtype))
        from diffinv.diffusion import DiscreteVPSchedule

        self.schedule = DiscreteVPSchedule("sqrt_linear")

    pixel_shape = SHAPE
    latent_shape = SHAPE

    def encode(self, x: Tensor) -> Tensor:
        return x / 2

    def decode(self, z: Tensor) -> Tensor:
        return 2 * z


def exact_draws(problem: Problem, n: int, seed: int = 0) -> Tensor:
    """n independent draws of the exact posterior ``[n, *SHAPE]`` (float64)."""
    z = torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (problem.mean + (z * problem.lam.sqrt()) @ problem.Q.T).reshape(n, *SHAPE)


def smoothed(problem: Problem, s: float) -> Problem:
    """The same measurement with the prior smoothed by Gaussian noise of std s: N(m, S + s^2 I), the exact target
    of plug-and-play Langevin samplers whose denoiser runs at noise level s."""
    base = problem.prior
    prior = GaussianPrior.from_covariance(base.mean.double(), base.covariance().double()
                                          + s**2 * torch.eye(D, dtype=torch.float64))
    post = prior.posterior(problem.operator, problem.y)           # computed in float64 from the operator's matrix
    lam, Q = torch.linalg.eigh(post.covs[0])
    return Problem(problem.name, problem.prior, problem.operator, problem.y, problem.x_true, post.means[0], Q,
                   lam.clamp_min(1e-30))

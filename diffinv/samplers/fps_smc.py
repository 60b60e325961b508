"""FPS-SMC: filtering posterior sampling with sequential Monte Carlo.

Dou, Song, "Diffusion posterior sampling for linear inverse problem solving: a filtering perspective" (ICLR 2024,
openreview tplXNcHZs1); reference code ZehaoDou-official/FPS-SMC-2023 (``guided_diffusion/gaussian_diffusion.py``).

FPS turns posterior sampling for a linear ``y = A x0 + sigma_y e`` into a filtering problem. In the VE view of the
schedule (``x_t = x0 + sigma_t n``, ``docs/conventions.md#denoiser-convention``) the measurement is diffused along
with the signal, ``y_t = y + sigma_t A n`` (the paper's ``sqrt(abar_t) y + sqrt(1 - abar_t) A eps`` divided by
``sqrt(abar_t)``), so that ``y_t = A x_t + sigma_y e``: a sequence of observations with likelihood
``p(y_t | x_t) = N(y_t; A x_t, sigma_y^2 I)`` (the reference's ``alphas_cumprod_prev * sigma^2`` in VP
coordinates). The sequence is drawn backwards from ``y_0 = y`` with the same kernel as the signal (the reference's
"backward DDIM generation of y-sequence"): ``y_{sigma_0} = y + sigma_0 A n``, then

    y' = y + a (y_sigma - y) + sqrt(c) sigma' A z,      a = sqrt(1 - c) sigma' / sigma,

one sequence per measurement shared by its particles, with ``c = c_rate`` (the DDIM variance ratio of the
reference, its published 0.95; ``c_rate=None`` takes the ancestral DDPM kernel, ``a = sigma'^2 / sigma^2``,
variance ``sigma'^2 (sigma^2 - sigma'^2) / sigma^2``). The signal's kernel is the same with the denoiser's
``x0_hat = D(x, sigma)`` in place of y: ``N(m, v I)``, ``m = x0_hat + a (x - x0_hat)``.

The particle filter (the paper's Algorithm 2, FPS-SMC): the proposal is the kernel conditioned on the next
observation, ``q(x' | x) ∝ N(x'; m, v I) N(y'; A x', sigma_y^2 I)`` (Gaussian: its mean is
``m + v A^T (v A A^T + sigma_y^2 I)^{-1} (y' - A m)``), and the weight its normalising constant
``N(y'; A m, v A A^T + sigma_y^2 I)`` (Eq. 13 of the paper; the reference evaluates the same ratio from the drawn
particle). The weight depends on the particle before the move, so the ancestors are chosen first (ESS rule,
``smc.py``) and the move follows. The start draws ``x_{sigma_0}`` from ``N(0, (1 + sigma_0^2) I)`` (the VP reference
law) conditioned on ``y_{sigma_0}``, as the reference. The last step goes to sigma = 0, where ``y' = y`` and the
kernel is the point ``x0_hat``: the weight is then ``N(y; A x0_hat, sigma_y^2)`` and the particles land on x0_hat;
they are finally resampled into N equally weighted draws.

With an SVD (``A = U diag(s) V^T``) everything is diagonal in the spectral coordinates (no forward calls); for other
linear operators the Gaussian conditionals use conjugate gradients on ``v A A^T + sigma_y^2 I`` (two solves per
step, the move by Matheron's rule: ``x' = x_p + v A^T (v A A^T + sigma_y^2)^{-1} (y' - A x_p - sigma_y e)`` with
``x_p ~ N(m, v I)``). Cost: ``num_steps`` denoiser calls (``cost.nfe``); forward calls only without an SVD.

FPS targets the filtering distribution of a model in which the observations ``y_t`` of different levels carry
independent noise given the signal; the diffused measurement they are drawn as shares one ``e`` across levels, so
its draws are not exact for a finite number of particles and steps: the exact test bed and the Gaussian-mixture
tests measure what is left (``tests/test_smc.py``, ``tests/posterior_cases.py``). As particles grow they do not
approach the posterior either: in 1-D their variance is that of the exact filter of FPS's own model (a Kalman
recursion with an independent observation at every level; ``tests/test_smc.py`` matches it to within 1 %), which
is 5-9 % of the posterior's there.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..operators.base import conjugate_gradient
from .base import randn, real_dtype, repeat_measurement
from .smc import _SMCSampler


class FPSSMC(_SMCSampler):
    """Filtering posterior sampling, SMC version (needs a linear operator and Gaussian noise with sigma_y > 0; the
    SVD is used when there is one, conjugate gradients otherwise).

    Args:
        num_steps: steps on a uniform sub-sequence of the VP schedule (one denoiser call each; 1000 in the paper).
        c_rate: the DDIM variance ratio c of both chains (0.95 in the paper's runs); None: the ancestral kernel.
        threshold: resample (systematically) a measurement's particles when their ESS < threshold * N.
        particles_per_draw: None: the num_samples draws are the particles of one system; K: each draw comes from its
            own system of K particles (independent draws, num_samples * K particles; ``smc.py``).
        cg_tol, cg_max_iter: conjugate gradients for linear operators without an SVD.
        schedule, train_steps: the discrete VP schedule giving the sigma levels (DDPM linear, 1000).
    """

    requires = frozenset({"linear"})

    def __init__(self, num_steps: int = 1000, c_rate: float | None = 0.95, threshold: float = 0.5,
                 cg_tol: float = 1e-6, cg_max_iter: int = 100, schedule: str = "linear", train_steps: int = 1000,
                 particles_per_draw: int | None = None):
        super().__init__(num_steps, threshold, particles_per_draw, schedule, train_steps)
        if c_rate is not None and not 0 < c_rate <= 1:
            raise ValueError(f"FPSSMC: c_rate must be in (0, 1] (or None for the ancestral kernel), got {c_rate}")
        self.c_rate, self.cg_tol, self.cg_max_iter = c_rate, cg_tol, cg_max_iter

    def kernel(self, s: float, s1: float) -> tuple[float, float]:
        """``(a, v)`` of the step sigma -> sigma': mean ``x0 + a (x - x0)``, variance v."""
        if self.c_rate is None:
            return s1**2 / s**2, s1**2 * (s**2 - s1**2) / s**2
        return (1 - self.c_rate) ** 0.5 * s1 / s, self.c_rate * s1**2

    # ------------------------------------------------------------------ the sampler
    @torch.no_grad()
    def _smc(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        sy = float(operator.sigma)
        if not sy > 0:
            raise ValueError("FPSSMC needs noisy data (sigma_y > 0): its observation likelihood N(y_t; A x_t, "
                             "sigma_y^2) is a point mass otherwise.")
        dtype = real_dtype(y)
        b, n = y.shape[0], num_samples
        sig = self.sigmas()
        space = _Spectral(operator, y, n, dtype, self._randn) if operator.has_svd else _Pixels(self, operator, y, n)
        sy2 = sy**2
        # the first observation and the start: N(0, 1 + sigma_0^2) conditioned on it
        y_t = space.y0 + sig[0] * space.noise_in_range(generator)
        x = space.move(space.zeros(), 1 + sig[0] ** 2, space.rep(y_t), sy2, generator)
        log_w = torch.zeros(n, b, dtype=torch.float64, device=y.device)
        for i in range(self.num_steps):
            s, s1 = sig[i], sig[i + 1]
            a, v = self.kernel(s, s1)
            y_t = space.y0 + a * (y_t - space.y0) + (v**0.5) * space.noise_in_range(generator)   # y at sigma'
            self.cost.nfe += 1
            x0 = self._guard(lambda: space.denoise(prior, x, s), like=x)
            m = x0 + a * (x - x0)
            y_rep = space.rep(y_t)
            log_w = log_w + space.log_predictive(m, y_rep, v, sy2).double().view(n, b)
            log_w, (m,) = self._reweight(log_w, generator, m)
            x = space.move(m, v, y_rep, sy2, generator) if v > 0 else m
            if callback is not None:
                callback(i, self.num_steps, space.image(x))
        return self._finish(log_w, space.image(x), generator)


class _Spectral:
    """FPS in the spectral coordinates of ``A = U diag(s) V^T``: particles ``xbar = V^T x [NB, d]``, observations
    ``U^T y [B, d]`` (zero beyond the rank), all conditionals diagonal."""

    def __init__(self, operator, y: Tensor, n: int, dtype, noise):
        self.op, self.n, self.b, self.noise = operator, n, y.shape[0], noise
        sv = operator.singulars().to(dtype)
        self.s = sv                                                           # [1 or B, d]
        self.s_rep = repeat_measurement(sv, n) if sv.shape[0] == self.b and self.b > 1 else sv
        self.y0 = operator.Ut(y).to(dtype)                                    # [B, d]

    def zeros(self) -> Tensor:
        return self.y0.new_zeros(self.n * self.b, self.y0.shape[1])

    def rep(self, u: Tensor) -> Tensor:
        return repeat_measurement(u, self.n)

    def noise_in_range(self, generator) -> Tensor:
        """``U^T A z = s * V^T z`` with ``V^T z ~ N(0, I)``."""
        return self.s * randn(self.y0.shape, generator, like=self.y0)

    def denoise(self, prior, xbar: Tensor, sigma: float) -> Tensor:
        x = self.op.V(xbar)
        return self.op.Vt(prior.denoise(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)))

    def log_predictive(self, m: Tensor, u: Tensor, v: float, sy2: float) -> Tensor:
        """``log N(y'; A m, v A A^T + sigma_y^2 I)`` up to a per-measurement constant."""
        obs = self.s_rep > 0
        r = torch.where(obs, u - self.s_rep * m, torch.zeros_like(m))
        return -(r**2 / (2 * (sy2 + v * self.s_rep**2))).sum(1)

    def move(self, m: Tensor, v: float, u: Tensor, sy2: float, generator) -> Tensor:
        """A draw of ``N(x; m, v I) N(y'; A x, sigma_y^2 I)`` (normalised)."""
        obs = self.s_rep > 0
        prec = 1.0 / v + self.s_rep**2 / sy2
        mean = torch.where(obs, (m / v + self.s_rep * u / sy2) / prec, m)
        var = torch.where(obs, 1.0 / prec, torch.full_like(prec, v))
        return mean + var.sqrt() * self.noise(m.shape, generator, like=m)

    def image(self, xbar: Tensor) -> Tensor:
        return self.op.V(xbar)


class _Pixels:
    """FPS in pixel space for linear operators without an SVD (conjugate gradients in measurement space)."""

    def __init__(self, sampler: FPSSMC, operator, y: Tensor, n: int):
        self.sampler, self.op, self.n, self.b = sampler, operator, n, y.shape[0]
        self.y0 = y
        self.shape = operator.input_shape

    def zeros(self) -> Tensor:
        return self.y0.new_zeros(self.n * self.b, *self.shape)

    def rep(self, u: Tensor) -> Tensor:
        return repeat_measurement(u, self.n)

    def _A(self, x: Tensor) -> Tensor:
        self.sampler.cost.forward_calls += 1
        return self.op(x)

    def _At(self, r: Tensor) -> Tensor:
        self.sampler.cost.forward_calls += 1
        return self.op.adjoint(r)

    def noise_in_range(self, generator) -> Tensor:
        return self._A(randn((self.b, *self.shape), generator, like=self.y0))

    def denoise(self, prior, x: Tensor, sigma: float) -> Tensor:
        return prior.denoise(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device))

    def _solve(self, r: Tensor, v: float, sy2: float) -> Tensor:
        """``(v A A^T + sigma_y^2 I)^{-1} r``."""
        return conjugate_gradient(lambda w: v * self._A(self._At(w)) + sy2 * w, r, tol=self.sampler.cg_tol,
                                  max_iter=self.sampler.cg_max_iter)

    def log_predictive(self, m: Tensor, u: Tensor, v: float, sy2: float) -> Tensor:
        r = u - self._A(m)
        w = self._solve(r, v, sy2) if v > 0 else r / sy2
        return -(r * w).reshape(r.shape[0], -1).sum(1) / 2

    def move(self, m: Tensor, v: float, u: Tensor, sy2: float, generator) -> Tensor:
        xp = m + v**0.5 * self.sampler._randn(m.shape, generator, like=m)
        r = u - self._A(xp) - sy2**0.5 * self.sampler._randn(u.shape, generator, like=u)
        return xp + v * self._At(self._solve(r, v, sy2))

    def image(self, x: Tensor) -> Tensor:
        return x

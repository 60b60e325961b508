"""DAPS: decoupled annealing posterior sampling.

Zhang, Chu, Berner, Meng, Anandkumar, Song, "Improving diffusion inverse problem solving with decoupled noise
annealing" (CVPR 2025, arXiv:2407.01521); reference code zhangbingliang2019/DAPS (``sampler.py``, ``cores/``).

DAPS anneals a noise level down a Karras grid (EDM Eq. 5) of ``num_steps + 1`` points ``sigma_0 > ... > sigma_N``
(DAPS-1K: 200 levels from 100 to 0.1) and at every level ``i = 0 .. N - 1`` decouples consecutive iterates
through x0 (DAPS Algorithm 1):

    x0_hat = ODE_{sigma_i -> sigma_ode}(x_i)          (Euler PF-ODE, ``ode_steps`` steps on a Karras sub-grid)
    x0_y  ~ p(x0 | x_i, y) ~ N(x0; x0_hat, sigma_i^2 I) p(y | x0)      (Langevin on the Gaussian approximation)
    x_{i+1} = x0_y + sigma_{i+1} n,  with sigma_N replaced by 0         (the decoupled noising p(x_{i+1} | x0))

so the last level (sigma_{N-1}, 0.106 for DAPS-1K) runs its MCMC too and the result is its x0_y. The x0 estimate
integrates the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma with Euler steps over ``ode_steps + 1``
Karras points from sigma_i down to ``ode_sigma_min`` (0.01) and stops there, without a final denoiser call.
The Langevin chain on z starts at x0_hat (Sec. 3.3):

    z <- z + lr_i ( -grad_z l(z) - (z - x0_hat) / sigma_i^2 ) + sqrt(2 lr_i) n,
    lr_i = lr (1 - (1 - lr_min_ratio) i / (N + 1)),

with ``l(z) = ||A z - y||^2 / tau^2`` (the reference's data term; tau = 0.01 for its image tasks) or, with
``tau = None``, the noise model's negative log-likelihood ``operator.loss`` (``||A z - y||^2 / (2 sigma_y^2)`` for
Gaussian noise: the Bayesian weight, i.e. tau = sqrt(2) sigma_y). All of this is the reference's current code.

Cost per level: ``ode_steps`` network evaluations and ``langevin_steps`` forward-model gradients.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..diffusion import EDMSDE, karras_sigmas, solve_sde
from .base import Sampler, randn, real_dtype, repeat_measurement
from .guidance import likelihood_gradient, residual_norm


class DAPS(Sampler):
    """Decoupled annealing posterior sampling (needs a differentiable operator).

    Args:
        num_steps, sigma_max, sigma_min, rho: the annealing levels (200, 100, 0.1, 7; DAPS-1K).
        ode_steps, ode_sigma_min: Euler steps of the x0 estimate and where it stops (5, 0.01).
        langevin_steps, lr, lr_min_ratio: the Langevin chain per level (100, 1e-4, 0.01 for images).
        tau: the data term ``||A z - y||^2 / tau^2`` (the reference's; 0.01 for its image tasks), or ``None`` for
            the noise model's negative log-likelihood ``operator.loss``.
    """

    requires = frozenset({"differentiable"})

    def __init__(self, num_steps: int = 200, sigma_max: float = 100.0, sigma_min: float = 0.1, rho: float = 7.0,
                 ode_steps: int = 5, ode_sigma_min: float = 0.01, langevin_steps: int = 100, lr: float = 1e-4,
                 lr_min_ratio: float = 0.01, tau: float | None = None):
        super().__init__()
        if num_steps < 1 or ode_steps < 1 or langevin_steps < 0:
            raise ValueError(f"DAPS: need num_steps >= 1, ode_steps >= 1, langevin_steps >= 0; got {num_steps}, "
                             f"{ode_steps}, {langevin_steps}")
        if not 0 < sigma_min < sigma_max or ode_sigma_min <= 0:
            raise ValueError(f"DAPS: need 0 < sigma_min < sigma_max and ode_sigma_min > 0, got {sigma_min}, "
                             f"{sigma_max}, {ode_sigma_min}")
        if lr <= 0 or not 0 < lr_min_ratio <= 1:
            raise ValueError(f"DAPS: need lr > 0 and lr_min_ratio in (0, 1], got {lr}, {lr_min_ratio}")
        if tau is not None and tau <= 0:
            raise ValueError(f"DAPS: tau must be > 0 or None (use operator.loss), got {tau}")
        self.num_steps, self.sigma_max, self.sigma_min, self.rho = num_steps, sigma_max, sigma_min, rho
        self.ode_steps, self.ode_sigma_min = ode_steps, ode_sigma_min
        self.langevin_steps, self.lr, self.lr_min_ratio = langevin_steps, lr, lr_min_ratio
        self.tau = tau

    def levels(self) -> list[float]:
        """sigma_0 .. sigma_{N-1} of the annealing (MCMC at each), then 0 (the last noising adds nothing)."""
        grid = karras_sigmas(self.num_steps + 1, self.sigma_min, self.sigma_max, self.rho, append_zero=False)
        return grid[:-1].tolist() + [0.0]

    def step_size(self, i: int) -> float:
        return self.lr * (1 - (1 - self.lr_min_ratio) * i / (self.num_steps + 1))

    def _x0_ode(self, prior, x: Tensor, sigma: float) -> Tensor:
        """Euler PF-ODE from ``sigma`` to ``ode_sigma_min`` on ``ode_steps + 1`` Karras points (no final denoise);
        a level already at or below ``ode_sigma_min`` is returned as it is."""
        if sigma <= self.ode_sigma_min:
            return x
        sub = karras_sigmas(self.ode_steps + 1, self.ode_sigma_min, sigma, self.rho, append_zero=False)
        return solve_sde(prior, x, sub, EDMSDE(), alpha=0.0, method="euler", cost=self.cost)

    def _likelihood_grad(self, z: Tensor, y: Tensor, operator) -> Tensor:
        if self.tau is None:
            return likelihood_gradient(z, y, operator, self.cost)[0]
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            loss = residual_norm(operator, operator(z), y) ** 2 / self.tau**2
            (g,) = torch.autograd.grad(loss.sum(), z)
        self.cost.forward_calls += 1
        self.cost.grad_calls += 1
        return g

    def _langevin(self, x0: Tensor, y: Tensor, operator, r: float, lr: float, generator) -> Tensor:
        """Langevin chain on p(x0 | x_t, y) ~ N(x0_hat, r^2 I) p(y | x0) started at x0_hat (DAPS Alg. 1)."""
        z = x0
        noise_scale = math.sqrt(2 * lr)
        for _ in range(self.langevin_steps):
            score = -self._likelihood_grad(z, y, operator) - (z - x0) / r**2
            z = z + lr * score + noise_scale * randn(z.shape, generator, like=z)
        return z

    @torch.no_grad()
    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        dtype = real_dtype(y)
        y_rep = repeat_measurement(y, num_samples)
        sig = self.levels()
        x = randn((y_rep.shape[0], *operator.input_shape), generator, like=y, dtype=dtype) * sig[0]
        for i in range(self.num_steps):
            x0 = self._x0_ode(prior, x, sig[i])                                          # x0_hat(x_i)
            x0y = self._langevin(x0, y_rep, operator, sig[i], self.step_size(i), generator)   # x0_y
            x = x0y + sig[i + 1] * randn(x0y.shape, generator, like=x0y) if sig[i + 1] > 0 else x0y   # x_{i+1}
            if callback is not None:
                callback(i, self.num_steps, x)
        return x

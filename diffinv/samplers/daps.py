"""DAPS: decoupled annealing posterior sampling.

Zhang, Chu, Berner, Meng, Anandkumar, Song, "Improving diffusion inverse problem solving with decoupled noise
annealing" (CVPR 2025, arXiv:2407.01521); reference code zhangbingliang2019/DAPS.

DAPS anneals a sigma level ``sigma_N > ... > sigma_1`` (Karras grid, EDM Eq. 5: 200 levels from 100 to 0.1) and
at every level decouples consecutive iterates through x0 (DAPS Algorithm 1):

    x0_hat = ODE_{sigma_i -> 0}(x_i)                  (PF-ODE, 5 Euler steps on a Karras sub-grid down to 0.01)
    x0_y  ~ p(x0 | x_i, y) ~ N(x0; x0_hat, r_i^2 I) p(y | x0)      (Langevin MCMC on the Gaussian approximation)
    x_{i-1} = x0_y + sigma_{i-1} n                                   (the decoupled noising p(x_{i-1} | x0))

The Langevin chain starts at x0_hat:

    z <- z + lr_i ( -grad_z loss(A z, y) - (z - x0_hat) / r_i^2 ) + sqrt(2 lr_i) n

with r_i = sigma_i (the reference's Gaussian prior term), ``lr_i = lr (1 - (1 - lr_min_ratio) i / N)`` decayed
linearly over the annealing, and ``loss`` the noise model's negative log-likelihood (``operator.loss``; for
Gaussian noise ``||A z - y||^2 / (2 sigma_y^2)``). The reference instead weights ``||A z - y||^2`` by a tuned
``1 / tau^2`` (tau = 0.01 for images); ``tau`` here replaces the likelihood by ``||A z - y||^2 / (2 tau^2)`` when
given (needed for noise-free data). As in the reference the last level returns the ODE estimate without MCMC
and the final level is sigma = 0.

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
        num_steps, sigma_max, sigma_min, rho: the annealing grid (200, 100, 0.1, 7; DAPS-1K).
        ode_steps, ode_sigma_min: the x0 estimate's Euler PF-ODE (5 steps to 0.01).
        langevin_steps, lr, lr_min_ratio: the Langevin chain per level (100, 1e-4, 0.01 for images).
        tau: if set, the likelihood is ``||A z - y||^2 / (2 tau^2)`` instead of ``operator.loss``.
        final_ode: return the last level's ODE estimate without MCMC (reference behaviour).
    """

    requires = frozenset({"differentiable"})

    def __init__(self, num_steps: int = 200, sigma_max: float = 100.0, sigma_min: float = 0.1, rho: float = 7.0,
                 ode_steps: int = 5, ode_sigma_min: float = 0.01, langevin_steps: int = 100, lr: float = 1e-4,
                 lr_min_ratio: float = 0.01, tau: float | None = None, final_ode: bool = True):
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
        self.tau, self.final_ode = tau, final_ode

    def step_size(self, i: int) -> float:
        return self.lr * (1 + (self.lr_min_ratio - 1) * i / self.num_steps)

    def _x0_ode(self, prior, x: Tensor, sigma: float) -> Tensor:
        """Euler PF-ODE from ``sigma`` to ``ode_sigma_min`` on ``ode_steps`` Karras points, then to 0."""
        if self.ode_steps == 1 or sigma <= self.ode_sigma_min:
            sub = torch.tensor([sigma, 0.0], dtype=torch.float64)
        else:
            sub = karras_sigmas(self.ode_steps, self.ode_sigma_min, sigma, self.rho)
        return solve_sde(prior, x, sub, EDMSDE(), alpha=0.0, method="euler", cost=self.cost)

    def _likelihood_grad(self, z: Tensor, y: Tensor, operator) -> Tensor:
        if self.tau is None:
            return likelihood_gradient(z, y, operator, self.cost)[0]
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            loss = residual_norm(operator, operator(z), y) ** 2 / (2 * self.tau**2)
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
        sig = karras_sigmas(self.num_steps, self.sigma_min, self.sigma_max, self.rho).tolist()   # ..., sigma_min, 0
        x = randn((y_rep.shape[0], *operator.input_shape), generator, like=y, dtype=dtype) * sig[0]
        for i in range(self.num_steps):
            x0 = self._x0_ode(prior, x, sig[i])                                       # x0_hat(x_i)
            if i == self.num_steps - 1 and self.final_ode:
                x0y = x0
            else:
                x0y = self._langevin(x0, y_rep, operator, sig[i], self.step_size(i), generator)   # x0_y
            x = (x0y + sig[i + 1] * randn(x0y.shape, generator, like=x0y)) if sig[i + 1] > 0 else x0y   # x_{i-1}
            if callback is not None:
                callback(i, self.num_steps, x)
        return x

"""DPS-GSG: diffusion posterior sampling with Gaussian-smoothed gradient estimates of the data misfit, the zeroth-order
DPS of InverseBench (Zheng et al., "InverseBench: benchmarking plug-and-play diffusion priors for inverse problems in
physical sciences", ICLR 2025; ``algo/dps_gsg.py``), introduced as a baseline by Zheng et al. 2024 ("Ensemble Kalman
diffusion guidance", arXiv:2409.20175).

DPS (Chung et al. 2023, Algorithm 1, line 7) steps against ``grad_{x_t} ||y - A(x0_hat(x_t))||``. Its chain rule
``J_D^T grad_x0 ||y - A(x0)||^2 / (2 ||y - A(x0_hat)||)`` needs the forward model's gradient; DPS-GSG replaces that by
the GSG estimate at x0_hat (``diffinv.samplers.smoothing``: K random directions, forward or central differences, step
``mu``) and keeps the vector-Jacobian product through the denoiser, which is differentiable. On the reverse-SDE grid of
``sde_grid`` (the reference's ``Scheduler``), each step is

    x0_hat = D(x / s_i, sigma_i),      g = GSG_mu[ ||y - A(.)||^2 ](x0_hat)          (forward model queried only)
    x_{i+1} = EM_i(x, score_i) - zeta J_D(x)^T g / (2 ||y - A(x0_hat)||)               (EM_i: ``SDEGrid.step``)

``misfit="loss"`` estimates the gradient of the operator's own noise model (``operator.loss``) instead and uses it
without the 1 / (2 ||r||) normalisation (as DPS's ``mode="loss"``).

Published settings (InverseBench ``configs/algorithm/dps_gsg.yaml`` and its Navier-Stokes runs): 1000 steps of the
"edm" grid from 100 to 0.01, Euler-Maruyama, zeta 0.1, 2048 queries per point, mu 0.01, central differences (the
forward variant ``central=False`` is InverseBench's DPS-fGSG), forward model in chunks of 512.

Deviations, on purpose: every particle's perturbations and the unperturbed points go through the forward model in one
batched call (chunked by ``batch_size``), where the reference loops over particles and evaluates ``A(x0_hat)``
separately; the misfit normalisation is per particle (the reference divides by a ``[N]`` vector broadcast against the
image's last axis, right for one particle only); an exact fit (``||r|| = 0``) gives a zero step, not 0 / 0.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Sampler, randn, real_dtype, repeat_measurement
from .blackbox import check_query, query_misfit
from .sde_grid import sde_grid
from .smoothing import directions, gsg_gradient


class DPSGSG(Sampler):
    """DPS with Gaussian-smoothed (zeroth-order) gradient estimates; ``requires`` nothing of the operator.

    Args:
        num_steps, schedule, sigma_min, sigma_max: the reverse-SDE grid (``sde_grid``).
        guidance_scale: zeta, the step against the estimated gradient of ``||y - A(x0_hat)||``.
        num_queries: perturbed forward-model evaluations per particle and step (central: num_queries / 2 directions).
        mu: the smoothing radius.
        central: central differences (True, "DPS-cGSG") or forward differences (False, "DPS-fGSG").
        sde: Euler-Maruyama steps (True) or the probability-flow ODE (False).
        misfit: ``"residual"`` (||y - A x||^2, the reference) or ``"loss"`` (``operator.loss``).
        batch_size: rows per forward-model call (None: all at once).
    """

    requires = frozenset()

    def __init__(self, num_steps: int = 1000, schedule: str = "edm", sigma_min: float = 0.01, sigma_max: float = 100.0,
                 guidance_scale: float = 0.1, num_queries: int = 2048, mu: float = 0.01, central: bool = True,
                 sde: bool = True, misfit: str = "residual", batch_size: int | None = 512):
        super().__init__()
        self.grid = sde_grid(num_steps, schedule, sigma_min, sigma_max)
        check_query("DPSGSG", misfit, batch_size)
        if guidance_scale < 0 or mu <= 0:
            raise ValueError(f"DPSGSG: need guidance_scale >= 0 and mu > 0, got {guidance_scale}, {mu}")
        directions(num_queries, central)
        self.num_steps, self.schedule, self.sigma_min, self.sigma_max = num_steps, schedule, sigma_min, sigma_max
        self.guidance_scale, self.num_queries, self.mu, self.central = float(guidance_scale), num_queries, mu, central
        self.sde, self.misfit, self.batch_size = bool(sde), misfit, batch_size

    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        grid, dtype = self.grid, real_dtype(y)
        y_rep = repeat_measurement(y, num_samples)
        f = lambda rows: query_misfit(operator, rows, y_rep, self.misfit, self.cost, self.batch_size)  # noqa: E731
        x = randn((y_rep.shape[0], *operator.input_shape), generator, like=y, dtype=dtype) * grid.start_std
        for i in range(grid.num_steps):
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                d = grid.denoise(prior, x, i, self.cost)                           # x0_hat = D(x / s_i, sigma_i)
                g, m = gsg_gradient(f, d.detach(), self.num_queries, self.mu, self.central, generator)
                if self.misfit == "residual":                          # grad ||r|| = grad ||r||^2 / (2 ||r||)
                    w = torch.where(m > 0, 0.5 * m.clamp_min(torch.finfo(m.dtype).tiny).rsqrt(), torch.zeros_like(m))
                    g = g * w.reshape(-1, *([1] * (g.dim() - 1)))
                (ll,) = torch.autograd.grad(d, x, grad_outputs=g)                 # J_D^T g: through the denoiser only
            self.cost.grad_calls += 1
            x, d = x.detach(), d.detach()
            noise = randn(x.shape, generator, like=x) if self.sde else None
            x = grid.step(x, grid.score(x, d, i), i, noise) - self.guidance_scale * ll
            if callback is not None:
                callback(i, grid.num_steps, x)
        return x

"""PnP-DM: Wu, Sun, Chen, Zhang, Yue, Bouman 2024, "Principled Probabilistic Imaging using Diffusion
Models as Plug-and-Play Priors" (NeurIPS 2024; reference code zihuiwu/PnP-DM-public).

A split Gibbs sampler (Vono et al. 2019) on the paper's augmented target

    pi(x, z) ∝ exp(-f(z; y) - g(x) - ||x - z||^2 / (2 rho^2)),   f = -log p(y | .),  g = -log p(.),

alternating
  * the likelihood step  z ~ pi(z | x) ∝ exp(-f(z; y) - ||z - x||^2 / (2 rho^2)): exact for a
    linear operator with Gaussian noise, in the SVD basis (precision s^2 / sigma_y^2 + 1 / rho^2 per
    singular direction) or by perturb-and-solve with conjugate gradients; otherwise Langevin Monte Carlo
    started at x (the reference's nonlinear tasks: 100 steps);
  * the prior step  x ~ pi(x | z) ∝ p(x) exp(-||x - z||^2 / (2 rho^2)): the posterior of a denoising
    problem at noise level rho, sampled by the reverse diffusion started at sigma = rho from x = z (the
    paper's EDM formulation; here an SDE solve from rho down to 0 on the Karras grid, EDM Eq. 5-6).
The coupling rho is annealed, rho_k = max(rho_min, rho_0 * decay^k) (reference code: rho_0 = 10,
decay 0.9, rho_min 0.3 for linear and 0.1 for nonlinear tasks, 100 iterations). Each returned sample is
the final prior-step state of its own chain; chains run in one batch.

Differences from the reference, on purpose: the prior step starts exactly at sigma = rho_k (then follows the grid
points below it) instead of at the first grid point below rho_k; its last step, from the smallest grid level to 0,
returns the denoiser's estimate D(x, sigma_min) (EDM's final step, ``diffinv.diffusion.solve_sde``), where the
reference's Euler-Maruyama step of the SDE drift gives 2 D(x, sigma_min) - x, which doubles the residual noise
(|x - D| is of the order of sigma_min); chains start at ``init_std * n`` instead of A^+ y, so that they start
apart (the reference draws many samples along one chain after a burn-in; here each draw is its own chain).
Cost accounting: one forward call per exact SVD likelihood step (its V / V^T applications), one per
CG iteration (A^T A), one per Langevin step (plus 20 forward calls and 40 backward passes of the power
iteration that sets the Langevin step, ``likelihood_lipschitz``, when ``langevin_step_size`` is None).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..diffusion import karras_sigmas, make_sde, sde_times, solve_sde
from ..operators.base import Operator, conjugate_gradient
from ..operators.noise import GaussianNoise
from .base import Sampler, randn, repeat_measurement
from .guidance import likelihood_gradient
from .mcmc import likelihood_lipschitz


class PnPDM(Sampler):
    """Hyperparameters: ``num_iters``; ``rho``, ``rho_decay``, ``rho_min`` (coupling schedule);
    ``num_diffusion_steps``, ``sigma_min``, ``sigma_max``, ``rho_schedule`` (the Karras grid of the prior
    step), ``sde`` ("edm", "vp", "ve"), ``alpha`` (1 = reverse SDE as in the paper, 0 = probability-flow
    ODE), ``solver`` ("euler" as the reference, or "heun"); ``likelihood_step`` ("auto", "svd", "cg",
    "langevin"), ``langevin_steps``, ``langevin_step_size`` (None: ``langevin_fraction / (L_y + 1/rho^2)``),
    ``cg_iters``; ``init_std`` (chains start at ``init_std * n``)."""

    requires = frozenset({"differentiable"})

    def __init__(self, num_iters: int = 100, rho: float = 10.0, rho_decay: float = 0.9, rho_min: float = 0.3,
                 num_diffusion_steps: int = 100, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 rho_schedule: float = 7.0, sde: str = "edm", alpha: float = 1.0, solver: str = "euler",
                 likelihood_step: str = "auto", langevin_steps: int = 100, langevin_step_size: float | None = None,
                 langevin_fraction: float = 0.5, cg_iters: int = 50, init_std: float = 1.0):
        super().__init__()
        if likelihood_step not in ("auto", "svd", "cg", "langevin"):
            raise ValueError(f"PnPDM: likelihood_step must be 'auto', 'svd', 'cg' or 'langevin', got {likelihood_step!r}")
        if not (rho > 0 and rho_min >= 0 and 0 < rho_decay <= 1 and num_iters >= 1):
            raise ValueError(f"PnPDM: need rho > 0, rho_min >= 0, 0 < rho_decay <= 1, num_iters >= 1; got "
                             f"{rho}, {rho_min}, {rho_decay}, {num_iters}")
        if solver not in ("euler", "heun"):
            raise ValueError(f"PnPDM: solver must be 'euler' or 'heun', got {solver!r}")
        make_sde(sde)  # validates the name
        self.num_iters, self.rho, self.rho_decay, self.rho_min = int(num_iters), float(rho), float(rho_decay), float(rho_min)
        self.num_diffusion_steps, self.sigma_min, self.sigma_max = int(num_diffusion_steps), float(sigma_min), float(sigma_max)
        self.rho_schedule, self.sde, self.alpha, self.solver = float(rho_schedule), sde, float(alpha), solver
        self.likelihood_step, self.langevin_steps = likelihood_step, int(langevin_steps)
        self.langevin_step_size, self.langevin_fraction = langevin_step_size, float(langevin_fraction)
        self.cg_iters, self.init_std = int(cg_iters), float(init_std)

    # ------------------------------------------------------------------ schedule
    def rhos(self) -> list[float]:
        """rho_k = max(rho_min, rho_0 decay^k) (the annealing of the reference code)."""
        return [max(self.rho_min, self.rho * self.rho_decay**k) for k in range(self.num_iters)]

    def _grid(self) -> Tensor:
        return karras_sigmas(self.num_diffusion_steps, self.sigma_min, self.sigma_max, self.rho_schedule, append_zero=False)

    def prior_step_sigmas(self, rho: float) -> Tensor:
        """Noise levels of the prior step: rho, the grid points below it, then 0."""
        grid = self._grid()
        return torch.cat([torch.tensor([rho], dtype=grid.dtype), grid[grid < rho], grid.new_zeros(1)])

    def _mode(self, operator: Operator) -> str:
        gaussian = isinstance(operator.noise, GaussianNoise)
        svd_ok = operator.linear and operator.has_svd and gaussian
        cg_ok = operator.linear and gaussian and operator.sigma > 0
        mode = self.likelihood_step
        if mode == "auto":
            return "svd" if svd_ok else "cg" if cg_ok else "langevin"
        if (mode == "svd" and not svd_ok) or (mode == "cg" and not cg_ok):
            raise ValueError(f"PnPDM: likelihood_step={mode!r} needs a linear operator with Gaussian noise"
                             f"{' and an SVD' if mode == 'svd' else ' with sigma > 0'}; use 'langevin' or 'auto'.")
        return mode

    # ------------------------------------------------------------------ likelihood step: z | x, y
    def _svd_step(self, x, y_rep, operator, rho, generator, uty):
        s = operator.singulars().to(x)                                        # [1 or B, d], zeros off the range
        sy = operator.sigma
        c_x = operator.Vt(x)
        xi = randn(c_x.shape, generator, like=c_x)
        if sy > 0:
            q = s**2 / sy**2 + 1.0 / rho**2                                   # posterior precision per direction
            c = (s * uty / sy**2 + c_x / rho**2) / q + xi / q.sqrt()
        else:                                                                 # noise-free: observed directions fixed
            on = s > 0
            c = torch.where(on, uty / torch.where(on, s, torch.ones_like(s)), c_x + rho * xi)
        self.cost.forward_calls += 1
        return operator.V(c).reshape(x.shape)

    def _cg_step(self, x, y_rep, operator, rho, generator):
        """Perturb-and-solve (Papandreou & Yuille 2010): the solution of
        (A^T A / s^2 + I / rho^2) z = A^T (y + s e1) / s^2 + (x + rho e2) / rho^2 is an exact draw."""
        sy = operator.sigma
        e1 = randn(y_rep.shape, generator, like=y_rep)
        e2 = randn(x.shape, generator, like=x)
        rhs = operator.adjoint(y_rep + sy * e1) / sy**2 + (x + rho * e2) / rho**2
        calls = [1]

        def apply(v):
            calls[0] += 1
            return operator.adjoint(operator(v)) / sy**2 + v / rho**2

        z = conjugate_gradient(apply, rhs, x0=x, tol=1e-6, max_iter=self.cg_iters)
        self.cost.forward_calls += calls[0]
        return z

    def _langevin_step(self, x, y_rep, operator, rho, generator, L_y):
        gamma = self.langevin_step_size or self.langevin_fraction / (L_y + 1.0 / rho**2)
        z = x
        for _ in range(self.langevin_steps):
            g, _ = likelihood_gradient(z, y_rep, operator, self.cost)
            z = z - gamma * (g + (z - x) / rho**2) + math.sqrt(2 * gamma) * randn(z.shape, generator, like=z)
        return z

    # ------------------------------------------------------------------ prior step: x | z
    def _prior_step(self, z, prior, rho, generator):
        sde = make_sde(self.sde)
        ts = sde_times(sde, self.prior_step_sigmas(rho)).to(z.dtype)
        x = z * sde.scale(ts[0])
        return solve_sde(prior, x, ts, sde, alpha=self.alpha, method=self.solver, generator=generator, cost=self.cost)

    def _sample(self, y, operator, prior, num_samples, generator, callback) -> Tensor:
        y_rep = repeat_measurement(y, num_samples)
        dtype = y_rep.real.dtype if torch.is_complex(y_rep) else y_rep.dtype
        shape = (y_rep.shape[0], *prior.event_shape)
        x = self.init_std * randn(shape, generator, dtype=dtype, device=y.device)
        mode = self._mode(operator)
        uty = operator.Ut(y_rep).to(dtype) if mode == "svd" else None
        L_y = 0.0
        if mode == "langevin" and self.langevin_step_size is None:
            L_y = likelihood_lipschitz(operator, x, y_rep, self.cost, generator=generator)
        rhos = self.rhos()
        for k, rho in enumerate(rhos):
            if mode == "svd":
                z = self._svd_step(x, y_rep, operator, rho, generator, uty)
            elif mode == "cg":
                z = self._cg_step(x, y_rep, operator, rho, generator)
            else:
                z = self._langevin_step(x, y_rep, operator, rho, generator, L_y)
            x = self._prior_step(z, prior, rho, generator)
            if callback is not None:
                callback(k, len(rhos), x)
        return x

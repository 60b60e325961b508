"""DiffPIR: denoising diffusion models for plug-and-play image restoration.

Zhu, Zhang, Liang, Cao, Wen, Timofte, Van Gool, "Denoising diffusion models for plug-and-play image restoration"
(CVPR Workshops 2023, arXiv:2305.08995); reference code yuanzhi-zhu/DiffPIR (``main_ddpir_*.py``).

Half-quadratic splitting with the diffusion model as the denoiser (DiffPIR Algorithm 1), in the VP coordinates
``x_t = sqrt(abar_t) (x0 + sigma_bar_t n)``, ``sigma_bar_t = sqrt((1 - abar_t) / abar_t)``:

    x0_t   = D(x_t / sqrt(abar_t), sigma_bar_t)                                     (prior step, Alg. 1 line 3)
    xh0_t  = argmin_z ||y - A z||^2 + rho_t ||z - x0_t||^2,  rho_t = lambda sigma_n^2 / sigma_bar_t^2
                                                                                      (data step, Alg. 1 line 4)
    eps    = (x_t - sqrt(abar_t) xh0_t) / sqrt(1 - abar_t)                            (Alg. 1 line 5)
    x_{t-1} = sqrt(abar_{t-1}) xh0_t + sqrt(1 - abar_{t-1}) (sqrt(1 - zeta) eps + sqrt(zeta) n)   (Alg. 1 line 7)

The data step is solved
* in closed form in the SVD basis when the operator has one: ``zbar_i = (s_i (U^T y)_i + rho xbar0_i) / (s_i^2 + rho)``;
* by conjugate gradients on ``(A^T A + rho I) z = A^T y + rho x0_t`` (started at ``x0_t``, so rho = 0 gives the
  data-consistent point nearest ``x0_t``) for other linear operators;
* for nonlinear differentiable operators by ``prox_steps`` gradient steps on the equivalent objective
  ``loss(A z, y) + lambda / (2 sigma_bar_t^2) ||z - x0_t||^2`` (the first divided by 2 sigma_n^2) with the step
  ``sigma_bar_t^2 / lambda`` (its inverse prior curvature); one step from ``x0_t`` is the paper's first-order
  update for general degradations, ``x0_t - sigma_bar_t^2 / lambda * grad loss(A x0_t, y)`` (the reference's
  ``x0 - grad(||r||) ||r|| / rho``). At large sigma_bar that step exceeds the stability limit of the data term
  (the reference diverges there), so it is halved per sample until it decreases the objective (Armijo
  backtracking). It uses the noise model's own ``loss``, so it works for Poisson data too.

The timesteps follow the reference: ``num_steps`` of the 1000 with the "quad" spacing (dense at low noise) or
"uniform". The last iteration (t = 0) takes no data step, as in the reference; the reference then returns the
iterate x_0 itself (noise level ~0.01), diffinv the denoised estimate ``x0_t`` of that iterate (a deliberate
difference: the result carries no residual noise). The reference's deblurring script starts from a tiny multiple
of y; here x_T ~ N(0, I), as in Algorithm 1.

Scale of lambda: the paper and the reference state sigma_n on the [0, 1] image scale (e.g. 12.75 / 255) while the
model works on [-1, 1]; the ratio of the two quadratic terms is invariant under rescaling x and y together, so
their lambda = 7 equals lambda = 7 / 4 = 1.75 here, where sigma_n is ``operator.sigma`` on the measurement's own
scale (``docs/conventions.md#data-conventions``). The default is therefore 1.75 (the reference's runs: lambda 7,
zeta 0.3, 100 quad steps).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..diffusion import DiscreteVPSchedule
from ..operators.base import conjugate_gradient
from .base import Sampler, randn, real_dtype, repeat_measurement
from .guidance import likelihood_gradient


def diffpir_timesteps(num_steps: int, train_steps: int = 1000, skip_type: str = "quad") -> list[int]:
    """Descending timesteps ``t_i = T - 1 - seq[i]`` of the reference (``main_ddpir_*.py``): "quad":
    ``seq = floor(sqrt(linspace(0, T^2, n)))`` with the last entry minus 1 (999, ..., 0); "uniform":
    ``seq = i * (T // n)`` for i < n plus ``T - 1`` (n + 1 iterations, 999, 989, ..., 9, 0 for 100 of 1000)."""
    if skip_type == "quad":
        seq = [int(v) for v in torch.linspace(0, train_steps**2, num_steps, dtype=torch.float64).sqrt()]
        seq[-1] -= 1
    elif skip_type == "uniform":
        skip = train_steps // num_steps
        seq = [i * skip for i in range(num_steps)] + ([train_steps - 1] if skip > 1 else [])
    else:
        raise ValueError(f"DiffPIR: skip_type must be 'quad' or 'uniform', got {skip_type!r}")
    ts = [train_steps - 1 - v for v in seq]
    if len(set(ts)) != len(ts):
        raise ValueError(f"DiffPIR: num_steps={num_steps} is too many for the {skip_type} spacing of "
                         f"{train_steps} timesteps")
    return ts


class DiffPIR(Sampler):
    """Diffusion plug-and-play image restoration (needs a differentiable operator; uses the SVD or conjugate
    gradients when the operator is linear).

    Args:
        num_steps: iterations (100 in the paper).
        lambda_: the HQS weight lambda of rho_t = lambda sigma_n^2 / sigma_bar_t^2 with sigma_n on the measurement's
            scale (1.75 = the paper's lambda = 7 stated for noise on the [0, 1] scale; see the module docstring).
        zeta: share of fresh noise in the re-noising step (0.3 in the reference's runs; 0.1 in deepinv).
        skip_type: "quad" (reference) or "uniform" timestep spacing.
        prox_steps: gradient steps of the data step for nonlinear operators (1 = the paper's first-order step).
        max_backtracks: step halvings allowed per gradient step (Armijo backtracking, see ``_gradient_prox``).
        cg_tol, cg_max_iter: conjugate gradients for linear operators without an SVD.
        schedule, train_steps: the discrete VP schedule of the prior (DDPM linear, 1000).
    """

    requires = frozenset({"differentiable"})

    def __init__(self, num_steps: int = 100, lambda_: float = 1.75, zeta: float = 0.3, skip_type: str = "quad",
                 prox_steps: int = 1, max_backtracks: int = 30, cg_tol: float = 1e-6, cg_max_iter: int = 100,
                 schedule: str = "linear", train_steps: int = 1000):
        super().__init__()
        if lambda_ <= 0:
            raise ValueError(f"DiffPIR: lambda_ must be > 0, got {lambda_}")
        if not 0 <= zeta <= 1:
            raise ValueError(f"DiffPIR: zeta must be in [0, 1], got {zeta}")
        if prox_steps < 1:
            raise ValueError(f"DiffPIR: prox_steps must be >= 1, got {prox_steps}")
        self.timesteps = diffpir_timesteps(num_steps, train_steps, skip_type)
        self.num_steps, self.lambda_, self.zeta, self.skip_type = num_steps, lambda_, zeta, skip_type
        self.prox_steps, self.max_backtracks = prox_steps, max_backtracks
        self.cg_tol, self.cg_max_iter = cg_tol, cg_max_iter
        self.schedule = DiscreteVPSchedule(schedule, train_steps)

    # ------------------------------------------------------------------ data step
    def prox(self, x0: Tensor, y: Tensor, operator, sigma_bar: Tensor) -> Tensor:
        """argmin_z ||y - A z||^2 + rho ||z - x0||^2 with rho = lambda sigma_n^2 / sigma_bar^2 (Alg. 1 line 4)."""
        rho = self.lambda_ * operator.sigma**2 / sigma_bar**2
        if operator.linear and operator.has_svd:
            s = operator.singulars().to(x0.dtype)
            if s.shape[0] not in (1, x0.shape[0]):
                s = repeat_measurement(s, x0.shape[0] // s.shape[0])
            x0bar, uty = operator.Vt(x0), operator.Ut(y)
            den = s**2 + rho
            zbar = torch.where(den > 0, (s * uty + rho * x0bar) / den.clamp_min(torch.finfo(den.dtype).tiny), x0bar)
            return operator.V(zbar)
        if operator.linear:
            def normal(v: Tensor) -> Tensor:
                self.cost.forward_calls += 2                       # A then A^T
                return operator.adjoint(operator(v)) + rho * v
            self.cost.forward_calls += 1
            rhs = operator.adjoint(y) + rho * x0
            return conjugate_gradient(normal, rhs, x0=x0, tol=self.cg_tol, max_iter=self.cg_max_iter)
        return self._gradient_prox(x0, y, operator, sigma_bar)

    def _gradient_prox(self, x0: Tensor, y: Tensor, operator, sigma_bar: Tensor) -> Tensor:
        """``prox_steps`` gradient steps on f(z) = loss(A z, y) + lambda / (2 sigma_bar^2) ||z - x0||^2 from z = x0.
        Each starts at the paper's step sigma_bar^2 / lambda and halves it, per sample, until the Armijo condition
        f(z - eta g) <= f(z) - eta / 2 ||g||^2 holds (at most ``max_backtracks`` halvings), so that large noise
        levels, where that step exceeds 2 / Lipschitz(grad loss), do not diverge."""
        w = self.lambda_ / (2 * sigma_bar**2)
        dims = tuple(range(1, x0.dim()))

        def objective(z: Tensor) -> Tensor:
            self.cost.forward_calls += 1
            return operator.loss(operator(z), y) + w * (z - x0).pow(2).sum(dims)

        z = x0
        for _ in range(self.prox_steps):
            g_loss, loss = likelihood_gradient(z, y, operator, self.cost)
            g = g_loss + 2 * w * (z - x0)
            f = loss + w * (z - x0).pow(2).sum(dims)
            gg = g.pow(2).sum(dims)
            eta = torch.full_like(f, float(sigma_bar**2 / self.lambda_))
            shape = (-1,) + (1,) * (x0.dim() - 1)
            for _ in range(self.max_backtracks):
                bad = objective(z - eta.view(shape) * g) > f - 0.5 * eta * gg
                if not bool(bad.any()):
                    break
                eta = torch.where(bad, 0.5 * eta, eta)
            z = (z - eta.view(shape) * g).detach()
        return z

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        dtype = real_dtype(y)
        y_rep = repeat_measurement(y, num_samples)
        abar = self.schedule.alphas_cumprod.to(device=y.device, dtype=dtype)
        ts = self.timesteps
        x = randn((y_rep.shape[0], *operator.input_shape), generator, like=y, dtype=dtype)   # x_T ~ N(0, I)
        for i, t in enumerate(ts):
            a_t = abar[t]
            sigma_bar = ((1 - a_t) / a_t).sqrt()
            self.cost.nfe += 1
            x0 = prior.denoise(x / a_t.sqrt(), sigma_bar.expand(x.shape[0]))           # Alg. 1 line 3
            if i == len(ts) - 1:                                                       # final denoised estimate
                x = x0
            else:
                x0 = self.prox(x0, y_rep, operator, sigma_bar)                         # Alg. 1 line 4
                eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()                         # Alg. 1 line 5
                a_prev = abar[ts[i + 1]]
                n = randn(x.shape, generator, like=x)
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * (math.sqrt(1 - self.zeta) * eps
                                                                 + math.sqrt(self.zeta) * n)   # Alg. 1 line 7
            if callback is not None:
                callback(i, len(ts), x)
        return x

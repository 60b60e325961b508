"""DPG: diffusion policy gradient, a derivative-free posterior sampler.

Tang et al., "Solving general noisy inverse problem via posterior sampling: a policy gradient viewpoint" (AISTATS
2024); reference code loveisbasa/DPG, and the version InverseBench runs (Zheng et al., ICLR 2025,
``algo/dpg.py``), which this module follows.

The measurement score ``grad_{x_t} log E_{x0 ~ q(x0 | x_t)} p(y | x0)`` is estimated by the score-function (REINFORCE,
"policy gradient") identity with the Gaussian policy ``q(x0 | x_t) = N(x0_hat(x_t), r_t^2 I)``, x0_hat Tweedie's
estimate: ``grad log E_q[R] = E_q[R grad_{x_t} log q(x0 | x_t)] / E_q[R]`` with ``grad_{x_t} log q = J_D^T (x0 - x0_hat)
/ r_t^2``, so only the denoiser is differentiated; the forward model is only queried at the K draws. Per step i, with
the reference's reward shaping and variance reduction:

    x0_k = x0_hat + r eps_k,  m_k = ||y - A(x0_k)||^2,  m_ref = ||y - A(x0_hat)||^2        (K draws, one batched query)
    Z <- 0.9 Z + 0.1 m_ref (Z = m_ref at the first step),   r = max(sqrt(Z / d) / 2, r_min)     (d pixels)
    R_k = exp(-(m_k - m_ref) / Z),   b_k = (sum_j R_j - R_k) / (K - 1)                   (leave-one-out baseline)
    v = mean_k (R_k - b_k) (x0_hat - x0_k) / r^2,   g = J_D(x)^T v     (the gradient of the reference's surrogate loss)
    g <- beta beta_3 g_prev + (1 - beta beta_3) g   (i > 0, beta_3 = (N - i - 1) / N, g_prev the previous raw g)
    score <- score - B g / (||g|| + 1e-7),   then an Euler-Maruyama step of ``sde_grid``.

The guidance is a step of fixed length B along the estimated direction ("B" of the paper, ``guidance_scale``).

Published settings: InverseBench Navier-Stokes (Table 8 / its scripts): 1000 steps of the "vp" grid, B = 64, K = 4000;
FFHQ: B = 160 (super-resolution), 200 (deblurring), 300 (phase retrieval), K = 800-1000; black holes B = 10. The
forward model takes the draws in chunks of 500.

Deviations, on purpose: all particles of all measurements are batched (the reference takes one particle, and its
``||g||`` is over the whole batch; here per particle); the recursion state (Z, g_prev) starts afresh at every call (the
reference keeps it in the object, so its second call starts from the first call's state); the reward exponent is capped
at 60 so that a draw far better than the reference point cannot overflow to inf (the normalised step only sees ratios).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Sampler, randn, real_dtype, repeat_measurement
from .blackbox import check_query, query_misfit
from .sde_grid import sde_grid


class DPG(Sampler):
    """Diffusion policy gradient (derivative-free; ``requires`` nothing of the operator).

    Args:
        num_steps, schedule, sigma_min, sigma_max: the reverse-SDE grid (``sde_grid``).
        guidance_scale: B, the length of the guidance added to the score.
        num_mc_samples: K draws of x0 per particle and step (the policy-gradient estimate).
        beta: momentum of the gradient estimate (decayed by beta_3 = (N - i - 1) / N).
        rmin: lower bound of the policy's std r.
        sde: Euler-Maruyama steps (True) or the probability-flow ODE (False).
        misfit: ``"residual"`` (||y - A x||^2, the reference) or ``"loss"`` (``operator.loss``).
        batch_size: rows per forward-model call (None: all K draws of all particles at once).
    """

    requires = frozenset()

    def __init__(self, num_steps: int = 1000, schedule: str = "vp", sigma_min: float = 0.01, sigma_max: float = 100.0,
                 guidance_scale: float = 64.0, num_mc_samples: int = 4000, beta: float = 0.1, rmin: float = 0.0,
                 sde: bool = True, misfit: str = "residual", batch_size: int | None = 500):
        super().__init__()
        self.grid = sde_grid(num_steps, schedule, sigma_min, sigma_max)
        check_query("DPG", misfit, batch_size)
        if guidance_scale < 0:
            raise ValueError(f"DPG: guidance_scale must be >= 0, got {guidance_scale}")
        if num_mc_samples < 2:
            raise ValueError(f"DPG: num_mc_samples must be >= 2 (the leave-one-out baseline), got {num_mc_samples}")
        if not 0 <= beta <= 1 or rmin < 0:
            raise ValueError(f"DPG: need 0 <= beta <= 1 and rmin >= 0, got {beta}, {rmin}")
        self.num_steps, self.schedule, self.sigma_min, self.sigma_max = num_steps, schedule, sigma_min, sigma_max
        self.guidance_scale, self.num_mc_samples = float(guidance_scale), num_mc_samples
        self.beta, self.rmin = beta, rmin
        self.sde, self.misfit, self.batch_size = bool(sde), misfit, batch_size

    def policy_gradient(self, d: Tensor, m_ref: Tensor, z: Tensor, operator, y_rep: Tensor, generator) -> Tensor:
        """``v`` of the module docstring (the gradient of the surrogate loss with respect to x0_hat) ``[N, ...]`` at the
        Tweedie estimates ``d``, their misfits ``m_ref`` and the misfit scale ``z``."""
        n, k = d.shape[0], self.num_mc_samples
        view = lambda t: t.reshape(*t.shape, *([1] * (d.dim() - 1)))  # noqa: E731 - [N] or [K, N] over the pixels
        r = (z / math.prod(d.shape[1:])).sqrt().mul(0.5).clamp_min(max(self.rmin, torch.finfo(d.dtype).tiny))
        eps = randn((k, *d.shape), generator, like=d)
        draws = d.unsqueeze(0) + view(r) * eps                                       # x0_k ~ N(x0_hat, r^2 I)
        m = query_misfit(operator, draws.reshape(k * n, *d.shape[1:]), y_rep, self.misfit, self.cost,
                         self.batch_size).reshape(k, n)
        reward = torch.exp((-(m - m_ref) / z).clamp(max=60.0))                     # reward shaping
        baseline = (reward.sum(0, keepdim=True) - reward) / (k - 1)                 # leave-one-out
        weighted = torch.einsum("kn,knd->nd", reward - baseline, eps.reshape(k, n, -1)).reshape(d.shape)
        return -weighted / (k * view(r))                                            # mean (R - b)(x0_hat - x0_k) / r^2

    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        grid, dtype = self.grid, real_dtype(y)
        y_rep = repeat_measurement(y, num_samples)
        x = randn((y_rep.shape[0], *operator.input_shape), generator, like=y, dtype=dtype) * grid.start_std
        z = g_prev = None
        for i in range(grid.num_steps):
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                d = grid.denoise(prior, x, i, self.cost)                           # x0_hat = D(x / s_i, sigma_i)
                m_ref = query_misfit(operator, d, y_rep, self.misfit, self.cost)
                z = m_ref if z is None else 0.9 * z + 0.1 * m_ref                  # EMA of the misfit (beta_2 = 0.9)
                z = z.clamp_min(torch.finfo(z.dtype).tiny)
                v = self.policy_gradient(d.detach(), m_ref, z, operator, y_rep, generator)
                (g_raw,) = torch.autograd.grad(d, x, grad_outputs=v)               # J_D^T v: the denoiser only
            self.cost.grad_calls += 1
            mix = self.beta * (grid.num_steps - i - 1) / grid.num_steps
            g = g_raw if g_prev is None else mix * g_prev + (1 - mix) * g_raw     # momentum on the raw estimates
            g_prev = g_raw
            norm = g.reshape(g.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (g.dim() - 1)))
            x, d = x.detach(), d.detach()
            score = grid.score(x, d, i) - self.guidance_scale * g / (norm + 1e-7)
            x = grid.step(x, score, i, randn(x.shape, generator, like=x) if self.sde else None)
            if callback is not None:
                callback(i, grid.num_steps, x)
        return x

"""LGD: loss-guided diffusion with Monte Carlo samples of x0 (LGD-MC).

Song, Zhang, Yin, Mardani, Liu, Kautz, Chen, Vahdat, "Loss-guided diffusion models for plug-and-play controllable
generation" (ICML 2023, PMLR 202), Sec. 3 (LGD-MC).

The guidance term of a loss ``l(x0)`` is the score of the noisy likelihood ``p(y | x_t) = E_{p(x0 | x_t)} exp(-l(x0))``.
DPS evaluates the loss at the point estimate x0_hat (a Dirac approximation of ``p(x0 | x_t)``); LGD-MC replaces it by
the Gaussian ``q(x0 | x_t) = N(x0_hat, r_t^2 I)`` and a Monte Carlo average over n reparameterised draws:

    x0_k = x0_hat(x_t) + r_t eps_k,        grad_{x_t} log p(y | x_t) ~= grad_{x_t} log (1/n sum_k exp(-l(x0_k)))
                                                                     = -J_D^T sum_k w_k grad l(x0_k),   w = softmax(-l)

with ``r_t = sigma_t / sqrt(1 + sigma_t^2)`` (the paper's choice, after PiGDM; ``data_variance = v`` generalises it to
data N(0, v I): ``r_t^2 = v sigma_t^2 / (v + sigma_t^2)``, exact for such data) and ``l = operator.loss`` (the negative
log-likelihood of the noise model). With n = 1 and r_t = 0 this is DPS's guidance with ``mode="loss"``; as n grows,
for a linear Gaussian likelihood it tends to ``J_D^T A^T (A A^T r_t^2 + sigma_y^2)^{-1} (y - A x0_hat)``, PiGDM's
Eq. 8. The self-normalised estimate is poor when the draws' log-likelihoods spread by many nats (their std is about
``r_t |A^T (y - A x0_hat)| / sigma_y^2``): the weights fall on one draw, whose gradient is far larger than the smoothed
one, and the sampler needs a small ``guidance_scale`` (measured on the linear-Gaussian test bed with 64-128
observations at sigma_y 0.05-0.1: 0.03 is stable, 1 diverges).

The gradients of the n losses are taken with respect to the draws (through the forward model, chunked by
``batch_size``) and then pulled back through the denoiser in one vector-Jacobian product; the conditional score
``score + guidance_scale * grad log p(y | x_t)`` drives the Euler-Maruyama steps of ``sde_grid``.

InverseBench's LGD (``algo/lgd.py``, 1000 "vp" steps, 3 draws, scale 3e-3) averages the draws' gradients (not the
softmax weights of the log-mean-exp), normalises by ``2 sqrt(mean loss)`` and steps after the SDE step; its scale is
not comparable with this one. Here the paper's estimate enters the score with weight 1 (the likelihood as derived).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Sampler, randn, real_dtype, repeat_measurement
from .sde_grid import sde_grid


class LGD(Sampler):
    """Loss-guided diffusion with Monte Carlo samples of x0 (needs a differentiable operator).

    Args:
        num_steps, schedule, sigma_min, sigma_max: the reverse-SDE grid (``sde_grid``).
        guidance_scale: weight of the estimated measurement score in the conditional score (1 = as derived).
        num_mc_samples: n draws of x0 per particle and step.
        data_variance: v in r_t^2 = v sigma_t^2 / (v + sigma_t^2) (1 = the paper).
        sde: Euler-Maruyama steps (True) or the probability-flow ODE (False).
        batch_size: rows per forward-model call (None: all draws at once).
    """

    requires = frozenset({"differentiable"})

    def __init__(self, num_steps: int = 1000, schedule: str = "vp", sigma_min: float = 0.01, sigma_max: float = 100.0,
                 guidance_scale: float = 1.0, num_mc_samples: int = 10, data_variance: float = 1.0, sde: bool = True,
                 batch_size: int | None = None):
        super().__init__()
        self.grid = sde_grid(num_steps, schedule, sigma_min, sigma_max)
        if guidance_scale < 0 or num_mc_samples < 1 or data_variance <= 0:
            raise ValueError(f"LGD: need guidance_scale >= 0, num_mc_samples >= 1 and data_variance > 0, got "
                             f"{guidance_scale}, {num_mc_samples}, {data_variance}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"LGD: batch_size must be >= 1 or None (all draws in one call), got {batch_size}")
        self.num_steps, self.schedule, self.sigma_min, self.sigma_max = num_steps, schedule, sigma_min, sigma_max
        self.guidance_scale, self.num_mc_samples = float(guidance_scale), num_mc_samples
        self.data_variance, self.sde, self.batch_size = float(data_variance), bool(sde), batch_size

    def r(self, sigma: float) -> float:
        v = self.data_variance
        return (v * sigma**2 / (v + sigma**2)) ** 0.5

    def loss_guidance(self, d: Tensor, r: float, operator, y_rep: Tensor, generator) -> Tensor:
        """``grad_x0hat log (1/n sum_k exp(-l(x0hat + r eps_k)))`` ``[N, ...]``: the forward model differentiated at the
        draws, chunk by chunk; the softmax weights make it the gradient of the log-mean-exp."""
        k, n = self.num_mc_samples, d.shape[0]
        draws = (d.unsqueeze(0) + r * randn((k, *d.shape), generator, like=d)).reshape(k * n, *d.shape[1:])
        y_all = y_rep.repeat(k, *([1] * (y_rep.dim() - 1)))
        size = draws.shape[0] if self.batch_size is None else self.batch_size
        losses, grads = [], []
        for xc, yc in zip(draws.split(size), y_all.split(size)):
            with torch.enable_grad():
                xc = xc.detach().requires_grad_(True)
                loss = operator.loss(operator(xc), yc)
                (gc,) = torch.autograd.grad(loss.sum(), xc)
            self.cost.forward_calls += 1
            self.cost.grad_calls += 1
            losses.append(loss.detach())
            grads.append(gc)
        w = torch.softmax(-torch.cat(losses).reshape(k, n), dim=0)
        return -torch.einsum("kn,knd->nd", w, torch.cat(grads).reshape(k, n, -1)).reshape(d.shape)

    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        grid, dtype = self.grid, real_dtype(y)
        y_rep = repeat_measurement(y, num_samples)
        x = randn((y_rep.shape[0], *operator.input_shape), generator, like=y, dtype=dtype) * grid.start_std
        for i in range(grid.num_steps):
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                d = grid.denoise(prior, x, i, self.cost)                           # x0_hat = D(x / s_i, sigma_i)
                v = self.loss_guidance(d.detach(), self.r(grid.sigma[i]), operator, y_rep, generator)
                (g,) = torch.autograd.grad(d, x, grad_outputs=v)                   # J_D^T v
            self.cost.grad_calls += 1
            x, d = x.detach(), d.detach()
            score = grid.score(x, d, i) + self.guidance_scale * g
            x = grid.step(x, score, i, randn(x.shape, generator, like=x) if self.sde else None)
            if callback is not None:
                callback(i, grid.num_steps, x)
        return x

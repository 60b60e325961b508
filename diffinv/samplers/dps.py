"""DPS: diffusion posterior sampling.

Chung, Kim, Mccann, Klasky, Ye, "Diffusion posterior sampling for general noisy inverse problems" (ICLR 2023,
arXiv:2209.14687); reference code DPS2022/diffusion-posterior-sampling.

Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2; DPS Algorithm 1) on the discrete VP schedule, in the
paper's VP coordinates ``x_i = sqrt(abar_i) (x0 + sigma_i n)``, with after each step the measurement step

    x_{i-1} <- x'_{i-1} - zeta * grad_{x_i} m(y, A(x0_hat(x_i)))                       (DPS Algorithm 1, line 7)

where ``x0_hat`` is Tweedie's estimate (DPS Eq. 16, through ``prior.denoise``) and, as in the reference code,
``m = ||y - A(x0_hat)||`` (the norm, not squared: the paper's ``zeta_i = zeta' / ||y - A(x0_hat)||`` applied to
the squared norm gives the same direction with ``zeta' = 2 zeta``). ``mode="loss"`` uses the noise model's
negative log-likelihood ``operator.loss`` instead (Poisson, closure quantities). The last step lands on x0_hat
(abar = 1) and still takes the measurement step, as the reference code does (Algorithm 1 returns x0_hat). The
ancestral step uses the posterior variance of Ho et al. Eq. 7, not a learned variance. Two differences from the
reference, on purpose: x0_hat is not clipped to [-1, 1] (``clip_denoised``: the samplers serve data on any scale,
e.g. vorticity), and fewer than 1000 steps use the DDIM grid ``range(0, 1000, 1000 // n)`` reversed (guided
diffusion's respacing rounds ``i * 999 / (n - 1)`` instead).

The norm-guidance weight depends on the scale of the data: deepinv's weight-1 DPS is nearly inactive on the
Gaussian-mixture benchmark (``docs/references.md#dps``). ``scale_by_sigma_y=True`` multiplies zeta by
``sqrt(d_y) / sigma_y``; near the data ``||r|| ~ sqrt(d_y) sigma_y``, so
``sqrt(d_y)/sigma_y grad ||r|| ~ grad ||r||^2 / (2 sigma_y^2)`` and zeta = 1 then approximates the Gaussian
log-likelihood gradient at Tweedie's point (DPS Eq. 16).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..diffusion import DiscreteVPSchedule, ddpm_step
from .base import Sampler, randn, real_dtype, repeat_measurement
from .guidance import dps_gradient


class DPS(Sampler):
    """Diffusion posterior sampling (needs a differentiable operator).

    Args:
        num_steps: ancestral steps (1000 in the paper; fewer take a strided sub-sequence of the schedule).
        zeta: step size of the measurement step (reference: 1.0 phase retrieval, 0.5 inpainting, 0.3 deblurring / SR).
        mode: ``"norm"`` (||y - A x0_hat||, the reference) or ``"loss"`` (``operator.loss``).
        scale_by_sigma_y: multiply zeta by ``sqrt(d_y) / sigma_y`` (see the module docstring).
        schedule, train_steps: the discrete VP schedule the prior was trained on (DDPM linear, 1000).
    """

    requires = frozenset({"differentiable"})

    def __init__(self, num_steps: int = 1000, zeta: float = 1.0, mode: str = "norm", scale_by_sigma_y: bool = False,
                 schedule: str = "linear", train_steps: int = 1000):
        super().__init__()
        if mode not in ("norm", "loss"):
            raise ValueError(f"DPS: mode must be 'norm' or 'loss', got {mode!r}")
        if zeta < 0:
            raise ValueError(f"DPS: zeta must be >= 0, got {zeta}")
        if not 1 <= num_steps <= train_steps:
            raise ValueError(f"DPS: num_steps must be in [1, train_steps={train_steps}], got {num_steps}")
        self.num_steps, self.zeta, self.mode, self.scale_by_sigma_y = num_steps, zeta, mode, scale_by_sigma_y
        self.schedule = DiscreteVPSchedule(schedule, train_steps)

    def step_size(self, operator, y: Tensor) -> float:
        if not self.scale_by_sigma_y:
            return self.zeta
        if operator.sigma <= 0:
            raise ValueError("DPS: scale_by_sigma_y needs a measurement noise sigma > 0; set scale_by_sigma_y=False "
                             "for noise-free data.")
        d_y = y[0].numel() * (2 if y.is_complex() else 1)
        return self.zeta * math.sqrt(d_y) / operator.sigma

    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        dtype = real_dtype(y)
        y_rep = repeat_measurement(y, num_samples)
        zeta = self.step_size(operator, y)
        ts = self.schedule.timesteps(self.num_steps).tolist()
        abar = self.schedule.alphas_cumprod.to(device=y.device, dtype=dtype)
        one = torch.ones((), dtype=dtype, device=y.device)
        x = randn((y_rep.shape[0], *operator.input_shape), generator, like=y, dtype=dtype)   # x_T ~ N(0, I)
        for i, t in enumerate(ts):
            a_t = abar[t]
            a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else one          # the last step lands on x0 (abar = 1)
            sigma = ((1 - a_t) / a_t).sqrt()
            # grad_{x_i} of m(y, A(D(x_i / sqrt(abar), sigma))): the denoiser sees the VE point x_i / sqrt(abar_i)
            g_ve, x0, _ = dps_gradient(x / a_t.sqrt(), sigma, y_rep, operator, prior, self.cost, self.mode)
            g = g_ve / a_t.sqrt()                                         # chain rule back to VP coordinates
            x_prime = ddpm_step(x, x0, a_t, a_prev, randn(x.shape, generator, like=x))   # Alg. 1, lines 4-6 (Ho Eq. 7)
            x = (x_prime - zeta * g).detach()                             # Alg. 1, line 7
            if callback is not None:
                callback(i, len(ts), x)
        return x

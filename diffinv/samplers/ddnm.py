"""DDNM / DDNM+: denoising diffusion null-space model.

Wang, Yu, Zhang, "Zero-shot image restoration using denoising diffusion null-space model" (ICLR 2023,
arXiv:2212.00490); reference code wyhuai/DDNM (``functions/svd_ddnm.py``, ``functions/svd_operators.py``). Equation
numbers are the paper's, as the reference code labels them.

For a linear ``y = A x``, every ``x = A^+ y + (I - A^+ A) z`` satisfies the data: DDNM keeps the range-space part
from y and lets the diffusion model fill the null space. At every step, with Tweedie's ``x0|t = D(x_t, sigma_t)``
(Eq. 12) in the denoiser's coordinates ``x = x0 + sigma n`` (``sigma_t = sqrt((1 - abar_t) / abar_t)``):

    x0_hat = x0|t - Sigma_t A^+ (A x0|t - y)                                   (Eq. 17; Sec. 3.2: Sigma = I)
    x_{t'} = x0_hat + sigma_t' (eta n + sqrt(1 - eta^2) eps_hat),  eps_hat = (x_t - x0|t) / sigma_t
                                                                              (DDIM, the reference code's step)

Noise-free data (DDNM, Sigma = I): the range space is replaced by A^+ y, so the returned x0_hat of the last step
satisfies ``A x = y`` exactly. Noisy data (DDNM+, Sec. 3.3; the SVD form of the reference's ``Lambda`` and
``Lambda_noise``, Eq. 51): in the spectral basis ``A = U diag(s) V^T``, observed coordinate i holds ``ybar_i = (U^T
y)_i / s_i`` with noise ``sigma_y / s_i``; where the next level is above that noise (``sigma_t' >= sigma_y / s_i``)
the coordinate is replaced by ybar_i and fresh noise ``sqrt(sigma_t'^2 - sigma_y^2 / s_i^2)`` tops it up to
sigma_t'; below it, ``lambda_i = s_i sigma_t' sqrt(1 - eta^2) / sigma_y`` of the way towards ybar_i (the data's noise
then supplies the ``sqrt(1 - eta^2)`` part of the level) with fresh noise ``eta sigma_t'`` (Eq. 19 per coordinate).
The null space always takes the DDIM step.

One deviation, on purpose: the reference's super-resolution ``Lambda_noise`` scales the network's e_t in pixel
patches without rotating them into the spectral basis (its fresh noise is rotated), so its DDIM term there mixes
coordinates; here e_t is rotated like everything else (the general SVD form; ``tests/test_reference_equivalence.py``).

Time travel (Sec. 3.3, RePaint's schedule ``get_schedule_jump``): with ``travel_length`` l and ``travel_repeat`` r > 1,
after every l steps the state jumps l levels back, ``x_{t+l} = x0|t + sigma_{t+l} n`` (from the last Tweedie estimate),
r - 1 times. The reference's settings: 100 of 1000 steps (timesteps 990, 980, ..., 0, then x0), eta 0.85, l = r = 1
(no travel). The schedule's last step lands on sigma = 0.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..diffusion import DiscreteVPSchedule
from .base import Sampler, randn, real_dtype, repeat_measurement
from .spectral import spectral_measurement


def schedule_jump(num_steps: int, travel_length: int, travel_repeat: int) -> list[int]:
    """RePaint's time-travel schedule (Lugmayr et al. 2022; DDNM's ``get_schedule_jump``): step indices from
    ``num_steps - 1`` down to -1, going back ``travel_length`` steps ``travel_repeat - 1`` times at every multiple of
    ``travel_length``."""
    jumps = {j: travel_repeat - 1 for j in range(0, num_steps - travel_length, travel_length)}
    t, ts = num_steps, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(travel_length):
                t += 1
                ts.append(t)
    return ts + [-1]


class DDNM(Sampler):
    """Denoising diffusion null-space model, DDNM+ for noisy data (needs an operator with an SVD).

    Args:
        num_steps: steps on a uniform sub-sequence of the VP schedule (the reference's ``T_sampling``, 100).
        eta: DDIM stochasticity (0.85).
        travel_length, travel_repeat: time travel (1, 1 = none).
        schedule, train_steps: the discrete VP schedule of the prior (DDPM linear, 1000).
    """

    requires = frozenset({"svd"})

    def __init__(self, num_steps: int = 100, eta: float = 0.85, travel_length: int = 1, travel_repeat: int = 1,
                 schedule: str = "linear", train_steps: int = 1000):
        super().__init__()
        if not 0 <= eta <= 1:
            raise ValueError(f"DDNM: eta must be in [0, 1], got {eta}")
        if not 1 <= num_steps <= train_steps:
            raise ValueError(f"DDNM: num_steps must be in [1, train_steps={train_steps}], got {num_steps}")
        if travel_length < 1 or travel_repeat < 1:
            raise ValueError(f"DDNM: travel_length and travel_repeat must be >= 1, got {travel_length}, "
                             f"{travel_repeat}")
        self.num_steps, self.eta, self.travel_length, self.travel_repeat = num_steps, eta, travel_length, travel_repeat
        self.schedule = DiscreteVPSchedule(schedule, train_steps)

    def steps(self) -> list[tuple[float, float]]:
        """``(sigma_t, sigma_t')`` of every step, as floats; a level that rises is a time-travel step."""
        skip = self.schedule.num_steps // self.num_steps
        abar = self.schedule.alphas_cumprod.double().tolist()
        sig = lambda t: 0.0 if t < 0 else math.sqrt((1 - abar[t]) / abar[t])  # noqa: E731 - t = -1 is x0
        ts = [t * skip if t >= 0 else -1 for t in schedule_jump(self.num_steps, self.travel_length, self.travel_repeat)]
        return [(sig(a), sig(b)) for a, b in zip(ts[:-1], ts[1:])]

    @torch.no_grad()
    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        dtype, eta = real_dtype(y), self.eta
        y_rep = repeat_measurement(y, num_samples)
        sv, obs, ybar = spectral_measurement(operator, y_rep, num_samples, dtype)
        sy = float(operator.sigma)
        noise_y = torch.where(obs, sy / torch.where(obs, sv, torch.ones_like(sv)), torch.full_like(sv, math.inf))
        steps = self.steps()
        x = randn((y_rep.shape[0], *operator.input_shape), generator, like=y, dtype=dtype)
        x = x * math.sqrt(1 + steps[0][0] ** 2)                                  # x_T ~ N(0, I) in VP coordinates
        x0 = None
        for k, (s, s_next) in enumerate(steps):
            n = randn(ybar.shape, generator, like=ybar)
            if s_next > s:                                                       # time travel: back to level s'
                x = x0 + s_next * operator.V(n)
            else:
                self.cost.nfe += 1
                x0 = prior.denoise(x, s)                                          # Eq. 12: x0|t
                x0bar, xbar = operator.Vt(x0), operator.Vt(x)
                ddim = s_next * (eta * n + math.sqrt(1 - eta**2) * (xbar - x0bar) / s)
                if sy > 0:                                          # DDNM+: Eqs. 17, 19 and 51 per coordinate
                    below = obs & (s_next < noise_y)
                    lam = torch.where(below, sv * (s_next * math.sqrt(1 - eta**2) / sy), obs.to(dtype))
                    rectified = x0bar - lam * (x0bar - ybar)
                    fresh = torch.where(below, torch.full_like(sv, s_next * eta),
                                        (s_next**2 - torch.where(obs, noise_y, 0) ** 2).clamp_min(0).sqrt())
                    xbar = rectified + torch.where(obs, fresh * n, ddim)
                else:                                                             # DDNM: A^+ y + (I - A^+ A) x0|t
                    xbar = torch.where(obs, ybar, x0bar) + ddim
                x = operator.V(xbar)
            if callback is not None:
                callback(k, len(steps), x)
        return x

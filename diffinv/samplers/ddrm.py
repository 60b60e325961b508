"""DDRM: denoising diffusion restoration models.

Kawar, Elad, Ermon, Song, "Denoising diffusion restoration models" (NeurIPS 2022, arXiv:2201.11793).

DDRM samples in the spectral space of ``A = U diag(s) V^T``: with ``xbar = V^T x`` and, on the observed
coordinates (``s_i > 0``), ``ybar_i = (U^T y)_i / s_i`` (an observation of ``xbar0_i`` with noise
``sigma_y / s_i``), every coordinate follows its own variational chain (DDRM Eqs. 7-8, written here in the VE view
``x_t = x0 + sigma_t n`` with ``sigma_t = sqrt((1 - abar_t) / abar_t)`` of the DDPM schedule):

* initialisation (Eq. 7): ``xbar_T,i = ybar_i + sqrt(sigma_T^2 - sigma_y^2 / s_i^2) n`` where
  ``sigma_T s_i >= sigma_y``, else ``sigma_T n`` (null space included);
* step t -> t-1 with ``xbar0 = V^T D(x_t, sigma_t)`` and ``s' = sigma_{t-1}`` (Eq. 8):
    - null space (s_i = 0):            ``xbar0 + sqrt(1 - eta^2) s' (xbar_t - xbar0) / sigma_t + eta s' n``
    - ``s' < sigma_y / s_i``:           ``xbar0 + sqrt(1 - eta^2) s' (ybar - xbar0) / (sigma_y / s_i) + eta s' n``
    - ``s' >= sigma_y / s_i``:          ``(1 - eta_b) xbar0 + eta_b ybar + sqrt(s'^2 - eta_b^2 sigma_y^2 / s_i^2) n``

The start follows Eq. 7 exactly; the reference code's start is that point times ``1 / sqrt(1 - abar_T)`` (a relative
5e-5 at t = 950). The last step goes to sigma = 0 and returns ``V xbar_0`` (Tweedie's estimate with the observed coordinates set by
the data when it is noise-free). DDRM never calls the forward model itself: it uses only the SVD transforms
(``cost.forward_calls`` stays 0).

Two defects of deepinv 0.5.0's DDRM are fixed (``docs/references.md#ddrm``): the iterate at level t has noise of
standard deviation exactly ``sigma_t`` around x0 in every coordinate, and the denoiser is called at that same sigma
(deepinv adds noise ``sigma_t / sqrt 2`` but denoises at ``sigma_t``); unobserved coordinates start from
``sigma_T n`` as in Eq. 7, not from 0.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion import DiscreteVPSchedule
from .base import Sampler, randn, real_dtype, repeat_measurement
from .spectral import spectral_measurement


class DDRM(Sampler):
    """Denoising diffusion restoration models (needs an operator with an SVD).

    Args:
        num_steps: steps on a uniform sub-sequence of the VP schedule (20 in the paper).
        eta, eta_b: DDRM's variance hyperparameters (0.85, 1.0).
        schedule, train_steps: the discrete VP schedule giving the sigma levels (DDPM linear, 1000).
    """

    requires = frozenset({"svd"})

    def __init__(self, num_steps: int = 20, eta: float = 0.85, eta_b: float = 1.0, schedule: str = "linear",
                 train_steps: int = 1000):
        super().__init__()
        if not (0 <= eta <= 1 and 0 <= eta_b <= 1):
            raise ValueError(f"DDRM: eta and eta_b must be in [0, 1], got {eta}, {eta_b}")
        if not 1 <= num_steps <= train_steps:
            raise ValueError(f"DDRM: num_steps must be in [1, train_steps={train_steps}], got {num_steps}")
        self.num_steps, self.eta, self.eta_b = num_steps, eta, eta_b
        self.schedule = DiscreteVPSchedule(schedule, train_steps)

    def sigmas(self, dtype=torch.float64, device=None) -> Tensor:
        """Descending sigma levels of the strided schedule, with a final 0."""
        ts = self.schedule.timesteps(self.num_steps)
        sig = self.schedule.sigmas[ts]
        return torch.cat([sig, sig.new_zeros(1)]).to(device=device, dtype=dtype)

    @torch.no_grad()
    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        dtype = real_dtype(y)
        y_rep = repeat_measurement(y, num_samples)
        sv, obs, ybar = spectral_measurement(operator, y_rep, num_samples, dtype)   # ybar = S^+ U^T y   [SB, d]
        s_safe = torch.where(obs, sv, torch.ones_like(sv))
        sy = float(operator.sigma)
        noise_y = torch.where(obs, sy / s_safe, torch.full_like(sv, float("inf")))    # std of ybar_i around xbar0_i
        sig = self.sigmas(dtype, y.device)
        eta, eta_b = self.eta, self.eta_b

        # Eq. 7: xbar_T
        n = randn(ybar.shape, generator, like=ybar)
        use_y = obs & (sig[0] >= noise_y)
        xbar = torch.where(use_y, ybar + (sig[0] ** 2 - torch.where(use_y, noise_y, 0) ** 2).clamp_min(0).sqrt() * n,
                           sig[0] * n)
        for i in range(self.num_steps):
            s, s_next = sig[i], sig[i + 1]
            x = operator.V(xbar)
            self.cost.nfe += 1
            x0bar = operator.Vt(prior.denoise(x, s.expand(x.shape[0])))    # xbar0 = V^T D(x_t, sigma_t)
            n = randn(xbar.shape, generator, like=xbar)
            # Eq. 8, null space: DDIM-like step along the predicted noise
            null = x0bar + (1 - eta**2) ** 0.5 * s_next * (xbar - x0bar) / s + eta * s_next * n
            # Eq. 8, s' < sigma_y / s_i: the level is below the data noise, move towards y
            ny = torch.where(obs, noise_y, torch.ones_like(noise_y))
            less = x0bar + (1 - eta**2) ** 0.5 * s_next * (ybar - x0bar) / ny + eta * s_next * n
            # Eq. 8, s' >= sigma_y / s_i: the data is less noisy than the level, sample around y
            more = (1 - eta_b) * x0bar + eta_b * ybar \
                + (s_next**2 - eta_b**2 * torch.where(obs, noise_y, 0) ** 2).clamp_min(0).sqrt() * n
            xbar = torch.where(~obs, null, torch.where(s_next < noise_y, less, more))
            if callback is not None:
                callback(i, self.num_steps, operator.V(xbar))
        return operator.V(xbar)

"""Denoising score-matching losses for training and fine-tuning diffusion priors (pure torch).

Every loss is a small callable ``loss(net, x0, generator=None) -> [B]``: it draws the noise level
and the noise itself, calls the network once and returns the per-sample loss (mean over the
pixels), so the caller decides how to reduce over the batch.

* :class:`EDMLoss`: Karras et al. 2022 ("EDM"), Eq. 8 with Table 1's training column: log-normal
  sigma, weight ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2``; ``net`` is a denoiser
  ``D(x, sigma)`` (``EDMPrecond``, ``VPPrecond``).
* :class:`VPLoss`: EDM Table 1, "VP" column: ``t ~ U(epsilon_t, 1)`` on the continuous VP SDE,
  ``lambda = 1 / sigma^2``; with ``VPPrecond`` (``c_out = -sigma``) this is exactly epsilon
  regression at uniform continuous time, the training of Song et al. 2021.
* :class:`VPEpsilonLoss`: Ho et al. 2020, ``L_simple`` (Eq. 14, Algorithm 1) on a discrete VP
  schedule; ``net`` is an epsilon network ``eps(x_t, t)`` (guided-diffusion / DPS ``UNetModel``).

Pixel means instead of EDM's pixel sums: a constant factor, irrelevant to Adam apart from its eps.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .diffusion import DiscreteVPSchedule


def _randn(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal draws of ``shape`` on ``like``'s device (drawn on the generator's device if one is given)."""
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def _rand(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.rand(shape, device=like.device, dtype=like.dtype)
    return torch.rand(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def _check_images(x0: Tensor, name: str) -> None:
    if x0.dim() != 4:
        raise ValueError(f"{name}: x0 must be a [B, C, H, W] batch of images, got shape {list(x0.shape)}")


def _per_sample_mean(err: Tensor) -> Tensor:
    return err.flatten(1).mean(dim=1)


class EDMLoss:
    """Karras et al. 2022, Eq. 8 / Table 1 ("EDM" training):
    ``ln sigma ~ N(P_mean, P_std^2)``, ``n ~ N(0, sigma^2 I)``,
    ``L = lambda(sigma) ||D(x0 + n, sigma) - x0||^2`` with ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``,
    which makes the effective target of the raw network ``F`` unit-variance at every sigma (Eq. 8, Sec. 5)."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        if P_std <= 0 or sigma_data <= 0:
            raise ValueError(f"EDMLoss needs P_std > 0 and sigma_data > 0, got P_std={P_std}, sigma_data={sigma_data}")
        self.P_mean, self.P_std, self.sigma_data = float(P_mean), float(P_std), float(sigma_data)

    def weight(self, sigma: Tensor) -> Tensor:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (EDM Table 1)."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def __call__(self, net: nn.Module, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_images(x0, "EDMLoss")
        b = x0.shape[0]
        sigma = (_randn((b, 1, 1, 1), x0, generator) * self.P_std + self.P_mean).exp()   # ln sigma ~ N(P_mean, P_std^2)
        noise = _randn(x0.shape, x0, generator) * sigma
        denoised = net(x0 + noise, sigma.flatten())                                         # D(y + n; sigma)
        return _per_sample_mean(self.weight(sigma) * (denoised.float() - x0) ** 2)


class VPLoss:
    """EDM Table 1, "VP" column (Song et al. 2021 VP SDE): ``t ~ U(epsilon_t, 1)``,
    ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``, ``lambda = 1 / sigma^2``,
    ``L = lambda ||D(x0 + sigma n, sigma) - x0||^2``."""

    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5):
        if not 0 < epsilon_t < 1:
            raise ValueError(f"VPLoss needs 0 < epsilon_t < 1, got {epsilon_t}")
        self.beta_d, self.beta_min, self.epsilon_t = float(beta_d), float(beta_min), float(epsilon_t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t).sqrt()

    def __call__(self, net: nn.Module, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_images(x0, "VPLoss")
        b = x0.shape[0]
        t = 1 + _rand((b, 1, 1, 1), x0, generator) * (self.epsilon_t - 1)                 # U(epsilon_t, 1)
        sigma = self.sigma(t)
        noise = _randn(x0.shape, x0, generator) * sigma
        denoised = net(x0 + noise, sigma.flatten())
        return _per_sample_mean((denoised.float() - x0) ** 2 / sigma**2)


class VPEpsilonLoss:
    """Ho et al. 2020, ``L_simple`` (Eq. 14; Algorithm 1): ``t ~ U{0, ..., T-1}``,
    ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, ``L = ||eps - eps_theta(x_t, t)||^2``.

    ``schedule`` names a :class:`~diffinv.diffusion.DiscreteVPSchedule` (``"linear"``: DDPM / DPS;
    ``"sqrt_linear"``: latent diffusion). The network receives the raw timestep index (as float).

    Learned-variance networks (guided-diffusion ``learn_sigma=True``, ``2C`` output channels) are
    trained on their first ``C`` (epsilon) channels only: the variance head gets no gradient and
    keeps its pretrained values (under AdamW only if ``weight_decay = 0``). Nichol & Dhariwal's
    ``L_vlb`` term for the variance is not implemented; diffinv's samplers use epsilon alone
    (``docs/conventions.md#denoiser-convention``), so the variance channels are never read."""

    def __init__(self, schedule: str = "linear", num_steps: int = 1000):
        self.schedule = DiscreteVPSchedule(schedule, num_steps)
        self._abar: dict[torch.device, Tensor] = {}

    def _alphas_cumprod(self, device: torch.device) -> Tensor:
        if device not in self._abar:
            self._abar[device] = self.schedule.alphas_cumprod.to(device=device, dtype=torch.float32)
        return self._abar[device]

    def __call__(self, net: nn.Module, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_images(x0, "VPEpsilonLoss")
        b, c = x0.shape[:2]
        n_steps = self.schedule.num_steps
        u = _rand((b,), x0, generator)
        t = (u * n_steps).long().clamp_(max=n_steps - 1)                                   # uniform on {0..T-1}
        abar = self._alphas_cumprod(x0.device)[t].view(-1, 1, 1, 1)
        eps = _randn(x0.shape, x0, generator)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps                                     # Ho et al. Eq. 4
        out = net(x_t, t.to(x0.dtype))
        if out.shape[1] == 2 * c:                                                           # learned variance: epsilon part
            out = out[:, :c]
        elif out.shape[1] != c:
            raise ValueError(f"VPEpsilonLoss: network returned {out.shape[1]} channels for {c}-channel images; "
                             f"expected {c} (epsilon) or {2 * c} (epsilon + learned variance)")
        return _per_sample_mean((out.float() - eps) ** 2)


LOSSES = {"edm": EDMLoss, "vp": VPLoss, "vp_epsilon": VPEpsilonLoss}

"""Measurement noise models: draw ``y_obs = noise(A(x), generator)`` and score ``loss(y_hat, y_obs)``.

``sigma`` is always given on the scale of the measurement the operator returns
(``docs/conventions.md#data-conventions``). ``loss`` is the negative log-likelihood up to a constant, per sample
(shape ``[B]``), so that ``grad loss`` is the data-fidelity gradient samplers use.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _per_sample_sum(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


def check_finite(name: str, y: Tensor) -> None:
    if not torch.isfinite(y).all():
        raise ValueError(f"{name}: the measurement contains NaN or Inf; check the input x and the operator.")


class NoiseModel(nn.Module):
    """Base class. ``sigma`` is the per-entry standard deviation (0 for noise-free data)."""

    sigma: float = 0.0

    def forward(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def loss(self, y_hat: Tensor, y_obs: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class GaussianNoise(NoiseModel):
    """``y = A x + sigma * n``; misfit ``||y_hat - y||^2 / (2 sigma^2)`` (``||.||^2 / 2`` when sigma = 0)."""

    def __init__(self, sigma: float = 0.05):
        super().__init__()
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"GaussianNoise: sigma must be a finite number >= 0, got {sigma!r}.")
        self.sigma = float(sigma)

    def forward(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        check_finite("GaussianNoise", y)
        if self.sigma == 0:
            return y.clone()
        n = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        return y + self.sigma * n

    def loss(self, y_hat: Tensor, y_obs: Tensor) -> Tensor:
        scale = 1.0 / (2.0 * self.sigma**2) if self.sigma > 0 else 0.5
        return scale * _per_sample_sum((y_hat - y_obs).abs() ** 2)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class PoissonNoise(NoiseModel):
    """Photon counting: ``y = Poisson(rate * x01) / rate`` with ``x01 = (A x + 1) / 2`` mapped back to
    ``[-1, 1]`` (so it acts on the measurement's own scale). The misfit is the Poisson negative
    log-likelihood in counts, ``sum(lambda - k log lambda)`` with ``lambda = rate * x01``.
    ``sigma`` reports the standard deviation at mid-grey, ``2 sqrt(0.5 rate) / rate``."""

    def __init__(self, rate: float = 100.0):
        super().__init__()
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"PoissonNoise: rate must be > 0 (photons at full scale), got {rate!r}.")
        self.rate = float(rate)
        self.sigma = 2.0 * math.sqrt(0.5 * self.rate) / self.rate

    def _counts(self, y: Tensor) -> Tensor:
        return self.rate * ((y + 1.0) / 2.0).clamp_min(0.0)

    def forward(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        check_finite("PoissonNoise", y)
        k = torch.poisson(self._counts(y), generator=generator)
        return 2.0 * k / self.rate - 1.0

    def loss(self, y_hat: Tensor, y_obs: Tensor) -> Tensor:
        lam = self._counts(y_hat).clamp_min(1e-6)
        k = self._counts(y_obs)
        return _per_sample_sum(lam - k * torch.log(lam))

    def extra_repr(self) -> str:
        return f"rate={self.rate}"

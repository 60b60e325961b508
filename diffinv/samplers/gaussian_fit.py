"""The Gaussian a classical method would use in place of the diffusion prior: a stationary Gaussian random field
with the prior's mean and radially averaged power spectrum, estimated from unconditional draws of the prior
(``fit_gaussian``; states that are not 2-D fields get a diagonal Gaussian).

For periodic fields (Navier–Stokes vorticity on the torus, images treated as periodic) a stationary covariance is
diagonal in the Fourier basis: ``x = m + F^-1 (sqrt(P) * F z)`` with ``z ~ N(0, I)``, ``F`` the orthonormal 2-D DFT
and ``P(k)`` the power spectrum, here averaged over draws and over rings ``|k| in [r, r + 1)`` (isotropy), per
channel. The mean ``m`` is the draws' average field. This is the Gaussian-random-field / Tikhonov prior of the
classical baselines (regularised least squares, EKI): it has the prior's second-order statistics and nothing else.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion import karras_sigmas, sample_sde


def prior_draws(prior, shape: tuple[int, ...], num: int, generator, steps: int = 18, batch: int = 64) -> Tensor:
    """``num`` unconditional draws of ``prior`` (EDM's Heun sampler on the Karras grid 80 -> 0.002, Algorithm 1)."""
    sigmas = karras_sigmas(steps, 0.002, 80.0, 7.0)
    device = next((p.device for p in prior.parameters()), None) if hasattr(prior, "parameters") else None
    out = []
    for start in range(0, num, batch):
        n = min(batch, num - start)
        out.append(sample_sde(prior, (n, *shape), sigmas, "edm", 0.0, "heun", generator, device=device))
    return torch.cat(out)


class DiagonalGaussian:
    """``N(mean, diag(var))``: the fallback for states that are not 2-D fields (vectors)."""

    def __init__(self, mean: Tensor, variance: Tensor):
        self.mean, self.variance = mean, variance.clamp_min(1e-12 * float(variance.max()))

    def to(self, like: Tensor) -> "DiagonalGaussian":
        return type(self)(self.mean.to(like), self.variance.to(like))

    def color(self, z: Tensor) -> Tensor:
        return self.mean + self.variance.sqrt() * z

    def whiten(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.variance.sqrt()

    def sample(self, n: int, generator=None) -> Tensor:
        z = torch.randn((n, *self.mean.shape), generator=generator, dtype=self.mean.dtype)
        return self.color(z.to(self.mean.device))


def fit_gaussian(draws: Tensor) -> "StationaryGaussian | DiagonalGaussian":
    """The stationary Gaussian of 2-D fields ``[n, C, H, W]``, a diagonal one for other shapes."""
    if draws.dim() == 4:
        return StationaryGaussian.fit(draws)
    return DiagonalGaussian(draws.mean(0), draws.var(0))


class StationaryGaussian:
    """``N(mean, C)`` with ``C`` stationary and isotropic per channel, on ``[C, H, W]`` fields."""

    def __init__(self, mean: Tensor, spectrum: Tensor):
        self.mean, self.spectrum = mean, spectrum.clamp_min(1e-12 * float(spectrum.max()))   # [C, H, W] each

    @classmethod
    def fit(cls, draws: Tensor) -> "StationaryGaussian":
        """From draws ``[n, C, H, W]``: their mean field and ring-averaged periodogram."""
        if draws.dim() != 4:
            raise ValueError(f"StationaryGaussian.fit: needs draws [n, C, H, W], got {list(draws.shape)}")
        mean = draws.mean(0)
        power = (torch.fft.fft2(draws - mean, norm="ortho").abs() ** 2).mean(0)          # [C, H, W]
        _, h, w = mean.shape
        ky, kx = torch.meshgrid(torch.fft.fftfreq(h) * h, torch.fft.fftfreq(w) * w, indexing="ij")
        ring = torch.sqrt(kx**2 + ky**2).floor().long().reshape(-1)                        # [H W]
        flat = power.reshape(power.shape[0], -1)
        total = torch.zeros(flat.shape[0], int(ring.max()) + 1, dtype=flat.dtype).index_add_(1, ring, flat)
        count = torch.bincount(ring).to(flat.dtype)
        return cls(mean, (total / count)[:, ring].reshape(power.shape))

    def to(self, like: Tensor) -> "StationaryGaussian":
        return StationaryGaussian(self.mean.to(like), self.spectrum.to(like))

    def color(self, z: Tensor) -> Tensor:
        """``m + C^(1/2) z`` for white ``z [B, C, H, W]``."""
        return self.mean + torch.fft.ifft2(torch.fft.fft2(z, norm="ortho") * self.spectrum.sqrt(), norm="ortho").real

    def whiten(self, x: Tensor) -> Tensor:
        """``C^(-1/2) (x - m)``, the inverse of ``color``."""
        return torch.fft.ifft2(torch.fft.fft2(x - self.mean, norm="ortho") / self.spectrum.sqrt(), norm="ortho").real

    def sample(self, n: int, generator=None) -> Tensor:
        z = torch.randn((n, *self.mean.shape), generator=generator, dtype=self.mean.dtype)
        return self.color(z.to(self.mean.device))

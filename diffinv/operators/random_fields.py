"""Gaussian random fields on the periodic square: the initial vorticity of the Navier–Stokes problem.

A mean-zero Gaussian random field (GRF) with covariance operator

    C = sigma^2 (-Lap + tau^2 I)^(-alpha)                                           (1)

on the torus of side ``length`` (Li et al. 2021, "Fourier Neural Operator", section 5.3, whose
Navier–Stokes data draw w0 ~ N(0, C) with alpha = 2.5, tau = 7; the EnKG / InverseBench
Navier–Stokes data follow the same recipe). The eigenfunctions of ``-Lap`` are the Fourier modes
``e_k(x) = exp(i 2 pi k.x / length) / length`` (orthonormal in L^2), with eigenvalues
``(2 pi |k| / length)^2``, so the Karhunen–Loève expansion gives the exact law of the grid values:

    u(x) = sum_{k != 0} sqrt(lambda_k) xi_k e_k(x),  lambda_k = sigma^2 ((2 pi |k| / length)^2 + tau^2)^(-alpha)   (2)

with point variance ``sum_k lambda_k / length^2``. The mean mode is set to zero (mean-zero vorticity).
Default ``sigma = tau^(alpha - d/2) = tau^(alpha - 1)`` in d = 2 dimensions, FNO's choice.

Sampling: real white noise ``n(x) ~ N(0, 1)`` on the N x N grid has discrete Fourier coefficients of
variance N^2, so ``u = irfft2(c_k rfft2(n))`` with ``c_k = N sqrt(lambda_k) / length`` has exactly the
covariance of (2) truncated to the grid's wavenumbers (one real FFT pair per field, Hermitian symmetry
for free). With ``length = 1`` this is the law of FNO's ``GaussianRF(2, N, alpha=2.5, tau=7)`` sampler
(its fields live on the unit torus); ``length = 2 pi`` reads the Laplacian on the solver's own domain.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


class GaussianRandomField:
    """Seeded, batched sampler of the mean-zero GRF (1) on an ``N x N`` periodic grid.

    Args:
        resolution: grid size N (even, >= 4).
        alpha: smoothness exponent of the covariance (FNO / InverseBench: 2.5).
        tau: inverse length scale (FNO / InverseBench: 7).
        sigma: amplitude; default ``tau ** (alpha - 1)`` (= 7^1.5 ~ 18.5 for the defaults).
        length: side of the periodic square on which the Laplacian in (1) is taken.
    """

    def __init__(self, resolution: int, alpha: float = 2.5, tau: float = 7.0, sigma: float | None = None,
                 length: float = 1.0):
        if not (isinstance(resolution, int) and resolution >= 4 and resolution % 2 == 0):
            raise ValueError(f"GaussianRandomField: resolution must be an even int >= 4, got {resolution!r}.")
        for name, v in (("alpha", alpha), ("tau", tau), ("length", length)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"GaussianRandomField: {name} must be a finite number > 0, got {v!r}.")
        if sigma is not None and not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"GaussianRandomField: sigma must be >= 0 (or None for tau**(alpha-1)), got {sigma!r}.")
        self.resolution = resolution
        self.alpha = float(alpha)
        self.tau = float(tau)
        self.sigma = float(tau ** (alpha - 1.0)) if sigma is None else float(sigma)
        self.length = float(length)

    def eigenvalues(self, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """``lambda_k`` of (2) on the rfft grid ``[N, N // 2 + 1]`` (zero at k = 0)."""
        n = self.resolution
        k1 = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64, device=device)    # integer wavenumbers
        k2 = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64, device=device)
        k_sq = k1[:, None] ** 2 + k2[None, :] ** 2
        lam = self.sigma**2 * ((2 * math.pi / self.length) ** 2 * k_sq + self.tau**2) ** (-self.alpha)
        lam[0, 0] = 0.0
        return lam.to(dtype)

    def pointwise_variance(self) -> float:
        """Exact variance of every grid value: ``sum_k lambda_k / length^2`` over the grid's wavenumbers."""
        lam = self.eigenvalues()
        # rfft half-plane: columns 1 .. N/2 - 1 stand for two wavenumbers (+k2 and -k2)
        weights = torch.full_like(lam, 2.0)
        weights[:, 0] = 1.0
        weights[:, -1] = 1.0
        return float((weights * lam).sum() / self.length**2)

    def sample(self, num: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               device=None) -> Tensor:
        """``num`` independent fields ``[num, N, N]``. The white noise is drawn on the generator's device
        in float64 (so a seed gives the same fields whatever ``dtype``), then moved to ``device``."""
        if not (isinstance(num, int) and num >= 0):
            raise ValueError(f"GaussianRandomField.sample: num must be an int >= 0, got {num!r}.")
        n = self.resolution
        noise_device = generator.device if generator is not None else (device or "cpu")
        white = torch.randn((num, n, n), generator=generator, dtype=torch.float64, device=noise_device)
        white = white.to(device) if device is not None else white
        coef = n * self.eigenvalues(device=white.device).sqrt() / self.length            # c_k of the docstring
        field = torch.fft.irfft2(coef * torch.fft.rfft2(white), s=(n, n))
        return field.to(dtype)

    def __repr__(self) -> str:
        return (f"GaussianRandomField(resolution={self.resolution}, alpha={self.alpha}, tau={self.tau}, "
                f"sigma={self.sigma:.6g}, length={self.length:.6g})")

"""Uncertainty from posterior samples: pixel-wise mean and standard deviation of N draws made in ONE
batched ``sample(..., num_samples=N)`` call (``docs/conventions.md#sampler-contract``: statistics come from returned
samples, never from a sampler-specific side path), and the effective sample size of MCMC trajectories."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Sampler, posterior_stats


def draw_posterior(sampler: Sampler, y: Tensor, operator, prior, num_samples: int,
                   generator: torch.Generator | None = None, callback=None) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``num_samples`` posterior samples per measurement in one batch and summarise them.

    Returns ``(samples [num_samples * B, ...] sample-major, mean [B, ...], std [B, ...])``; the std is the
    unbiased sample standard deviation (zero for a single draw)."""
    if num_samples < 1:
        raise ValueError(f"draw_posterior: num_samples must be >= 1, got {num_samples}")
    samples = sampler.sample(y, operator, prior, num_samples=num_samples, generator=generator, callback=callback)
    mean, std = posterior_stats(samples, num_samples)
    return samples, mean, std


def effective_sample_size(chain: Tensor) -> Tensor:
    """Effective sample size of each scalar component of MCMC trajectories ``chain [T, C, ...]`` (T kept
    states of C independent chains), pooled over the chains: ``C T / tau`` with the integrated
    autocorrelation time ``tau = -1 + 2 sum_k Gamma_k`` from Geyer's (1992) initial monotone sequence
    estimator (Gamma_k = rho_{2k} + rho_{2k+1}, summed while positive, made non-increasing). The
    autocorrelation is averaged over chains (Stan's multi-chain convention, without the split-R-hat
    correction). Returns a tensor of shape ``chain.shape[2:]`` (a scalar for ``[T, C]``)."""
    if chain.dim() < 2 or chain.shape[0] < 4:
        raise ValueError(f"effective_sample_size: need [T >= 4, C, ...] trajectories, got shape {list(chain.shape)}")
    T, C = chain.shape[:2]
    x = chain.double().reshape(T, C, -1)
    x = x - x.mean(0, keepdim=True)
    # autocovariance by FFT along time, per chain and component
    n = 1 << (2 * T - 1).bit_length()
    f = torch.fft.rfft(x, n=n, dim=0)
    acov = torch.fft.irfft(f * f.conj(), n=n, dim=0)[:T] / T                   # [T, C, P]
    var = acov[0].mean(0)                                                      # [P]
    rho = acov.mean(1) / var.clamp_min(1e-300)                                 # [T, P], rho_0 = 1
    m = (T - 1) // 2
    pairs = rho[: 2 * m].reshape(m, 2, -1).sum(1)                              # Gamma_k, k = 0..m-1
    positive = torch.cumprod((pairs > 0).double(), dim=0)                      # stop at the first non-positive pair
    monotone = torch.cummin(torch.where(positive > 0, pairs, torch.zeros_like(pairs)), dim=0).values
    tau = (-1.0 + 2.0 * (monotone * positive).sum(0)).clamp_min(1.0 / (C * T))
    ess = (C * T / tau).clamp(max=C * T * torch.log10(torch.tensor(float(C * T))).item())
    return ess.reshape(chain.shape[2:]).to(chain.dtype)

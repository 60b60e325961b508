"""Sliced Wasserstein distance between two empirical distributions (test helper).

SW_2(a, b) = sqrt( E_theta W_2^2(theta^T a, theta^T b) ) over directions theta uniform on the sphere (Bonneel et
al. 2015); each one-dimensional W_2 is computed between sorted projections (quantile functions), interpolated
on a common grid when the two sample sizes differ.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _quantiles(p: Tensor, m: int) -> Tensor:
    """Empirical quantile function of the columns of sorted ``p`` [n, P] evaluated at m mid-point levels."""
    n = p.shape[0]
    if n == m:
        return p
    levels = (torch.arange(m, dtype=p.dtype) + 0.5) / m * n - 0.5
    lo = levels.floor().clamp(0, n - 1).long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (levels - lo).clamp(0, 1)[:, None]
    return (1 - w) * p[lo] + w * p[hi]


def sliced_wasserstein(a: Tensor, b: Tensor, num_projections: int = 500,
                       generator: torch.Generator | None = None) -> float:
    """SW_2 between the rows of ``a`` [n, ...] and ``b`` [m, ...] (flattened), in float64."""
    a = a.reshape(a.shape[0], -1).double().cpu()
    b = b.reshape(b.shape[0], -1).double().cpu()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"sliced_wasserstein: dimensions differ ({a.shape[1]} vs {b.shape[1]})")
    theta = torch.randn((a.shape[1], num_projections), generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ theta, dim=0)
    pb, _ = torch.sort(b @ theta, dim=0)
    m = max(pa.shape[0], pb.shape[0])
    qa, qb = _quantiles(pa, m), _quantiles(pb, m)
    return float(((qa - qb) ** 2).mean().sqrt())

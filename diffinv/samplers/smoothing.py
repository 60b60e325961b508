"""Gaussian-smoothed gradient (GSG) estimates from function values only (zeroth order), batched over points and
directions: the estimator of DPS-GSG (InverseBench ``algo/dps_gsg.py``; Zheng et al. 2024, "Ensemble Kalman diffusion
guidance", arXiv:2409.20175, which introduced the baseline), after Nesterov & Spokoiny 2017 ("Random gradient-free
minimization of convex functions", Found. Comput. Math. 17, the Gaussian smoothing of their Sec. 2 and its
random-direction estimators of Sec. 3).

For ``f_mu(x) = E_u f(x + mu u)``, ``u ~ N(0, I)``, the gradient is ``grad f_mu(x) = E_u[(f(x + mu u) - f(x)) u] / mu``
(forward differences) ``= E_u[(f(x + mu u) - f(x - mu u)) u] / (2 mu)`` (central differences), estimated with K
directions:

    g_fwd = 1/K sum_k (f(x + mu u_k) - f(x)) / mu u_k,
    g_ctr = 1/K sum_k (f(x + mu u_k) - f(x - mu u_k)) / (2 mu) u_k.

For a quadratic f, grad f_mu = grad f and the central difference along u is exactly the directional derivative
``grad f . u`` (any mu), so ``g_ctr = (1/K sum_k u_k u_k^T) grad f``; the forward estimate is unbiased too (its mu
term ``mu / 2 E[(u^T H u) u]`` has odd moments only). Both errors fall as ``1 / sqrt(K)``.

Every function value of a call is taken in one batched evaluation of ``f`` (all points, all directions, and the
unperturbed points; ``blackbox.query_misfit`` splits it into chunks when a forward model cannot take them all).
InverseBench spends ``num_queries`` evaluations per point: K = num_queries directions forward, num_queries / 2
central (two evaluations each), plus the unperturbed value.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .base import randn

Batched = Callable[[Tensor], Tensor]     # [M, ...] -> [M] per-row values


def directions(num_queries: int, central: bool) -> int:
    """Directions K for a budget of ``num_queries`` perturbed evaluations per point."""
    k = num_queries // 2 if central else num_queries
    if k < 1:
        raise ValueError(f"num_queries={num_queries} gives no direction ({'central' if central else 'forward'} "
                         f"differences need at least {2 if central else 1})")
    return k


def smoothed_gradient(f: Batched, x: Tensor, u: Tensor, mu: float, central: bool = True) -> tuple[Tensor, Tensor]:
    """The GSG estimate at the points ``x [N, ...]`` along the directions ``u [K, N, ...]`` (direction k of point n is
    ``u[k, n]``): returns ``(g [N, ...], f(x) [N])`` from one batched evaluation of ``f`` on ``(1 + K or 2K) N`` rows,
stacked ``[x; x + mu u_1; ...; x + mu u_K; (x - mu u_1; ...)]`` (row r is a perturbation of point ``r % N``)."""
    if u.shape[1:] != x.shape:
        raise ValueError(f"directions must be [K, {', '.join(map(str, x.shape))}], got {list(u.shape)}")
    k, n = u.shape[0], x.shape[0]
    plus = x.unsqueeze(0) + mu * u
    pts = [x.unsqueeze(0), plus] + ([x.unsqueeze(0) - mu * u] if central else [])
    vals = f(torch.cat(pts).reshape(-1, *x.shape[1:]))
    f0, f_plus = vals[:n], vals[n:(k + 1) * n].reshape(k, n)
    diff = (f_plus - vals[(k + 1) * n:].reshape(k, n)) / (2 * mu) if central else (f_plus - f0) / mu   # [K, N]
    g = torch.einsum("kn,knd->nd", diff, u.reshape(k, n, -1)).reshape(x.shape) / k     # 1/K sum_k diff_k u_k
    return g, f0


def gsg_gradient(f: Batched, x: Tensor, num_queries: int, mu: float, central: bool = True,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``smoothed_gradient`` along fresh standard normal directions, K = ``directions(num_queries, central)``."""
    u = randn((directions(num_queries, central), *x.shape), generator, like=x)
    return smoothed_gradient(f, x, u, mu, central)

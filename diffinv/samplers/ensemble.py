"""Ensemble Kalman updates shared by EnKG and EKI: everything from forward-model outputs and the gradient of the
noise model's misfit with respect to the *measurement* (never the operator's derivatives).

Ensembles are ``[N, B, ...]``: N members for each of B independent measurements; statistics run over the first
axis. With ``X`` the member deviations of the state and ``Y`` those of the predictions ``yh = A(...)``, the tempered
Kalman analysis of the likelihood ``p(y | x)^beta`` (observation covariance ``Gamma / beta``) is, in ensemble space
(Hunt, Kostelich, Szunyogh 2007, "Efficient data assimilation ... the local ensemble transform Kalman filter",
Eqs. 14-25; the Woodbury form of the gain K = C_xy (C_yy + Gamma / beta)^-1):

    S        = Y^T Gamma^-1 Y / (N - 1)                       (N x N, the ensemble's signal-to-noise matrix)
    mean    <- mean - X (I + beta S)^-1 beta Y^T g / (N - 1)  (g = Gamma^-1 (mean yh - y), the misfit gradient)
    X       <- X (I + beta S)^-1/2                             (symmetric square root: deterministic, keeps mean)

``Gamma^-1 Y`` and ``g`` come from the misfit gradient ``e_n = d loss(yh_n, y) / d yh_n`` of each member: for a
Gaussian noise model ``e_n = (yh_n - y) / sigma^2``, so ``Gamma^-1 Y = e - mean(e)`` and ``g = mean(e)`` exactly; for
other noise models the same expressions are the secant (statistical) linearisation of the misfit. The analysis
covariance ``X (I + beta S)^-1 X^T / (N - 1)`` equals ``C - C_xy (C_yy + Gamma / beta)^-1 C_yx``.

Every function takes an optional ``particles`` (``diffinv.samplers.particles``): by default all members are in
this process; with ``ShardedParticles`` the ensemble arguments hold this rank's members only, the members'
states, predictions and misfit gradients are all-gathered once (``N (d + 2 m)`` values), every rank forms the
same ``N x N`` matrices and updates its own members, and the result is that rank's rows of the one-process
result (up to the order of floating-point sums).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .particles import LocalParticles


def as_real(t: Tensor) -> Tensor:
    """Real view (complex measurements become pairs), so inner products are the real inner product."""
    return torch.view_as_real(t) if t.is_complex() else t


def misfit_gradient(operator, y_hat: Tensor, y: Tensor) -> Tensor:
    """``d loss(yh, y) / d yh`` of the operator's noise model: autograd on the misfit of the *measurement* only."""
    with torch.enable_grad():
        yh = y_hat.detach().requires_grad_(True)
        (e,) = torch.autograd.grad(operator.loss(yh, y).sum(), yh)
    return e


def deviations(t: Tensor, particles=None) -> tuple[Tensor, Tensor]:
    """Mean over members (all ranks' with ``particles``) and deviations from it of an ensemble ``[N, B, k]``."""
    mean = t.mean(0, keepdim=True) if particles is None else particles.mean(t)
    return mean, t - mean


def kalman_analysis(x: Tensor, y_hat: Tensor, e: Tensor, beta: float | Tensor, particles=None) -> Tensor:
    """The tempered square-root Kalman analysis above. ``x [N, B, d]`` states, ``y_hat [N, B, m]`` their predictions,
    ``e [N, B, m]`` the misfit gradients at them; ``beta`` the likelihood's tempering (a float, or ``[B, N]``
    weights per eigen-direction of S). Returns the analysed states ``[N, B, d]`` (this rank's, with ``particles``)."""
    particles = particles or LocalParticles(x.shape[0])
    n = particles.total
    if n < 2:
        raise ValueError("kalman_analysis needs at least 2 ensemble members")
    x, y_hat, e = particles.gather(x, y_hat, e)
    x_mean, xd = deviations(x)
    _, yd = deviations(y_hat)
    e_mean = e.mean(0)
    S = torch.einsum("nbk,mbk->bnm", yd, e - e_mean) / (n - 1)
    lam, U = torch.linalg.eigh(0.5 * (S + S.transpose(1, 2)))                  # S = U diag(lam) U^T, [B, N, N]
    lam = lam.clamp_min(0)                                                      # PSD up to rounding / secant error
    beta = torch.as_tensor(beta, dtype=x.dtype, device=x.device)
    shrink = 1 + beta * lam                                                     # eigenvalues of I + beta S
    yg = torch.einsum("nbk,bk->bn", yd, e_mean) / (n - 1)                       # Y^T g / (N - 1)
    w = torch.einsum("bnk,bk->bn", U, torch.einsum("bkn,bk->bn", U, yg) * beta / shrink)
    mean = x_mean[0] - torch.einsum("nbd,bn->bd", xd, w)
    T = torch.einsum("bnk,bk,bmk->bnm", U, shrink.rsqrt(), U)                  # (I + beta S)^-1/2
    return mean[None] + torch.einsum("bmn,mbd->nbd", particles.own(T), xd)


def kalman_perturbed(x: Tensor, y_hat: Tensor, e: Tensor, beta: float, noise_white: Tensor, particles=None) -> Tensor:
    """The stochastic (perturbed-observation) form of the same update (Evensen 1994; Iglesias, Law & Stuart 2013,
    Eq. 9): every member assimilates its own perturbed data ``y + eta_n``, ``eta_n ~ N(0, Gamma / beta)``, through
    the gain of the ensemble covariances, ``x_n <- x_n + X (I + beta S)^-1 beta Y^T Gamma^-1 (y + eta_n - yh_n) /
    (N - 1)``. ``noise_white`` is ``Gamma^-1 eta_n`` for each member ``[N, B, m]`` (for Gaussian noise of std sigma:
    ``xi / (sigma sqrt(beta))`` with ``xi ~ N(0, I)``); ``Gamma^-1 (y - yh_n) = -e_n``."""
    particles = particles or LocalParticles(x.shape[0])
    n = particles.total
    if n < 2:
        raise ValueError("kalman_perturbed needs at least 2 ensemble members")
    x_all, y_all, e_all = particles.gather(x, y_hat, e)
    _, xd = deviations(x_all)
    _, yd = deviations(y_all)
    S = torch.einsum("nbk,mbk->bnm", yd, e_all - e_all.mean(0)) / (n - 1)
    lam, U = torch.linalg.eigh(0.5 * (S + S.transpose(1, 2)))
    lam = lam.clamp_min(0)
    innovation = torch.einsum("mbk,nbk->bmn", yd, noise_white - e) / (n - 1)     # Y^T Gamma^-1 (innovation_n)
    coef = torch.einsum("bjk,bk,blk,blm->bjm", U, beta / (1 + beta * lam), U, innovation)   # (I + bS)^-1 b (.)
    return x + torch.einsum("jbd,bjn->nbd", xd, coef)


def relax_spread(before: Tensor, after: Tensor, alpha: float, particles=None) -> Tensor:
    """Relaxation to prior spread (Whitaker & Hamill 2012, Eq. 3): scale each coordinate's deviations so that its
    std moves the fraction ``alpha`` back from the analysis spread towards the forecast spread. Counters the
    spurious shrinkage of unobserved coordinates that small ensembles suffer."""
    if alpha <= 0:
        return after
    particles = particles or LocalParticles(before.shape[0])
    _, xd_b = deviations(before, particles)
    mean_a, xd_a = deviations(after, particles)
    s_b, s_a = particles.spread(xd_b), particles.spread(xd_a)
    factor = torch.where(s_a > 0, 1 + alpha * (s_b - s_a) / s_a.clamp_min(torch.finfo(s_a.dtype).tiny),
                         torch.ones_like(s_a))
    return mean_a + xd_a * factor

"""EKI: ensemble Kalman inversion (Iglesias, Law & Stuart 2013, "Ensemble Kalman methods for inverse problems",
Inverse Problems 29 045001), the derivative-free classical method of InverseBench's comparison.

An ensemble ``u_1..u_N`` drawn from a Gaussian prior is moved by Kalman updates with perturbed observations
(``diffinv.samplers.ensemble.kalman_perturbed``, their Eq. 9 with the artificial time step ``dt``):

    u_n <- u_n + C_uG (C_GG + Gamma / dt)^-1 (y + eta_n - G(u_n)),   eta_n ~ N(0, Gamma / dt),

which only calls the forward model (no derivatives). Iterated, the ensemble mean converges to a least-squares
solution inside the span of the initial ensemble (the ensemble is the regulariser); the iteration stops by the
discrepancy principle as in Iglesias 2016 ("A regularizing iterative ensemble Kalman method for PDE-constrained
inverse problems"): at the first iteration whose ensemble mean fits the data to the noise level,
``loss(G(mean u), y) <= tau m / 2``, or after ``num_iterations``. The initial ensemble is the stationary Gaussian of
the prior (``init="gaussian"``: the prior's mean and power spectrum, ``gaussian_fit``), the classical setting;
``init="prior"`` starts from unconditional draws of the diffusion prior instead. The returned samples are the
final ensemble.

InverseBench's copy differs: no perturbed observations and no Gamma, a step ``lr / ||C||_F`` as in EnKG's
reference update, 500 iterations and no stopping rule; its initial ensemble is a Gaussian random field.
Requires Gaussian measurement noise (the perturbations need Gamma).

Across ranks (``particles=ShardedParticles(N)``): each rank moves its own members; the mean, the draws and the
Kalman update are those of ``diffinv.samplers.particles`` / ``ensemble.kalman_perturbed`` (one all-gather of
``N (d + 2 m)`` values per iteration, an all-reduce of the mean); every rank evaluates the mean's misfit itself,
so all stop at the same iteration. ``init="prior"`` is refused there (every rank would draw the whole ensemble).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..operators.noise import GaussianNoise
from .base import Sampler, real_dtype, repeat_measurement
from .baselines import _FittedGaussian
from .ensemble import as_real, kalman_perturbed, misfit_gradient
from .gaussian_fit import prior_draws
from .particles import LocalParticles


class EKI(_FittedGaussian, Sampler):
    """Ensemble Kalman inversion (derivative-free; ``num_samples`` is the ensemble size).

    Args:
        num_iterations: at most this many Kalman updates.
        dt: the artificial time step of each update (1 = Iglesias et al. 2013's iteration).
        tau: discrepancy factor of the stopping rule (``None``: run every iteration).
        init: ``"gaussian"`` (the prior's stationary Gaussian) or ``"prior"`` (unconditional prior draws).
        fit_samples: prior draws for the Gaussian's spectrum.
    """

    requires = frozenset()
    baseline = True
    interacting = shardable = True

    def __init__(self, num_iterations: int = 50, dt: float = 1.0, tau: float | None = 1.0, init: str = "gaussian",
                 fit_samples: int = 64):
        super().__init__()
        if num_iterations < 1 or not dt > 0 or (tau is not None and not tau > 0):
            raise ValueError(f"EKI: need num_iterations >= 1, dt > 0, tau > 0 or None; got {num_iterations}, {dt}, "
                             f"{tau}")
        if init not in ("gaussian", "prior"):
            raise ValueError(f"EKI: init must be 'gaussian' or 'prior', got {init!r}")
        self.num_iterations, self.dt, self.tau, self.init, self.fit_samples = num_iterations, dt, tau, init, fit_samples
        self.iterations_run = 0

    @torch.no_grad()
    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback, particles=None) -> Tensor:
        if not isinstance(operator.noise, GaussianNoise) or operator.sigma <= 0:
            raise ValueError(f"EKI perturbs the data with the noise covariance: it needs GaussianNoise with sigma > 0, "
                             f"got {type(operator.noise).__name__} (sigma {operator.sigma}); use EnKG for other "
                             f"noise models.")
        if num_samples < 2:
            raise ValueError("EKI: the ensemble needs num_samples >= 2 members")
        particles = particles or LocalParticles(num_samples)
        n, b = particles.count, y.shape[0]
        dtype = real_dtype(y)
        shape = tuple(operator.input_shape)
        if self.init == "gaussian":
            gauss = self.gaussian(prior, shape, torch.zeros((), dtype=dtype, device=y.device), generator)
            u = gauss.color(particles.randn((n * b, *shape), generator, like=y, dtype=dtype))
        elif particles.sharded:
            raise ValueError("EKI: init='prior' draws the whole ensemble with the prior's network on every rank; "
                             "use init='gaussian' when the ensemble is split over ranks")
        else:
            u = prior_draws(prior, shape, n * b, generator).to(dtype)
            self.cost.nfe += 35 * math.ceil(n * b / 64)
        y_rep = repeat_measurement(y, n)
        target = None if self.tau is None else self.tau * y[0].numel() / 2
        sigma = float(operator.sigma)
        self.iterations_run = 0
        with particles.run():
            for it in range(self.num_iterations):
                mean = particles.mean(u.reshape(n, b, *shape))[0]

                def forward(u=u, mean=mean):
                    self.cost.forward_calls += 1
                    return (operator(torch.cat([u, mean])),)        # the ensemble and its mean in one call

                (out,) = particles.guard(forward, ((n + 1) * b, *y.shape[1:]), like=y)
                y_hat, y_mean = out[: n * b], out[n * b:]
                if target is not None and bool((operator.loss(y_mean, y) <= target).all()):
                    break                                            # discrepancy principle (Iglesias 2016)
                e = as_real(misfit_gradient(operator, y_hat, y_rep)).reshape(n, b, -1)
                xi = particles.randn(e.shape, generator, like=e)
                noise_white = xi / (sigma * math.sqrt(self.dt))      # Gamma^-1 eta, eta ~ N(0, sigma^2 I / dt)
                u = kalman_perturbed(u.reshape(n, b, -1), as_real(y_hat).reshape(n, b, -1), e, self.dt,
                                     noise_white, particles).reshape(u.shape)
                self.iterations_run = it + 1
                if callback is not None:
                    callback(it, self.num_iterations, u)
        return u

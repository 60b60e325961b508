"""Baselines a scientist would use instead of a diffusion sampler, under the sampler contract so that they run
on the same items, noise and metrics:

* ``PriorSamples``: unconditional draws of the prior (their mean is the prior mean: the error of knowing nothing
  but the prior);
* ``Tikhonov``: regularised least squares through the differentiable forward model with the Gaussian-random-field
  penalty of ``gaussian_fit.StationaryGaussian`` (the prior's mean and power spectrum), its weight chosen by the
  discrepancy principle (Morozov 1966): the largest weight whose solution fits the data to the noise level,
  ``loss(A x, y) <= tau * m / 2`` for m measurements (``||A x - y||^2 <= tau m sigma^2`` for Gaussian noise). The
  truth is never looked at. Returns the solution as every "draw" (a point estimate: std 0).

Both ignore the diffusion model except through its samples (the spectrum of ``Tikhonov`` and EKI's default
initial ensemble are estimated from unconditional draws, once per sampler object and field shape).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Sampler, real_dtype, repeat_measurement
from .gaussian_fit import fit_gaussian, prior_draws


class _FittedGaussian:
    """Mixin: the stationary Gaussian of the prior, estimated once per field shape from ``fit_samples`` draws."""

    fit_samples: int = 64

    def gaussian(self, prior, shape, like: Tensor, generator):
        cache = self.__dict__.setdefault("_gaussians", {})
        key = (tuple(shape), id(prior))
        if key not in cache:
            g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator))) \
                if generator is not None and generator.device.type == "cpu" else None
            cache[key] = fit_gaussian(prior_draws(prior, tuple(shape), self.fit_samples, g).detach())
            self.cost.nfe += 35 * math.ceil(self.fit_samples / 64)        # 18 Heun steps = 35 denoiser calls
        return cache[key].to(like)


class PriorSamples(Sampler):
    """Unconditional draws of the prior (EDM Heun, ``num_steps`` Karras levels from 80 to 0.002); the data are
    not used. ``num_samples`` of them give the prior mean and std (the baseline of knowing nothing)."""

    requires = frozenset()
    baseline = True
    uses_data = False

    def __init__(self, num_steps: int = 18):
        super().__init__()
        if num_steps < 2:
            raise ValueError(f"PriorSamples: num_steps must be >= 2, got {num_steps}")
        self.num_steps = num_steps

    @torch.no_grad()
    def _sample(self, y, operator, prior, num_samples, generator, callback) -> Tensor:
        n = num_samples * y.shape[0]
        out = prior_draws(prior, tuple(operator.input_shape), n, generator, self.num_steps)
        self.cost.nfe += (2 * self.num_steps - 1) * math.ceil(n / 64)
        if callback is not None:
            callback(0, 1, out)
        return out.to(real_dtype(y))


class Tikhonov(_FittedGaussian, Sampler):
    """Regularised least squares ``min_x loss(A x, y) + (lam / 2) ||C^(-1/2) (x - m)||^2`` (module docstring),
    solved in the whitened variable ``z = C^(-1/2) (x - m)`` by L-BFGS with a strong Wolfe line search, for
    ``lam`` from ``lam_max`` down by factors of ``lam_factor`` (each solve warm-started at the last), stopping at
    the first ``lam`` whose misfit is at most ``tau * m / 2`` (the discrepancy principle); ``lam_min`` ends the
    search otherwise (the solution with the smallest misfit reached is returned, with a warning in ``self.log``).

    Args:
        lam_max, lam_min, lam_factor: the weights tried.
        tau: the discrepancy factor (1 = fit to the noise level).
        max_iter: L-BFGS iterations per weight.
        fit_samples: unconditional prior draws for the Gaussian's spectrum.
    """

    requires = frozenset({"differentiable"})
    baseline = True

    def __init__(self, lam_max: float = 1e4, lam_min: float = 1e-3, lam_factor: float = 10**0.5, tau: float = 1.0,
                 max_iter: int = 100, fit_samples: int = 64):
        super().__init__()
        if not (0 < lam_min <= lam_max and lam_factor > 1 and tau > 0 and max_iter >= 1):
            raise ValueError(f"Tikhonov: need 0 < lam_min <= lam_max, lam_factor > 1, tau > 0, max_iter >= 1; got "
                             f"{lam_min}, {lam_max}, {lam_factor}, {tau}, {max_iter}")
        self.lam_max, self.lam_min, self.lam_factor, self.tau = lam_max, lam_min, lam_factor, tau
        self.max_iter, self.fit_samples = max_iter, fit_samples
        self.log: list[dict] = []

    def _solve(self, z: Tensor, lam: float, y: Tensor, operator, gauss) -> Tensor:
        z = z.detach().clone().requires_grad_(True)
        opt = torch.optim.LBFGS([z], lr=1.0, max_iter=self.max_iter, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-10, tolerance_change=1e-14)

        def closure():
            opt.zero_grad()
            self.cost.forward_calls += 1
            self.cost.grad_calls += 1
            f = (operator.loss(operator(gauss.color(z)), y) + 0.5 * lam * z.pow(2).flatten(1).sum(1)).sum()
            f.backward()
            return f

        with torch.enable_grad():
            opt.step(closure)
        return z.detach()

    def weights(self) -> list[float]:
        n = int(math.floor(math.log(self.lam_max / self.lam_min) / math.log(self.lam_factor) + 1e-9)) + 1
        return [self.lam_max / self.lam_factor**k for k in range(n)]

    def _sample(self, y, operator, prior, num_samples, generator, callback) -> Tensor:
        dtype = real_dtype(y)
        gauss = self.gaussian(prior, operator.input_shape, torch.zeros((), dtype=dtype, device=y.device), generator)
        target = self.tau * y[0].numel() * (2 if y.is_complex() else 1) / 2         # tau m / 2
        z = torch.zeros((y.shape[0], *operator.input_shape), dtype=dtype, device=y.device)
        done = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
        shape = (-1, *[1] * (z.dim() - 1))
        self.log = []
        lams = self.weights()
        for step, lam in enumerate(lams):
            z_new = self._solve(z, lam, y, operator, gauss)
            with torch.no_grad():
                misfit = operator.loss(operator(gauss.color(z_new)), y)
            self.cost.forward_calls += 1
            z = torch.where(done.view(shape), z, z_new)   # an item keeps the solution of its discrepancy weight
            done = done | (misfit <= target)
            self.log.append({"lam": lam, "misfit": misfit.tolist(), "target": target})
            if callback is not None:
                callback(step, len(lams), gauss.color(z))
            if bool(done.all()):
                break
        if not bool(done.all()):
            self.log.append({"warning": f"the discrepancy target {target:.4g} was not reached down to lam = "
                                        f"{lams[-1]:g}; returning the last solution"})
        return repeat_measurement(gauss.color(z), num_samples)

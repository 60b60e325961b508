"""Posterior sampling by the reverse-time SDE with a conditional score: the SDE formulation of deepinv's
``PosteriorDiffusion`` (deepinv 0.5.0, ``deepinv/sampling/diffusion_sde.py`` with
``noisy_datafidelity.DPSDataFidelity``), on the SDE family of Karras et al. 2022 ("EDM", Eq. 6).

The reverse SDE of the posterior replaces the prior score by the conditional score (Bayes' rule):

    grad log p_t(x_t | y) = grad log p_t(x_t) + grad log p_t(y | x_t),

and the intractable noisy likelihood is approximated at Tweedie's estimate x0_hat = D(x, sigma) as in
DPS (Chung et al. 2023, Algorithm 1): grad log p_t(y | x) ≈ -w grad_x m(A(D(x, sigma)), y). In the
denoiser convention the conditional score is carried by the conditional denoiser

    D_y(x, sigma) = D(x, sigma) + sigma^2 grad log p(y | x)       (Tweedie, score = (D - x) / sigma^2),

which is handed to the unconditional solver ``diffinv.diffusion.solve_sde`` (Euler-Maruyama or
stochastic Heun, diffusion weight alpha: 0 = probability-flow ODE, 1 = reverse SDE) unchanged. For a
VP SDE the solver calls D_y at ``x / s(t)``, so the likelihood gradient is taken in unscaled coordinates,
exactly deepinv's ``score - grad f(x / s) / s``.

The misfit ``m`` (``guidance``):
  * "norm" (default): ``m = ||y - A(x0_hat)||``, DPS's own choice (not squared), with weight
    ``w = sqrt(d_y) / sigma_y`` unless ``weight`` is given: near the solution ``||y - A x|| ≈ sqrt(d_y)
    sigma_y``, so ``w grad m`` matches the Gaussian log-likelihood gradient ``A^T (A x - y) / sigma_y^2``
    there, while staying bounded far from it (deepinv's weight 1 depends on the data scale and is nearly
    inactive on the Gaussian-mixture benchmark; ``docs/references.md#posterior-sde``);
  * "loss": ``m = operator.loss(A(x0_hat), y)``, the noise model's negative log-likelihood (for Gaussian
    noise ``||y - A x0_hat||^2 / (2 sigma_y^2)``), times ``weight`` (default 1). Exact as sigma -> 0,
    overconfident at large sigma (it ignores the spread of x0 given x_t) and stiff when sigma_y is small.
Cost per solver stage: one denoiser call, one forward call and one gradient (through the denoiser).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..diffusion import Cost, karras_sigmas, make_sde, sde_times, solve_sde
from ..operators.base import Operator
from .base import Sampler, randn, repeat_measurement
from .guidance import dps_gradient


class _ConditionalDenoiser:
    """``D_y(x, sigma) = D(x, sigma) - sigma^2 w grad_x m(A(D(x, sigma)), y)``; counts into ``cost``."""

    def __init__(self, prior, operator: Operator, y: Tensor, guidance: str, weight: float, cost: Cost):
        self.prior, self.operator, self.y, self.guidance, self.weight, self.cost = prior, operator, y, guidance, weight, cost
        self.event_shape = prior.event_shape

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        mode = "norm" if self.guidance == "norm" else "loss"
        grad, x0, _ = dps_gradient(x, sigma, self.y, self.operator, self.prior, self.cost, mode=mode)
        sig2 = sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2
        return x0 - sig2 * self.weight * grad


class PosteriorSDE(Sampler):
    """Hyperparameters: ``sde`` ("edm", "vp", "ve"), ``solver`` ("euler", "heun"), ``alpha`` (diffusion
    weight in [0, 1]), ``num_steps``, ``sigma_min``, ``sigma_max``, ``rho`` (Karras grid, EDM Eq. 5),
    ``guidance`` ("norm" or "loss") and ``weight`` (None = the default of the guidance, see the module
    docstring)."""

    requires = frozenset({"differentiable"})

    def __init__(self, sde: str = "edm", solver: str = "euler", alpha: float = 1.0, num_steps: int = 100,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, guidance: str = "norm",
                 weight: float | None = None):
        super().__init__()
        make_sde(sde)
        if solver not in ("euler", "heun"):
            raise ValueError(f"PosteriorSDE: solver must be 'euler' or 'heun', got {solver!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"PosteriorSDE: alpha must be in [0, 1] (0 = ODE, 1 = reverse SDE), got {alpha}")
        if guidance not in ("norm", "loss"):
            raise ValueError(f"PosteriorSDE: guidance must be 'norm' or 'loss', got {guidance!r}")
        if num_steps < 1:
            raise ValueError(f"PosteriorSDE: num_steps must be >= 1, got {num_steps}")
        self.sde, self.solver, self.alpha, self.num_steps = sde, solver, float(alpha), int(num_steps)
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self.guidance, self.weight = guidance, weight

    def _weight(self, operator: Operator, y: Tensor) -> float:
        if self.weight is not None:
            return float(self.weight)
        if self.guidance == "loss":
            return 1.0
        if operator.sigma <= 0:
            raise ValueError("PosteriorSDE: guidance='norm' with the automatic weight sqrt(d_y) / sigma_y needs a "
                             "noise level sigma_y > 0; pass weight= explicitly for noise-free data.")
        return math.sqrt(y[0].numel()) / operator.sigma

    def _sample(self, y, operator, prior, num_samples, generator, callback) -> Tensor:
        y_rep = repeat_measurement(y, num_samples)
        dtype = y_rep.real.dtype if torch.is_complex(y_rep) else y_rep.dtype
        sde = make_sde(self.sde)
        sigmas = karras_sigmas(self.num_steps, self.sigma_min, self.sigma_max, self.rho)
        ts = sde_times(sde, sigmas).to(dtype)
        cond = _ConditionalDenoiser(prior, operator, y_rep, self.guidance, self._weight(operator, y), self.cost)
        shape = (y_rep.shape[0], *prior.event_shape)
        x = randn(shape, generator, dtype=dtype, device=y.device) * (sde.scale(ts[0]) * sde.sigma(ts[0]))
        cb = None if callback is None else (lambda i, xi: callback(i, len(ts) - 1, xi))
        # cost=None: the conditional denoiser counts its own denoiser, forward and gradient calls
        return solve_sde(cond, x, ts, sde, alpha=self.alpha, method=self.solver, generator=generator, cost=None,
                         callback=cb)

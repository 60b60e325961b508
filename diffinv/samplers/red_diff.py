"""RED-diff: Mardani, Song, Kautz, Vahdat 2024, "A Variational Perspective on Solving Inverse Problems
with Diffusion Models" (ICLR 2024; arXiv 2305.04391; reference code NVlabs/RED-diff, ``algos/reddiff.py``).

The variational posterior ``q(x0 | y) = N(mu, sigma^2 I)`` with sigma -> 0 turns sampling into the
stochastic optimisation of ``mu`` (the paper's variational objective, small-variance limit):

    loss(mu) = -log p(y | mu)  +  lam * w(t) * sg[eps_hat(x_t, t) - eps]^T mu,      x_t = alpha_t mu + sigma_t eps,

the measurement term plus the score-matching regulariser whose gradient, with the network Jacobian
dropped (stop-gradient ``sg``), is ``lam * w(t) * (eps_hat - eps)``. The timestep runs from high noise
to low noise, one fresh ``eps`` per step, and ``mu`` follows Adam. The paper's SNR weighting is
``w(t) = sigma_t / alpha_t = 1 / sqrt(SNR_t)`` ("linear"; the reference's other options are kept).

In diffinv's denoiser convention (``x = x0 + sigma n``, sigma the VP ``sqrt((1 - abar) / abar)``) the
network's epsilon at ``x_t`` is ``(mu + sigma eps - D(mu + sigma eps, sigma)) / sigma``, so
``eps_hat - eps = (mu - D) / sigma`` and the linear-weighted gradient is simply ``lam * (mu - D)``:
regularisation by denoising (RED) with the denoiser's noise level swept down the diffusion schedule.

Scaling: the measurement term here is the noise model's negative log-likelihood ``operator.loss``
(``||y - A mu||^2 / (2 sigma_y^2)`` for Gaussian noise). The reference code instead averages both terms
over their elements and drops sigma_y: ``mean((y - A mu)^2) / 2 + lam w(t) mean(sg[eps_hat - eps] mu)``.
Since Adam is invariant to a global loss scale, that equals this objective with
``lam_here = lam_ref * d_y / (d * sigma_y^2)`` (e.g. lam_ref = 0.25, d_y = d, sigma_y = 0.05: lam = 100).
``reference_scaling=True`` uses the reference's averaged objective itself, so that ``lam`` is the paper's
and the reference's lambda on any problem (and noise-free data work). Several samples are independent
optimisation runs (different eps draws, and different starting points when ``init_std > 0``) batched
together; Adam acts per element, so they do not interact. The result is mu after the last Adam step (the paper's
Algorithm 1); the reference code returns the last ``x0_pred``, i.e. mu before that step.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..diffusion import DiscreteVPSchedule
from .base import Sampler, randn, repeat_measurement
from .guidance import residual_norm

# Denoiser-weight options of the reference code, as functions of 1/sqrt(SNR) = sigma_t / alpha_t.
WEIGHTINGS = {
    "linear": lambda s: s,
    "sqrt": lambda s: math.sqrt(s),
    "square": lambda s: s * s,
    "log": lambda s: math.log(s + 1.0),
    "trunc_linear": lambda s: min(s, 1.0),
    "power2over3": lambda s: s ** (2.0 / 3.0),
    "const": lambda s: 1.0,
}


class REDDiff(Sampler):
    """Hyperparameters: ``num_steps`` (descending timesteps of the 1000-step DDPM linear schedule, one
    denoiser call each), ``lr`` and ``betas`` of Adam (reference: lr 0.1 in its config, 0.25 in the
    paper; betas (0.9, 0.99)), ``lam`` (regulariser weight, see the module docstring for its scale),
    ``weighting`` (see ``WEIGHTINGS``), ``obs_weight`` (weight of the measurement term), ``init``
    ("auto": pseudo-inverse when the operator has an SVD, else zeros; "pinv"; "zeros") plus
    ``init_std`` of Gaussian noise, ``sigma_max`` (skip timesteps whose noise level is above it),
    ``reference_scaling`` (the reference's element-averaged objective, in which ``lam`` is its lambda)."""

    requires = frozenset({"differentiable"})

    def __init__(self, num_steps: int = 1000, lr: float = 0.1, lam: float = 0.25, weighting: str = "linear",
                 obs_weight: float = 1.0, betas: tuple[float, float] = (0.9, 0.99), init: str = "auto",
                 init_std: float = 0.0, sigma_max: float | None = None, schedule: str = "linear",
                 reference_scaling: bool = False):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"REDDiff: unknown weighting {weighting!r}; allowed: {sorted(WEIGHTINGS)}")
        if init not in ("auto", "pinv", "zeros"):
            raise ValueError(f"REDDiff: init must be 'auto', 'pinv' or 'zeros', got {init!r}")
        if not 1 <= num_steps <= 1000 or not lr > 0:
            raise ValueError(f"REDDiff: need 1 <= num_steps <= 1000 and lr > 0, got {num_steps}, {lr}")
        self.num_steps, self.lr, self.lam, self.weighting = int(num_steps), float(lr), float(lam), weighting
        self.obs_weight, self.betas = float(obs_weight), tuple(float(b) for b in betas)
        self.init, self.init_std, self.sigma_max, self.schedule = init, float(init_std), sigma_max, schedule
        self.reference_scaling = bool(reference_scaling)

    def sigmas(self) -> list[float]:
        """Noise levels visited, high to low (the reference's ``reversed(ts)``)."""
        sched = DiscreteVPSchedule(self.schedule)
        sig = sched.sigmas[sched.timesteps(self.num_steps)].tolist()
        if self.sigma_max is not None:
            sig = [s for s in sig if s <= self.sigma_max] or sig[-1:]
        return sig

    def _sample(self, y, operator, prior, num_samples, generator, callback) -> Tensor:
        y_rep = repeat_measurement(y, num_samples)
        shape = (y_rep.shape[0], *prior.event_shape)
        dtype = y_rep.real.dtype if torch.is_complex(y_rep) else y_rep.dtype
        mu0 = torch.zeros(shape, dtype=dtype, device=y.device)
        if self.init == "pinv" or (self.init == "auto" and operator.linear and operator.has_svd):
            mu0 = operator.pinv(y_rep).reshape(shape).to(dtype)      # the reference starts at H^+ y
        if self.init_std > 0:
            mu0 = mu0 + self.init_std * randn(shape, generator, dtype=dtype, device=y.device)
        mu = mu0.clone().requires_grad_(True)
        opt = torch.optim.Adam([mu], lr=self.lr, betas=self.betas, weight_decay=0.0)
        sigmas = self.sigmas()
        for i, sigma in enumerate(sigmas):
            eps = randn(shape, generator, dtype=dtype, device=y.device)
            with torch.no_grad():
                x_t = mu + sigma * eps                                   # x_t / alpha_t = mu + (sigma_t/alpha_t) eps
                d = prior.denoise(x_t, sigma)
            self.cost.nfe += 1
            eps_diff = ((x_t - d) / sigma - eps).detach()                # sg[eps_hat(x_t, t) - eps]
            w_t = self.lam * WEIGHTINGS[self.weighting](sigma)           # lambda * w(t), the SNR weighting
            with torch.enable_grad():
                y_hat = operator(mu)
                loss_reg = (eps_diff * mu).reshape(shape[0], -1).sum(1)  # sg[eps_hat - eps]^T mu
                if self.reference_scaling:                               # element means, as the reference code
                    d_y = y_hat[0].numel() * (2 if y_hat.is_complex() else 1)
                    loss_obs = residual_norm(operator, y_hat, y_rep) ** 2 / (2 * d_y)
                    loss_reg = loss_reg / mu[0].numel()
                else:
                    loss_obs = operator.loss(y_hat, y_rep)               # -log p(y | mu)
                loss = (self.obs_weight * loss_obs + w_t * loss_reg).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
            self.cost.forward_calls += 1
            self.cost.grad_calls += 1
            opt.step()
            if callback is not None:
                callback(i, len(sigmas), mu.detach())
        return mu.detach()

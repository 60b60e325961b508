"""TDS: the twisted diffusion sampler.

Wu, Trippe, Naesseth, Blei, Cunningham, "Practical and asymptotically exact conditional sampling in diffusion
models" (NeurIPS 2023, arXiv:2306.17775); reference code blt2114/twisted_diffusion_sampler
(``image_exp/image_diffusion/feynman_kac_image_ddpm.py``).

TDS is an SMC sampler whose intermediate targets are the diffusion marginals "twisted" by an approximation of the
likelihood at each level, ``pi_t(x_t) ∝ p_t(x_t) p~_t(y | x_t)``, with the twisting function (TDS Eq. 8; Tweedie's
point estimate in the likelihood, with the variance inflation of the reference's image code,
``pred_xstart_var_type`` 2 / 6, which is PiGDM's r_t^2):

    p~_t(y | x_t) = N(y; A(x0_hat(x_t)), sigma_y^2 I + r_t^2 A A^T),   r_t^2 = v sigma_t^2 / (v + sigma_t^2),

``x0_hat = D(x_t, sigma_t)`` (``prior.denoise``, VE coordinates ``x_t = x0 + sigma_t n``), ``v = data_variance``
(``data_variance=0`` gives the paper's plain ``p(y | x0_hat)``): the Gaussian approximation ``p(x0 | x_t) ~
N(x0_hat, r_t^2 I)`` of PiGDM pushed through A. With an SVD the covariance is applied in the basis U; other
operators use the scalar ``(sigma_y^2 + r_t^2) I`` (the same for unit singular values, e.g. inpainting, the
reference's image task). Non-Gaussian noise models use ``exp(-operator.loss(A(x0_hat), y))`` without inflation.
The proposal is the ancestral (DDPM) kernel with the twisting gradient added through the conditional Tweedie
estimate, as the reference's ``_compute_twisted_step_helper``: ``x0_tw = x0_hat + sigma^2 grad_x log p~_t(y | x)`` and

    q(x' | x, y) = N(x0_tw + (sigma'^2 / sigma^2)(x - x0_tw), v_t I),    v_t = sigma'^2 (sigma^2 - sigma'^2) / sigma^2,

the gradient taken through the denoiser (one backward pass per step). The weight of a move (TDS Eq. 10) is

    w = p(x' | x) p~_{t'}(y | x') / (p~_t(y | x) q(x' | x, y)),

``p(x' | x)`` the untwisted kernel (same variance, mean from x0_hat). The first weight is ``p~_{t_0}(y | x_{t_0})``
(the particles start from the VP reference law, ``N(0, (1 + sigma_0^2) I)`` in VE coordinates). The chain stops at
the lowest level of the grid, ``sigma_{n-1}`` (about 0.01 on the DDPM schedule) and returns ``x0_hat`` there, with
the final weight ``p(y | x0_hat) / p~_{t_{n-1}}(y | x)`` (the reference's last step for class-conditional
generation: the mean prediction, weighted by the exact likelihood over the last twist); with sigma_y = 0 there is
no exact likelihood and the last twist is the final target. Resampling: systematic, when the ESS falls below
``threshold * N`` (``smc.py``), before each move, and once at the end into N equally weighted draws.

Each step evaluates the denoiser, the forward model and a vector-Jacobian product at the new particles (for their
twist, their gradient and, at the next step, their kernel): ``num_steps`` denoiser calls (``cost.nfe``), as many
forward calls and gradients; ``num_steps - 1`` moves, the last step being the landing on x0_hat. ``ess`` and
``resampled`` (``smc.py``) have one row per move (the weights at the resampling decision before it), ``final_ess``
the final weights.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..operators.noise import GaussianNoise
from .base import real_dtype, repeat_measurement
from .smc import _SMCSampler


class TDS(_SMCSampler):
    """Twisted diffusion sampler (needs a differentiable operator).

    Args:
        num_steps: levels on a uniform sub-sequence of the VP schedule (one denoiser call and one gradient each).
        threshold: resample (systematically) a measurement's particles when their ESS < threshold * N.
        particles_per_draw: None: the num_samples draws are the particles of one system; K: each draw comes from its
            own system of K particles (independent draws, num_samples * K particles; ``smc.py``).
        data_variance: v of the twist's inflation r_t^2 = v sigma_t^2 / (v + sigma_t^2) (0: no inflation).
        schedule, train_steps: the discrete VP schedule giving the sigma levels (DDPM linear, 1000).
    """

    requires = frozenset({"differentiable"})
    min_steps, final_levels = 2, ()          # the chain ends at the lowest level, landing on x0_hat there

    def __init__(self, num_steps: int = 100, threshold: float = 0.5, data_variance: float = 1.0,
                 schedule: str = "linear", train_steps: int = 1000, particles_per_draw: int | None = None):
        super().__init__(num_steps, threshold, particles_per_draw, schedule, train_steps)
        if data_variance < 0:
            raise ValueError(f"TDS: data_variance must be >= 0, got {data_variance}")
        self.data_variance = data_variance

    def _gaussian(self, operator) -> bool:
        return isinstance(operator.noise, GaussianNoise)

    def log_twist(self, y_hat: Tensor, y: Tensor, operator, sigma: float | None) -> Tensor:
        """``log p~(y | x)`` per particle, up to a per-measurement constant; ``sigma=None``: the exact likelihood."""
        if not self._gaussian(operator):
            return -operator.loss(y_hat, y)
        v = self.data_variance
        r2 = 0.0 if sigma is None or v == 0 else v * sigma**2 / (v + sigma**2)
        sy2 = operator.sigma**2
        if operator.has_svd and r2 > 0:                       # sigma_y^2 I + r^2 A A^T, diagonal in the basis U
            u = operator.Ut(y - y_hat)
            s = operator.singulars().to(u.dtype)
            if s.shape[0] not in (1, u.shape[0]):
                s = repeat_measurement(s, u.shape[0] // s.shape[0])
            var = sy2 + r2 * s**2
            keep = var > 0                                    # sigma_y = 0: components off the range are constant
            return -torch.where(keep, u.abs() ** 2 / (2 * torch.where(keep, var, 1)), 0).sum(1)
        return -((y - y_hat).abs() ** 2).reshape(y.shape[0], -1).sum(1) / (2 * (sy2 + r2))

    def _evaluate(self, x: Tensor, sigma: float, y: Tensor, operator, prior) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """At particles x of level sigma: ``(x0_hat, A(x0_hat), log twist, its gradient)``: one batched denoiser
        call, one forward call, one backward pass (NaN on a rank whose work failed, ``particles.guard``)."""
        shapes = (tuple(x.shape), tuple(y.shape), (x.shape[0],), tuple(x.shape))
        return self._particles.guard(lambda: self._evaluate_here(x, sigma, y, operator, prior), *shapes, like=x)

    def _evaluate_here(self, x: Tensor, sigma: float, y: Tensor, operator, prior):
        with torch.enable_grad():
            xv = x.detach().requires_grad_(True)
            x0 = prior.denoise(xv, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device))
            y_hat = operator(x0)
            lt = self.log_twist(y_hat, y, operator, sigma)
            (g,) = torch.autograd.grad(lt.sum(), xv)
        self.cost.nfe += 1
        self.cost.forward_calls += 1
        self.cost.grad_calls += 1
        return x0.detach(), y_hat.detach(), lt.detach(), g

    def _smc(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        if self._gaussian(operator) and operator.sigma == 0 and self.data_variance == 0:
            raise ValueError("TDS: noise-free data needs data_variance > 0 (the twist N(y; A x0_hat, sigma_y^2 + "
                             "r_t^2) is degenerate with sigma_y = 0 and r_t = 0)")
        dtype = real_dtype(y)
        b, n = y.shape[0], num_samples
        sig = self.sigmas()
        y_rep = repeat_measurement(y, n)
        x = (1 + sig[0] ** 2) ** 0.5 * self._randn((n * b, *operator.input_shape), generator, like=y, dtype=dtype)
        x0, y_hat, lt, g = self._evaluate(x, sig[0], y_rep, operator, prior)
        log_w = lt.double().view(n, b)                                       # the first weight: the first twist
        for i in range(self.num_steps - 1):
            s, s1 = sig[i], sig[i + 1]
            log_w, (x, x0, lt, g) = self._reweight(log_w, generator, x, x0, lt, g)
            a, v = s1**2 / s**2, s1**2 * (s**2 - s1**2) / s**2
            x0_tw = x0 + s**2 * g                                            # conditional Tweedie estimate
            mean_tw = x0_tw + a * (x - x0_tw)
            mean_un = x0 + a * (x - x0)
            z = self._randn(x.shape, generator, like=x)
            x_new = mean_tw + v**0.5 * z
            # log p(x' | x) - log q(x' | x, y) (same variance: the normalising constants cancel)
            log_ratio = (z.pow(2) / 2 - (x_new - mean_un).pow(2) / (2 * v)).reshape(x.shape[0], -1).sum(1)
            x = x_new
            x0, y_hat, lt_new, g = self._evaluate(x, s1, y_rep, operator, prior)
            log_w = log_w + (log_ratio + lt_new - lt).double().view(n, b)
            lt = lt_new
            if callback is not None:
                callback(i, self.num_steps, x)
        if not (self._gaussian(operator) and operator.sigma == 0):           # the exact likelihood over the last twist
            log_w = log_w + (self.log_twist(y_hat, y_rep, operator, None) - lt).double().view(n, b)
        if callback is not None:
            callback(self.num_steps - 1, self.num_steps, x0)
        return self._finish(log_w, x0, generator)

"""PiGDM: pseudoinverse-guided diffusion models.

Song, Vahdat, Mardani, Kautz, "Pseudoinverse-guided diffusion models for inverse problems" (ICLR 2023).

PiGDM approximates ``p(x0 | x_t)`` by ``N(x0_hat, r_t^2 I)`` (x0_hat = D(x_t, sigma_t), Tweedie), so that for a
linear ``y = H x0 + sigma_y n`` the measurement score is (PiGDM Eqs. 7-8)

    grad_{x_t} log p_t(y | x_t) ~= ((y - H x0_hat)^T (r_t^2 H H^T + sigma_y^2 I)^{-1} H  d x0_hat / d x_t)^T,

a vector-Jacobian product through the denoiser. ``r_t^2 = sigma_t^2 / (1 + sigma_t^2)`` is the paper's choice
(exact when the data are N(0, I)); ``data_variance = v`` generalises it to data N(0, v I):
``r_t^2 = v sigma_t^2 / (v + sigma_t^2)`` (v = 1 for images in [-1, 1]; the Gaussian-mixture benchmark has v ~ 130).

The guidance enters through the conditional form of Tweedie's identity, in the denoiser's coordinates
``x = x_t / sqrt(abar_t)``: ``E[x0 | x, y] = x + sigma_t^2 grad_x log p(x | y) = x0_hat + sigma_t^2 grad_x log p(y | x)``.
With the measurement score of Eqs. 7-8 the guided estimate ``x0_y = x0_hat + scale * sigma_t^2 * g`` replaces
x0_hat in a DDIM step (Song et al. 2021, Eq. 12, with eta; PiGDM Algorithm 1 uses DDIM, 100 steps), and the step's
epsilon is the one implied by x0_y. This is ``guidance="exact"``: for data N(0, v I) the Gaussian approximation is
exact, and so are the samples (tested against the closed-form posterior).

The reference implementation (NVlabs/RED-diff ``algos/pgdm.py`` with its published settings: ``awd=True``,
eta 1, 100 steps) instead adds the guidance outside the DDIM step, with the coefficient of its "adaptive weights":

    x_{t-1} = DDIM(x_t, x0_hat) + scale * sqrt(abar_{t-1}) sqrt(abar_t) grad_{x_t}[(H^+ y - H^+ H x0_hat)^T x0_hat],

the noise-free pseudo-inverse form (``r_t^2 u`` here, which for sigma_y = 0 is ``H^+ (y - H x0_hat)``; for noisy
data the same expression with ``u`` above). ``guidance="reference"`` runs that update. In the denoiser's coordinates
it adds ``sqrt(abar_{t-1}) r_t^2 g`` where the exact form adds ``c sigma_t^2 g`` (c the DDIM coefficient of x0_hat);
with v = 1, r_t^2 = abar_t sigma_t^2, so at high noise the reference's guidance is weaker by about abar_t
(2.5e-5 at t = 999, 0.9 at t = 100).

Sampling starts from x_T ~ N(0, I) (the reference starts from ``sqrt(abar_T) H^+ y + sqrt(1 - abar_T) n``, which
at abar_T = 4e-5 differs by 0.6 % of y's back-projection).

The inverse ``(r^2 H H^T + sigma_y^2 I)^{-1}`` is applied in the SVD basis when the operator has one,
``H^T (r^2 H H^T + sigma_y^2)^{-1} v = V [s / (r^2 s^2 + sigma_y^2)] U^T v``, and by conjugate gradients in
measurement space (``H H^T`` through ``forward(adjoint(.))``) for other linear operators. Hence ``requires``
is ``{"linear"}``: the operator itself is never differentiated; the gradient goes through the denoiser only.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion import DiscreteVPSchedule, ddim_step
from ..operators.base import conjugate_gradient
from .base import Sampler, randn, real_dtype, repeat_measurement


class PiGDM(Sampler):
    """Pseudoinverse-guided diffusion (needs a linear operator; SVD used when available).

    Args:
        num_steps: DDIM steps on a uniform sub-sequence of the VP schedule (100 in the paper).
        eta: DDIM stochasticity (1.0 in the paper's experiments).
        scale: guidance weight (1.0 = the score approximation as derived).
        data_variance: v in r_t^2 = v sigma_t^2 / (v + sigma_t^2) (1.0 = the paper).
        guidance: "exact" (the conditional Tweedie form of Eqs. 7-8) or "reference" (the reference code's update
            with its adaptive weights; see the module docstring).
        cg_tol, cg_max_iter: conjugate gradients for linear operators without an SVD.
        schedule, train_steps: the discrete VP schedule of the prior (DDPM linear, 1000).
    """

    requires = frozenset({"linear"})

    def __init__(self, num_steps: int = 100, eta: float = 1.0, scale: float = 1.0, data_variance: float = 1.0,
                 guidance: str = "exact", cg_tol: float = 1e-6, cg_max_iter: int = 100, schedule: str = "linear",
                 train_steps: int = 1000):
        super().__init__()
        if guidance not in ("exact", "reference"):
            raise ValueError(f"PiGDM: guidance must be 'exact' or 'reference', got {guidance!r}")
        if not 0 <= eta <= 1:
            raise ValueError(f"PiGDM: eta must be in [0, 1], got {eta}")
        if scale < 0 or data_variance <= 0:
            raise ValueError(f"PiGDM: need scale >= 0 and data_variance > 0, got {scale}, {data_variance}")
        if not 1 <= num_steps <= train_steps:
            raise ValueError(f"PiGDM: num_steps must be in [1, train_steps={train_steps}], got {num_steps}")
        self.num_steps, self.eta, self.scale, self.data_variance = num_steps, eta, scale, data_variance
        self.guidance = guidance
        self.cg_tol, self.cg_max_iter = cg_tol, cg_max_iter
        self.schedule = DiscreteVPSchedule(schedule, train_steps)

    def weighted_residual(self, r: Tensor, operator, r2: Tensor) -> Tensor:
        """H^T (r2 H H^T + sigma_y^2 I)^{-1} r (PiGDM Eq. 8), in the input space."""
        sy2 = operator.sigma**2
        if operator.has_svd:
            s = operator.singulars().to(r.dtype)
            if s.shape[0] not in (1, r.shape[0]):
                s = repeat_measurement(s, r.shape[0] // s.shape[0])
            den = r2 * s**2 + sy2
            w = torch.where(s > 0, s / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(s))
            return operator.V(w * operator.Ut(r))

        def gram(v: Tensor) -> Tensor:
            self.cost.forward_calls += 2                       # H^T then H
            return r2 * operator(operator.adjoint(v)) + sy2 * v
        u = conjugate_gradient(gram, r, tol=self.cg_tol, max_iter=self.cg_max_iter)
        self.cost.forward_calls += 1
        return operator.adjoint(u)

    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        dtype = real_dtype(y)
        y_rep = repeat_measurement(y, num_samples)
        ts = self.schedule.timesteps(self.num_steps).tolist()
        abar = self.schedule.alphas_cumprod.to(device=y.device, dtype=dtype)
        v = self.data_variance
        x = randn((y_rep.shape[0], *operator.input_shape), generator, like=y, dtype=dtype)   # x_T ~ N(0, I)
        for i, t in enumerate(ts):
            a_t = abar[t]
            sigma = ((1 - a_t) / a_t).sqrt()
            with torch.enable_grad():
                xv = (x / a_t.sqrt()).detach().requires_grad_(True)
                x0 = prior.denoise(xv, sigma.expand(x.shape[0]))               # Tweedie x0_hat
                self.cost.nfe += 1
                with torch.no_grad():
                    r = y_rep - operator(x0)                                   # y - H x0_hat
                    self.cost.forward_calls += 1
                    r2 = v * sigma**2 / (v + sigma**2)                         # r_t^2
                    u = self.weighted_residual(r, operator, r2)                # H^T (r^2 HH^T + sy^2)^-1 r
                (g,) = torch.autograd.grad(x0, xv, grad_outputs=u)             # Eq. 8: u^T d x0_hat / d x_t
                self.cost.grad_calls += 1
            a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones_like(a_t)   # the last step lands on x0
            noise = randn(x.shape, generator, like=x)
            if self.guidance == "exact":
                x0y = (x0 + self.scale * sigma**2 * g).detach()               # E[x0 | x_t, y] = x0_hat + sigma^2 g
                x = ddim_step(x, x0y, a_t, a_prev, self.eta, noise)
            else:                                                             # reference: added outside the step
                x = ddim_step(x, x0.detach(), a_t, a_prev, self.eta, noise) + self.scale * a_prev.sqrt() * r2 * g
            if callback is not None:
                callback(i, len(ts), x)
        return x

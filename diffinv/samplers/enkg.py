"""EnKG: ensemble Kalman diffusion guidance, a derivative-free posterior sampler.

Zheng, Tang, Chen, Yue, Azizzadenesheli, Anandkumar, Stuart, Bouman, Yue, "Ensemble Kalman diffusion guidance:
a derivative-free method for inverse problems" (2024, arXiv:2409.20175); reference code devzhk/enkg-pytorch,
``algo/enkg.py`` (facts in REFERENCES.md).

An ensemble of ``num_samples`` particles per measurement follows the probability-flow ODE of EDM (Karras et al.
2022, Algorithm 1 without the Heun correction) on the Karras grid (EDM Eq. 5). Inside the guidance window each
step first moves the particles ``num_updates`` times along the ensemble-preconditioned gradient of the
measurement loss (EnKG Algorithm 1; the statistical linearisation of Sec. 3):

    x0_n  = ODE_{sigma_i -> 0}(x_n)                       (K Euler steps on a Karras sub-grid)
    yh_n  = A(x0_n)                                       (forward model only, no derivatives)
    e_n   = d loss(yh_n, y) / d yh_n                       (gradient w.r.t. the predicted measurement only)
    C_nm  = <e_n, yh_m - mean(yh)> / N                     (N x N per measurement)
    x_n  <- x_n - lr / ||C||_F * sum_m C_nm (x_m - mean(x))

which approximates the preconditioned gradient ``Cov(x, yh) grad_yh loss`` without ever differentiating the
forward model or the denoiser. The operator is called only on ``torch.no_grad()`` inputs, so black-box
simulators (Navier-Stokes solvers, ehtim) work.

Particles of measurement ``b`` interact only with each other: the ensemble of a batch of B measurements is a
``[N, B, ...]`` tensor and every ensemble statistic is taken over its first axis. Returned samples are the
particles, sample-major: particle ``n`` of measurement ``b`` is ``out[n * B + b]``.

Differences from the reference code, on purpose:
* the learning rate follows the reference's convention, ``lr_min_ratio = 0`` meaning a constant step (its
  Navier-Stokes config) and ``r > 0`` a linear decay ``lr_i = guidance_scale ((1 - r) (N - i) / N + r)`` (black
  hole: r = 1e-3); the reference adds r unscaled (``scale (1 - r) (N - i) / N + r``, so its class default r = 1
  gives lr = 1 whatever the scale); here r is a fraction of the scale;
* ``e`` is the gradient of the operator's own noise model (``operator.loss``) with respect to ``yh`` (for
  Gaussian noise ``(yh - y) / sigma^2``); its overall scale cancels in ``lr / ||C||_F``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion import EDMSDE, karras_sigmas, solve_sde
from .base import Sampler, randn, real_dtype, repeat_measurement


def _as_real(t: Tensor) -> Tensor:
    """Real view (complex measurements become pairs), so inner products are the real inner product."""
    return torch.view_as_real(t) if t.is_complex() else t


class EnKG(Sampler):
    """Ensemble Kalman diffusion guidance (derivative-free; ``requires`` nothing of the operator).

    Args:
        num_steps: Karras steps of the outer PF-ODE (reference 80).
        sigma_min, sigma_max, rho: the Karras grid (EDM Eq. 5), 0.002 / 80 / 7.
        guidance_scale: the step ``lr`` of the Kalman update (Navier-Stokes 2.0, black hole 3.5).
        num_updates: Kalman updates per guided step (Navier-Stokes 2, black hole 1).
        start, end: guidance runs on steps ``i`` with ``start * N < i < N - int(end * N)``.
        lr_min_ratio: 0 = constant step (reference Navier-Stokes); r > 0 = linear decay of the step from
            ``guidance_scale`` towards ``r * guidance_scale`` over the steps (reference black hole: 1e-3).
        max_ode_steps, ode_steps_divisor: the x0 prediction uses ``K = min(1 + (N - i) // divisor, max)`` Euler
            steps (reference 20 and 4; InverseBench's copy uses 8).
        batch_size: particles per denoiser call in the x0 prediction (``None``: all at once). Each chunk is one
            network evaluation in ``cost.nfe``.
    """

    requires = frozenset()

    def __init__(self, num_steps: int = 80, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 guidance_scale: float = 2.0, num_updates: int = 2, start: float = 0.05, end: float = 0.05,
                 lr_min_ratio: float = 0.0, max_ode_steps: int = 20, ode_steps_divisor: int = 4,
                 batch_size: int | None = 64):
        super().__init__()
        if num_steps < 2:
            raise ValueError(f"EnKG: num_steps must be >= 2, got {num_steps}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"EnKG: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if guidance_scale < 0 or num_updates < 0:
            raise ValueError(f"EnKG: guidance_scale and num_updates must be >= 0, got {guidance_scale}, {num_updates}")
        if not (0 <= start <= 1 and 0 <= end <= 1):
            raise ValueError(f"EnKG: start and end are fractions of the steps in [0, 1], got {start}, {end}")
        if not 0 <= lr_min_ratio <= 1:
            raise ValueError(f"EnKG: lr_min_ratio must be in [0, 1] (0 = constant step), got {lr_min_ratio}")
        if max_ode_steps < 1 or ode_steps_divisor < 1:
            raise ValueError(f"EnKG: max_ode_steps and ode_steps_divisor must be >= 1, got {max_ode_steps}, "
                             f"{ode_steps_divisor}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"EnKG: batch_size must be >= 1 or None (all particles at once), got {batch_size}")
        self.num_steps, self.sigma_min, self.sigma_max, self.rho = num_steps, sigma_min, sigma_max, rho
        self.guidance_scale, self.num_updates = guidance_scale, num_updates
        self.start, self.end, self.lr_min_ratio = start, end, lr_min_ratio
        self.max_ode_steps, self.ode_steps_divisor, self.batch_size = max_ode_steps, ode_steps_divisor, batch_size

    # ------------------------------------------------------------------ schedule pieces
    def guided(self, i: int) -> bool:
        n = self.num_steps
        return self.start * n < i < n - int(self.end * n)

    def lr(self, i: int) -> float:
        r, n = self.lr_min_ratio, self.num_steps
        if r == 0:
            return self.guidance_scale
        return self.guidance_scale * ((1 - r) * (n - i) / n + r)

    def ode_steps(self, i: int) -> int:
        return min(1 + (self.num_steps - i) // self.ode_steps_divisor, self.max_ode_steps)

    # ------------------------------------------------------------------ denoiser calls
    def _chunks(self, x: Tensor):
        size = x.shape[0] if self.batch_size is None else self.batch_size
        return x.split(size)

    def _denoise(self, prior, x: Tensor, sigma: Tensor) -> Tensor:
        out = []
        for chunk in self._chunks(x):
            self.cost.nfe += 1
            out.append(prior.denoise(chunk, sigma.expand(chunk.shape[0])))
        return torch.cat(out)

    def _predict_x0(self, prior, x: Tensor, sigma: Tensor, num_ode: int) -> Tensor:
        """Deterministic x0 of every particle: Euler PF-ODE from ``sigma`` to ``sigma_min`` on a Karras sub-grid
        of ``num_ode`` points, then a last step to 0 (= one denoiser call); ``num_ode = 1`` is Tweedie's D(x, sigma)."""
        s = float(sigma)
        if num_ode == 1 or s <= self.sigma_min:
            sub = torch.tensor([s, 0.0], dtype=torch.float64)
        else:
            sub = karras_sigmas(num_ode, self.sigma_min, s, self.rho)
        return torch.cat([solve_sde(prior, chunk, sub, EDMSDE(), alpha=0.0, method="euler", cost=self.cost)
                          for chunk in self._chunks(x)])

    # ------------------------------------------------------------------ the Kalman update
    def _loss_grad(self, operator, y_hat: Tensor, y: Tensor) -> Tensor:
        """e = d loss / d yh: autograd on the noise model's misfit of the *measurement* only (never the operator)."""
        with torch.enable_grad():
            yh = y_hat.detach().requires_grad_(True)
            (e,) = torch.autograd.grad(operator.loss(yh, y).sum(), yh)
        return e

    def _update(self, x: Tensor, y: Tensor, operator, prior, sigma: Tensor, num_ode: int, lr: float,
                n: int, b: int) -> Tensor:
        x0 = self._predict_x0(prior, x, sigma, num_ode)                       # Alg. 1: x0 prediction per particle
        y_hat = operator(x0)                                                  # one batched forward-model call
        self.cost.forward_calls += 1
        e = _as_real(self._loss_grad(operator, y_hat, y)).reshape(n, b, -1)   # [N, B, m]
        yd = _as_real(y_hat).reshape(n, b, -1)
        yd = yd - yd.mean(0, keepdim=True)                                    # yh_m - mean(yh)
        xs = x.reshape(n, b, -1)
        xd = xs - xs.mean(0, keepdim=True)                                    # x_m - mean(x)
        coef = torch.einsum("nbk,mbk->bnm", e, yd) / n                        # C = e (yh - mean yh)^T / N   [B, N, N]
        dx = torch.einsum("bnm,mbd->nbd", coef, xd)                           # C (x - mean x)
        norm = torch.linalg.matrix_norm(coef).clamp_min(torch.finfo(coef.dtype).tiny)   # ||C||_F per measurement
        return (xs - (lr / norm).view(1, b, 1) * dx).reshape(x.shape)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        n, b = num_samples, y.shape[0]
        dtype = real_dtype(y)
        y_rep = repeat_measurement(y, n)
        sigmas = karras_sigmas(self.num_steps, self.sigma_min, self.sigma_max, self.rho).to(y.device, dtype)
        x = randn((n * b, *operator.input_shape), generator, like=y, dtype=dtype) * sigmas[0]   # N(0, sigma_max^2 I)
        for i in range(self.num_steps):
            s, s_next = sigmas[i], sigmas[i + 1]
            if self.guided(i):
                for _ in range(self.num_updates):
                    x = self._update(x, y_rep, operator, prior, s, self.ode_steps(i), self.lr(i), n, b)
            d = self._denoise(prior, x, s)
            x = x + (s_next - s) * (x - d) / s                                # EDM Alg. 1 (Euler, no Heun correction)
            if callback is not None:
                callback(i, self.num_steps, x)
        return x

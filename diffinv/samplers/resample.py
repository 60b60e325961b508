"""ReSample: solving inverse problems with latent diffusion models via hard data consistency.

Song, Kwon, Zhang, Hu, Qu, Shen, ICLR 2024 (arXiv:2307.08123); reference code soominkwon/resample
(``ldm/models/diffusion/ddim.py``, ``resample_sampling``). Algorithm 1 of the paper, in the latent space of a
:class:`~diffinv.priors.latent.LatentPrior`, on DDIM's uniform sub-grid (500 of 1000 steps, eta 0 by default):

1. every step: an unconditional DDIM step (Song et al. 2021, Eq. 12) from Tweedie's ``z0_hat(z_t)``, then a
   latent-DPS step ``z'_{t-1} -= 0.5 abar_t grad_{z_t} ||y - A(D(z0_hat))||`` (norm, not squared);
2. hard data consistency on the steps whose index (position of ``t`` in the ascending grid) is a positive
   multiple of ``consistency_every`` and at most ``N - N // num_splits`` (the "index split": the final two
   thirds of the trajectory; 330, 320, ..., 10 for N = 500):

   a. "time travel": from ``z'_{t-1}`` run ``time_travel_steps`` unconditional DDIM evaluations ahead and take
      the clean estimate of the last one as ``z0_hat``;
   b. ``index >= N // num_splits``: **pixel-space** optimisation ``min_x ||y - A(x)||^2`` started at
      ``D(z0_hat)`` (AdamW, lr 1e-2, stop when the MSE < 1e-6 or after 2000 iterations), then
      ``z0(y) = E(x)``; otherwise **latent-space** optimisation ``min_z ||y - A(D(z))||^2`` started at
      ``z0_hat`` (AdamW, lr 5e-3, stop when the MSE < 1e-6, after 500 iterations, or once ``patience``
      (200) iterations have passed and the loss ``patience`` iterations ago is lower than now);
   c. stochastic resampling (paper Eq. 9 / Proposition): with ``s = gamma (1 - abar_{t-1}) / (1 - abar_t)
      (1 - abar_t / abar_{t-1})`` (gamma = 40),

          z_{t-1} ~ N( (s sqrt(abar_{t-1}) z0(y) + (1 - abar_{t-1}) z'_{t-1}) / (s + 1 - abar_{t-1}),
                       s (1 - abar_{t-1}) / (s + 1 - abar_{t-1}) I ),

      the posterior of ``z_{t-1}`` under the forward-process prior ``N(sqrt(abar_{t-1}) z0(y), (1 - abar_{t-1}) I)``
      with ``z'_{t-1}`` observed with variance ``s``. (Read as a product of Gaussians this is
      ``N(sqrt(abar) z0(y), 1 - abar) x N(z', s)``; a product with the two variances exchanged would weight the
      two means the other way round. The paper and the code agree on the form above.)
3. a final latent-space optimisation of the last iterate, then decoding.

**Samples are returned decoded** (pixel space, ``[num_samples * B, C, H, W]``).

Where the reference code differs from the paper and what diffinv does (defaults follow the paper unless said):

* x0 estimate: the code's ``pseudo_x0 = (z - (1 - abar) eps) / sqrt(abar)`` (used both for the DPS gradient and
  for the optimisation start) is not Tweedie's ``(z - sqrt(1 - abar) eps) / sqrt(abar)`` it is commented as;
  default ``x0_estimate="tweedie"`` (paper), ``"reference"`` reproduces the code.
* Time travel: the code evaluates the UNet at the next timestep but takes ``abar`` of the current one in each of
  its look-ahead DDIM steps (an index off by one); diffinv uses each grid point's own ``abar``. The paper's
  Algorithm 1 does not describe the look-ahead at all (its optimisation starts from ``z0_hat(z_{t+1})``):
  ``time_travel_steps=1`` gives that (one evaluation at ``z'_{t-1}``).
* Final step: the code's last DDIM step lands on ``abar_0 = 0.9985`` (keeping ``sqrt(0.0015) eps`` in the
  latent) before the final optimisation; diffinv lands on the clean estimate (``abar = 1``).
* Optimisers: AdamW with PyTorch's default weight decay 0.01 as in the code (``weight_decay`` configurable),
  on the mean squared residual. The code stops when the *batch* loss meets the rule; diffinv applies the rules
  per sample (a sample that has converged is frozen while the others go on).
* Batches: the code's DPS norm ``||y - A(D(z0_hat))||`` and its MSE losses are taken over the whole batch (it
  runs one image at a time); diffinv uses per-sample norms and losses, so samples never interact.
* gamma = 40 is the code's value; the code notes it is task dependent, the paper treats sigma_t^2 as a
  hyperparameter.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..diffusion import Cost, ddim_step
from .base import Sampler, randn, real_dtype, repeat_measurement
from .latent_dps import (PhaseTimer, check_latent_operator, ddim_grid, latent_dps_gradient, latent_x0, prior_schedule,
                         reference_x0)


# ------------------------------------------------------------------------------------------ hard data consistency
def _mse(operator, x: Tensor, y: Tensor) -> Tensor:
    """Per-sample mean squared residual ``mean |y - A(x)|^2`` (the code's ``MSELoss``, per sample)."""
    return (y - operator(x)).abs().pow(2).reshape(y.shape[0], -1).mean(1)


def _optimise(var: Tensor, loss_fn: Callable[[Tensor], Tensor], lr: float, max_iters: int, tol: float,
              patience: int | None, weight_decay: float, cost: Cost | None) -> tuple[Tensor, dict]:
    """AdamW on ``var`` (per-sample losses ``[B]``), with the ReSample stopping rules applied per sample:
    stop when ``loss < tol``; with ``patience``, also once ``patience`` iterations have passed and the loss
    ``patience`` iterations earlier was lower than the current one. Finished samples are frozen."""
    var = var.detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([var], lr=lr, weight_decay=weight_decay)
    b = var.shape[0]
    done = torch.zeros(b, dtype=torch.bool, device=var.device)
    frozen = var.detach().clone()
    iters = torch.zeros(b, dtype=torch.long, device=var.device)
    history: list[Tensor] = []
    first = last = torch.full((b,), float("nan"), device=var.device)
    with torch.enable_grad():
        for it in range(max_iters):
            loss = loss_fn(var)
            (grad,) = torch.autograd.grad(loss.sum(), var)
            if cost is not None:
                cost.forward_calls += 1
                cost.grad_calls += 1
            cur = loss.detach()
            if it == 0:
                first = cur.clone()
            active = ~done
            last = torch.where(active, cur, last)
            var.grad = grad * active.view(-1, *([1] * (var.dim() - 1))).to(grad.dtype)
            opt.step()
            opt.zero_grad(set_to_none=True)
            iters += active.long()
            with torch.no_grad():                       # keep finished samples exactly where they stopped
                var[done] = frozen[done]
            # the stopping rules of the reference loop, on this iteration's loss
            stop = cur < tol
            history.append(cur)
            if patience is not None and it >= patience:
                stop |= history[0] < cur
                history.pop(0)
            newly = stop & ~done
            if bool(newly.any()):
                with torch.no_grad():
                    frozen[newly] = var[newly]
                done |= newly
            if bool(done.all()):
                break
    info = {"iterations": iters, "initial_loss": first, "final_loss": last}
    return var.detach(), info


def pixel_optimization(x_init: Tensor, y: Tensor, operator, lr: float = 1e-2, max_iters: int = 2000,
                       tol: float = 1e-6, weight_decay: float = 0.01, cost: Cost | None = None) -> tuple[Tensor, dict]:
    """``argmin_x ||y - A(x)||^2`` from ``x_init`` (ReSample, Sec. 3.2, pixel-space hard data consistency)."""
    return _optimise(x_init, lambda x: _mse(operator, x, y), lr, max_iters, tol, None, weight_decay, cost)


def latent_optimization(z_init: Tensor, y: Tensor, operator, decode: Callable[[Tensor], Tensor], lr: float = 5e-3,
                        max_iters: int = 500, tol: float = 1e-6, patience: int | None = 200, weight_decay: float = 0.01,
                        cost: Cost | None = None) -> tuple[Tensor, dict]:
    """``argmin_z ||y - A(D(z))||^2`` from ``z_init`` (ReSample, Eq. 8, latent-space hard data consistency)."""
    return _optimise(z_init, lambda z: _mse(operator, decode(z), y), lr, max_iters, tol, patience, weight_decay, cost)


def stochastic_resample(z0_y: Tensor, z_prime: Tensor, abar: Tensor, s: Tensor, noise: Tensor) -> Tensor:
    """ReSample Eq. 9: draw ``z`` from ``N(sqrt(abar) z0_y, (1 - abar) I)`` conditioned on ``z' = z + sqrt(s) n``."""
    mean = (s * abar.sqrt() * z0_y + (1 - abar) * z_prime) / (s + 1 - abar)
    var = s * (1 - abar) / (s + 1 - abar)
    return mean + var.sqrt() * noise


# ------------------------------------------------------------------------------------------ the sampler
class ReSample(Sampler):
    """ReSample (needs a latent prior and a differentiable operator); returns decoded images.

    Args:
        num_steps: DDIM steps (500 in the paper and code).
        eta: DDIM eta of the unconditional step (0).
        dps_scale: the latent-DPS step is ``dps_scale * abar_t`` (code: 0.5); 0 disables it.
        consistency_every: hard data consistency every this many steps (10).
        num_splits: the "index split": consistency runs on indices ``<= N - N // num_splits``; pixel-space
            optimisation for indices ``>= N // num_splits``, latent-space below (3).
        time_travel_steps: UNet evaluations of the look-ahead before optimising (5; 1 = no look-ahead).
        gamma: scale of the resampling variance ``s`` (40).
        pixel_lr, pixel_max_iters, pixel_tol: pixel optimiser (1e-2, 2000, 1e-6 on the MSE).
        latent_lr, latent_max_iters, latent_tol, latent_patience: latent optimiser (5e-3, 500, 1e-6, 200;
            ``latent_patience=None`` disables the "loss went up since ``patience`` iterations" rule).
        weight_decay: AdamW weight decay of both optimisers (0.01, PyTorch's default used by the code).
        final_optimization: run the final latent optimisation (True).
        x0_estimate: ``"tweedie"`` (paper) or ``"reference"`` (the code's estimate), see the module docstring.
        profile: synchronise CUDA around timed phases for accurate ``self.timings``.

    After a call, ``self.timings`` holds seconds spent in ``unet`` (denoiser forward / backward),
    ``decoder`` (decoder forward / backward of the DPS step and the final decode) and ``optimisation``
    (the hard-consistency and final optimisers, their decoder / encoder calls included), and
    ``self.consistency_log`` one entry per hard-consistency step (index, space, iterations, losses).
    """

    requires = frozenset({"latent", "differentiable"})

    def __init__(self, num_steps: int = 500, eta: float = 0.0, dps_scale: float = 0.5, consistency_every: int = 10,
                 num_splits: int = 3, time_travel_steps: int = 5, gamma: float = 40.0, pixel_lr: float = 1e-2,
                 pixel_max_iters: int = 2000, pixel_tol: float = 1e-6, latent_lr: float = 5e-3,
                 latent_max_iters: int = 500, latent_tol: float = 1e-6, latent_patience: int | None = 200,
                 weight_decay: float = 0.01, final_optimization: bool = True, x0_estimate: str = "tweedie",
                 profile: bool = False):
        super().__init__()
        checks = {"num_steps": num_steps >= 1, "eta": 0.0 <= eta <= 1.0, "dps_scale": dps_scale >= 0,
                  "consistency_every": consistency_every >= 1, "num_splits": num_splits >= 1,
                  "time_travel_steps": time_travel_steps >= 1, "gamma": gamma > 0, "pixel_lr": pixel_lr > 0,
                  "latent_lr": latent_lr > 0, "pixel_max_iters": pixel_max_iters >= 0,
                  "latent_max_iters": latent_max_iters >= 0, "pixel_tol": pixel_tol >= 0, "latent_tol": latent_tol >= 0,
                  "latent_patience": latent_patience is None or latent_patience >= 1, "weight_decay": weight_decay >= 0}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"ReSample: invalid {name}={locals()[name]!r} (see the class docstring for valid values)")
        if x0_estimate not in ("tweedie", "reference"):
            raise ValueError(f"ReSample: x0_estimate must be 'tweedie' or 'reference', got {x0_estimate!r}")
        self.num_steps, self.eta, self.dps_scale = num_steps, eta, dps_scale
        self.consistency_every, self.num_splits, self.time_travel_steps = consistency_every, num_splits, time_travel_steps
        self.gamma = gamma
        self.pixel_lr, self.pixel_max_iters, self.pixel_tol = pixel_lr, pixel_max_iters, pixel_tol
        self.latent_lr, self.latent_max_iters, self.latent_tol = latent_lr, latent_max_iters, latent_tol
        self.latent_patience, self.weight_decay = latent_patience, weight_decay
        self.final_optimization, self.x0_estimate, self.profile = final_optimization, x0_estimate, profile
        self.timings: dict[str, float] = {}
        self.consistency_log: list[dict] = []

    # -------------------------------------------------------------------------- schedule of the phases
    def consistency_space(self, index: int) -> str | None:
        """``"pixel"``, ``"latent"`` or None for the step whose grid index (ascending position of t) is ``index``."""
        n = self.num_steps
        split = n // self.num_splits
        if not (0 < index <= n - split and index % self.consistency_every == 0):
            return None
        return "pixel" if index >= split else "latent"

    # -------------------------------------------------------------------------- pieces
    def _time_travel(self, z: Tensor, i: int, abar: Tensor, prior, timer: PhaseTimer) -> Tensor:
        """From ``z`` at grid point ``i + 1``, unconditional DDIM (eta 0) over ``time_travel_steps`` evaluations;
        the clean estimate of the last evaluation."""
        n = abar.numel() - 1
        last = min(i + self.time_travel_steps, n - 1)
        with torch.no_grad(), timer("unet"):
            for k in range(i + 1, last + 1):
                z0 = latent_x0(prior, z, abar[k])
                self.cost.nfe += 1
                if k == last:
                    return z0 if self.x0_estimate == "tweedie" else reference_x0(z, z0, abar[k])
                z = ddim_step(z, z0, abar[k], abar[k + 1], 0.0, torch.zeros_like(z))
        raise AssertionError("unreachable: time travel needs at least one evaluation")  # pragma: no cover

    def _latent_opt(self, z: Tensor, y: Tensor, operator, prior) -> tuple[Tensor, dict]:
        return latent_optimization(z, y, operator, prior.decode, self.latent_lr, self.latent_max_iters, self.latent_tol,
                                   self.latent_patience, self.weight_decay, self.cost)

    def _hard_consistency(self, space: str, z0_hat: Tensor, y: Tensor, operator, prior) -> tuple[Tensor, dict]:
        if space == "pixel":
            with torch.no_grad():
                x0 = prior.decode(z0_hat)
            x, info = pixel_optimization(x0, y, operator, self.pixel_lr, self.pixel_max_iters, self.pixel_tol,
                                         self.weight_decay, self.cost)
            with torch.no_grad():
                return prior.encode(x), info
        return self._latent_opt(z0_hat, y, operator, prior)

    # -------------------------------------------------------------------------- the algorithm
    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        check_latent_operator(operator, prior, "ReSample")
        timer = PhaseTimer(self.profile)
        self.consistency_log = []
        dtype = real_dtype(y)
        y_rep = repeat_measurement(y, num_samples)
        ts, abar = ddim_grid(prior_schedule(prior), self.num_steps, y.device, dtype)
        n = len(ts)
        z = randn((y_rep.shape[0], *prior.event_shape), generator, like=y, dtype=dtype)        # z_T ~ N(0, I)
        for i in range(n):
            a_t, a_prev = abar[i], abar[i + 1]
            index = n - 1 - i
            # Algorithm 1: unconditional DDIM step from Tweedie's estimate, then the latent-DPS step
            grad, z0, z0_used, _ = latent_dps_gradient(z, a_t, y_rep, operator, prior, self.cost, timer,
                                                       self.x0_estimate)
            z_prime = ddim_step(z, z0, a_t, a_prev, self.eta, randn(z.shape, generator, like=z))
            z_prime = (z_prime - self.dps_scale * a_t * grad).detach()
            space = self.consistency_space(index)
            if space is None:
                z = z_prime
            else:
                z0_hat = self._time_travel(z_prime, i, abar, prior, timer)
                with timer("optimisation"):
                    z0_y, info = self._hard_consistency(space, z0_hat, y_rep, operator, prior)
                s = self.gamma * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)        # sigma_t^2 of the paper
                z = stochastic_resample(z0_y, z_prime, a_prev, s, randn(z.shape, generator, like=z))  # Eq. 9
                self.consistency_log.append({"index": index, "t": ts[i], "space": space,
                                             "iterations": info["iterations"].tolist(),
                                             "initial_loss": info["initial_loss"].tolist(),
                                             "final_loss": info["final_loss"].tolist()})
            if callback is not None:
                callback(i, n, z)
        if self.final_optimization:
            with timer("optimisation"):
                z, info = self._latent_opt(z, y_rep, operator, prior)
            self.consistency_log.append({"index": -1, "t": -1, "space": "final",
                                         "iterations": info["iterations"].tolist(),
                                         "initial_loss": info["initial_loss"].tolist(),
                                         "final_loss": info["final_loss"].tolist()})
        x = timer.decode(prior, z)
        self.timings = timer.seconds
        return x

"""The reverse-SDE grid of InverseBench's samplers (devzhk/InverseBench ``utils/scheduler.py``, ``Scheduler``),
shared by DPG, SCG, DPS-GSG and LGD: a time grid ``t_0 > ... > t_{N-1}`` plus a final time, the noise levels
``sigma(t)`` and scalings ``s(t)`` of the process ``x = s(t) (x0 + sigma(t) n)`` (Karras et al. 2022, "EDM",
Table 1), and the Euler-Maruyama step of its reverse SDE (EDM Eq. 6 with beta(t) = sigma'(t) / sigma(t), in scaled
coordinates; ``diffusion.sde_drift`` with alpha = 1) in the scheduler's constants

    shrink_i = 1 - s'(t_i) / s(t_i) (t_i - t_{i+1}),
    factor_i = max(0, 2 s(t_i)^2 sigma(t_i) sigma'(t_i) (t_i - t_{i+1})),
    score_i(x) = (D(x / s_i, sigma_i) - x / s_i) / (sigma_i^2 s_i)                       (Tweedie, scaled coordinates)
    x_{i+1} = shrink_i x + factor_i score + sqrt(factor_i) n      (SDE)   or   shrink_i x + factor_i score / 2   (ODE).

Two schedules, the two the reference's configs use:

* ``"vp"`` (``schedule / timestep / scaling: vp``): EDM's VP SDE (beta_min 0.1, beta_d 19.9), times linear from 1 to
  1e-3, a final time with sigma = ``sigma_min`` (the reference's ``sigma_final``, 0.01), start ``x ~ N(0, (s(1)
  sigma(1))^2 I)`` (about N(0, I));
* ``"edm"`` (``schedule: linear, timestep: poly-7, scaling: none``): sigma(t) = t on the Karras grid (EDM Eq. 5, rho 7)
  from ``sigma_max`` to ``sigma_min``, a final time at ``sigma_min`` again (so the last step has dt = 0 and only the
  guidance acts), start ``x ~ N(0, sigma_max^2 I)``.

Every constant is a Python float computed once (no tensor reads inside the samplers' step loops). The samplers return
the last iterate, at sigma_final = 0.01 as the reference does (SCG returns the last denoised estimate).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..diffusion import Cost, EDMSDE, VPSDE

SCHEDULES = ("vp", "edm")


@dataclass(frozen=True)
class SDEGrid:
    sigma: tuple[float, ...]      # N + 1 noise levels (the last is the final time's)
    scale: tuple[float, ...]      # N + 1 scalings s(t)
    shrink: tuple[float, ...]     # N factors of x
    factor: tuple[float, ...]     # N factors of the score
    start_std: float              # std of the initial state

    @property
    def num_steps(self) -> int:
        return len(self.factor)

    def denoise(self, prior, x: Tensor, i: int, cost: Cost) -> Tensor:
        """``D(x / s_i, sigma_i)`` (one network evaluation)."""
        cost.nfe += 1
        return prior.denoise(x / self.scale[i], self.sigma[i])

    def score(self, x: Tensor, d: Tensor, i: int) -> Tensor:
        s, sig = self.scale[i], self.sigma[i]
        return (d - x / s) / (sig**2 * s)

    def step(self, x: Tensor, score: Tensor, i: int, noise: Tensor | None) -> Tensor:
        """Euler-Maruyama (``noise`` a standard normal draw) or probability-flow Euler (``noise=None``) step i."""
        if noise is None:
            return self.shrink[i] * x + 0.5 * self.factor[i] * score
        return self.shrink[i] * x + self.factor[i] * score + math.sqrt(self.factor[i]) * noise


def sde_grid(num_steps: int, schedule: str = "vp", sigma_min: float = 0.01, sigma_max: float = 100.0) -> SDEGrid:
    """The grid of InverseBench's ``Scheduler(num_steps, sigma_max, sigma_min, schedule, timestep, scaling)`` for the
    two schedules above (``sigma_max`` is unused by ``"vp"``, whose largest level is sigma(1) = 152)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if num_steps < 2:
        raise ValueError(f"the SDE grid needs num_steps >= 2, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    r = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    if schedule == "vp":
        sde = VPSDE(beta_min=0.1, beta_d=19.9)
        t = 1 - r * (1 - 1e-3)                                                        # timestep "vp"
    else:
        sde = EDMSDE()
        rho = 7.0                                                                     # timestep "poly-7"
        t = (sigma_max ** (1 / rho) + r * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = torch.cat([t, sde.sigma_inv(torch.tensor([sigma_min], dtype=torch.float64))])  # sigma_final = sigma_min
    sig, s = sde.sigma(t), sde.scale(t)
    dt = t[:-1] - t[1:]
    shrink = 1 - sde.scale_deriv(t[:-1]) / s[:-1] * dt
    factor = (2 * s[:-1] ** 2 * sig[:-1] * sde.sigma_deriv(t[:-1]) * dt).clamp_min(0)
    start = float(sig[0] * s[0]) if schedule == "vp" else float(sigma_max)
    return SDEGrid(tuple(sig.tolist()), tuple(s.tolist()), tuple(shrink.tolist()), tuple(factor.tolist()), start)

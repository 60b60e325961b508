"""MCGdiff: Monte Carlo guided diffusion for Bayesian linear inverse problems.

Cardoso, Idrissi, Le Corff, Moulines, "Monte Carlo guided diffusion for Bayesian linear inverse problems"
(ICLR 2024, arXiv:2308.07983); reference code gabrielvc/mcg_diff (``mcg_diff/particle_filter.py``).

MCGdiff is an SMC sampler in the spectral space of ``A = U diag(s) V^T`` (as DDRM): with ``xbar = V^T x`` and, on
the observed coordinates (``s_i > 0``), ``ybar_i = (U^T y)_i / s_i = xbar0_i + eta_i n`` with ``eta_i = sigma_y /
s_i``. In the VE view of the schedule (``x_t = x0 + sigma_t n``, ``docs/conventions.md#denoiser-convention``),
ybar_i is exactly what coordinate i of the forward diffusion looks like at noise level eta_i, so the posterior is
the backward diffusion conditioned on ``xbar_i = ybar_i`` at level eta_i for every observed i (the forward noise
is isotropic, so the coordinates diffuse independently in any orthonormal basis). The noise-free case is the same
with eta_i = 0 (the paper's Algorithm 1; the noisy case is its Section 3.3 / Algorithm 3 in the appendix).

The SMC (paper Eqs. 3.4-3.8, written in VE coordinates). Levels ``sigma_0 > ... > sigma_{n-1} > sigma_n = 0``
(the DDIM / DDRM grid of the VP schedule). Each observed coordinate has a pin level ``p_i = max(eta_i,
sigma_{n-1})`` (a noise-free coordinate is pinned at the lowest level of the grid, about 0.01 on the DDPM
schedule). While the level is above p_i the coordinate carries the potential
``g_t(xbar) = N(xbar_i; ybar_i, sigma_t^2 - p_i^2)`` (the forward transition from level p_i, i.e. where ybar_i
diffuses to); the targets are ``pi_t(x_t) ∝ p_t(x_t) prod_i g_t(xbar_t,i)``. A step sigma -> sigma' calls the
denoiser once on all particles, ``xbar0 = V^T D(x, sigma)``, giving the ancestral (DDPM, eta = 1 as in the
reference) kernel ``N(m, v)`` with ``m = xbar0 + (sigma'^2 / sigma^2)(xbar - xbar0)``,
``v = sigma'^2 (sigma^2 - sigma'^2) / sigma^2`` per coordinate, and then per coordinate:

* p_i < sigma' (still guided): the proposal is the kernel times the next potential, Gaussian with precision
  ``1 / v + 1 / (sigma'^2 - p_i^2)``; the weight factor is its normalising constant over the current potential,
  ``N(ybar_i; m_i, v + sigma'^2 - p_i^2) / g_sigma(xbar_i)`` (Eq. 3.7);
* sigma' <= p_i < sigma (pinned in this step): the kernel is split at level p_i (bridges of the forward process
  with the same xbar0 compose exactly, so this is the same kernel), the coordinate is set to ybar_i at p_i with
  weight factor ``N(ybar_i; m_p, v_p) / g_sigma(xbar_i)`` (m_p, v_p the kernel's moments at level p_i), and then
  drawn from the bridge ``N(xbar0 + (sigma'^2 / p^2)(ybar - xbar0), sigma'^2 (p^2 - sigma'^2) / p^2)``;
* p_i >= sigma, and the unobserved coordinates: the kernel itself, weight factor 1.

The weight depends on the particle before the move only, so resampling (when the ESS falls below
``threshold * N``, ``smc.py``) picks the ancestors first and the move follows (a fully adapted auxiliary particle
filter, as the reference's "ancestor sampling" step). The start samples the product of ``N(0, 1 + sigma_0^2)``
(the VP reference law in VE coordinates) with the first potentials exactly; a coordinate whose pin level lies above
sigma_0 is drawn from that law conditioned on ybar_i and left free. The last step lands on ``D(x, sigma_{n-1})``
(deterministic); the weighted particles are then resampled into N equally weighted draws.

Differences from the reference, on purpose: the reference snaps each eta_i to the nearest timestep tau_i of the grid
(and chooses the grid to contain them, ``get_optimal_timesteps_from_singular_values``) and replaces the pin by a
narrow Gaussian of variance kappa (``gaussian_var``, 1e-4 to 1e-6); here the pin is placed at eta_i exactly by
splitting the step that crosses it, on any grid (a pin level within a relative 1e-4 in variance below a grid level
is moved up to it, which avoids dividing by a vanishing ``sigma^2 - p^2``). The reference resamples (multinomially)
at every step; here resampling is systematic and by the ESS rule (``threshold=1`` resamples whenever the weights
are not all equal).

What is not exact, measured in ``tests/test_smc.py`` and ``tests/posterior_cases.py``: the SMC targets the
ancestral chain conditioned on the pins, and that chain's kernel has the "fixed small" variance, which misses the
term ``(1 - a)^2 Var[x0 | x]``. Unconditionally that costs little (the data's variance is set at high noise, where
the relative steps are small); below a pin level it is all the variance a pinned coordinate has left, and the
lowest levels of the DDPM grid are coarse in relative terms (sigma^2 ~ 1e-4 k): a coordinate observed with
eta = 0.1 comes out about 13 % too narrow with 1000 steps, 60 % with 100. The weights also degenerate steadily
(the intermediate targets put half of the high-noise variance of each observed coordinate on the data), so the
rule resamples every few tens of steps and the N draws share ancestors: their Monte Carlo error is several times
``1 / sqrt(ESS)``. Independent draws (``particles_per_draw``, each from its own system, as the paper's mixture runs)
remove that error: on the test bed's mixture, 256 draws of 32 particles each are within 1.1 x the distance of 256
exact draws (``tests/test_smc.py``).

Cost: ``num_steps`` denoiser calls (``cost.nfe``); the operator enters only through its SVD transforms
(``cost.forward_calls`` stays 0, as for DDRM). Memory: N particles of the image per measurement.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import real_dtype, repeat_measurement
from .smc import _SMCSampler

_SNAP = 1e-4       # pin levels with sigma_k^2 - p^2 < _SNAP sigma_k^2 move up to the grid level sigma_k


class MCGdiff(_SMCSampler):
    """Monte Carlo guided diffusion (needs an operator with an SVD; Gaussian noise of std ``operator.sigma``).

    Args:
        num_steps: steps on a uniform sub-sequence of the VP schedule (one denoiser call each).
        threshold: resample (systematically) a measurement's particles when their ESS < threshold * N.
        particles_per_draw: None: the num_samples draws are the particles of one system; K: each draw comes from its
            own system of K particles (independent draws, num_samples * K particles; ``smc.py``).
        schedule, train_steps: the discrete VP schedule giving the sigma levels (DDPM linear, 1000).
    """

    requires = frozenset({"svd"})

    def __init__(self, num_steps: int = 100, threshold: float = 0.5, schedule: str = "linear", train_steps: int = 1000,
                 particles_per_draw: int | None = None):
        super().__init__(num_steps, threshold, particles_per_draw, schedule, train_steps)

    @staticmethod
    def pin_levels(noise: Tensor, obs: Tensor, levels: list[float]) -> Tensor:
        """``p_i = max(eta_i, sigma_{n-1})`` on the observed coordinates (inf elsewhere), moved up to a grid level
        that lies just above it (see ``_SNAP``)."""
        grid = torch.tensor(sorted(levels), dtype=noise.dtype, device=noise.device)     # ascending, positive
        p = torch.where(obs, noise.clamp_min(grid[0]), torch.full_like(noise, float("inf")))
        k = torch.searchsorted(grid, p.contiguous()).clamp(max=grid.numel() - 1)        # first level >= p
        above = grid[k]
        snap = obs & (above >= p) & (above**2 - p**2 < _SNAP * above**2)
        return torch.where(snap, above, p)

    @torch.no_grad()
    def _smc(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        dtype = real_dtype(y)
        b, n = y.shape[0], num_samples
        sig = self.sigmas()
        y_rep = repeat_measurement(y, n)
        sv = operator.singulars().to(dtype)                                   # [1 or B, d]
        if sv.shape[0] == b and b > 1:
            sv = repeat_measurement(sv, n)
        obs = sv > 0
        s_safe = torch.where(obs, sv, torch.ones_like(sv))
        ybar = torch.where(obs, operator.Ut(y_rep).to(dtype) / s_safe, torch.zeros_like(sv))     # [NB, d]
        sy = float(operator.sigma)
        p = self.pin_levels(torch.where(obs, sy / s_safe, torch.zeros_like(sv)), obs, sig[:-1]).expand_as(ybar)
        p2 = torch.where(torch.isfinite(p), p**2, torch.zeros_like(p))

        # start: N(0, 1 + sigma_0^2) times the potentials N(ybar; sigma_0^2 - p^2), sampled exactly (equal
        # weights); a coordinate pinned above sigma_0 is drawn from that law conditioned on ybar at level p
        s0 = sig[0]
        prior_var = 1.0 + s0**2
        z = self._randn(ybar.shape, generator, like=ybar)
        guided = p < s0
        g_var = torch.where(guided, s0**2 - p2, torch.ones_like(p2))
        post_var = 1.0 / (1.0 / prior_var + 1.0 / g_var)
        start_guided = post_var * ybar / g_var + post_var.sqrt() * z
        pinned_before = torch.isfinite(p) & ~guided
        c_var = prior_var + p2 - s0**2
        start_pinned = prior_var / c_var * ybar + (prior_var * (p2 - s0**2) / c_var).clamp_min(0).sqrt() * z
        xbar = torch.where(guided, start_guided, torch.where(pinned_before, start_pinned, prior_var**0.5 * z))
        log_w = torch.zeros(n, b, dtype=torch.float64, device=y.device)

        for i in range(self.num_steps):
            s, s1 = sig[i], sig[i + 1]
            x = operator.V(xbar)
            self.cost.nfe += 1
            x0bar = self._guard(lambda: operator.Vt(prior.denoise(x, torch.full((x.shape[0],), s, dtype=dtype,
                                                                              device=x.device))), like=xbar)
            a, v = s1**2 / s**2, s1**2 * (s**2 - s1**2) / s**2
            m = x0bar + a * (xbar - x0bar)
            active = p < s1                                                   # guided after this step too
            pin_now = (p >= s1) & (p < s)                                     # pinned within this step
            had = p < s                                                       # carried a potential at sigma
            ones = torch.ones_like(p2)
            # the weight (depends on xbar only): the predictive of ybar over the current potential
            prev = torch.where(had, -(xbar - ybar) ** 2 / (2 * torch.where(had, s**2 - p2, ones)), 0)
            mp = x0bar + p2 / s**2 * (xbar - x0bar)                          # the kernel's moments at level p
            vp = torch.where(pin_now, p2 * (s**2 - p2) / s**2, ones)
            pred_var = torch.where(active, v + s1**2 - p2, ones)
            pred = torch.where(active, -(ybar - m) ** 2 / (2 * pred_var),
                               torch.where(pin_now, -(ybar - mp) ** 2 / (2 * vp), 0))
            log_w = log_w + (pred - prev).sum(1).double().view(n, b)
            log_w, (x0bar, m) = self._reweight(log_w, generator, x0bar, m)
            # the move (from the chosen ancestors)
            z = self._randn(xbar.shape, generator, like=xbar)
            if v > 0:
                g_var = torch.where(active, s1**2 - p2, ones)
                prop_var = torch.where(active, 1.0 / (1.0 / v + 1.0 / g_var), torch.full_like(p2, v))
                prop_mean = torch.where(active, prop_var * (m / v + ybar / g_var), m)
            else:                                                             # the last step lands on D(x, sigma_{n-1})
                prop_var, prop_mean = torch.zeros_like(p2), m
            p2s = torch.where(pin_now, p2, ones)
            bridge_mean = x0bar + s1**2 / p2s * (ybar - x0bar)
            bridge_var = (s1**2 * (p2s - s1**2) / p2s).clamp_min(0)
            xbar = torch.where(pin_now, bridge_mean + bridge_var.sqrt() * z, prop_mean + prop_var.sqrt() * z)
            if callback is not None:
                callback(i, self.num_steps, operator.V(xbar))
        return self._finish(log_w, operator.V(xbar), generator)

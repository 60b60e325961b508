"""SCG: stochastic control guidance, a derivative-free sampler that selects among proposed next states.

Huang et al., "Symbolic music generation with non-differentiable rule guided diffusion" (ICML 2024; reference code
yjhuangcd/rule-guided-music), in the version InverseBench runs (Zheng et al., ICLR 2025, ``algo/scg.py``), which this
module follows.

The reverse SDE's transition ``p(x_{i+1} | x_i)`` is a Gaussian (the Euler-Maruyama step of ``sde_grid``). SCG draws
K candidates from it, scores each by the misfit of its own Tweedie estimate and keeps the best one (the stochastic-
control view of guidance by a non-differentiable reward, in the greedy best-of-K form InverseBench runs):

    x_cand_k = shrink_i x + factor_i score_i(x) + sqrt(factor_i) n_k             (k = 1..K, one batched step)
    m_k = ||y - A(D(x_cand_k / s_{i+1}, sigma_{i+1}))||^2,    x_{i+1} = x_cand_{argmin_k m_k}

on the steps ``int(threshold N) <= i < N - 1``; before them plain Euler-Maruyama steps, and the last step returns the
Tweedie estimate ``D(x / s_{N-1}, sigma_{N-1})``. Only forward-model values are used.

Published settings (InverseBench configs and Navier-Stokes runs): 1000 steps of the "vp" grid, K = 512 candidates,
threshold 0.25, network and forward model in chunks of 64; FFHQ K = 256, black holes K = 1024.

Deviations, on purpose: all particles of all measurements are batched (the reference loops over particles); the
chosen candidate's denoised estimate is kept for the next step's score (the reference evaluates the same network call
again: same input, same sigma, so the draws are unchanged and each guided step saves one network evaluation); the
reference's first guided step is a slip (``i > int(threshold N)`` and ``i < int(threshold N)`` leave
``i = int(threshold N)`` to the final-step branch, which jumps to the Tweedie estimate in the middle of sampling): here
that step is guided.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Sampler, randn, real_dtype, repeat_measurement
from .blackbox import check_query, query_misfit
from .sde_grid import sde_grid


class SCG(Sampler):
    """Stochastic control guidance, best of K proposed steps (derivative-free; ``requires`` nothing of the operator).

    Args:
        num_steps, schedule, sigma_min, sigma_max: the reverse-SDE grid (``sde_grid``).
        num_candidates: K proposals per particle and guided step.
        threshold: the fraction of steps before guidance starts.
        misfit: ``"residual"`` (||y - A x||^2, the reference) or ``"loss"`` (``operator.loss``).
        batch_size: rows per network and forward-model call (None: all candidates of all particles at once).
    """

    requires = frozenset()

    def __init__(self, num_steps: int = 1000, schedule: str = "vp", sigma_min: float = 0.01, sigma_max: float = 100.0,
                 num_candidates: int = 512, threshold: float = 0.25, misfit: str = "residual",
                 batch_size: int | None = 64):
        super().__init__()
        self.grid = sde_grid(num_steps, schedule, sigma_min, sigma_max)
        check_query("SCG", misfit, batch_size)
        if num_candidates < 1:
            raise ValueError(f"SCG: num_candidates must be >= 1, got {num_candidates}")
        if not 0 <= threshold <= 1:
            raise ValueError(f"SCG: threshold is a fraction of the steps in [0, 1], got {threshold}")
        self.num_steps, self.schedule, self.sigma_min, self.sigma_max = num_steps, schedule, sigma_min, sigma_max
        self.num_candidates, self.threshold = num_candidates, threshold
        self.misfit, self.batch_size = misfit, batch_size

    def _denoise(self, prior, x: Tensor, i: int) -> Tensor:
        size = x.shape[0] if self.batch_size is None else self.batch_size
        return torch.cat([self.grid.denoise(prior, c, i, self.cost) for c in x.split(size)])

    @torch.no_grad()
    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        grid, dtype, k = self.grid, real_dtype(y), self.num_candidates
        y_rep = repeat_measurement(y, num_samples)
        n, last = y_rep.shape[0], grid.num_steps - 1
        first_guided = int(grid.num_steps * self.threshold)
        x = randn((n, *operator.input_shape), generator, like=y, dtype=dtype) * grid.start_std
        d = None                                               # D(x / s_i, sigma_i) when already known
        rows = torch.arange(n, device=x.device)
        for i in range(grid.num_steps):
            d = self._denoise(prior, x, i) if d is None else d
            if i == last:
                x = d                                          # the last step returns the Tweedie estimate
            elif i < first_guided:
                x, d = grid.step(x, grid.score(x, d, i), i, randn(x.shape, generator, like=x)), None
            else:
                noise = randn((k, *x.shape), generator, like=x)
                cand = grid.step(x.unsqueeze(0), grid.score(x, d, i).unsqueeze(0), i, noise)    # [K, N, ...]
                d_cand = self._denoise(prior, cand.reshape(k * n, *x.shape[1:]), i + 1)
                m = query_misfit(operator, d_cand, y_rep, self.misfit, self.cost, self.batch_size).reshape(k, n)
                best = m.argmin(0)                                                          # [N], no host sync
                x, d = cand[best, rows], d_cand.reshape(k, n, *x.shape[1:])[best, rows]
            if callback is not None:
                callback(i, grid.num_steps, x)
        return x

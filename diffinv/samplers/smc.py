"""The sequential Monte Carlo mechanism shared by MCGdiff, TDS and FPS-SMC (``mcgdiff.py``, ``tds.py``,
``fps_smc.py``): log-weight normalisation, the effective sample size, systematic resampling from given uniforms,
and the ESS-threshold rule applied per measurement.

Layout. A sampler with ``num_samples = N`` runs N particles per measurement, stored sample-major as every sampler's
output (``docs/conventions.md#sampler-contract``): particle n of measurement b is row ``n * B + b`` of an
``[N * B, ...]`` tensor, so ``x.view(N, B, ...)[n, b]`` is that particle. Log-weights are ``[N, B]`` (one column per
measurement, never normalised across measurements). All particles of all measurements go through the network in
one call per step; resampling is a gather (an all-to-all over ranks).

Function contracts (pure functions of their tensor arguments, no host synchronisation, differentiable nowhere):

* ``normalize_log_weights(log_w [N, B]) -> [N, B]``: ``log_w - logsumexp(log_w, 0)``; each column then sums to 1
  in probability. Columns of ``-inf`` only (no particle alive) come back as NaN: that is the caller's error.
* ``effective_sample_size(log_w [N, B]) -> [B]``: Kong's ESS ``(sum w)^2 / sum w^2`` per column, computed from
  unnormalised log-weights as ``exp(2 logsumexp(lw) - logsumexp(2 lw))``; N for equal weights, 1 when a single
  particle carries all the weight. It depends on the weights only up to a per-column constant factor.
* ``systematic_resample(log_w [N, B], u [B]) -> indices [N, B]`` (long, values in ``[0, N)``): systematic
  resampling (Kitagawa 1996; Douc, Cappé & Moulines 2005) with the positions ``(k + u_b) / N``, k = 0..N-1, laid
  over the cumulative normalised weights of column b; ``indices[k, b]`` is the particle whose cumulative-weight
  interval contains position k. Deterministic given ``(log_w, u)``: a distributed caller holding a slice of the
  particles can broadcast one ``u`` per measurement, compute the global cumulative weights and obtain the same
  global indices on every rank. The indices are non-decreasing in k, and particle i is copied ``floor(N w_i)`` or
  ``ceil(N w_i)`` times, so for ``u ~ U[0, 1)`` its expected number of copies is exactly ``N w_i`` (unbiased).
  Equal weights give the identity (but for positions that fall exactly on a cumulative weight, e.g. u = 0, which
  may land on either side in floating point); a particle of weight 0 is never chosen.
* ``categorical_draw(log_w [N, B], u [B]) -> indices [1, B]``: one particle per column, particle i of column b with
  probability ``w_i`` (the first whose cumulative normalised weight exceeds ``u_b``); a weightless one never.
* ``ess_rule(log_w [N, B], threshold, u [B]) -> (indices [N, B], log_w' [N, B], ess [B], resampled [B])``: the
  ESS-threshold rule per measurement: columns with ``ess < threshold * N`` are resampled systematically and their
  log-weights reset to equal values; the others keep their particles (identity indices) and weights. Chosen with
  ``torch.where``, so no Python branch depends on a tensor's value. ``log_w'`` is normalised.
* ``gather_particles(x [N * B, ...], indices [N, B]) -> [N * B, ...]``: the resampled particles, in the same layout.

Over ranks (``particles=ShardedParticles(N)``, ``shardable``): each rank holds its particles' rows; the log-weights
are all-gathered at each resampling decision (N B values), every rank applies the same rule with the same uniforms,
and ``distributed_resampling.move`` brings each rank the ancestors of its slots (one all-to-all). Noise is drawn
through the particles object, so the result equals the one-process result row for row.

``_SMCSampler`` (its leading underscore keeps it out of the sampler registry) holds what the three samplers share:
the ``threshold`` hyperparameter, the per-step ESS record and the final resampling that turns the weighted
particles into N equally weighted draws.

Two ways to get ``num_samples`` draws (``particles_per_draw``):

* ``None`` (default): one particle system of ``num_samples`` particles per measurement, returned resampled. The
  draws share ancestors: their Monte Carlo error is that of the system (on the test bed's mixture, one system of
  4096 particles puts the mode weights off by enough to give 4-12 x the sliced Wasserstein distance of 4096 exact
  draws on 2 of 5 seeds, ``tests/test_smc.py``).
* ``K``: ``num_samples`` independent systems of K particles per measurement, one draw from each system's final
  weights (the protocol of the MCGdiff paper's mixture experiments). The draws are independent; what is left is the
  bias of a K-particle system, which falls with K. Cost: ``num_samples * K`` particles per network call. The
  measurement is repeated ``num_samples`` times (system m of measurement b is column ``m * B + b``), so ``ess``
  and ``final_ess`` below have ``num_samples * B`` columns.

After ``sample`` the sampler exposes

* ``ess``: a ``[num_decisions, B]`` tensor on the particles' device, the ESS at each application of the ESS rule
  (one per step for MCGdiff and FPS-SMC, after the step's reweighting; one per move for TDS, whose last step only
  lands on x0_hat),
* ``resampled``: the matching ``[num_decisions, B]`` bool tensor, whether the rule resampled measurement b,
* ``final_ess``: a ``[B]`` tensor, the ESS of the final weights, which the returned draws were resampled from
  (with 0 < final_ess <= N: N / final_ess is roughly the factor by which the Monte Carlo variance of a posterior
  mean exceeds that of N independent draws).

They stay on the particles' device (no host synchronisation in a one-process run; over ranks only the
all-to-all's sizes are read): a caller that wants them on the host moves them once, after sampling. ``cost``
(``diffinv.diffusion.Cost``) is left as for every sampler: its fields are the integer counts every caller tabulates
(``lightning_modules/solver.py`` writes them as integers).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..diffusion import DiscreteVPSchedule
from .base import Sampler, repeat_measurement
from .distributed_resampling import global_log_weights, move, uniforms
from .particles import LocalParticles


# ----------------------------------------------------------------------------- pure functions
def normalize_log_weights(log_w: Tensor) -> Tensor:
    """``log_w - logsumexp(log_w, dim=0)`` for ``[N, B]`` log-weights (each column sums to 1 in probability)."""
    return log_w - torch.logsumexp(log_w, dim=0, keepdim=True)


def effective_sample_size(log_w: Tensor) -> Tensor:
    """Kong's effective sample size ``(sum w)^2 / sum w^2`` per column of ``[N, B]`` log-weights -> ``[B]``."""
    return torch.exp(2 * torch.logsumexp(log_w, dim=0) - torch.logsumexp(2 * log_w, dim=0))


def _inverse_cdf(log_w: Tensor, pos: Tensor) -> Tensor:
    """For positions ``pos [K, B]`` in [0, 1), the first particle of each column whose cumulative normalised weight
    exceeds the position: ``[K, B]`` indices."""
    cdf = torch.softmax(log_w.double(), dim=0).cumsum(0)
    cdf = cdf / cdf[-1:]                                                       # exact 1 at the end
    idx = torch.searchsorted(cdf.T.contiguous(), pos.to(torch.float64).T.contiguous(), right=True).T
    return idx.clamp_(max=log_w.shape[0] - 1)


def systematic_resample(log_w: Tensor, u: Tensor) -> Tensor:
    """Systematic resampling indices ``[N, B]`` for ``[N, B]`` log-weights and one uniform per column ``u [B]``
    (see the module docstring for the contract): the positions ``(k + u_b) / N``."""
    n = log_w.shape[0]
    return _inverse_cdf(log_w, (torch.arange(n, dtype=torch.float64, device=log_w.device)[:, None] + u[None]) / n)


def categorical_draw(log_w: Tensor, u: Tensor) -> Tensor:
    """One index per column ``[1, B]``, particle i of column b with probability ``w_i`` (the position ``u_b``)."""
    return _inverse_cdf(log_w, u[None])


def ess_rule(log_w: Tensor, threshold: float, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ESS-threshold rule per measurement (module docstring): ``(indices, log_w', ess, resampled)``."""
    n = log_w.shape[0]
    log_w = normalize_log_weights(log_w)
    ess = effective_sample_size(log_w)
    resampled = ess < threshold * n                                            # [B]
    keep = torch.arange(n, device=log_w.device)[:, None].expand_as(log_w)
    idx = torch.where(resampled[None], systematic_resample(log_w, u), keep)
    log_w = torch.where(resampled[None], torch.full_like(log_w, -math.log(n)), log_w)
    return idx, log_w, ess, resampled


def gather_particles(x: Tensor, indices: Tensor) -> Tensor:
    """Rows of the sample-major ``x [N * B, ...]`` picked per measurement by ``indices [N, B]``."""
    n, b = indices.shape
    flat = (indices * b + torch.arange(b, device=indices.device)[None]).reshape(-1)
    return x.index_select(0, flat)


def gaussian_logpdf_sum(x: Tensor, mean: Tensor, var: Tensor | float) -> Tensor:
    """``sum_i -(x_i - mean_i)^2 / (2 var_i)`` per row (the Gaussian log-density without its normalising constant,
    which is the same for every particle of a measurement and cancels in the normalised weights)."""
    return -(((x - mean).abs() ** 2) / (2 * var)).reshape(x.shape[0], -1).sum(1)


def ess_summary(sampler) -> dict | None:
    """What a run's record keeps of an SMC sampler's last call (``None`` for other samplers): particles per system,
    systems (measurements x independent draws), the smallest ESS of any step and system, the final ESS (mean over
    systems), resampling events per system (mean), and the ESS per step (mean over systems), all read to the host
    once, after sampling."""
    if getattr(sampler, "final_ess", None) is None:
        return None
    n = sampler._particles.total
    final = sampler.final_ess.double().cpu()
    steps = sampler.ess.double().cpu() if sampler.ess is not None else final[None]
    resampled = sampler.resampled.double().cpu().sum(0) if sampler.resampled is not None else torch.zeros_like(final)
    return {"particles": int(n), "systems": int(final.numel()), "min": float(steps.min()),
            "final": float(final.mean()), "resamplings": float(resampled.mean()),
            "per_step": [round(float(v), 3) for v in steps.mean(1)]}


# ----------------------------------------------------------------------------- shared sampler part
class _SMCSampler(Sampler):
    """Base of the SMC samplers: the step grid, the ESS threshold, the ESS record and the final resampling."""

    min_steps: int = 1
    final_levels: tuple[float, ...] = (0.0,)   # levels after the strided grid (MCGdiff, FPS-SMC: the last step to 0)

    @property
    def interacting(self) -> bool:
        """One particle system (the draws share ancestors) unless each draw has its own (``particles_per_draw``)."""
        return self.particles_per_draw is None

    @property
    def shardable(self) -> bool:
        """One system's particles can be split over ranks (``particles=ShardedParticles(N)``); independent
        systems are spread over ranks as independent draws instead."""
        return self.particles_per_draw is None

    def __init__(self, num_steps: int, threshold: float = 0.5, particles_per_draw: int | None = None,
                 schedule: str = "linear", train_steps: int = 1000):
        super().__init__()
        name = type(self).__name__
        if not self.min_steps <= num_steps <= train_steps:
            raise ValueError(f"{name}: num_steps must be in [{self.min_steps}, train_steps={train_steps}], "
                             f"got {num_steps}")
        if not 0 <= threshold <= 1:
            raise ValueError(f"{type(self).__name__}: threshold must be in [0, 1] (resample when ESS < threshold * N), "
                             f"got {threshold}")
        if particles_per_draw is not None and not (isinstance(particles_per_draw, int) and particles_per_draw >= 1):
            raise ValueError(f"{type(self).__name__}: particles_per_draw must be an integer >= 1 (the particles of "
                             f"each independent system) or None (one system of num_samples particles), "
                             f"got {particles_per_draw!r}")
        self.num_steps, self.threshold, self.particles_per_draw = num_steps, threshold, particles_per_draw
        self.schedule = DiscreteVPSchedule(schedule, train_steps)
        self.ess = self.resampled = self.final_ess = None
        self._particles = LocalParticles(1)

    def sigmas(self) -> list[float]:
        """Descending sigma levels: the strided schedule, then ``final_levels``."""
        return self.schedule.strided_sigmas(self.num_steps) + list(self.final_levels)

    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback, particles=None) -> Tensor:
        k = self.particles_per_draw
        if particles is not None and k is not None:
            raise ValueError(f"{type(self).__name__}: particles_per_draw runs independent systems, which cannot be "
                             f"split over ranks (particles=); give one or the other")
        self._particles = particles or LocalParticles(num_samples if k is None else k)
        self._ess_steps: list[Tensor] = []
        self._resampled_steps: list[Tensor] = []
        if k is None:
            with self._particles.run():
                return self._smc(y, operator, prior, self._particles.count, generator, callback)
        # num_samples independent systems of k particles: each measurement repeated num_samples times (sample-major,
        # so system m of measurement b is column m * B + b), one draw from each system's final weights (_finish)
        return self._smc(repeat_measurement(y, num_samples), operator, prior, k, generator, callback)

    def _smc(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        raise NotImplementedError  # pragma: no cover

    # called by the subclasses -------------------------------------------------------------
    def _randn(self, shape, generator, like: Tensor, dtype=None) -> Tensor:
        """Noise for this rank's particles (sample-major rows): the same draws whatever the number of ranks."""
        return self._particles.randn(shape, generator, like=like, dtype=dtype)

    def _guard(self, compute, like: Tensor) -> Tensor:
        """This rank's network / forward-model work, ``compute() -> tensor shaped like ``like``: on a rank that
        fails, NaN instead, so that no rank waits in the next collective (``particles.guard``)."""
        return self._particles.guard(lambda: (compute(),), tuple(like.shape), like=like)[0]

    def _move(self, t: Tensor, idx: Tensor) -> Tensor:
        """This rank's rows of ``t [n_r * B, ...]`` after resampling by the global ancestors ``idx [N, B]``."""
        if not self._particles.sharded:
            return gather_particles(t, idx)
        b = idx.shape[1]
        return move(t.reshape(-1, b, *t.shape[1:]), idx, self._particles).reshape(t.shape)

    def _global(self, log_w: Tensor, generator) -> tuple[Tensor, Tensor]:
        """Every particle's log-weights ``[N, B]`` (one all-gather when sharded) and the step's uniforms ``[B]``."""
        u = self._particles.broadcast(uniforms(log_w.shape[1], generator, log_w.device))
        return global_log_weights(log_w, self._particles), u

    def _local(self, log_w: Tensor) -> Tensor:
        """This rank's rows of the global ``[N, B]`` log-weights."""
        p = self._particles
        return log_w[p.start:p.start + p.count]

    def _reweight(self, log_w: Tensor, generator, *tensors: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Record the ESS of this rank's ``log_w [n_r, B]`` with the others', apply the ESS-threshold rule to all
        particles and move each ``[n_r * B, ...]`` tensor of ``tensors`` to the chosen ancestors:
        ``(this rank's log_w', (moved tensors))``."""
        log_w, u = self._global(log_w, generator)
        idx, log_w, ess, resampled = ess_rule(log_w, self.threshold, u)
        self._ess_steps.append(ess)
        self._resampled_steps.append(resampled)
        return self._local(log_w), tuple(self._move(t, idx) for t in tensors)

    def _finish(self, log_w: Tensor, x: Tensor, generator) -> Tensor:
        """Resample ``x`` by its final weights into N equally weighted draws and publish the ESS record."""
        log_w, u = self._global(log_w, generator)
        log_w = normalize_log_weights(log_w)
        final = effective_sample_size(log_w)
        one_draw = self.particles_per_draw is not None
        out = self._move(x, categorical_draw(log_w, u) if one_draw else systematic_resample(log_w, u))
        # a NaN weight anywhere (a failed rank's particles, a diverged likelihood) spoils every draw: resampling
        # alone could pick only finite particles and hide it (0 * ESS is 0, or NaN; no host read)
        out = out + (0 * final.sum()).to(out.dtype)
        self.ess = torch.stack(self._ess_steps) if self._ess_steps else None
        self.resampled = torch.stack(self._resampled_steps) if self._resampled_steps else None
        self.final_ess = final
        return out

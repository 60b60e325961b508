"""Resampling an ensemble whose particles are split over ranks: the primitive for sequential Monte Carlo samplers
(MCGdiff, TDS, FPS-SMC) run with ``particles=ShardedParticles(N)`` (``diffinv.samplers.particles``).

``resample(log_weights, x, generator, particles, select)`` with this rank's log-weights ``[n_r, B]`` and
particles ``[n_r, B, ...]`` (B measurements, each with its own N particles):

1. the log-weights are all-gathered (``N B`` values): every rank holds the global ``[N, B]`` weights (and can take
   the effective sample size from them, to decide whether to resample);
2. one uniform per measurement, ``u [B]``, is drawn from ``generator`` on every rank (which keeps the generators
   in step) and rank 0's is broadcast, so every rank uses the same;
3. every rank computes the same ancestors ``select(log_weights [N, B], u [B]) -> [N, B]`` (default: the SMC
   samplers' own :func:`diffinv.samplers.smc.systematic_resample`): new particle j of measurement b is old
   particle ``ancestors[j, b]``;
4. one all-to-all moves the particles: rank r receives, for its slots ``[start_r, start_r + n_r)``, the rows of
   the ancestors other ranks hold, and only those (at most ``n_r B`` rows of ``d`` values; the split sizes
   follow from the ancestors, which every rank knows, so nothing else is exchanged).

On one process (``LocalParticles``) the result is ``x[ancestors[j, b], b]``; sharded, each rank gets its rows of
that result exactly (resampling moves values, it sums nothing), whatever the number of ranks.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .particles import LocalParticles


def uniforms(b: int, generator: torch.Generator | None, device) -> Tensor:
    """One U[0, 1) draw per measurement from the sampler's generator (on the generator's device, as ``randn``)."""
    gen_device = generator.device if generator is not None else "cpu"
    return torch.rand(b, generator=generator, dtype=torch.float64, device=gen_device).to(device)


def global_log_weights(log_weights: Tensor, particles=None) -> Tensor:
    """Every particle's log-weights ``[N, B]`` from this rank's ``[n_r, B]`` (one all-gather)."""
    if particles is None:
        return log_weights
    (full,) = particles.gather(log_weights[..., None])
    return full[..., 0]


def resample(log_weights: Tensor, x: Tensor, generator: torch.Generator | None, particles=None,
             select=None) -> tuple[Tensor, Tensor]:
    """Resample this rank's particles ``x [n_r, B, ...]`` by the global weights (module docstring). Returns the new
    particles of this rank ``[n_r, B, ...]`` and the global ancestors ``[N, B]``."""
    particles = particles or LocalParticles(x.shape[0])
    b = x.shape[1]
    lw = global_log_weights(log_weights, particles)
    u = particles.broadcast(uniforms(b, generator, x.device))
    if select is None:
        from .smc import systematic_resample as select
    ancestors = select(lw, u)
    return move(x, ancestors, particles), ancestors


def move(x: Tensor, ancestors: Tensor, particles=None) -> Tensor:
    """This rank's new particles ``[n_r, B, ...]``: new particle j of measurement b is old particle
    ``ancestors[j, b]`` (global indices ``[N, B]``, the same on every rank), wherever it is held (one all-to-all)."""
    particles = particles or LocalParticles(x.shape[0])
    b = x.shape[1]
    if not particles.sharded:
        return x[ancestors, torch.arange(b, device=x.device)[None]]
    flat = ancestors.reshape(-1)                                                   # pair (j, b) at j * B + b
    starts = torch.tensor([s for s, _ in particles.pieces], device=flat.device)
    owner = torch.searchsorted(starts, flat, right=True) - 1                       # rank holding each ancestor
    slot_rank = torch.repeat_interleave(torch.arange(particles.world, device=flat.device),
                                        torch.tensor([c * b for _, c in particles.pieces], device=flat.device))
    # what this rank sends: its ancestors' rows, in the order of the destination slots (rank order, then j, b)
    send = (owner == particles.rank).nonzero()[:, 0]
    send_counts = torch.bincount(slot_rank[send], minlength=particles.world).tolist()
    local_row = (flat[send] - particles.start) * b + send % b
    rows = x.reshape(particles.count * b, *x.shape[2:])[local_row]
    # what it receives: its own slots' ancestors, grouped by the rank that holds them
    mine = slice(particles.start * b, (particles.start + particles.count) * b)
    holders = owner[mine]
    recv_counts = torch.bincount(holders, minlength=particles.world).tolist()
    received = particles.exchange(rows, send_counts, recv_counts)
    out = x.new_empty((particles.count * b, *x.shape[2:]))
    out[torch.argsort(holders, stable=True)] = received
    return out.reshape(x.shape)

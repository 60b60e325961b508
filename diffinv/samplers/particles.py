"""Where an ensemble's particles live: all in this process (:class:`LocalParticles`, the default) or split over the
ranks of a ``torch.distributed`` process group (:class:`ShardedParticles`).

Ensemble samplers (EnKG, EKI) take every statistic over the particle axis (axis 0 of a ``[N, B, ...]``
ensemble) through one of these objects, so that the same code runs on one process or on many:

* ``gather(*ts)``: every particle's rows of each tensor, ``[N, B, ...]`` (local: the tensors themselves);
* ``mean(t)``, ``spread(xd)``: the mean over all particles and the std of deviations (all-reduce of sums);
* ``own(t)``: this rank's columns of an ``[..., N]`` matrix over all particles (local: the matrix itself);
* ``row_norm(c)``: the Frobenius norm of a matrix whose rows are split over the ranks (``[B, n_r, N]``);
* ``randn(shape, generator)``: this rank's rows of Gaussian noise for the whole ensemble. Every rank draws the
  noise of all ``N`` particles from the same generator and keeps its own rows, so the draws of particle n are
  the same whatever the number of ranks (and the same as on one process), and the generators stay in step
  (the ensemble checkpoint stores one generator state for all ranks). Drawing ``N`` particles' noise costs far
  less than one network call per particle;
* ``split(full)`` / ``collect(local)``: between this rank's sample-major rows ``[n_r * B, ...]`` and the whole
  ensemble's ``[N * B, ...]`` (resume from a checkpoint; the solver's gather of the samples).

:class:`LocalParticles` runs exactly the operations a sampler ran before ranks existed (bit-for-bit). In
:class:`ShardedParticles` rank r holds the particles ``[start, start + count)`` of :func:`partition`, a
contiguous, balanced split (the first ``N mod R`` ranks hold one more). Collectives use the tensors' device
(gloo on CPU, NCCL on GPU). Uneven shards are padded to the largest for ``all_gather`` (which needs equal sizes).
``traffic`` counts what this rank receives, in bytes, as ring algorithms move it: an all-gather receives
``(R - 1) x`` the padded shard, an all-reduce of P bytes ``2 (R - 1) / R x P``.

Failures: a rank whose own work (network or forward-model calls) raises would leave the others waiting in the
next collective. ``guard(compute, *shapes)`` runs that work; sharded, a failure is recorded and NaN tensors of
the given shapes are returned instead, and from then on the rank skips its work. The NaN reaches every rank
through the next gathered statistic, and ``run()`` (around the sampler's loop) raises at its end: the failing
rank its own error, the others what the NaN caused (non-finite samples). No host synchronisation is added.
"""
from __future__ import annotations

import contextlib
from collections import Counter

import torch
from torch import Tensor

from .base import randn as _randn


def partition(total: int, parts: int) -> list[tuple[int, int]]:
    """``(start, count)`` of each of ``parts`` contiguous, balanced pieces of ``range(total)``."""
    if parts < 1 or total < 0:
        raise ValueError(f"partition: need parts >= 1 and total >= 0, got {parts} and {total}")
    base, extra = divmod(total, parts)
    counts = [base + (p < extra) for p in range(parts)]
    starts = [sum(counts[:p]) for p in range(parts)]
    return list(zip(starts, counts))


class LocalParticles:
    """All ``total`` particles in this process."""

    def __init__(self, total: int):
        self.total, self.start, self.count = int(total), 0, int(total)
        self.rank, self.world = 0, 1
        self.traffic: Counter = Counter()
        self.failure: Exception | None = None

    @property
    def sharded(self) -> bool:
        return self.world > 1

    # ------------------------------------------------------------------ this rank's work and its failures
    def guard(self, compute, *fallback: tuple[int, ...], like: Tensor) -> tuple[Tensor, ...]:
        """``compute()`` (a tuple of tensors); see the module docstring for the sharded case."""
        if not self.sharded:
            return compute()
        if self.failure is None:
            try:
                return compute()
            except Exception as err:       # noqa: BLE001 - raised by run() at the end
                self.failure = err
        return tuple(torch.full(shape, float("nan"), dtype=like.dtype, device=like.device) for shape in fallback)

    @contextlib.contextmanager
    def run(self):
        """Around a sampler's loop: raise this rank's recorded failure at the end (or instead of what it caused)."""
        self.failure = None
        try:
            yield
        except Exception as err:
            if self.failure is not None:
                raise self.failure from err
            raise
        if self.failure is not None:
            raise self.failure

    # ------------------------------------------------------------------ statistics over the particle axis
    def gather(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        return tensors

    def mean(self, t: Tensor) -> Tensor:
        return t.mean(0, keepdim=True)

    def spread(self, xd: Tensor) -> Tensor:
        """Unbiased std over particles of deviations ``xd`` (their mean is zero)."""
        return xd.std(0, keepdim=True)

    def own(self, t: Tensor) -> Tensor:
        return t

    def row_norm(self, coef: Tensor) -> Tensor:
        return torch.linalg.matrix_norm(coef)

    # ------------------------------------------------------------------ draws and layout
    def randn(self, shape, generator: torch.Generator | None, like: Tensor | None = None, dtype=None) -> Tensor:
        return _randn(shape, generator, like=like, dtype=dtype)

    def split(self, full: Tensor) -> Tensor:
        return full

    def collect(self, local: Tensor, b: int | None = None) -> Tensor:
        return local

    def broadcast(self, t: Tensor) -> Tensor:
        """Rank 0's ``t`` on every rank."""
        return t

    def exchange(self, rows: Tensor, send_counts: list[int], recv_counts: list[int]) -> Tensor:
        """All-to-all of rows: ``rows`` holds, in rank order, ``send_counts[q]`` rows for each rank q; returns the
        rows received, ``recv_counts[p]`` from each rank p in rank order."""
        return rows


class ShardedParticles(LocalParticles):
    """``total`` particles split over the ranks of ``group`` (default: the default process group), by
    :func:`partition` or by the given ``pieces`` (``(start, count)`` per rank, contiguous in rank order; a rank
    may then hold none: for gathering independent draws, not for an ensemble sampler)."""

    def __init__(self, total: int, group=None, pieces: list[tuple[int, int]] | None = None):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("ShardedParticles needs an initialised torch.distributed process group "
                               "(torchrun, or Lightning's DDP strategy)")
        super().__init__(total)
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        if pieces is None and self.total < self.world:
            raise ValueError(f"{self.total} particles cannot be split over {self.world} ranks: use at least one "
                             f"particle per rank (num_samples >= {self.world}) or fewer processes")
        self.pieces = partition(self.total, self.world) if pieces is None else [(int(a), int(c)) for a, c in pieces]
        if len(self.pieces) != self.world or [a for a, _ in self.pieces] != [sum(c for _, c in self.pieces[:r])
                                                                         for r in range(self.world)] \
                or sum(c for _, c in self.pieces) != self.total:
            raise ValueError(f"pieces {self.pieces} are not a contiguous split of {self.total} over {self.world} ranks")
        self.start, self.count = self.pieces[self.rank]
        self._pad = max(1, max(c for _, c in self.pieces))

    # ------------------------------------------------------------------ collectives
    def _all_reduce(self, t: Tensor) -> Tensor:
        import torch.distributed as dist

        t = t.contiguous().clone()
        dist.all_reduce(t, group=self.group)
        self.traffic["all_reduce"] += 2 * (self.world - 1) * t.numel() * t.element_size() // self.world
        return t

    def _all_gather_rows(self, t: Tensor) -> Tensor:
        """``t [count, ...]`` of every rank, concatenated in rank order: ``[total, ...]``."""
        import torch.distributed as dist

        pad = self._pad
        buf = t.new_zeros((pad, *t.shape[1:]))
        buf[: t.shape[0]] = t
        out = t.new_empty((self.world * pad, *t.shape[1:]))
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, buf, group=self.group)
        self.traffic["all_gather"] += (self.world - 1) * buf.numel() * buf.element_size()
        return torch.cat([out[r * pad: r * pad + c] for r, (_, c) in enumerate(self.pieces)])

    def gather(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """One all-gather for all tensors (``[count, B, k_i]``, one dtype): concatenated along the last axis."""
        sizes = [t.shape[-1] for t in tensors]
        full = self._all_gather_rows(torch.cat(tensors, -1))
        return tuple(full.split(sizes, -1))

    def mean(self, t: Tensor) -> Tensor:
        return self._all_reduce(t.sum(0, keepdim=True)) / self.total

    def spread(self, xd: Tensor) -> Tensor:
        return (self._all_reduce(xd.square().sum(0, keepdim=True)) / (self.total - 1)).sqrt()

    def own(self, t: Tensor) -> Tensor:
        return t[..., self.start: self.start + self.count]

    def row_norm(self, coef: Tensor) -> Tensor:
        return self._all_reduce(coef.square().sum((-2, -1))).sqrt()

    # ------------------------------------------------------------------ draws and layout
    def randn(self, shape, generator: torch.Generator | None, like: Tensor | None = None, dtype=None) -> Tensor:
        shape = tuple(shape)
        b = self._rows_per_particle(shape[0])
        full = _randn((self.total * b, *shape[1:]), generator, like=like, dtype=dtype)
        return full[self.start * b: (self.start + self.count) * b]

    def split(self, full: Tensor) -> Tensor:
        b, rest = divmod(full.shape[0], self.total)
        if rest:
            raise ValueError(f"an ensemble of {self.total} particles cannot have {full.shape[0]} rows")
        return full[self.start * b: (self.start + self.count) * b]

    def collect(self, local: Tensor, b: int | None = None) -> Tensor:
        """Every rank's sample-major rows ``[count * b, ...]`` as the whole ensemble's ``[total * b, ...]``."""
        b = self._rows_per_particle(local.shape[0]) if b is None else b
        rows = local.reshape(self.count, b, *local.shape[1:]).flatten(2)
        return self._all_gather_rows(rows).reshape(self.total * b, *local.shape[1:])

    def broadcast(self, t: Tensor) -> Tensor:
        import torch.distributed as dist

        t = t.contiguous().clone()
        dist.broadcast(t, dist.get_global_rank(self.group, 0) if self.group is not None else 0, group=self.group)
        self.traffic["broadcast"] += 0 if self.rank == 0 else t.numel() * t.element_size()
        return t

    def exchange(self, rows: Tensor, send_counts: list[int], recv_counts: list[int]) -> Tensor:
        import torch.distributed as dist

        rows = rows.contiguous()
        out = rows.new_empty((sum(recv_counts), *rows.shape[1:]))
        dist.all_to_all_single(out, rows, recv_counts, send_counts, group=self.group)
        row = rows[:1].numel() * rows.element_size()
        self.traffic["all_to_all"] += (sum(recv_counts) - recv_counts[self.rank]) * row
        return out

    def _rows_per_particle(self, rows: int) -> int:
        b, rest = divmod(rows, self.count)
        if rest:
            raise ValueError(f"{rows} sample-major rows are not {self.count} particles x B measurements")
        return b

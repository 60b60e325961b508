"""How the posterior draws of one item are made, on one rank or on all of them (``sample_parallel``).

The ``num_samples`` draws of an item are made in **blocks** of ``samples_per_call`` draws, one sampler call per
block: block k covers the draws ``[k c, (k + 1) c)`` and has its own generator, seeded from ``(seed, id, k)``
(:func:`block_seed`; block 0 keeps the item's seed of a one-call run, so ``samples_per_call = num_samples``, the
default without ``sample_parallel``, is the one-call run). Under ``sample_parallel`` every rank works on the
same item: the blocks are split over the ranks, contiguously (:func:`rank_blocks`), each rank draws its blocks one
after another, and the draws are gathered in draw order. The draws therefore depend on ``samples_per_call``
(default 1 under ``sample_parallel``: every draw its own stream), never on the number of ranks.

A sampler whose draws interact (an ensemble: EnKG, EKI) is never split into blocks: under ``sample_parallel``
it gets its ensemble split over the ranks (``diffinv.samplers.particles.ShardedParticles``), with the item's
usual generator on every rank, and its result is the one-process result up to the order of floating-point sums.

Every rank must see the same items in the same order (``--trainer.use_distributed_sampler false``, which the
CLI sets with ``sample_parallel``): :func:`same_item` checks it before each item, with rank 0's decision on
skipping it, and :func:`raise_if_any_failed` makes a failure on one rank a failure on all of them (instead of
a rank waiting forever in the next collective).
"""
from __future__ import annotations

from typing import Any

import torch

from datamodules.base import sample_seed
from diffinv.samplers.particles import partition


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_ranks(value: Any) -> list[Any]:
    """Every rank's ``value`` (small, picklable), in rank order (``[value]`` without a process group)."""
    if not distributed():
        return [value]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def blocks(num_samples: int, per_call: int) -> list[tuple[int, int]]:
    """``(first draw, draws)`` of each block."""
    return [(s, min(per_call, num_samples - s)) for s in range(0, num_samples, per_call)]


def block_seed(seed: int, sample_id: str, k: int) -> int:
    return sample_seed(seed, f"{sample_id}/sampler" if k == 0 else f"{sample_id}/sampler/{k}")


def rank_blocks(num_blocks: int, world: int) -> list[range]:
    """The blocks of each rank: contiguous and balanced, so that the ranks' draws concatenate in draw order."""
    return [range(start, start + count) for start, count in partition(num_blocks, world)]


def same_item(sample_id: str, status: str | None) -> str | None:
    """Check that every rank is at ``sample_id``; return rank 0's ``status`` (complete / failed / None)."""
    seen = all_ranks((sample_id, status))
    ids = [s for s, _ in seen]
    if len(set(ids)) > 1:
        raise RuntimeError(f"sample_parallel: the ranks are at different items ({', '.join(map(str, ids))}); every "
                           f"rank must see every item: run with --trainer.use_distributed_sampler false (the diffinv "
                           f"CLI sets it when model.init_args.sample_parallel is true)")
    return seen[0][1]


def raise_if_any_failed(error: BaseException | None) -> None:
    """All ranks call it at the same point: when any rank failed, every rank raises one error naming each failed
    rank's error (a failure on one rank is often followed by others, as NaN reaches them: the first is the cause)."""
    messages = all_ranks(None if error is None else f"{type(error).__name__}: {error}")
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if not failed:
        return
    if len(messages) == 1:
        raise error
    detail = "; ".join(f"rank {r}: {m}" for r, m in failed)
    raise RuntimeError(f"the solve failed on {len(failed)} of {len(messages)} ranks ({detail})") from error


def summed(costs: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for cost in costs:
        for k, v in cost.items():
            out[k] = out.get(k, 0) + int(v)
    return out

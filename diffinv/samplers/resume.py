"""Saving and resuming a step-by-step sampler, so that a pre-empted run ends with the same result as an
uninterrupted one.

A checkpoint store has ``every`` (save after every ``every``-th step), ``load() -> dict | None`` and
``save(state)``; the sampler calls ``save`` on every rank (the store decides who writes: under
``torch.distributed`` rank 0) and ``load`` on every rank at its start. :class:`MemoryCheckpoint` keeps the state
in memory (tests, library use); ``diffinv predict`` stores it atomically in the output folder
(``lightning_modules.ensemble_checkpoint``).

The state (:func:`capture`) is what the rest of the run depends on: the index of the next step, the whole
ensemble (all ranks' particles, so a run can resume on another number of ranks), the generator's state and the
cost counted so far. Saved after step ``i`` with ``x`` and the generator as they are then, the resumed run
repeats exactly the operations of the uninterrupted one.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor


class MemoryCheckpoint:
    """An in-memory checkpoint store (``saved`` holds the last state, ``saves`` counts them)."""

    def __init__(self, every: int, saved: dict | None = None):
        if every < 1:
            raise ValueError(f"checkpoint every must be >= 1 step, got {every}")
        self.every, self.saved, self.saves = int(every), saved, 0

    def load(self) -> dict | None:
        return self.saved

    def save(self, state: dict) -> None:
        self.saved, self.saves = state, self.saves + 1


def due(checkpoint, step: int, num_steps: int) -> bool:
    """Save after ``step`` (0-based)? Every ``every``-th step, never after the last (the result follows)."""
    return checkpoint is not None and (step + 1) % checkpoint.every == 0 and step + 1 < num_steps


def capture(next_step: int, ensemble: Tensor, generator: torch.Generator | None, cost) -> dict[str, Any]:
    return {"step": int(next_step), "x": ensemble.detach().cpu().clone(),
            "generator": None if generator is None else generator.get_state(),
            "cost": {k: int(v) for k, v in dataclasses.asdict(cost).items()}}


def restore(state: dict[str, Any], shape: tuple[int, ...], num_steps: int, generator: torch.Generator | None,
            cost, like: Tensor) -> tuple[int, Tensor]:
    """``(next step, whole ensemble on like's device and dtype)`` of a saved state, after setting the generator
    and the cost to theirs. A state of another ensemble shape or step count is refused."""
    x = state["x"]
    if tuple(x.shape) != tuple(shape) or not 0 < int(state["step"]) < num_steps:
        raise ValueError(f"the saved ensemble {list(x.shape)} at step {state['step']} does not belong to this run "
                         f"({list(shape)}, {num_steps} steps)")
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])
    for k, v in (state.get("cost") or {}).items():
        setattr(cost, k, int(v))
    return int(state["step"]), x.to(device=like.device, dtype=like.dtype)

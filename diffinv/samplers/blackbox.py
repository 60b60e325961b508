"""Black-box access to the forward model for the derivative-free samplers (DPG, SCG, DPS-GSG): the misfit of many
candidate states against their measurements in as few forward-model calls as the model allows, never differentiated.

Candidates are stacked ``[M * N, ...]``: row r is a candidate for measurement row ``r % N`` of the sample-major
``y_rep [N, ...]`` (N = num_samples * B), so M candidates per particle (Monte Carlo draws, perturbations, next-step
proposals) of every particle and every measurement go through one call.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion import Cost
from .guidance import MISFITS, misfit


def check_query(name: str, kind: str, batch_size: int | None) -> None:
    """Validation of the query settings every derivative-free sampler takes (``misfit``, ``batch_size``)."""
    if kind not in MISFITS:
        raise ValueError(f"{name}: misfit must be one of {MISFITS}, got {kind!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"{name}: batch_size must be >= 1 or None (all rows in one call), got {batch_size}")


def query_misfit(operator, x: Tensor, y_rep: Tensor, kind: str, cost: Cost, batch_size: int | None = None) -> Tensor:
    """Per-row misfit ``[M * N]`` of the stacked candidates ``x`` (see the module docstring), computed under
    ``torch.no_grad()`` in chunks of at most ``batch_size`` rows (None: one call); each call counts in
    ``cost.forward_calls``."""
    n = y_rep.shape[0]
    m = x.shape[0] // n
    if m * n != x.shape[0]:
        raise ValueError(f"query_misfit: {x.shape[0]} candidate rows are not a multiple of the {n} measurements")
    x = x.detach()
    y_all = y_rep.repeat(m, *([1] * (y_rep.dim() - 1)))
    size = x.shape[0] if batch_size is None else batch_size
    out = []
    with torch.no_grad():
        for xc, yc in zip(x.split(size), y_all.split(size)):
            cost.forward_calls += 1
            out.append(misfit(operator, operator(xc), yc, kind))
    return torch.cat(out)

"""torch's intra-op thread count for CPU work: one thread unless asked otherwise.

Measured with ``scripts/measure_threads.py`` on this project's machine (2 cores shared with other jobs, load
average 3.8-5.1; best of 3 per call, 1 thread vs torch's default of 2): the Navier–Stokes forward model at
64 x 64 on 1 / 4 / 32 fields, the ns64 prior's network on batches of 1 to 128, a DPS gradient step and a
training step of the ns64 prior all ran slower with 2 threads than with 1, by 1.7x (batch 128) to 13x (4
fields); the table is in the README, "Threads". Small grids give each thread too little work, and on a
machine whose cores are busy every extra thread waits for a core. So the default is 1; ``--threads N`` (or ``OMP_NUM_THREADS``, which torch reads at start) sets more, which
pays only for large batches on cores nobody else uses: measure with ``scripts/measure_threads.py``.
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)
ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def default_threads() -> int:
    """1, or what ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` ask for (a user's explicit setting wins)."""
    for name in ENV:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def apply_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (None: :func:`default_threads`); returns the count."""
    n = default_threads() if threads is None else threads
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive int (or unset for the default, 1), got {threads!r}.")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.info("torch intra-op threads: %d (--threads to change)", n)
    return n

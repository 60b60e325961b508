"""Test-only samplers that fail on purpose, the way real ones do when their step size or guidance is too large.

Their names start with ``_`` so that they stay out of ``diffinv.samplers.base.SAMPLERS`` (the registry the
sampler-contract tests walk)."""
from __future__ import annotations

import torch

from diffinv.samplers.base import Sampler, randn


class _Diverging(Sampler):
    """Starts from ``start`` x noise and multiplies the iterate by ``growth`` at every step, calling the forward model
    on it (as a guidance step would). Fails on its first ``fail_calls`` calls only (then it returns noise),
    so that one run has both a failed and a complete item. ``nan_at``: the step at which the iterate turns
    NaN instead (an image operator then raises on its input)."""

    def __init__(self, num_steps: int = 10, growth: float = 30.0, start: float = 0.03, fail_calls: int = 1,
                 nan_at: int | None = None):
        super().__init__()
        self.num_steps, self.growth, self.start, self.fail_calls, self.nan_at = num_steps, growth, start, fail_calls, nan_at
        self._calls = 0

    def _sample(self, y, operator, prior, num_samples, generator, callback):
        self._calls += 1
        x = self.start * randn((num_samples, *prior.event_shape), generator, like=y)
        for step in range(self.num_steps):
            if self._calls <= self.fail_calls:
                x = x * self.growth
                if self.nan_at is not None and step >= self.nan_at:
                    x = x * float("nan")
            if callback is not None:
                callback(step, self.num_steps, x)
            with torch.no_grad():
                operator(x)
            self.cost.nfe += 1
            self.cost.forward_calls += 1
        return x


class _Constant(Sampler):
    """Returns ``value`` everywhere: finite, and (for a large value) nowhere near the data."""

    def __init__(self, value: float = 50.0):
        super().__init__()
        self.value = value

    def _sample(self, y, operator, prior, num_samples, generator, callback):
        self.cost.nfe += 1
        return torch.full((num_samples, *prior.event_shape), self.value, dtype=y.dtype)


class _Sleepy(Sampler):
    """Spends ``seconds`` inside one forward-model call per item (like a long PDE solve)."""

    def __init__(self, seconds: float = 60.0):
        super().__init__()
        self.seconds = seconds

    def _sample(self, y, operator, prior, num_samples, generator, callback):
        import time

        x = randn((num_samples, *prior.event_shape), generator, like=y)
        deadline = time.time() + self.seconds
        while time.time() < deadline:        # pure Python work, no callback: only a signal can stop it
            sum(range(10000))
        self.cost.nfe += 1
        return x

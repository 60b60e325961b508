"""The sampler contract (``docs/conventions.md#sampler-contract``).

A sampler's ``__init__`` takes only its hyperparameters; ``sample(y, operator, prior, num_samples,
generator, callback)`` returns ``[num_samples * B, ...]`` posterior samples in sample-major order
(``out.view(num_samples, B, ...)``: draw s of measurement b is ``out[s * B + b]``). Each sampler counts
what it spent in ``self.cost`` (reset at every call) and declares what it needs from the operator and
the prior in ``requires``; ``check(operator, prior)`` fails fast, before any work, naming the algorithm,
the missing capability and the algorithms that would work.

Two run options reach the samplers that declare them:

* ``particles`` (a ``diffinv.samplers.particles.ShardedParticles``; samplers with ``shardable = True``): the
  ensemble of ``num_samples`` particles is split over the ranks of a ``torch.distributed`` group; each rank
  passes the same ``y`` and an identically seeded generator, and gets back its own particles
  (``[particles.count * B, ...]``), the same as those rows of the one-process result up to round-off.
* ``checkpoint`` (``diffinv.samplers.resume``; samplers with ``resumable = True``): the sampler's state is saved
  every ``checkpoint.every`` steps and a saved state is resumed, with the same result as an uninterrupted run.

``interacting = True`` marks samplers whose draws are not independent (an ensemble): they cannot be drawn in
separate calls of fewer samples.
"""
from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import Tensor

from ..diffusion import Cost
from ..operators.base import Operator

# step, number of steps, current iterate
Callback = Callable[[int, int, Tensor], None]

CAPABILITIES = {
    "differentiable": "a differentiable forward model (gradients through the operator)",
    "linear": "a linear forward model",
    "svd": "a linear forward model with a singular value decomposition",
    "latent": "a latent prior (with encode / decode)",
    "interferometry": "interferometric data (a BlackHoleImaging operator)",
}

SAMPLERS: dict[str, type["Sampler"]] = {}


def capabilities(operator: Operator, prior=None) -> set[str]:
    caps = set()
    if operator.differentiable:
        caps.add("differentiable")
    if operator.linear:
        caps.add("linear")
        if operator.has_svd:
            caps.add("svd")
    if getattr(operator, "interferometric", False):
        caps.add("interferometry")
    if prior is not None and hasattr(prior, "encode") and hasattr(prior, "decode"):
        caps.add("latent")
    return caps


class Sampler:
    requires: ClassVar[frozenset[str]] = frozenset()
    interacting: ClassVar[bool] = False      # the draws form one ensemble (see the module docstring)
    shardable: ClassVar[bool] = False        # takes ``particles``: the ensemble split over ranks
    resumable: ClassVar[bool] = False        # takes ``checkpoint``: saves and resumes its state

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # the registry holds diffinv's own algorithms (a user's or a test's subclass stays out of benchmarks)
        if not cls.__name__.startswith("_") and cls.__module__.startswith(__name__.rsplit(".", 1)[0] + "."):
            SAMPLERS[cls.__name__] = cls

    def __init__(self) -> None:
        self.cost = Cost()

    def check(self, operator: Operator, prior=None) -> None:
        have = capabilities(operator, prior)
        missing = sorted(self.requires - have)
        if missing:
            works = sorted(name for name, cls in SAMPLERS.items() if cls.requires <= have)
            needs = "; ".join(CAPABILITIES[m] for m in missing)
            raise ValueError(f"{type(self).__name__} cannot run on {type(operator).__name__} with {type(prior).__name__}: "
                             f"it needs {needs}. Samplers that work here: {', '.join(works) or 'none'}.")

    def sample(self, y: Tensor, operator: Operator, prior, num_samples: int = 1,
               generator: torch.Generator | None = None, callback: Callback | None = None, *,
               particles=None, checkpoint=None) -> Tensor:
        self.check(operator, prior)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        run = {}
        if particles is not None:
            if not self.shardable:
                raise ValueError(f"{type(self).__name__} cannot split its samples over ranks (particles=); "
                                 f"samplers that can: {', '.join(sorted(n for n, c in SAMPLERS.items() if c.shardable))}")
            if particles.total != num_samples:
                raise ValueError(f"particles describe {particles.total} particles, num_samples is {num_samples}")
            run["particles"] = particles
        if checkpoint is not None:
            if not self.resumable:
                raise ValueError(f"{type(self).__name__} does not save its state (checkpoint=); samplers that do: "
                                 f"{', '.join(sorted(n for n, c in SAMPLERS.items() if c.resumable))}")
            run["checkpoint"] = checkpoint
        self.cost = Cost()
        out = self._sample(y, operator, prior, num_samples, generator, callback, **run)
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError(f"{type(self).__name__} produced NaN/Inf samples; lower the step size or guidance "
                                     f"scale, or check the measurement and the noise level.")
        return out

    def _sample(self, y: Tensor, operator: Operator, prior, num_samples: int, generator, callback) -> Tensor:
        raise NotImplementedError  # pragma: no cover


# ----------------------------------------------------------------------------- shared helpers
def real_dtype(y: Tensor) -> torch.dtype:
    """The real dtype samples take for measurements ``y`` (float for complex ones, e.g. Fourier data)."""
    return y.real.dtype if y.is_complex() else y.dtype


def repeat_measurement(y: Tensor, num_samples: int) -> Tensor:
    """Sample-major copy of the measurements: ``[num_samples * B, ...]``."""
    return y.repeat(num_samples, *([1] * (y.dim() - 1)))


def randn(shape, generator: torch.Generator | None, like: Tensor | None = None, dtype=None, device=None) -> Tensor:
    """Gaussian noise drawn on the generator's device (seeded reproducibility) and moved to ``device``."""
    dtype = dtype or (like.dtype if like is not None else torch.float32)
    device = device or (like.device if like is not None else None)
    gen_device = generator.device if generator is not None else "cpu"
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=gen_device).to(device)


def posterior_stats(samples: Tensor, num_samples: int) -> tuple[Tensor, Tensor]:
    """Posterior mean and standard deviation per measurement from sample-major draws ``[num_samples * B, ...]``
    (the unbiased std; zero when there is a single draw)."""
    s = samples.reshape(num_samples, -1, *samples.shape[1:])
    std = s.std(0, unbiased=True) if num_samples > 1 else torch.zeros_like(s[0])
    return s.mean(0), std

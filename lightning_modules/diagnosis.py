"""What went wrong with one item of ``diffinv predict``, in words a user can act on.

* :class:`Trajectory` follows a sampler's iterates through its progress callback (step, and the largest
  absolute value of the iterate) so that a failure can name the step and tell a diverging sampler from a
  problem of the forward model or of the data. A healthy diffusion sampler's iterate shrinks towards the data's
  scale as its noise level falls; one that grew again (by ``GROWTH`` x its smallest value so far) to well above
  the truth's scale before the failure was driven there by its guidance or step size.
* :func:`misfit_check` compares the posterior mean's data misfit with the noise level: for Gaussian noise
  ``||A x - y||^2 / (2 sigma^2)`` is about ``m / 2`` for a field that fits the data to the noise (``m``
  measured values); a misfit far above it (``FLAG_FACTOR`` x) is flagged in the summary.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from diffinv.operators.base import Operator
from diffinv.operators.noise import GaussianNoise

GROWTH = 1.5           # an iterate this many times larger than its smallest value so far is growing again
FLAG_FACTOR = 100.0    # misfit above FLAG_FACTOR x m / 2 is flagged


class Trajectory:
    """Step and amplitude of a sampler's iterates, recorded from its callback."""

    def __init__(self, reference: float | None = None):
        self.reference = reference          # the truth's max |x|, for scale
        self.step: int | None = None
        self.num_steps: int | None = None
        self.last: float | None = None
        self.smallest: tuple[float, int] | None = None     # (amplitude, step)

    def record(self, step: int, num_steps: int, x: Tensor) -> None:
        amp = float(x.detach().abs().amax()) if x.numel() else 0.0
        self.step, self.num_steps, self.last = int(step), int(num_steps), amp
        if math.isfinite(amp) and (self.smallest is None or amp < self.smallest[0]):
            self.smallest = (amp, int(step))

    def where(self) -> str:
        if self.step is None:
            return "before its first step"
        return f"at step {self.step + 1} of {self.num_steps}"

    def cause(self) -> str:
        """The likely cause of a failure at the current point of the trajectory."""
        if self.last is None:
            return "the failure came before the sampler's first step: check the prior, the operator and the data"
        if not math.isfinite(self.last):
            return ("the sampler's iterate became non-finite: its step size or guidance is too large for this "
                    "problem (lower zeta / lr / guidance_scale, or use more steps)")
        scale = "" if self.reference is None else f"; the truth's max |x| is {self.reference:.3g}"
        above = self.reference is None or self.last > 2 * self.reference
        if self.smallest is not None and self.last > GROWTH * max(self.smallest[0], 1e-12) and above:
            return (f"the sampler's iterate grew from max |x| = {self.smallest[0]:.3g} (step {self.smallest[1] + 1}) "
                    f"to {self.last:.3g} before the failure{scale}: its step size or guidance is too large for "
                    f"this problem (lower zeta / lr / guidance_scale, or use more steps)")
        return f"not the sampler's growth (its iterate is max |x| = {self.last:.3g}{scale}): see the error itself"


def failure_record(sample_id: str, sampler: str, err: BaseException, trajectory: Trajectory,
                   seconds: float) -> dict[str, Any]:
    """The ``<id>.failed.json`` content of an item whose solve raised ``err``."""
    message = (f"{sample_id}: {sampler} failed {trajectory.where()} with {type(err).__name__}: {str(err).rstrip('.')}. "
               f"Likely cause: {trajectory.cause()}.")
    return {"id": sample_id, "failed": True, "sampler": sampler, "error": type(err).__name__, "message": message,
            "step": None if trajectory.step is None else trajectory.step + 1, "num_steps": trajectory.num_steps,
            "iterate_max_abs": trajectory.last, "seconds": seconds}


def noise_level(operator: Operator, y_obs: Tensor) -> float | None:
    """``m / 2``, the expected misfit of a field that fits to the noise, where the misfit is the Gaussian
    ``||r||^2 / (2 sigma^2)`` of the operator's noise model; None for other misfits (closure chi-squares, Poisson)."""
    noise = getattr(operator, "noise", None)
    if type(operator).loss is not Operator.loss or not isinstance(noise, GaussianNoise) or noise.sigma <= 0:
        return None
    m = y_obs[0].numel() * (2 if torch.is_complex(y_obs) else 1)
    return m / 2


def misfit_check(operator: Operator, y_obs: Tensor, misfit: float | None) -> dict[str, Any] | None:
    """``{"value", "reference", "flagged"}`` for the posterior mean's misfit, or None when there is no reference."""
    ref = noise_level(operator, y_obs)
    if ref is None or misfit is None:
        return None
    flagged = not math.isfinite(misfit) or misfit > FLAG_FACTOR * ref
    return {"value": float(misfit), "reference": ref, "flagged": bool(flagged)}

"""Latent-DPS: diffusion posterior sampling run in the latent space of a latent diffusion prior.

DPS (Chung et al., ICLR 2023, Algorithm 1) with the measurement taken through the decoder, as the
Latent-DPS baseline of ReSample (Song et al., ICLR 2024, Sec. 5) and PSLD (Rout et al., NeurIPS 2023,
Eq. 6 without the gluing term):

    z0_hat   = E[z0 | z_t]                                   Tweedie, through prior.denoise (VP -> VE coordinates)
    z'_{t-1} = DDIM(z_t, z0_hat; eta)                        Song et al. 2021, Eq. 12 (eta = 1: DDPM ancestral step)
    z_{t-1}  = z'_{t-1} - zeta_t grad_{z_t} ||y - A(D(z0_hat))||          DPS Algorithm 1, line 7, with the decoder D

with ``zeta_t = zeta`` or, with ``scale_by_abar=True``, ``zeta_t = zeta * abar_t`` (the step ReSample uses
inside its sampler: 0.5 abar_t). The misfit is the norm, not squared, as in the DPS / ReSample / PSLD code.

The measurement lives in pixel space (``operator(prior.decode(z))``) and **the returned samples are
decoded images** ``[num_samples * B, C, H, W]`` (the final latent goes through ``prior.decode``), so
metrics and prediction writers work as for pixel priors. The helpers of this file (VP <-> VE
bookkeeping, the latent DPS gradient, the phase timer) are shared by ReSample and PSLD.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from torch import Tensor

from ..diffusion import Cost, DiscreteVPSchedule, ddim_step
from .base import Sampler, randn, real_dtype, repeat_measurement
from .guidance import residual_norm


# ------------------------------------------------------------------------------------------ shared helpers
class PhaseTimer:
    """Wall time per phase (``unet``, ``decoder``, ``optimisation``, ...). With ``synchronize=True`` CUDA is
    synchronised at each boundary so that asynchronous kernels are charged to the right phase."""

    def __init__(self, synchronize: bool = False):
        self.synchronize = synchronize
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        sync = self.synchronize and torch.cuda.is_available()
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if sync:
                torch.cuda.synchronize()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def decode(self, prior, z: Tensor) -> Tensor:
        """The latent samplers' last step: decode the final latents to pixels (timed as ``decoder``)."""
        with torch.no_grad(), self("decoder"):
            return prior.decode(z)


def latent_x0(prior, z_t: Tensor, abar_t: Tensor) -> Tensor:
    """Tweedie's ``E[z0 | z_t]`` for the VP state ``z_t = sqrt(abar) (z0 + sigma n)``: the denoiser sees
    the VE point ``z_t / sqrt(abar)`` at ``sigma = sqrt((1 - abar) / abar)``
    (``docs/conventions.md#denoiser-convention``)."""
    sigma = ((1 - abar_t) / abar_t).sqrt()
    return prior.denoise(z_t / abar_t.sqrt(), sigma.expand(z_t.shape[0]))


def eps_from_x0(z_t: Tensor, z0: Tensor, abar_t: Tensor) -> Tensor:
    """The epsilon prediction implied by ``z0``: ``(z_t - sqrt(abar) z0) / sqrt(1 - abar)``."""
    return (z_t - abar_t.sqrt() * z0) / (1 - abar_t).sqrt()


def check_latent_operator(operator, prior, name: str) -> None:
    if tuple(operator.input_shape) != tuple(prior.pixel_shape):
        raise ValueError(f"{name}: the operator takes images {list(operator.input_shape)} but the latent prior decodes "
                         f"to {list(prior.pixel_shape)}; build the operator for the prior's image size.")


def latent_dps_gradient(z_t: Tensor, abar_t: Tensor, y: Tensor, operator, prior, cost: Cost, timer: PhaseTimer,
                        x0_estimate: str = "tweedie") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``grad_{z_t} ||y - A(D(z0_hat(z_t)))||`` per sample (DPS Eq. 16 in latent space).

    Returns ``(grad, z0_tweedie, z0_used, residual_norm)``. ``x0_estimate="reference"`` measures at
    ReSample's code estimate ``(z_t - (1 - abar) eps) / sqrt(abar)`` instead of Tweedie's
    ``(z_t - sqrt(1 - abar) eps) / sqrt(abar)``. The backward pass is split in two (decoder side, then
    UNet side) so that the timer charges each network its own share; the gradient is the same.
    """
    with torch.enable_grad():
        z = z_t.detach().requires_grad_(True)
        with timer("unet"):
            z0 = latent_x0(prior, z, abar_t)
            z0_used = z0 if x0_estimate == "tweedie" else reference_x0(z, z0, abar_t)
        with timer("decoder"):
            z0_leaf = z0_used.detach().requires_grad_(True)
            m = residual_norm(operator, operator(prior.decode(z0_leaf)), y)
            (g_z0,) = torch.autograd.grad(m.sum(), z0_leaf)
        with timer("unet"):
            (grad,) = torch.autograd.grad(z0_used, z, grad_outputs=g_z0)
    cost.nfe += 1
    cost.forward_calls += 1
    cost.grad_calls += 1
    return grad, z0.detach(), z0_used.detach(), m.detach()


def reference_x0(z_t: Tensor, z0: Tensor, abar_t: Tensor) -> Tensor:
    """ReSample's code estimate ``(z_t - (1 - abar) eps_hat) / sqrt(abar)`` (``pseudo_x0`` in its ``ddim.py``),
    which removes only ``sqrt(1 - abar)`` times the noise Tweedie's formula removes."""
    return (z_t - (1 - abar_t) * eps_from_x0(z_t, z0, abar_t)) / abar_t.sqrt()


def ddim_grid(schedule: DiscreteVPSchedule, num_steps: int, device, dtype) -> tuple[list[int], Tensor]:
    """Descending DDIM timesteps of latent diffusion's DDIM (``range(0, T, T // n) + 1``; with every timestep,
    where the shift would pass T - 1, the plain DDPM grid 999, ..., 0) and the matching ``abar`` (float, on
    ``device``), with ``abar = 1`` appended for the landing point of the final step (the clean estimate)."""
    stride = schedule.num_steps // num_steps
    offset = 1 if schedule.num_steps - 1 - (num_steps - 1) * stride >= 1 else 0
    ts = schedule.timesteps(num_steps, offset).tolist()
    abar = schedule.alphas_cumprod.to(device=device, dtype=torch.float64)[ts]
    return ts, torch.cat([abar, abar.new_ones(1)]).to(dtype)


def prior_schedule(prior) -> DiscreteVPSchedule:
    sched = getattr(prior, "schedule", None)
    if not isinstance(sched, DiscreteVPSchedule):
        raise ValueError(f"{type(prior).__name__} has no discrete VP schedule; latent samplers need a "
                         "diffinv.priors.LatentPrior.")
    return sched


# ------------------------------------------------------------------------------------------ the sampler
class LatentDPS(Sampler):
    """DPS in the latent space of a :class:`~diffinv.priors.latent.LatentPrior`; returns decoded images.

    Args:
        num_steps: DDIM steps on the prior's training schedule (1000 = every timestep).
        eta: DDIM stochasticity (1.0: the DDPM ancestral step DPS uses; 0.0: deterministic DDIM).
        zeta: step size of the measurement step.
        scale_by_abar: multiply the step by ``abar_t`` (ReSample's latent-DPS step is ``0.5 abar_t``).
        x0_estimate: ``"tweedie"`` or ``"reference"`` (ReSample's code estimate, see :func:`reference_x0`).
        profile: synchronise CUDA around timed phases (accurate ``self.timings`` on GPU, a little slower).
    """

    requires = frozenset({"latent", "differentiable"})

    def __init__(self, num_steps: int = 1000, eta: float = 1.0, zeta: float = 1.0, scale_by_abar: bool = False,
                 x0_estimate: str = "tweedie", profile: bool = False):
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"LatentDPS: num_steps must be >= 1, got {num_steps}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"LatentDPS: eta must be in [0, 1], got {eta}")
        if zeta < 0:
            raise ValueError(f"LatentDPS: zeta must be >= 0, got {zeta}")
        if x0_estimate not in ("tweedie", "reference"):
            raise ValueError(f"LatentDPS: x0_estimate must be 'tweedie' or 'reference', got {x0_estimate!r}")
        self.num_steps, self.eta, self.zeta, self.scale_by_abar = num_steps, eta, zeta, scale_by_abar
        self.x0_estimate, self.profile = x0_estimate, profile
        self.timings: dict[str, float] = {}

    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        check_latent_operator(operator, prior, type(self).__name__)
        timer = PhaseTimer(self.profile)
        dtype = real_dtype(y)
        y_rep = repeat_measurement(y, num_samples)
        ts, abar = ddim_grid(prior_schedule(prior), self.num_steps, y.device, dtype)
        z = randn((y_rep.shape[0], *prior.event_shape), generator, like=y, dtype=dtype)     # z_T ~ N(0, I)
        for i in range(len(ts)):
            a_t, a_prev = abar[i], abar[i + 1]
            grad, z0, _, _ = latent_dps_gradient(z, a_t, y_rep, operator, prior, self.cost, timer, self.x0_estimate)
            z_prime = ddim_step(z, z0, a_t, a_prev, self.eta, randn(z.shape, generator, like=z))   # DDIM Eq. 12
            step = self.zeta * (a_t if self.scale_by_abar else 1.0)
            z = (z_prime - step * grad).detach()                                   # DPS Algorithm 1, line 7
            if callback is not None:
                callback(i, len(ts), z)
        x = timer.decode(prior, z)
        self.timings = timer.seconds
        return x

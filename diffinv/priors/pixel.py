"""Pixel-space diffusion priors built from a network and, optionally, a checkpoint.

* EDM-family preconditioners (``EDMPrecond``, ``VPPrecond``) already are ``D(x, sigma)``;
* VP epsilon networks (guided-diffusion / DPS ``UNetModel``) go through ``VPEpsilonDenoiser`` with
  their discrete schedule: the network sees ``sqrt(abar) x`` at the timestep of ``sigma =
  sqrt((1 - abar) / abar)`` and ``x0_hat = x - sigma eps_hat``.

The checkpoint is loaded strictly (``diffinv.checkpoints.load_state_dict_into``): a mismatch is an
error, never a silently random prior. A checkpoint with a description (``<name>.prior.json``, see
``diffinv.priors.description``) is first checked against it: file hash, network class and arguments,
parameterisation; ``prior.description`` keeps it (the solver checks its problem family).
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ..checkpoints import load_state_dict_into
from ..diffusion import DiscreteVPSchedule, VPEpsilonDenoiser
from .base import DenoiserPrior
from .description import check_network, read_description


def _infer_event_shape(network: nn.Module) -> tuple[int, int, int]:
    if hasattr(network, "img_channels"):
        return (network.img_channels, network.img_resolution, network.img_resolution)
    if hasattr(network, "in_channels") and hasattr(network, "image_size"):
        return (network.in_channels, network.image_size, network.image_size)
    raise ValueError(f"cannot infer the image shape of {type(network).__name__}; pass event_shape=[C, H, W]")


class PixelPrior(DenoiserPrior):
    """``parameterization``: ``"edm"`` (the network is a denoiser ``D(x, sigma)``), ``"vp_epsilon"`` (an
    epsilon network on the discrete ``schedule``), or ``"auto"`` (EDM when the network has
    ``sigma_data`` or ``beta_d``, i.e. an EDM / VP preconditioner)."""

    def __init__(self, network: nn.Module, checkpoint: str | None = None, parameterization: str = "auto",
                 schedule: str = "linear", event_shape: Sequence[int] | None = None, checkpoint_prefix: str | None = None,
                 sigma_min: float | None = None, sigma_max: float | None = None):
        if parameterization == "auto":
            parameterization = "edm" if hasattr(network, "sigma_data") or hasattr(network, "beta_d") else "vp_epsilon"
        if parameterization not in ("edm", "vp_epsilon"):
            raise ValueError(f"unknown parameterization {parameterization!r}; allowed: 'auto', 'edm', 'vp_epsilon'")
        description = None
        if checkpoint is not None:
            description = read_description(checkpoint)
            if description is not None:
                check_network(description, network, parameterization, checkpoint)
            load_state_dict_into(network, checkpoint, prefix=checkpoint_prefix)
        if parameterization == "edm":
            denoiser = network
            lo = getattr(network, "sigma_min", 0.002) or 0.002
            hi = getattr(network, "sigma_max", 80.0)
            hi = 80.0 if hi == float("inf") else hi
        else:
            sched = DiscreteVPSchedule(schedule)
            denoiser = VPEpsilonDenoiser(network, sched)
            lo, hi = sched.sigma_min, sched.sigma_max
        super().__init__(denoiser, event_shape or _infer_event_shape(network),
                         sigma_min if sigma_min is not None else lo, sigma_max if sigma_max is not None else hi)
        self.parameterization = parameterization
        self.checkpoint = checkpoint
        self.description = description

    @property
    def network(self) -> nn.Module:
        """The wrapped network (the preconditioner for EDM priors, the epsilon UNet for VP priors)."""
        return self.denoiser if self.parameterization == "edm" else self.denoiser.net

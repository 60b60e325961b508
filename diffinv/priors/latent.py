"""Latent diffusion prior (Rombach et al., "High-resolution image synthesis with latent diffusion models",
CVPR 2022): a first-stage autoencoder (the VQ-f4 model of ``ffhq-ldm-vq-4``) and an epsilon UNet on its
latents, with the LDM schedule (1000 steps, sqrt-linear betas 0.0015 -> 0.0195, epsilon prediction).

Contract (that of every diffinv prior, ``diffinv.priors.base``):

* ``event_shape`` is the *latent* shape ``[C_z, h, w]``; ``pixel_shape`` the image shape ``[C, f h, f w]``.
* ``encode(x) = scale_factor * E(x)`` with ``E`` the unquantised first-stage encoder (LDM's
  ``get_first_stage_encoding(encode_first_stage(x))`` for a VQ model).
* ``decode(z) = D(z / scale_factor)``: quantise (straight-through, as LDM's
  ``differentiable_decode_first_stage``), ``post_quant_conv``, decoder. Differentiable in ``z``.
* ``denoise(z, sigma)`` is the posterior mean of the clean latent for ``z = z0 + sigma n``, through
  :class:`~diffinv.diffusion.VPEpsilonDenoiser`: the UNet sees ``sqrt(abar) z`` at timestep ``t(sigma)``
  and ``z0_hat = z - sigma eps_hat``.

Checkpoints: one file holds both parts. The CompVis LDM ``model.ckpt`` stores ``state_dict`` with
``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (autoencoder), the schedule buffers and the
LitEma copies ``model_ema.<name without dots>``; :func:`diffinv.checkpoints.read_checkpoint` already
substitutes the EMA copies for the raw UNet weights. A Lightning checkpoint of
:class:`lightning_modules.latent_training.LatentPriorTraining` (``prior.denoiser.net.*``,
``prior.first_stage.*``, ``prior.scale_factor``) loads the same way: the prefix of each part is detected
and every part is loaded strictly.
"""
from __future__ import annotations

import math
import os

import torch
from torch import Tensor, nn

from ..checkpoints import CheckpointMismatchError, load_state_dict_into, read_checkpoint
from ..diffusion import DiscreteVPSchedule, VPEpsilonDenoiser
from .base import DenoiserPrior
from .description import read_description


def _unet_latent_shape(unet: nn.Module) -> tuple[int, int, int]:
    if not (hasattr(unet, "in_channels") and hasattr(unet, "image_size")):
        raise ValueError(f"LatentPrior: cannot read the latent shape of {type(unet).__name__}; it needs the "
                         "attributes in_channels and image_size (as diffinv.networks.UNetModel has).")
    return (int(unet.in_channels), int(unet.image_size), int(unet.image_size))


class LatentPrior(DenoiserPrior):
    """A latent diffusion prior: ``unet`` (epsilon network on latents) + ``first_stage`` (autoencoder).

    Args:
        unet: the epsilon UNet (``diffinv.networks.UNetModel``); its ``in_channels`` / ``image_size``
            give the latent shape.
        first_stage: the autoencoder with ``encode(x) -> h`` and ``decode(h)`` (``VQFirstStage``).
        checkpoint: one file with both parts (LDM ``model.ckpt`` or a LatentPriorTraining checkpoint);
            EMA weights are preferred when present.
        first_stage_checkpoint: a separate file for the autoencoder only (overrides ``checkpoint``'s).
        schedule, num_train_steps, beta_start, beta_end: the discrete VP schedule the UNet was trained on
            (LDM: "sqrt_linear", 1000, 0.0015, 0.0195). When the checkpoint stores ``alphas_cumprod`` it
            must agree with this schedule.
        scale_factor: latents are ``scale_factor * E(x)`` (LDM's ``scale_factor``; 1.0 for
            ffhq-ldm-vq-4). ``None`` takes the value stored in the checkpoint. A value that disagrees
            with the checkpoint's raises a ``ValueError``.
        quantize_decode: quantise latents before decoding (LDM's behaviour for VQ first stages).
        quantize_timesteps: round ``t(sigma)`` to the integer grid before calling the UNet.
    """

    def __init__(self, unet: nn.Module, first_stage: nn.Module, checkpoint: str | None = None,
                 schedule: str = "sqrt_linear", scale_factor: float | None = 1.0, num_train_steps: int = 1000,
                 beta_start: float = 0.0015, beta_end: float = 0.0195, first_stage_checkpoint: str | None = None,
                 quantize_decode: bool = True, quantize_timesteps: bool = False):
        for name in ("encode", "decode"):
            if not callable(getattr(first_stage, name, None)):
                raise ValueError(f"LatentPrior: first_stage {type(first_stage).__name__} has no {name}() method; "
                                 "use diffinv.networks.VQFirstStage (or a module with encode / decode).")
        latent_shape = _unet_latent_shape(unet)
        sched = DiscreteVPSchedule(schedule, num_train_steps, beta_start=beta_start, beta_end=beta_end)
        super().__init__(VPEpsilonDenoiser(unet, sched, quantize=quantize_timesteps), latent_shape,
                         sched.sigma_min, sched.sigma_max)
        self.first_stage = first_stage
        self.schedule = sched
        self.quantize_decode = quantize_decode
        self.checkpoint = checkpoint
        # a description (<name>.prior.json) is checked against the file; the solver checks its problem family
        self.description = read_description(checkpoint) if checkpoint is not None else None
        stored_scale = None
        if checkpoint is not None:
            stored_scale = self._load(checkpoint, load_first_stage=first_stage_checkpoint is None)
        if first_stage_checkpoint is not None:
            load_state_dict_into(first_stage, first_stage_checkpoint)
        if scale_factor is None:
            if stored_scale is None:
                raise ValueError("LatentPrior: scale_factor=None asks for the checkpoint's value, but "
                                 f"{checkpoint!r} stores no scale_factor; pass the number (1.0 for ffhq-ldm-vq-4).")
            scale_factor = stored_scale
        elif stored_scale is not None and not math.isclose(stored_scale, scale_factor, rel_tol=1e-5):
            raise ValueError(f"LatentPrior: scale_factor={scale_factor} but the checkpoint {checkpoint} was trained "
                             f"with scale_factor={stored_scale}; pass scale_factor={stored_scale} (or None).")
        if not (math.isfinite(scale_factor) and scale_factor > 0):
            raise ValueError(f"LatentPrior: scale_factor must be a positive number, got {scale_factor}")
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        embed = getattr(first_stage, "embed_dim", latent_shape[0])
        if embed != latent_shape[0]:
            raise ValueError(f"LatentPrior: the first stage makes {embed}-channel latents but the UNet takes "
                             f"in_channels={latent_shape[0]}; build both from the same LDM config.")

    # ------------------------------------------------------------------------------------ checkpoint
    def _load(self, path: str | os.PathLike, load_first_stage: bool) -> float | None:
        """Load UNet (and first stage) from one file; returns the stored scale_factor, if any."""
        sd = read_checkpoint(path)          # LitEma copies already replace model.diffusion_model.* here
        parts = [(self.unet, "UNet")] + ([(self.first_stage, "first stage")] if load_first_stage else [])
        for module, what in parts:
            try:
                load_state_dict_into(module, sd)      # prefix detected: model.diffusion_model. / prior.denoiser.net. ...
            except CheckpointMismatchError as err:
                raise CheckpointMismatchError(f"LatentPrior: the {what} weights in {path} do not fit:\n{err}") from err
        self._check_schedule(sd, path)
        scales = [v for k, v in sd.items() if k.split(".")[-1] == "scale_factor" and v.numel() == 1]
        return float(scales[0]) if scales else None

    def _check_schedule(self, sd: dict[str, Tensor], path) -> None:
        """LDM checkpoints store their schedule: refuse a prior whose schedule differs from it."""
        stored = sd.get("alphas_cumprod")
        if stored is None:
            return
        ours = self.schedule.alphas_cumprod
        if stored.numel() != ours.numel() or not torch.allclose(stored.double(), ours, atol=1e-5, rtol=1e-4):
            raise ValueError(f"LatentPrior: the checkpoint {path} was trained with a different noise schedule "
                             f"({stored.numel()} steps, alphas_cumprod[-1]={float(stored[-1]):.6g}) than "
                             f"schedule={self.schedule.name!r} with {ours.numel()} steps (alphas_cumprod[-1]="
                             f"{float(ours[-1]):.6g}); set schedule / beta_start / beta_end / num_train_steps.")

    # ------------------------------------------------------------------------------------ parts
    @property
    def unet(self) -> nn.Module:
        return self.denoiser.net

    @property
    def downsampling_factor(self) -> int:
        f = getattr(self.first_stage, "downsampling_factor", None)
        if f is None:
            raise ValueError(f"LatentPrior: {type(self.first_stage).__name__} does not report its downsampling_factor")
        return int(f)

    @property
    def pixel_channels(self) -> int:
        cfg = getattr(self.first_stage, "ddconfig", {})
        return int(cfg.get("out_ch", 3))

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        """Image shape ``[C, H, W]`` whose latents have ``event_shape``."""
        f = self.downsampling_factor
        return (self.pixel_channels, self.event_shape[1] * f, self.event_shape[2] * f)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Alias of :attr:`pixel_shape` (the name ``InverseProblemSolver`` reads)."""
        return self.pixel_shape

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.event_shape

    # ------------------------------------------------------------------------------------ encode / decode
    def encode(self, x: Tensor) -> Tensor:
        """Image ``[B, C, H, W]`` in [-1, 1] -> latent ``scale_factor * E(x)`` (unquantised, as LDM).

        Fully convolutional: any ``H, W`` divisible by the downsampling factor is accepted."""
        f = self.downsampling_factor
        if x.dim() != 4 or x.shape[1] != self.pixel_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"LatentPrior.encode: expected images [B, {self.pixel_channels}, H, W] with H, W "
                             f"divisible by {f}, got {list(x.shape)}; the prior's image shape is {list(self.pixel_shape)}.")
        return self.scale_factor.to(x.dtype) * self.first_stage.encode(x)

    def decode(self, z: Tensor) -> Tensor:
        """Latent -> image ``D(z / scale_factor)``; differentiable in ``z`` (straight-through quantiser)."""
        if z.dim() != 4 or z.shape[1] != self.event_shape[0]:
            raise ValueError(f"LatentPrior.decode: expected latents [B, {self.event_shape[0]}, h, w], got {list(z.shape)}")
        h = z / self.scale_factor.to(z.dtype)
        if self.quantize_decode:
            return self.first_stage.decode(h)
        return self.first_stage.decode(h, force_not_quantize=True)

    def extra_repr(self) -> str:
        return (f"latent_shape={list(self.event_shape)}, pixel_shape={list(self.pixel_shape)}, "
                f"schedule={self.schedule.name!r}, scale_factor={float(self.scale_factor):g}")

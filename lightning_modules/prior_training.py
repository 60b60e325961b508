"""``diffinv fit``: train or fine-tune a pixel-space diffusion prior.

:class:`PriorTraining` wraps one network (``self.network``, so checkpoint keys are ``network.*`` and
``PixelPrior(network, checkpoint="last.ckpt")`` finds them by prefix detection) and one of the
losses of :mod:`diffinv.losses`:

* ``loss="edm"``: Karras et al. 2022 Eq. 8 for denoisers ``D(x, sigma)`` (``EDMPrecond``, ``VPPrecond``);
* ``loss="vp"``: EDM Table 1 "VP" training for ``VPPrecond``;
* ``loss="vp_epsilon"``: Ho et al. 2020 ``L_simple`` for epsilon networks (``UNetModel`` of DPS / guided-diffusion).

Resume is exact: each step's random draws are seeded by the global step (:func:`step_rng`) and the
DataModules' training order and augmentation by the epoch and position (``datamodules.resumable``), so
``--ckpt_path last`` continues with the batches, noise and weights of the uninterrupted run (CPU, one thread:
bit for bit; GPUs: up to their non-deterministic kernels).

Optimiser: AdamW with a linear learning-rate warm-up (``LambdaLR`` stepped every optimiser step).

EMA is Lightning's ``EMAWeightAveraging`` callback, configured in the trainer's callbacks (not here):
Lightning 2.6.6 (``callbacks/weight_averaging.py``) updates the average after every optimiser step,
swaps the averaged weights in for validation (``on_validation_epoch_start`` / ``_end`` of the callback,
which run *before* the module's hooks of the same name: the module's ``on_validation_epoch_end``
already sees the raw weights again), saves them under ``state_dict`` with the raw weights under
``current_model_state`` and ``n_averaged`` under ``averaging_state``, restores all of this on
``--ckpt_path`` resume, and copies the average into the model when training ends. So ``val/loss`` is
the EMA model's loss, and the sample grids (drawn every ``sample_every_n_steps`` optimiser steps in
``on_train_batch_end``) temporarily swap the EMA weights in through the callback's own hooks
(:meth:`PriorTraining.ema_weights`).

Only the network, loss and optimiser settings are saved as hyper-parameters: LightningCLI merges a
checkpoint's hyper-parameters over the config on ``--ckpt_path``, so the sampling / logging settings
and ``compile`` stay out and keep following the config of the run at hand.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor, nn

from diffinv.checkpoints import load_state_dict_into
from diffinv.diffusion import karras_sigmas, sample_sde
from diffinv.image_grid import make_grid, to_unit_range
from diffinv.losses import EDMLoss, VPEpsilonLoss, VPLoss
from diffinv.priors.pixel import PixelPrior

@contextlib.contextmanager
def step_rng(module: LightningModule) -> Iterator[None]:
    """Run the block with torch's RNG (CPU and the module's GPU) seeded from the run's seed, the global step and
    the rank, and restore the RNG after: a training step's random draws depend only on where training is, so a
    run resumed from a checkpoint draws what the uninterrupted run drew (the data side: datamodules.resumable)."""
    from datamodules.resumable import run_seed, sample_seed

    device = module.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(sample_seed(run_seed(), module.global_step, module.global_rank))
        yield


# Run-time settings kept out of the checkpoint's hyper-parameters (see the module docstring).
NOT_SAVED = ("sample_every_n_steps", "num_sample_images", "sample_steps", "sample_seed", "compile")
_BATCH_KEYS = ("image", "images", "x0", "x", "target")


def images_from_batch(batch: object) -> Tensor:
    """The ``[B, C, H, W]`` images of a batch: a tensor, the first tensor of a tuple / list, or the entry
    ``image`` / ``images`` / ``x0`` / ``x`` / ``target`` of a dict."""
    if isinstance(batch, Tensor):
        x = batch
    elif isinstance(batch, Mapping):
        key = next((k for k in _BATCH_KEYS if isinstance(batch.get(k), Tensor)), None)
        if key is None:
            raise ValueError(f"PriorTraining: a dict batch must hold the images under one of {_BATCH_KEYS}; "
                             f"got keys {sorted(map(str, batch))}")
        x = batch[key]
    elif isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        x = batch[0]
    else:
        raise ValueError(f"PriorTraining: cannot find images in a batch of type {type(batch).__name__}; the data module "
                         "must yield [B, C, H, W] tensors, (images, ...) tuples or dicts with an 'image' entry")
    if x.dim() != 4:
        raise ValueError(f"PriorTraining: training images must be [B, C, H, W], got shape {list(x.shape)}")
    return x if x.dtype == torch.float32 else x.float()


def _is_denoiser(network: nn.Module) -> bool:
    """EDM-family preconditioners are denoisers D(x, sigma) (the rule of PixelPrior's ``parameterization="auto"``)."""
    return hasattr(network, "sigma_data") or hasattr(network, "beta_d")


def _build_loss(name: str, network: nn.Module, vp_schedule: str):
    if name == "edm":
        return EDMLoss(sigma_data=getattr(network, "sigma_data", 0.5))
    if name == "vp":
        return VPLoss(beta_d=getattr(network, "beta_d", 19.9), beta_min=getattr(network, "beta_min", 0.1),
                      epsilon_t=getattr(network, "epsilon_t", 1e-5))
    return VPEpsilonLoss(vp_schedule)


class PriorTraining(LightningModule):
    """Trains ``network`` with ``loss``; see the module docstring for EMA, sampling and checkpoints.

    ``init_from``: a checkpoint to fine-tune from, loaded strictly into ``network`` when the module is
    built (``diffinv.checkpoints.load_state_dict_into``, prefix ``init_prefix`` or detected; EMA weights
    first). ``grad_clip``: max gradient norm, used when the trainer's ``gradient_clip_val`` is unset.
    ``sample_every_n_steps`` (0 = never), ``num_sample_images``, ``sample_steps``: unconditional sample
    grids from the EMA weights with EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1,
    ``sample_steps`` sigmas of Eq. 5, ``2 * sample_steps - 1`` network calls), seeded with ``sample_seed``.
    ``compile``: run the training forward pass through ``torch.compile(network)``.
    """

    def __init__(self, network: nn.Module, loss: str = "edm", lr: float = 1e-4, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, warmup_steps: int = 0,
                 grad_clip: float | None = None, init_from: str | None = None, init_prefix: str | None = None,
                 vp_schedule: str = "linear", sample_every_n_steps: int = 1000, num_sample_images: int = 16,
                 sample_steps: int = 18, sample_seed: int = 0, compile: bool = False):
        super().__init__()
        if loss not in ("edm", "vp", "vp_epsilon"):
            raise ValueError(f"PriorTraining loss={loss!r}; choose 'edm' (EDMPrecond / VPPrecond), 'vp' (VPPrecond) "
                             "or 'vp_epsilon' (epsilon UNetModel)")
        if loss == "vp_epsilon" and _is_denoiser(network):
            raise ValueError(f"loss='vp_epsilon' trains an epsilon network eps(x_t, t), but {type(network).__name__} is a "
                             "denoiser D(x, sigma); use loss='edm' (or 'vp' for VPPrecond)")
        if loss != "vp_epsilon" and not _is_denoiser(network):
            raise ValueError(f"loss={loss!r} needs a denoiser D(x, sigma) (EDMPrecond / VPPrecond), but "
                             f"{type(network).__name__} is not one; use loss='vp_epsilon' for epsilon networks")
        if lr <= 0 or warmup_steps < 0 or (grad_clip is not None and grad_clip <= 0):
            raise ValueError(f"need lr > 0, warmup_steps >= 0 and grad_clip > 0 or null; got lr={lr}, "
                             f"warmup_steps={warmup_steps}, grad_clip={grad_clip}")
        if sample_every_n_steps < 0 or num_sample_images < 1 or sample_steps < 1:
            raise ValueError(f"need sample_every_n_steps >= 0 (0 = off), num_sample_images >= 1 and sample_steps >= 1; "
                             f"got {sample_every_n_steps}, {num_sample_images}, {sample_steps}")
        with warnings.catch_warnings():     # plain-Python use passes the network object: not a hyper-parameter
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=list(NOT_SAVED))
        if isinstance(self.hparams.get("network"), nn.Module):
            self.hparams.pop("network")     # (LightningCLI stores the network's class_path / init_args instead)

        self.network = network
        if init_from:
            load_state_dict_into(self.network, init_from, prefix=init_prefix)
        self.loss_name, self.lr, self.weight_decay, self.betas, self.eps = loss, lr, weight_decay, tuple(betas), eps
        self.warmup_steps, self.grad_clip, self.vp_schedule = warmup_steps, grad_clip, vp_schedule
        self.sample_every_n_steps, self.num_sample_images = sample_every_n_steps, num_sample_images
        self.sample_steps, self.sample_seed = sample_steps, sample_seed
        self.compile_network = compile      # (not `self.compile`: that would shadow nn.Module.compile)
        self.loss_fn = _build_loss(loss, network, vp_schedule)
        self._compiled: dict[str, nn.Module] = {}     # torch.compile(network), kept out of the module tree / state_dict
        self._train_grid_logged = False
        self._last_sample_step = -1

    # ------------------------------------------------------------------ training
    def _train_network(self) -> nn.Module:
        if not self.compile_network:
            return self.network
        if "net" not in self._compiled:     # built lazily: after the EMA copy and the move to the device
            self._compiled["net"] = torch.compile(self.network)
        return self._compiled["net"]

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x0 = images_from_batch(batch)
        if not self._train_grid_logged:
            self._log_grid("train/images", x0[: self.num_sample_images])
            self._train_grid_logged = True
        with step_rng(self):        # the loss's noise levels and noise, dropout: a function of the step
            loss = self.loss_fn(self._train_network(), x0).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        # A CPU tensor: a Python float would become a host-to-device copy (a stream sync) at every step.
        self.log("train/lr", torch.tensor(self.trainer.optimizers[0].param_groups[0]["lr"]), batch_size=x0.shape[0])
        return loss

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        # Runs on the EMA weights (swapped in by EMAWeightAveraging); a fixed noise draw per batch makes
        # val/loss comparable across validations.
        x0 = images_from_batch(batch)
        gen = torch.Generator(device=x0.device).manual_seed(12345 + batch_idx)
        loss = self.loss_fn(self.network, x0, generator=gen).mean()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=x0.shape[0])
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.network.parameters(), lr=self.lr, betas=self.betas, eps=self.eps,
                                weight_decay=self.weight_decay)
        warmup = self.warmup_steps

        def ramp(step: int) -> float:     # linear warm-up over the first `warmup` optimiser steps, then constant
            return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0

        sched = torch.optim.lr_scheduler.LambdaLR(opt, ramp)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning calls this after unscaling (fp16) / with bf16 grads as they are; the trainer's
        # gradient_clip_val wins, else the module's grad_clip (max total norm).
        if gradient_clip_val is None and self.grad_clip is not None:
            gradient_clip_val, gradient_clip_algorithm = self.grad_clip, "norm"
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    def on_fit_start(self) -> None:
        trainer_clip = self.trainer.gradient_clip_val
        if self.grad_clip is not None and trainer_clip is not None and trainer_clip != self.grad_clip:
            raise ValueError(f"gradient clipping set twice: trainer.gradient_clip_val={trainer_clip} and "
                             f"model.grad_clip={self.grad_clip}; keep one of them")

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step = self.global_step
        if (self.sample_every_n_steps and step % self.sample_every_n_steps == 0 and step != self._last_sample_step
                and self.trainer.is_global_zero):
            self._last_sample_step = step
            with self.ema_weights():
                images = self.sample_images(self.num_sample_images, self.sample_steps,
                                            torch.Generator().manual_seed(self.sample_seed))
            self._log_grid("samples", images)

    # ------------------------------------------------------------------ sampling and logging
    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[bool]:
        """Swap the trainer's ``WeightAveraging`` (EMA) weights into the module for the duration of the
        block, through the callback's own validation hooks (which swap in, then swap back); yields whether
        an average was in use (False without such a callback, or before fit set it up)."""
        trainer = self._trainer
        averaging = [cb for cb in (trainer.callbacks if trainer is not None else [])
                     if isinstance(cb, WeightAveraging) and getattr(cb, "_average_model", None) is not None]
        if not averaging:
            yield False
            return
        averaging[0].on_validation_epoch_start(trainer, self)
        try:
            yield True
        finally:
            averaging[0].on_validation_epoch_end(trainer, self)

    def prior(self) -> PixelPrior:
        """The network as a diffinv prior (``denoise(x, sigma)``), in its current weights."""
        return PixelPrior(self.network, parameterization="vp_epsilon" if self.loss_name == "vp_epsilon" else "edm",
                          schedule=self.vp_schedule)

    @torch.no_grad()
    def sample_images(self, num: int, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """``num`` unconditional samples with the deterministic Heun sampler on the probability-flow ODE
        (Karras et al. 2022, Algorithm 1 without churn) over ``steps`` Karras sigmas (Eq. 5)."""
        was_training = self.network.training
        self.network.eval()
        try:
            prior = self.prior()
            sigmas = karras_sigmas(steps, prior.sigma_min, prior.sigma_max)
            return sample_sde(prior, (num, *prior.event_shape), sigmas, sde="edm", method="heun",
                              generator=generator, device=self.device)
        finally:
            self.network.train(was_training)

    def _log_grid(self, tag: str, images: Tensor) -> None:
        """Log ``images`` (in [-1, 1]) as one grid to every logger that takes images (TensorBoard)."""
        experiments = [lg.experiment for lg in self.loggers if hasattr(getattr(lg, "experiment", None), "add_image")]
        if not experiments:
            return
        if images.shape[1] not in (1, 3):   # e.g. 2-channel fields: show the first channel
            images = images[:, :1]
        grid = make_grid(to_unit_range(images)).cpu()
        for exp in experiments:
            exp.add_image(tag, grid, self.global_step, dataformats="CHW")

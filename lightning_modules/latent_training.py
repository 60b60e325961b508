"""``diffinv fit`` for latent diffusion priors: train or fine-tune the LDM UNet on encoded images, and
optionally fine-tune the first-stage autoencoder.

:class:`LatentPriorTraining` holds one :class:`~diffinv.priors.latent.LatentPrior` (``self.prior``, so checkpoint
keys are ``prior.denoiser.net.*``, ``prior.first_stage.*`` and ``prior.scale_factor``, and
``LatentPrior(unet, first_stage, checkpoint="last.ckpt")`` finds both parts by prefix detection).

* UNet (``train_unet``): latent diffusion's objective (Rombach et al. 2022, Eq. 2), i.e. Ho et al. 2020
  ``L_simple`` (Eq. 14) on the latents ``z0 = scale_factor * E(x)`` of the *frozen* encoder, on the prior's own
  schedule (:class:`diffinv.losses.VPEpsilonLoss`). ``scale_by_std`` sets ``scale_factor = 1 / std(z0)`` from
  the first training batch (LDM's ``scale_by_std``), only when training from scratch.
* Autoencoder (``train_autoencoder``, off by default): the VQGAN objective of Esser et al. 2021 (Eq. 4-6, as in
  taming's ``VQLPIPSWithDiscriminator``): an L1 (or L2) reconstruction loss, ``codebook_weight`` times the
  quantiser's codebook + commitment loss, optionally ``perceptual_weight`` times a perceptual distance (a module
  you pass as ``perceptual_loss``, e.g. LPIPS: its weights cannot be downloaded here, so it is off by default),
  and optionally ``adversarial_weight`` times a patch-GAN generator loss with Esser et al.'s adaptive weight
  (Eq. 7) against a taming ``NLayerDiscriminator`` trained with the hinge loss from step ``disc_start``
  (off by default: it needs long runs to help). The diffusion loss never reaches the autoencoder (its latents
  are detached); training both at once moves the latents under the UNet, so the usual recipe is two runs:
  autoencoder first (``train_unet: false``), then the UNet on the frozen result.

Optimisation: AdamW (LDM's optimiser) with a linear warm-up, one parameter group per trained part. With the
adversarial term the module switches to manual optimisation (generator and discriminator steps alternate), where
the trainer's ``gradient_clip_val`` / ``accumulate_grad_batches`` are not available: use ``grad_clip``.

EMA: Lightning's ``EMAWeightAveraging`` callback in the trainer config, as for pixel priors; the EMA helpers,
image-batch parsing and TensorBoard grid logging are those of :mod:`lightning_modules.prior_training`.
TensorBoard images every ``log_images_every_n_steps`` optimiser steps: ``reconstructions`` (inputs on the
left half of the grid, ``decode(encode(x))`` on the right) and ``samples`` (unconditional DDIM samples of the
EMA weights, decoded).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from diffinv.diffusion import sample_ddim
from diffinv.losses import VPEpsilonLoss
from diffinv.priors.latent import LatentPrior
from lightning_modules.prior_training import PriorTraining, images_from_batch, step_rng

# Run-time settings kept out of the checkpoint's hyper-parameters (LightningCLI merges those over the config on
# --ckpt_path); the prior and the perceptual module are configured by the config, not pickled objects.
NOT_SAVED = ("prior", "perceptual_loss", "log_images_every_n_steps", "num_log_images", "sample_steps", "sample_seed")


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss (Lim & Ye 2017; taming's ``hinge_d_loss``)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


class LatentPriorTraining(LightningModule):
    """Trains a latent prior's UNet (and optionally its autoencoder); see the module docstring.

    Args:
        prior: the latent prior (``diffinv.priors.latent.LatentPrior``), possibly with a checkpoint to fine-tune.
        lr, weight_decay, betas, warmup_steps, grad_clip: AdamW and warm-up of the UNet (LDM uses AdamW with
            PyTorch's default weight decay 0.01); ``grad_clip`` as in ``PriorTraining``.
        train_unet: train the UNet with the diffusion loss (True).
        train_autoencoder: fine-tune encoder, decoder and codebook (False).
        autoencoder_lr: learning rate of the autoencoder (default: ``lr``).
        reconstruction_loss: ``"l1"`` (taming) or ``"l2"``.
        codebook_weight: weight of the quantiser loss (taming: 1.0).
        perceptual_weight, perceptual_loss: weight and module ``d(x, x_rec) -> [B] or [B, ...]`` (off).
        adversarial_weight, disc_start, disc_lr, disc_layers: patch-GAN term (off; taming: weight 0.8,
            start after some 10k steps, 3 layers).
        scale_by_std: set ``prior.scale_factor = 1 / std`` of the first batch's latents (from scratch only).
        log_images_every_n_steps (0 = never), num_log_images, sample_steps, sample_seed: TensorBoard images.
    """

    def __init__(self, prior: LatentPrior, lr: float = 1e-4, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.999), warmup_steps: int = 0, grad_clip: float | None = None,
                 train_unet: bool = True, train_autoencoder: bool = False, autoencoder_lr: float | None = None,
                 reconstruction_loss: str = "l1", codebook_weight: float = 1.0, perceptual_weight: float = 0.0,
                 perceptual_loss: nn.Module | None = None, adversarial_weight: float = 0.0, disc_start: int = 0,
                 disc_lr: float | None = None, disc_layers: int = 3, scale_by_std: bool = False,
                 log_images_every_n_steps: int = 500, num_log_images: int = 8, sample_steps: int = 50,
                 sample_seed: int = 0):
        super().__init__()
        if not isinstance(prior, LatentPrior):
            raise ValueError(f"LatentPriorTraining needs a diffinv.priors.latent.LatentPrior, got {type(prior).__name__}; "
                             "pixel priors train with lightning_modules.prior_training.PriorTraining")
        if not (train_unet or train_autoencoder):
            raise ValueError("LatentPriorTraining: nothing to train; set train_unet and/or train_autoencoder to true")
        if reconstruction_loss not in ("l1", "l2"):
            raise ValueError(f"reconstruction_loss must be 'l1' or 'l2', got {reconstruction_loss!r}")
        if lr <= 0 or warmup_steps < 0 or (grad_clip is not None and grad_clip <= 0):
            raise ValueError(f"need lr > 0, warmup_steps >= 0 and grad_clip > 0 or null; got lr={lr}, "
                             f"warmup_steps={warmup_steps}, grad_clip={grad_clip}")
        if min(codebook_weight, perceptual_weight, adversarial_weight) < 0:
            raise ValueError("codebook_weight, perceptual_weight and adversarial_weight must be >= 0")
        if perceptual_weight > 0 and perceptual_loss is None:
            raise ValueError("perceptual_weight > 0 needs a perceptual_loss module (e.g. an LPIPS network with its "
                             "weights); set perceptual_weight: 0 to train without it")
        if (perceptual_weight > 0 or adversarial_weight > 0) and not train_autoencoder:
            raise ValueError("perceptual_weight / adversarial_weight act on the autoencoder; set train_autoencoder: true")
        if scale_by_std and (prior.checkpoint is not None or not train_unet):
            raise ValueError("scale_by_std sets scale_factor for a UNet trained from scratch; it cannot change the "
                             "latent scale of a loaded checkpoint (prior.checkpoint is set) or without train_unet")
        if log_images_every_n_steps < 0 or num_log_images < 1 or sample_steps < 1:
            raise ValueError(f"need log_images_every_n_steps >= 0 (0 = off), num_log_images >= 1, sample_steps >= 1; "
                             f"got {log_images_every_n_steps}, {num_log_images}, {sample_steps}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=list(NOT_SAVED))

        self.prior = prior
        self.lr, self.weight_decay, self.betas, self.warmup_steps = lr, weight_decay, tuple(betas), warmup_steps
        self.grad_clip = grad_clip
        self.train_unet, self.train_autoencoder = train_unet, train_autoencoder
        self.autoencoder_lr = autoencoder_lr or lr
        self.reconstruction_loss, self.codebook_weight = reconstruction_loss, codebook_weight
        self.perceptual_weight, self.perceptual_loss = perceptual_weight, perceptual_loss
        self.adversarial_weight, self.disc_start = adversarial_weight, disc_start
        self.disc_lr = disc_lr or self.autoencoder_lr
        self.scale_by_std = scale_by_std
        self.log_images_every_n_steps, self.num_log_images = log_images_every_n_steps, num_log_images
        self.sample_steps, self.sample_seed = sample_steps, sample_seed
        self.diffusion_loss = VPEpsilonLoss(prior.schedule.name, prior.schedule.num_steps)
        self.diffusion_loss.schedule = prior.schedule      # the prior's exact betas (beta_start / beta_end included)

        # Frozen parts get no gradients (and no optimiser state); a perceptual network is always frozen.
        prior.unet.requires_grad_(train_unet)
        prior.first_stage.requires_grad_(train_autoencoder)
        if perceptual_loss is not None:
            perceptual_loss.requires_grad_(False).eval()
        self.discriminator = None
        if adversarial_weight > 0:
            from taming.modules.discriminator.model import NLayerDiscriminator, weights_init

            self.discriminator = NLayerDiscriminator(input_nc=prior.pixel_channels, n_layers=disc_layers)
            self.discriminator.apply(weights_init)
            self.automatic_optimization = False      # generator / discriminator steps alternate
        self._last_image_step = -1
        self._first_batch = True

    # share PriorTraining's EMA swap, gradient clipping and TensorBoard grid logging (they use self.grad_clip,
    # self._trainer, self.loggers and self.clip_gradients only)
    ema_weights = PriorTraining.ema_weights
    configure_gradient_clipping = PriorTraining.configure_gradient_clipping
    on_fit_start = PriorTraining.on_fit_start
    _log_grid = PriorTraining._log_grid

    # ------------------------------------------------------------------ losses
    def _set_scale_by_std(self, x: Tensor) -> None:
        """LDM's ``scale_by_std``: ``scale_factor = 1 / std(E(x))`` on the very first training batch."""
        if not (self.scale_by_std and self.global_step == 0 and self._first_batch):
            return
        self._first_batch = False
        with torch.no_grad():
            std = self.prior.first_stage.encode(x).float().std()
        if not torch.isfinite(std) or std <= 0:
            raise ValueError(f"scale_by_std: the latents of the first batch have std {float(std)}; check the data")
        self.prior.scale_factor.fill_(1.0 / float(std))
        self.print(f"scale_by_std: scale_factor = {float(self.prior.scale_factor):.6g}")

    def _unet_loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        with torch.no_grad():
            z0 = self.prior.encode(x)                        # scale_factor * E(x), frozen encoder
        return self.diffusion_loss(self.prior.unet, z0, generator=generator).mean()     # Rombach Eq. 2

    def _autoencoder_losses(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Reconstruction, codebook loss and the reconstruction (Esser et al. 2021, Eq. 4-5)."""
        fs = self.prior.first_stage
        h = fs.encode(x)
        z_q, codebook, _ = fs.quantize(h)                   # straight-through; codebook + beta * commitment
        x_rec = fs.decoder(fs.post_quant_conv(z_q))
        diff = (x_rec - x).abs() if self.reconstruction_loss == "l1" else (x_rec - x) ** 2
        rec = diff.mean()
        logs = {"ae/reconstruction": rec.detach(), "ae/codebook": codebook.detach()}
        nll = rec
        if self.perceptual_weight > 0:
            p = self.perceptual_loss(x_rec, x).mean()
            logs["ae/perceptual"] = p.detach()
            nll = nll + self.perceptual_weight * p
        return nll, codebook, {"x_rec": x_rec, **logs}

    def _adaptive_weight(self, nll: Tensor, g_loss: Tensor) -> Tensor:
        """Esser et al. 2021, Eq. 7: ||grad_L nll|| / (||grad_L g_loss|| + 1e-4) at the decoder's last layer."""
        last = self.prior.first_stage.decoder.conv_out.weight
        g_nll = torch.autograd.grad(nll, last, retain_graph=True)[0]
        g_adv = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        return (g_nll.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    # ------------------------------------------------------------------ steps
    def training_step(self, batch, batch_idx: int):
        x = images_from_batch(batch)
        if x.shape[1] != self.prior.pixel_channels:
            raise ValueError(f"LatentPriorTraining: batch images have {x.shape[1]} channels, the autoencoder takes "
                             f"{self.prior.pixel_channels}; set data.init_args.channels")
        with step_rng(self):     # noise, timesteps, dropout: a function of the step (exact resume)
            return self._training_step(x)

    def _training_step(self, x: Tensor):
        self._set_scale_by_std(x)
        if self.discriminator is not None:
            return self._manual_step(x)
        loss = x.new_zeros(())
        if self.train_unet:
            unet_loss = self._unet_loss(x)
            self.log("train/loss", unet_loss, prog_bar=True, batch_size=x.shape[0])
            loss = loss + unet_loss
        if self.train_autoencoder:
            nll, codebook, logs = self._autoencoder_losses(x)
            logs.pop("x_rec")
            ae_loss = nll + self.codebook_weight * codebook
            self.log_dict(logs, batch_size=x.shape[0])
            self.log("train/ae_loss", ae_loss, prog_bar=True, batch_size=x.shape[0])
            loss = loss + ae_loss
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=x.shape[0])
        return loss

    def _manual_step(self, x: Tensor) -> None:
        """Generator (UNet + autoencoder) step, then the discriminator step (taming's two optimiser indices)."""
        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers()
        nll, codebook, logs = self._autoencoder_losses(x)
        x_rec = logs.pop("x_rec")
        loss = nll + self.codebook_weight * codebook
        active = self.global_step >= self.disc_start
        if active:
            g_loss = -self.discriminator(x_rec).mean()
            weight = self._adaptive_weight(nll, g_loss)
            loss = loss + self.adversarial_weight * weight * g_loss
            logs.update({"ae/generator": g_loss.detach(), "ae/adaptive_weight": weight})
        if self.train_unet:
            unet_loss = self._unet_loss(x)
            self.log("train/loss", unet_loss, prog_bar=True, batch_size=x.shape[0])
            loss = loss + unet_loss
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.grad_clip is not None:
            self.clip_gradients(opt_g, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        opt_g.step()
        sched_g.step()
        if active:
            d_loss = hinge_d_loss(self.discriminator(x.detach()), self.discriminator(x_rec.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.step()
            logs["ae/discriminator"] = d_loss.detach()
        sched_d.step()
        self.log_dict(logs, batch_size=x.shape[0])
        self.log("train/ae_loss", loss.detach(), prog_bar=True, batch_size=x.shape[0])
        self.log("train/lr", opt_g.param_groups[0]["lr"], batch_size=x.shape[0])

    def validation_step(self, batch, batch_idx: int) -> None:
        # On the EMA weights when EMAWeightAveraging is configured; fixed noise per batch for comparable values.
        x = images_from_batch(batch)
        gen = torch.Generator(device=x.device).manual_seed(12345 + batch_idx)
        if self.train_unet:
            self.log("val/loss", self._unet_loss(x, gen), prog_bar=True, sync_dist=True, batch_size=x.shape[0])
        if self.train_autoencoder:
            nll, codebook, _ = self._autoencoder_losses(x)
            self.log("val/ae_loss", nll + self.codebook_weight * codebook, sync_dist=True, batch_size=x.shape[0])

    # ------------------------------------------------------------------ optimisers
    def _warmup(self, opt):
        warmup = self.warmup_steps

        def ramp(step: int) -> float:       # linear warm-up over the first `warmup` optimiser steps, then constant
            return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0

        return torch.optim.lr_scheduler.LambdaLR(opt, ramp)

    def configure_optimizers(self):
        groups = []
        if self.train_unet:
            groups.append({"params": list(self.prior.unet.parameters()), "lr": self.lr})
        if self.train_autoencoder:
            groups.append({"params": list(self.prior.first_stage.parameters()), "lr": self.autoencoder_lr})
        opt = torch.optim.AdamW(groups, betas=self.betas, weight_decay=self.weight_decay)
        if self.discriminator is None:
            return {"optimizer": opt, "lr_scheduler": {"scheduler": self._warmup(opt), "interval": "step"}}
        opt_d = torch.optim.AdamW(self.discriminator.parameters(), lr=self.disc_lr, betas=(0.5, 0.9),
                                  weight_decay=self.weight_decay)         # taming: Adam betas (0.5, 0.9)
        return [opt, opt_d], [self._warmup(opt), self._warmup(opt_d)]

    # ------------------------------------------------------------------ images
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step = self.global_step
        every = self.log_images_every_n_steps
        if not every or step % every or step == self._last_image_step or not self.trainer.is_global_zero:
            return
        self._last_image_step = step
        x = images_from_batch(batch)[: self.num_log_images]
        with self.ema_weights():
            rec, samples = self.images(x, torch.Generator().manual_seed(self.sample_seed))
        self._log_grid("reconstructions", torch.cat([x, rec], dim=3))
        self._log_grid("samples", samples)

    @torch.no_grad()
    def images(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``decode(encode(x))`` and as many unconditional DDIM samples (eta 0, ``sample_steps``), decoded."""
        was_training = self.prior.training
        self.prior.eval()
        try:
            rec = self.prior.decode(self.prior.encode(x))
            z = sample_ddim(self.prior, (x.shape[0], *self.prior.event_shape), self.prior.schedule,
                            num_steps=min(self.sample_steps, self.prior.schedule.num_steps), generator=generator,
                            device=x.device, dtype=x.dtype)
            return rec, self.prior.decode(z)
        finally:
            self.prior.train(was_training)

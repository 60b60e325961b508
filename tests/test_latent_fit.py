"""``diffinv fit`` of a tiny latent prior on CPU, end to end: generated grayscale images -> the prepare script ->
manifests -> ImageManifestDataModule -> LatentPriorTraining (UNet + autoencoder) -> TensorBoard images and a
checkpoint that LatentPrior loads back. Plus the adversarial (manual-optimisation) path of the autoencoder."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "fit" / "tiny_latent_cpu.yaml"


def _prepare_data(tmp_path: Path) -> Path:
    spec = importlib.util.spec_from_file_location("prepare_sr_fit", REPO / "scripts" / "prepare_super_resolution_dataset.py")
    prep = importlib.util.module_from_spec(spec)
    sys.modules["prepare_sr_fit"] = prep
    spec.loader.exec_module(prep)
    rng = np.random.default_rng(0)
    raw_tr, raw_te = tmp_path / "raw" / "train", tmp_path / "raw" / "test"
    raw_tr.mkdir(parents=True)
    raw_te.mkdir(parents=True)
    yy, xx = np.mgrid[0:20, 0:20] / 20.0
    for i in range(8):                      # smooth grayscale "scans" of odd sizes
        img = 0.5 + 0.4 * np.sin(2 * np.pi * (xx * (1 + i % 3) + yy * (i % 2))) + 0.05 * rng.standard_normal(xx.shape)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)[: 18 + i % 3]).save(raw_tr / f"scan{i}.png")
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(raw_te / "test0.png")
    out = tmp_path / "data"
    prep.prepare(raw_tr, raw_te, out, grayscale=True, write_manifests=True, size=16)
    return out


def _config(tmp_path: Path, data_root: Path) -> Path:
    cfg = yaml.safe_load(CONFIG.read_text())
    out = tmp_path / "run"
    cfg["data"]["init_args"]["root"] = str(data_root)
    trainer = cfg["trainer"]
    trainer.update(default_root_dir=str(out), max_steps=2, val_check_interval=2)
    trainer["logger"]["init_args"]["save_dir"] = str(out)
    for cb in trainer["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"].update(dirpath=str(out / "checkpoints"), every_n_train_steps=2)
    path = tmp_path / "tiny_latent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_fit_tiny_latent_prior_end_to_end(tmp_path):
    from lightning_modules.cli import main
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = _prepare_data(tmp_path)
    main(["fit", "--config", str(_config(tmp_path, data))])

    events = list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    acc.Reload()
    assert {"reconstructions", "samples"} <= set(acc.Tags()["images"])
    assert {"train/loss", "train/ae_loss", "ae/reconstruction", "ae/codebook", "val/loss"} <= set(acc.Tags()["scalars"])
    rec = acc.Images("reconstructions")[-1]
    assert rec.width > rec.height                                     # inputs | reconstructions side by side

    # the checkpoint (EMA weights under state_dict, keys prior.*) loads into a LatentPrior by prefix detection
    from diffinv.checkpoints import read_checkpoint
    from diffinv.networks import UNetModel, VQFirstStage
    from diffinv.priors.latent import LatentPrior

    args = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]["prior"]["init_args"]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    prior = LatentPrior(UNetModel(**args["unet"]["init_args"]), VQFirstStage(**args["first_stage"]["init_args"]),
                        checkpoint=str(ckpt), scale_factor=None)
    state = read_checkpoint(ckpt)                                     # the 'state_dict' entry, weights_only=True
    key = "prior.denoiser.net.out.2.weight"
    assert torch.equal(prior.unet.out[2].weight, state[key])
    assert torch.equal(prior.first_stage.quantize.embedding.weight, state["prior.first_stage.quantize.embedding.weight"])


class _L1Perceptual(torch.nn.Module):
    """Stand-in for a perceptual network (LPIPS weights are not downloadable here): a fixed random conv feature L1."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, a, b):
        return (self.conv(a) - self.conv(b)).abs().flatten(1).mean(1)


def test_autoencoder_finetuning_with_perceptual_and_adversarial_terms():
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from lightning_modules.latent_training import LatentPriorTraining
    from test_latent_prior import tiny_latent_prior

    prior = tiny_latent_prior().requires_grad_(True).train()
    module = LatentPriorTraining(prior, lr=1e-3, train_unet=False, train_autoencoder=True, perceptual_weight=0.5,
                                 perceptual_loss=_L1Perceptual(), adversarial_weight=0.8, disc_start=0, disc_layers=1,
                                 log_images_every_n_steps=0)
    unet_before = prior.unet.out[2].weight.clone()
    dec_before = prior.first_stage.decoder.conv_out.weight.clone()
    disc_before = [p.clone() for p in module.discriminator.parameters()]
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    trainer = Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(images, batch_size=4))
    assert not module.automatic_optimization and trainer.global_step == 2
    assert not torch.equal(prior.first_stage.decoder.conv_out.weight, dec_before)        # generator stepped
    assert any(not torch.equal(a, b) for a, b in zip(module.discriminator.parameters(), disc_before))
    assert torch.equal(prior.unet.out[2].weight, unet_before)                            # UNet frozen
    with pytest.raises(ValueError, match="perceptual_loss module"):
        LatentPriorTraining(tiny_latent_prior(), train_autoencoder=True, perceptual_weight=1.0)

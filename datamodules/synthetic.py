"""A tiny in-memory DataModule of procedurally generated images in [-1, 1], for the CPU config,
the tests and the benchmarks of ``diffinv fit``.

* ``kind="blobs"``: each image is a background of -1 with 1 to ``max_blobs`` isotropic Gaussian
  bumps (random centre, width and per-channel colour), so the distribution is simple enough for
  a tiny network to learn in a few dozen steps;
* ``kind="fields"``: smooth Gaussian random fields (white noise low-passed in Fourier space with a
  Gaussian filter of ``length_scale`` pixels), each rescaled to span [-1, 1].

Everything is generated once, from ``seed``, in ``setup``; batches are plain ``[B, C, H, W]`` tensors.
"""
from __future__ import annotations

import math

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.resumable import ResumableLoader


def gaussian_blobs(num: int, channels: int, resolution: int, max_blobs: int, generator: torch.Generator) -> Tensor:
    """``[num, channels, R, R]`` images: -1 background plus up to ``max_blobs`` Gaussian bumps, clipped to [-1, 1]."""
    g = generator
    coords = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution          # pixel centres in (0, 1)
    centre = 0.2 + 0.6 * torch.rand(num, max_blobs, 2, generator=g)                      # [N, K, 2] in [0.2, 0.8]
    width = 0.06 + 0.12 * torch.rand(num, max_blobs, 1, 1, generator=g)                  # std, fraction of the side
    colour = 0.5 + 0.5 * torch.rand(num, max_blobs, channels, generator=g)               # [N, K, C]
    active = torch.arange(max_blobs) < torch.randint(1, max_blobs + 1, (num, 1), generator=g)   # at least one blob
    dy = (coords.view(1, 1, -1, 1) - centre[..., 0, None, None]) ** 2                      # [N, K, R, 1]
    dx = (coords.view(1, 1, 1, -1) - centre[..., 1, None, None]) ** 2                      # [N, K, 1, R]
    bumps = torch.exp(-(dx + dy) / (2 * width**2)) * active[..., None, None]               # [N, K, R, R]
    images = torch.einsum("nkhw,nkc->nchw", bumps, colour)
    return (2 * images - 1).clamp_(-1, 1)


def smooth_fields(num: int, channels: int, resolution: int, length_scale: float, generator: torch.Generator) -> Tensor:
    """``[num, channels, R, R]`` periodic Gaussian random fields with a Gaussian spectrum, each min-max scaled to [-1, 1]."""
    white = torch.randn(num, channels, resolution, resolution, generator=generator)
    k = torch.fft.fftfreq(resolution) * resolution                                       # integer wavenumbers
    k2 = k.view(-1, 1) ** 2 + k.view(1, -1) ** 2
    filt = torch.exp(-0.5 * k2 * (2 * math.pi * length_scale / resolution) ** 2)
    field = torch.fft.ifft2(torch.fft.fft2(white) * filt).real
    lo = field.amin(dim=(-2, -1), keepdim=True)
    hi = field.amax(dim=(-2, -1), keepdim=True)
    return 2 * (field - lo) / (hi - lo).clamp_min(1e-12) - 1


class _Images(Dataset):
    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx: int) -> Tensor:
        return self.images[idx]


class SyntheticImageDataModule(LightningDataModule):
    """Procedural images for ``diffinv fit`` smoke runs: train / val splits of ``num_train`` / ``num_val``
    images drawn from independent streams of ``seed``; the training loader shuffles with its own seeded
    generator and drops the last incomplete batch."""

    def __init__(self, channels: int = 1, resolution: int = 16, num_train: int = 512, num_val: int = 64,
                 batch_size: int = 32, seed: int = 0, kind: str = "blobs", max_blobs: int = 3,
                 length_scale: float = 2.0, num_workers: int = 0, pin_memory: bool = False):
        super().__init__()
        if kind not in ("blobs", "fields"):
            raise ValueError(f"SyntheticImageDataModule kind={kind!r}; choose 'blobs' or 'fields'")
        if channels < 1 or resolution < 4 or max_blobs < 1:
            raise ValueError(f"need channels >= 1, resolution >= 4 and max_blobs >= 1, got {channels}, {resolution}, "
                             f"{max_blobs}")
        if num_train < batch_size:
            raise ValueError(f"num_train={num_train} < batch_size={batch_size}: the training loader drops incomplete "
                             "batches and would be empty; raise num_train or lower batch_size")
        self.save_hyperparameters()
        self.train_images: Tensor | None = None
        self.val_images: Tensor | None = None

    def _generate(self, num: int, stream: int) -> Tensor:
        hp = self.hparams
        g = torch.Generator().manual_seed(hp.seed * 1000 + stream)
        if hp.kind == "blobs":
            return gaussian_blobs(num, hp.channels, hp.resolution, hp.max_blobs, g)
        return smooth_fields(num, hp.channels, hp.resolution, hp.length_scale, g)

    def setup(self, stage: str | None = None) -> None:
        if self.train_images is None:
            self.train_images = self._generate(self.hparams.num_train, 0)
            self.val_images = self._generate(self.hparams.num_val, 1)

    def train_dataset(self) -> Dataset:
        self.setup()
        return _Images(self.train_images)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams      # order resumes exactly from a checkpoint (datamodules.resumable)
        return ResumableLoader(_Images(self.train_images), hp.batch_size, seed=hp.seed, num_workers=hp.num_workers,
                               pin_memory=hp.pin_memory)

    def val_dataloader(self) -> DataLoader:
        hp = self.hparams
        return DataLoader(_Images(self.val_images), batch_size=hp.batch_size, shuffle=False,
                          num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0, pin_memory=hp.pin_memory)

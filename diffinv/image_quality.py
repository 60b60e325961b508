"""Perceptual image-quality metrics: LPIPS (Zhang et al. 2018) and FID (Heusel et al. 2017), computed by
torchmetrics when their networks and weights are on this machine, reported unavailable (with the reason)
otherwise. Nothing is downloaded at run time.

* ``lpips(x, ref) -> [B]``: torchmetrics' ``LearnedPerceptualImagePatchSimilarity`` with the VGG16
  backbone (DPS's evaluation, Chung et al. 2023), images ``[B, 3, H, W]`` in ``[-1, 1]``; lower is closer.
  It needs torchvision (checked from its package metadata, never imported by diffinv: it does not import
  with every torch build) and its ImageNet VGG16 weights in the torch hub cache
  (``<torch.hub.get_dir()>/checkpoints/vgg16-397923af.pth``); the LPIPS heads ship with torchmetrics.
* ``fid(images, references) -> float``: torchmetrics' ``FrechetInceptionDistance`` on the 2048-d pool
  features of the TF-compatible InceptionV3 of torch-fidelity, images quantised to 8 bits as when saved
  as PNG. It needs torch-fidelity (which imports torchvision) and its weights
  (``weights-inception-2015-12-05-6726825d.pth``) in the same cache; ``feature=`` takes any other
  extractor of uint8 images.

``lpips_unavailable()`` / ``fid_unavailable()`` return ``None`` when the metric can be computed, else the
reason and the fix; ``lpips`` and ``fid`` raise :class:`MetricUnavailable` with that reason.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor, nn

__all__ = ["MetricUnavailable", "lpips", "fid", "lpips_unavailable", "fid_unavailable", "to_uint8"]


class MetricUnavailable(RuntimeError):
    """The metric's network or weights are not on this machine; the message says what to install."""


# the files torchvision's VGG16_Weights.DEFAULT and torch-fidelity's InceptionV3 download (their URLs, kept here
# so that checking for them never imports torchvision, which does not import with every torch build)
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")


def _hub_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps (and first looks for) the file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _missing_weights(what: str, path: Path, origin: str) -> str:
    return (f"{what} weights {path.name} are not in {path.parent} (nothing is downloaded at run time); copy "
            f"the file there: it is what {origin} downloads")


def _torchvision_problem() -> str | None:
    """Why torchvision cannot serve here, read from the installed packages' metadata without importing it:
    not installed, or not the build of this torch (torchvision 0.(m + 15) pairs with torch 2.m)."""
    if "torchvision" in sys.modules:                     # already imported: it works
        return None
    if importlib.util.find_spec("torchvision") is None:
        return "torchvision is not installed"
    try:
        have = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return "torchvision has no package metadata"
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    want = f"0.{minor + 15}" if major == 2 else None
    if want is None or not have.startswith(want + "."):
        return f"torchvision {have} is not the build of torch {torch.__version__} (needs {want or 'a matching'}.x)"
    return None


def lpips_unavailable() -> str | None:
    problem = _torchvision_problem()
    if problem is not None:
        return (f"LPIPS needs torchvision for its VGG16 backbone: {problem}; install the torchvision build that "
                f"matches your torch")
    path = _hub_file(VGG16_URL)
    if not path.is_file():
        return "LPIPS needs " + _missing_weights("torchvision's ImageNet VGG16", path,
                                                 "torchvision.models.vgg16(weights='DEFAULT')")
    return None


def fid_unavailable() -> str | None:
    problem = ("torch-fidelity is not installed" if importlib.util.find_spec("torch_fidelity") is None
               else _torchvision_problem())
    if problem is not None:
        return (f"FID needs torch-fidelity (the InceptionV3 feature extractor torchmetrics uses; it imports "
                f"torchvision): {problem}; pip install torch-fidelity with the torchvision build that matches your "
                f"torch")
    path = _hub_file(INCEPTION_URL)
    if not path.is_file():
        return "FID needs " + _missing_weights("torch-fidelity's InceptionV3", path, "torch-fidelity's FID")
    return None


@functools.lru_cache(maxsize=2)
def _lpips_metric(device: str):
    reason = lpips_unavailable()
    if reason is not None:
        raise MetricUnavailable(reason)
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(net_type="vgg", reduction="none").to(device)


@torch.no_grad()
def lpips(x: Tensor, ref: Tensor) -> Tensor:
    """Per-image LPIPS (VGG) ``[B]`` of images ``[B, 3, H, W]`` in ``[-1, 1]`` against ``ref``."""
    if x.dim() != 4 or x.shape != ref.shape or x.shape[1] != 3:
        raise ValueError(f"lpips: x {list(x.shape)} and ref {list(ref.shape)} must be equal [B, 3, H, W] shapes.")
    metric = _lpips_metric(str(x.device))
    metric.reset()
    metric.update(x.float().clamp(-1, 1), ref.float().clamp(-1, 1))
    return metric.compute().reshape(-1)


def to_uint8(x: Tensor) -> Tensor:
    """Images in ``[-1, 1]`` -> uint8 ``[0, 255]`` (rounded, as when written to PNG)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def fid(images: Iterable[Tensor], references: Iterable[Tensor], feature: nn.Module | None = None,
        batch_size: int = 16) -> float:
    """FID between two sets of images (``[3, H, W]`` or ``[B, 3, H, W]`` tensors in ``[-1, 1]``, streamed in
    batches of ``batch_size``). ``feature``: a feature extractor of uint8 ``[B, 3, H, W]`` images (None:
    torch-fidelity's InceptionV3, the standard FID)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if feature is None:
        reason = fid_unavailable()
        if reason is not None:
            raise MetricUnavailable(reason)
        metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(_hub_file(INCEPTION_URL)))
    else:
        metric = FrechetInceptionDistance(feature=feature)
    counts = {}
    for real, stream in ((False, images), (True, references)):
        batch, n = [], 0
        for img in stream:
            batch.append(img if img.dim() == 4 else img[None])
            if sum(b.shape[0] for b in batch) >= batch_size:
                n += _fid_update(metric, batch, real)
                batch = []
        counts[real] = n + (_fid_update(metric, batch, real) if batch else 0)
    if min(counts.values()) < 2:
        raise MetricUnavailable(f"FID needs at least 2 images in each set, got {counts[False]} and {counts[True]}")
    return float(metric.compute())


def _fid_update(metric, batch: list[Tensor], real: bool) -> int:
    x = torch.cat(batch)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"fid: expected RGB images [B, 3, H, W], got {list(x.shape)}.")
    metric.update(to_uint8(x), real=real)
    return int(x.shape[0])

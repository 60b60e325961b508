"""Image-restoration forward models on ``[-1, 1]`` images (DPS, Chung et al. 2023; ReSample, Song et al. 2024).

This module holds inpainting and phase retrieval and gathers the others, so that
``from diffinv.operators.image import ...`` reaches every image operator:

* super-resolution: ``BicubicSuperResolution``, ``PoolingSuperResolution`` (``resize.py``);
* deblurring: ``GaussianBlur``, ``MotionBlur``, ``CircularGaussianBlur``, ``CircularMotionBlur``,
  ``NonlinearBlur`` and the generic ``Convolution`` / ``CircularConvolution`` (``blur.py``);
* inpainting: ``Masking`` (a given mask) and ``Inpainting`` (box, random, extreme masks drawn per sample);
* ``PhaseRetrieval``.

Every operator defaults to ``GaussianNoise(0.05)`` (DPS's sigma on ``[-1, 1]``; ReSample used 0.01).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Operator
from .blur import (CircularConvolution, CircularGaussianBlur, CircularMotionBlur, Convolution, GaussianBlur,
                   MotionBlur, NonlinearBlur, _Seeded)
from .motion_kernels import gaussian_kernel, motion_blur_kernel, sample_rng
from .noise import GaussianNoise, NoiseModel
from .resize import BicubicSuperResolution, PoolingSuperResolution

__all__ = [
    "BicubicSuperResolution", "PoolingSuperResolution",
    "Convolution", "CircularConvolution", "GaussianBlur", "CircularGaussianBlur", "MotionBlur",
    "CircularMotionBlur", "NonlinearBlur",
    "Masking", "Inpainting", "PhaseRetrieval",
    "gaussian_kernel", "motion_blur_kernel", "sample_rng",
]


class Masking(Operator):
    """``y = m * x`` with a fixed 0/1 mask ``m`` (``[H, W]`` shared by the channels, or ``[C, H, W]``); ``y``
    keeps ``x``'s shape with zeros where pixels are missing, as in DPS.

    Exact SVD: ``V = U = I`` (spectral coordinates are the flattened pixels) and the singular values are
    the flattened mask."""

    linear = True
    differentiable = True
    has_svd = True

    def __init__(self, mask, input_shape: Sequence[int] = (3, 256, 256), noise: NoiseModel | None = None):
        super().__init__(input_shape, noise if noise is not None else GaussianNoise(0.05))
        m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).detach().float()
        c, h, w = self.input_shape
        if m.dim() == 2:
            m = m.unsqueeze(0)
        if m.dim() != 3 or m.shape[-2:] != (h, w) or m.shape[0] not in (1, c):
            raise ValueError(f"{type(self).__name__}: mask must be [H, W] or [C, H, W] matching {self.input_shape}, "
                             f"got shape {list(m.shape)}.")
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"{type(self).__name__}: mask entries must be 0 or 1.")
        self.register_buffer("mask", m.unsqueeze(0).clone())  # [1, 1 or C, H, W]

    def forward(self, x: Tensor) -> Tensor:
        return self.check_input(x) * self.mask.to(x.dtype)

    def adjoint(self, y: Tensor) -> Tensor:
        return y * self.mask.to(y.dtype)

    def singulars(self) -> Tensor:
        return self.mask.expand(1, *self.input_shape).reshape(1, -1)

    def Vt(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)

    def V(self, c: Tensor) -> Tensor:
        return c.reshape(c.shape[0], *self.input_shape)

    Ut = Vt
    U = V

    @property
    def observed_fraction(self) -> float:
        return float(self.mask.mean())


def _box(h: int, w: int, rng: np.random.Generator, box_size, margin, position: str) -> tuple[int, int, int, int]:
    """Top-left corner and size of the inpainting box: DPS's 128 x 128 box with margins (16, 16) on 256,
    scaled to ``H x W`` unless given. ``position='random'`` draws the corner like DPS ``random_sq_bbox``
    (uniform in ``[margin, size - margin - box)``); ``'center'`` centres it."""
    bh, bw = box_size if box_size is not None else (round(h * 128 / 256), round(w * 128 / 256))
    mh, mw = margin if margin is not None else (round(h * 16 / 256), round(w * 16 / 256))
    if not (0 < bh <= h and 0 < bw <= w):
        raise ValueError(f"Inpainting: box_size {(bh, bw)} must fit in the image {h} x {w}.")
    if position == "center" or h - mh - bh <= mh or w - mw - bw <= mw:
        return (h - bh) // 2, (w - bw) // 2, bh, bw
    return int(rng.integers(mh, h - mh - bh)), int(rng.integers(mw, w - mw - bw)), bh, bw


class Inpainting(_Seeded, Masking):
    """Inpainting with a mask drawn from ``(seed, sample_id)``; ``for_sample(i)`` gives sample ``i``'s mask.

    ``mask_type``:
      * ``'random'``: drop exactly ``int(drop_prob H W)`` pixels (default 70%, the ReSample setting; DPS
        draws the fraction in [0.3, 0.7]), the same pixels in every channel;
      * ``'box'``: drop a box (128 x 128 on 256, scaled), placed as DPS does (``box_position='random'``,
        margins 16 on 256) or centred (``'center'``);
      * ``'extreme'``: keep only that box (DPS: one minus the box mask).
    """

    MASK_TYPES = ("random", "box", "extreme")

    def __init__(self, input_shape: Sequence[int] = (3, 256, 256), mask_type: str = "random", drop_prob: float = 0.7,
                 box_size: Sequence[int] | None = None, margin: Sequence[int] | None = None,
                 box_position: str = "random", seed: int = 0, sample_id: int = 0, noise: NoiseModel | None = None):
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"Inpainting: input_shape must be (C, H, W), got {input_shape}.")
        if mask_type not in self.MASK_TYPES:
            raise ValueError(f"Inpainting: mask_type must be one of {self.MASK_TYPES}, got {mask_type!r}.")
        if box_position not in ("random", "center"):
            raise ValueError(f"Inpainting: box_position must be 'random' or 'center', got {box_position!r}.")
        if not (0.0 <= drop_prob <= 1.0):
            raise ValueError(f"Inpainting: drop_prob must lie in [0, 1], got {drop_prob!r}.")
        _, h, w = input_shape
        rng = sample_rng(seed, sample_id)
        mask = np.ones(h * w)
        if mask_type == "random":
            mask[rng.permutation(h * w)[: int(h * w * drop_prob)]] = 0.0
            mask = mask.reshape(h, w)
        else:
            t, l, bh, bw = _box(h, w, rng, box_size, margin, box_position)
            mask = mask.reshape(h, w)
            mask[t: t + bh, l: l + bw] = 0.0
            if mask_type == "extreme":
                mask = 1.0 - mask
        super().__init__(mask, input_shape, noise)
        self.mask_type = mask_type
        self._config = dict(input_shape=input_shape, mask_type=mask_type, drop_prob=drop_prob, box_size=box_size,
                            margin=margin, box_position=box_position, seed=seed)
        self.sample_id = int(sample_id)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, mask_type={self.mask_type!r}, sample_id={self.sample_id}"


class PhaseRetrieval(Operator):
    """Fourier phase retrieval (DPS): ``y = |F(pad(x))|``, the magnitude of the orthonormal 2-D DFT of the
    zero-padded image, per channel, zero frequency at the centre (``fftshift``). DPS pads
    ``int(oversample / 8 * 256)`` pixels per side with oversample 2.0 (64 on 256); here the padding scales
    with the image, ``int(oversample / 8 * H)`` (and ``W``), identical on 256. ``y`` has shape
    ``[B, C, H + 2 p_h, W + 2 p_w]``; noise sigma is on that amplitude scale.

    Nonlinear; differentiable except where a Fourier coefficient vanishes (|z| has no derivative at 0).
    Ambiguities: a global sign flip, translations of the image within the padded field, and the
    point reflection ``x(-n)`` all leave ``y`` unchanged."""

    linear = False
    differentiable = True
    has_svd = False

    def __init__(self, input_shape: Sequence[int] = (3, 256, 256), oversample: float = 2.0,
                 noise: NoiseModel | None = None):
        super().__init__(input_shape, noise if noise is not None else GaussianNoise(0.05))
        if len(self.input_shape) != 3:
            raise ValueError(f"PhaseRetrieval: input_shape must be (C, H, W), got {self.input_shape}.")
        if not oversample >= 0:
            raise ValueError(f"PhaseRetrieval: oversample must be >= 0, got {oversample!r}.")
        c, h, w = self.input_shape
        self.oversample = float(oversample)
        self.pad = (int(oversample / 8.0 * h), int(oversample / 8.0 * w))
        self.output_shape = (c, h + 2 * self.pad[0], w + 2 * self.pad[1])

    def forward(self, x: Tensor) -> Tensor:
        x = self.check_input(x)
        ph, pw = self.pad
        spec = torch.fft.fft2(F.pad(x, (pw, pw, ph, ph)), norm="ortho")
        return torch.fft.fftshift(spec.abs(), dim=(-2, -1))

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, oversample={self.oversample}, pad={self.pad}"

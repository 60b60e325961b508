"""Deblurring forward models: ``y = k * x`` per channel, with one ``[k, k]`` kernel shared by all channels.

Two boundary conventions:

* ``Convolution`` (``MotionBlur``) and ``GaussianBlur``: the DPS / ReSample operator, a "same"-size
  convolution of the reflect-padded image (DPS ``Blurkernel``: ``ReflectionPad2d(k // 2)`` then a
  depthwise ``Conv2d``). Reflect padding mirrors about the edge pixel, ``c b | a b c``
  (``scipy.ndimage`` mode ``'mirror'``). A general kernel has no cheap SVD: the adjoint is the exact
  vector-Jacobian product and ``pinv`` runs conjugate gradients, which converge slowly on the badly
  conditioned 61 x 61 blurs (an early-stopped, i.e. regularised, inverse); samplers that need an SVD
  should take the circular variants. The Gaussian kernel is separable, which gives ``GaussianBlur`` an
  exact SVD with the same reflect boundary.
* ``CircularConvolution`` (``CircularGaussianBlur``, ``CircularMotionBlur``): periodic boundary, so the
  DFT diagonalises it: ``fft(y) = K fft(x)`` with ``K = fft(psf)`` (convolution theorem). Its exact SVD in
  a real orthonormal basis: ``V^T x`` = the orthonormal DFT of ``x`` packed into ``H W`` real numbers
  (``sqrt 2`` times the real and imaginary parts of one frequency of each conjugate pair, the real part
  of the self-conjugate ones), singular values ``|K|``, and ``U^T y`` = the same packing of
  ``fft(y) e^{-i arg K}`` (the all-pass phase of the kernel moved into ``U``).

Both compute ``y[n] = sum_j k[j] x[n - j + c]`` with ``c = k // 2`` (a true convolution, equal to
``scipy.ndimage.convolve``). DPS applies ``Conv2d``, a cross-correlation, i.e. our convolution with the
kernel flipped: identical for the symmetric Gaussian, and the random motion kernels are as likely flipped.

``NonlinearBlur`` is a differentiable nonlinear blur with no learned weights (see its docstring).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Operator
from .motion_kernels import gaussian_kernel, gaussian_taps, motion_blur_kernel
from .noise import GaussianNoise, NoiseModel
from .resize import SeparableOperator


def _as_kernel(name: str, kernel) -> Tensor:
    k = torch.as_tensor(np.asarray(kernel, dtype=np.float64) if not torch.is_tensor(kernel) else kernel)
    if k.dim() != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise ValueError(f"{name}: kernel must be 2-D with odd sizes (e.g. 61 x 61), got shape {list(k.shape)}.")
    if not torch.isfinite(k).all():
        raise ValueError(f"{name}: kernel contains NaN or Inf.")
    return k.detach().to(torch.float32).clone()


def _reflect_kernel(name: str, kernel, input_shape: tuple[int, ...]) -> Tensor:
    """Validated kernel for a reflect-padded convolution on ``input_shape = (C, H, W)``."""
    k = _as_kernel(name, kernel)
    if len(input_shape) != 3:
        raise ValueError(f"{name}: input_shape must be (C, H, W), got {input_shape}.")
    _, h, w = input_shape
    if k.shape[0] // 2 >= h or k.shape[1] // 2 >= w:
        raise ValueError(
            f"{name}: reflect padding by kernel_size // 2 = {k.shape[0] // 2} needs an image larger than that, "
            f"got {h} x {w}; use a smaller kernel or the circular variant."
        )
    return k


def reflect_convolve(x: Tensor, kernel: Tensor) -> Tensor:
    """The "same" convolution of ``x [B, C, H, W]`` with ``kernel [kh, kw]`` (odd) after reflect padding by
    ``k // 2``, computed by FFT: a circular convolution of the padded image (size ``N = H + 2p``) never wraps
    onto the kept window ``[2p, 2p + H)``, so it equals the direct sum there."""
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    h, w = x.shape[-2:]
    xp = F.pad(x, (pw, pw, ph, ph), mode="reflect") if (ph or pw) else x
    size = xp.shape[-2:]
    spec = torch.fft.rfft2(xp, s=size) * torch.fft.rfft2(kernel.to(x.dtype), s=size)
    return torch.fft.irfft2(spec, s=size)[..., 2 * ph: 2 * ph + h, 2 * pw: 2 * pw + w]


class _Seeded:
    """Mixin for operators drawn from ``(seed, sample_id)``: ``for_sample`` rebuilds with another id."""

    _config: dict

    def for_sample(self, sample_id: int):
        new = type(self)(**{**self._config, "sample_id": int(sample_id), "noise": self.noise})
        ref = next(iter(self.buffers()), None)
        return new.to(device=ref.device, dtype=ref.dtype) if ref is not None else new


class Convolution(Operator):
    """Reflect-padded "same" convolution with a given kernel (DPS ``Blurkernel``); ``y`` has ``x``'s shape."""

    linear = True
    differentiable = True
    has_svd = False

    def __init__(self, kernel, input_shape: Sequence[int] = (3, 256, 256), noise: NoiseModel | None = None):
        super().__init__(input_shape, noise if noise is not None else GaussianNoise(0.05))
        self.register_buffer("kernel", _reflect_kernel(type(self).__name__, kernel, self.input_shape))

    def forward(self, x: Tensor) -> Tensor:
        return reflect_convolve(self.check_input(x), self.kernel)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, kernel_size={tuple(self.kernel.shape)}"


class CircularConvolution(Operator):
    """Circular (periodic) convolution with a given kernel and its exact SVD (module docstring)."""

    linear = True
    differentiable = True
    has_svd = True

    def __init__(self, kernel, input_shape: Sequence[int] = (3, 256, 256), noise: NoiseModel | None = None):
        super().__init__(input_shape, noise if noise is not None else GaussianNoise(0.05))
        name = type(self).__name__
        k = _as_kernel(name, kernel)
        if len(self.input_shape) != 3:
            raise ValueError(f"{name}: input_shape must be (C, H, W), got {self.input_shape}.")
        _, h, w = self.input_shape
        self.register_buffer("kernel", k)
        # point-spread function on the periodic H x W grid, kernel centre at (0, 0); taps wrap modulo H, W
        kh, kw = k.shape
        rows = (np.arange(kh) - kh // 2) % h
        cols = (np.arange(kw) - kw // 2) % w
        psf = np.zeros((h, w))
        np.add.at(psf, (rows[:, None], cols[None, :]), k.double().numpy())
        self.register_buffer("psf", torch.from_numpy(psf).float())
        self._build_packing(h, w)

    # -------------------------------------------------------------- real packing of the half spectrum
    def _build_packing(self, h: int, w: int) -> None:
        """Classify the ``H x (W // 2 + 1)`` entries of ``rfft2``: self-conjugate (real), representative of a
        conjugate pair (real and imaginary part kept), or duplicate (the pair's other member inside the
        half-plane, on the columns 0 and W / 2, rebuilt as a conjugate)."""
        wr = w // 2 + 1
        kh = np.arange(h)[:, None]
        kw = np.arange(wr)[None, :]
        edge = (kw == 0) | ((w % 2 == 0) & (kw == w // 2))          # columns holding both members of a pair
        selfconj = edge & ((kh == 0) | ((h % 2 == 0) & (kh == h // 2)))
        dup = edge & ~selfconj & (kh > h // 2)
        rep = ~selfconj & ~dup
        flat = np.arange(h * wr).reshape(h, wr)
        partner = ((-np.arange(h)) % h)[:, None] * wr + np.arange(wr)[None, :]   # (kh, kw) -> (-kh, kw)
        n_self, n_rep = int(selfconj.sum()), int(rep.sum())
        assert n_self + 2 * n_rep == h * w
        self.register_buffer("_self_idx", torch.from_numpy(flat[selfconj]))
        self.register_buffer("_rep_idx", torch.from_numpy(flat[rep]))
        self.register_buffer("_dup_idx", torch.from_numpy(flat[dup]))
        self.register_buffer("_dup_partner", torch.from_numpy(partner[dup]))

    def _pack(self, z: Tensor) -> Tensor:
        """Half spectrum ``[B, C, H, Wr]`` (orthonormal DFT of a real image) -> ``[B, C H W]`` real."""
        z = z.flatten(-2)
        rep = z[..., self._rep_idx]
        out = torch.cat([z[..., self._self_idx].real, math.sqrt(2.0) * rep.real, math.sqrt(2.0) * rep.imag], dim=-1)
        return out.reshape(z.shape[0], -1)

    def _unpack(self, c: Tensor) -> Tensor:
        _, h, w = self.input_shape
        n_self, n_rep = self._self_idx.numel(), self._rep_idx.numel()
        c = c.reshape(c.shape[0], self.input_shape[0], h * w)
        z = torch.zeros((*c.shape[:2], h * (w // 2 + 1)), dtype=torch.complex128 if c.dtype == torch.float64
                        else torch.complex64, device=c.device)
        z[..., self._self_idx] = c[..., :n_self].to(z.dtype)
        z[..., self._rep_idx] = torch.complex(c[..., n_self: n_self + n_rep], c[..., n_self + n_rep:]) / math.sqrt(2.0)
        z[..., self._dup_idx] = z[..., self._dup_partner].conj()
        return z.reshape(*z.shape[:2], h, w // 2 + 1)

    def _otf(self, dtype: torch.dtype) -> Tensor:
        """Transfer function ``K = rfft2(psf)`` (unnormalised, so ``fft_o(y) = K fft_o(x)`` for the orthonormal DFT)."""
        return torch.fft.rfft2(self.psf.to(dtype))

    def _phase(self, otf: Tensor) -> Tensor:
        mag = otf.abs()
        phase = torch.where(mag > 0, otf / mag.clamp_min(1e-300), torch.ones_like(otf))
        flat = phase.flatten()
        # self-conjugate frequencies have a real K: use its exact sign so U stays real-orthonormal
        sign = torch.where(otf.flatten()[self._self_idx].real < 0, -1.0, 1.0).to(flat.dtype)
        flat = flat.index_put((self._self_idx,), sign)
        return flat.reshape(otf.shape)

    # -------------------------------------------------------------- operator
    def forward(self, x: Tensor) -> Tensor:
        x = self.check_input(x)
        return torch.fft.irfft2(torch.fft.rfft2(x) * self._otf(x.dtype), s=x.shape[-2:])

    def adjoint(self, y: Tensor) -> Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(y) * self._otf(y.dtype).conj(), s=y.shape[-2:])

    def singulars(self) -> Tensor:
        mag = self._otf(self.psf.dtype).abs().flatten()
        rep = mag[self._rep_idx]
        s = torch.cat([mag[self._self_idx], rep, rep])
        return s.repeat(self.input_shape[0]).unsqueeze(0)

    def Vt(self, x: Tensor) -> Tensor:
        return self._pack(torch.fft.rfft2(x, norm="ortho"))

    def V(self, c: Tensor) -> Tensor:
        return torch.fft.irfft2(self._unpack(c), s=self.input_shape[-2:], norm="ortho")

    def Ut(self, y: Tensor) -> Tensor:
        return self._pack(torch.fft.rfft2(y, norm="ortho") * self._phase(self._otf(y.dtype)).conj())

    def U(self, c: Tensor) -> Tensor:
        spec = self._unpack(c) * self._phase(self._otf(c.dtype))
        return torch.fft.irfft2(spec, s=self.input_shape[-2:], norm="ortho")

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, kernel_size={tuple(self.kernel.shape)}"


def reflect_conv_matrix(n: int, taps: np.ndarray) -> np.ndarray:
    """``[n, n]`` matrix of the 1-D "same" convolution ``y[i] = sum_t taps[t] x[i + c - t]`` (``c = len // 2``)
    of the reflect-padded signal (``x[-i] = x[i]``, ``x[n - 1 + i] = x[n - 1 - i]``), float64."""
    c = len(taps) // 2
    if c >= n:
        raise ValueError(f"reflect padding by {c} needs a signal longer than that, got length {n}.")
    idx = np.arange(n)[:, None] + c - np.arange(len(taps))[None, :]
    idx = np.where(idx < 0, -idx, np.where(idx > n - 1, 2 * (n - 1) - idx, idx))
    mat = np.zeros((n, n))
    np.add.at(mat, (np.broadcast_to(np.arange(n)[:, None], idx.shape), idx), np.broadcast_to(taps, idx.shape))
    return mat


class GaussianBlur(SeparableOperator):
    """DPS / ReSample Gaussian deblurring: 61 x 61 kernel, std 3.0 (``gaussian_kernel``), reflect padding as
    DPS's ``Blurkernel``; ``y`` has ``x``'s shape, noise sigma on ``[-1, 1]``.

    The Gaussian kernel is separable and reflect padding acts per axis, so the operator is
    ``Y_c = G_h X_c G_w^T`` with ``G`` the 1-D reflect-padded convolution matrices: it gets an exact SVD from
    their 1-D SVDs (``resize.SeparableOperator``) although its boundary is not periodic."""

    def __init__(self, input_shape: Sequence[int] = (3, 256, 256), kernel_size: int = 61, std: float = 3.0,
                 noise: NoiseModel | None = None):
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"GaussianBlur: input_shape must be (C, H, W), got {input_shape}.")
        taps = gaussian_taps(kernel_size, std)
        _, h, w = input_shape
        if kernel_size // 2 >= min(h, w):
            raise ValueError(
                f"GaussianBlur: reflect padding by kernel_size // 2 = {kernel_size // 2} needs an image larger than "
                f"that, got {h} x {w}; use a smaller kernel or CircularGaussianBlur."
            )
        mat_h = reflect_conv_matrix(h, taps)
        mat_w = mat_h if w == h else reflect_conv_matrix(w, taps)
        super().__init__(input_shape, mat_h, mat_w, noise)
        self.register_buffer("kernel", torch.from_numpy(np.outer(taps, taps)).float())
        self.std = float(std)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, kernel_size={tuple(self.kernel.shape)}, std={self.std}"


class CircularGaussianBlur(CircularConvolution):
    """Gaussian blur with periodic boundary and exact SVD (same kernel as ``GaussianBlur``)."""

    def __init__(self, input_shape: Sequence[int] = (3, 256, 256), kernel_size: int = 61, std: float = 3.0,
                 noise: NoiseModel | None = None):
        super().__init__(gaussian_kernel(kernel_size, std), input_shape, noise)
        self.std = float(std)


class MotionBlur(_Seeded, Convolution):
    """DPS / ReSample motion deblurring: random-trajectory kernel 61 x 61, intensity 0.5
    (``motion_kernels.motion_blur_kernel``), reflect padding. The kernel is drawn from ``(seed, sample_id)``;
    ``for_sample(i)`` gives sample ``i``'s operator."""

    def __init__(self, input_shape: Sequence[int] = (3, 256, 256), kernel_size: int = 61, intensity: float = 0.5,
                 seed: int = 0, sample_id: int = 0, noise: NoiseModel | None = None):
        super().__init__(motion_blur_kernel(kernel_size, intensity, seed, sample_id), input_shape, noise)
        self._config = dict(input_shape=self.input_shape, kernel_size=kernel_size, intensity=intensity, seed=seed)
        self.sample_id = int(sample_id)


class CircularMotionBlur(_Seeded, CircularConvolution):
    """Motion blur with periodic boundary and exact SVD (same kernels as ``MotionBlur`` for the same seeds)."""

    def __init__(self, input_shape: Sequence[int] = (3, 256, 256), kernel_size: int = 61, intensity: float = 0.5,
                 seed: int = 0, sample_id: int = 0, noise: NoiseModel | None = None):
        super().__init__(motion_blur_kernel(kernel_size, intensity, seed, sample_id), input_shape, noise)
        self._config = dict(input_shape=self.input_shape, kernel_size=kernel_size, intensity=intensity, seed=seed)
        self.sample_id = int(sample_id)


class NonlinearBlur(_Seeded, Operator):
    """A nonlinear, differentiable blur with no learned weights: a camera that blurs in linear light.

        v = ((x + 1) / 2)_+ ^ gamma                      (display [-1, 1] -> linear light [0, 1], gamma 2.2)
        u = k * v                                        (motion blur, reflect padding, as ``MotionBlur``)
        y = 2 (1 - exp(-a u)) / (1 - exp(-a)) - 1        (saturating camera response, back to [-1, 1])

    ``a`` (``response``, default 3) sets how strongly the response saturates; ``y`` stays in ``[-1, 1]`` for
    ``x`` in ``[-1, 1]`` since ``k >= 0`` sums to 1. It stands in for DPS's nonlinear blur, which needs the
    learned bkse kernel encoder (and whose ReSample config is broken). Noise sigma is on ``y``'s scale."""

    linear = False
    differentiable = True
    has_svd = False

    def __init__(self, input_shape: Sequence[int] = (3, 256, 256), kernel_size: int = 61, intensity: float = 0.5,
                 gamma: float = 2.2, response: float = 3.0, seed: int = 0, sample_id: int = 0,
                 noise: NoiseModel | None = None):
        super().__init__(input_shape, noise if noise is not None else GaussianNoise(0.05))
        if not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"NonlinearBlur: gamma must be > 0, got {gamma!r}.")
        if not (math.isfinite(response) and response > 0):
            raise ValueError(f"NonlinearBlur: response must be > 0, got {response!r}.")
        kernel = motion_blur_kernel(kernel_size, intensity, seed, sample_id)
        self.register_buffer("kernel", _reflect_kernel(type(self).__name__, kernel, self.input_shape))
        self.gamma, self.response = float(gamma), float(response)
        self._config = dict(input_shape=self.input_shape, kernel_size=kernel_size, intensity=intensity,
                            gamma=gamma, response=response, seed=seed)
        self.sample_id = int(sample_id)

    def forward(self, x: Tensor) -> Tensor:
        x = self.check_input(x)
        v = ((x + 1.0) / 2.0).clamp_min(0.0) ** self.gamma
        u = reflect_convolve(v, self.kernel)
        a = self.response
        return 2.0 * (-torch.expm1(-a * u)) / (-math.expm1(-a)) - 1.0

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, gamma={self.gamma}, response={self.response}"

"""Super-resolution forward models: ``y = A x`` downsamples an image by an integer factor ``r``.

Both operators are separable, ``Y_c = A_h X_c A_w^T`` for every channel ``c``, so their singular value
decomposition is the Kronecker product of two 1-D decompositions, ``A_h = U_h S_h V_h^T``:

    A = (U_h (x) U_w) (S_h (x) S_w) (V_h (x) V_w)^T,

with singular value ``s_h[i] s_w[j]`` on spectral coordinate ``(i, j)`` (zero for ``i >= H / r`` or
``j >= W / r``). That makes the SVD interface of ``base.Operator`` exact and cheap for both resizers.

* ``BicubicSuperResolution``: MATLAB-style ``imresize`` with antialiasing, the resizer DPS and ReSample
  use (DPS ``util/resizer.py``, after A. Shocher's port of MATLAB ``imresize``). Downscaling by ``1/r``
  widens Keys' cubic kernel (a = -0.5, Keys 1981 eq. 15) by ``r``: ``h(t) = cubic(t / r) / r`` with support
  ``4 r``; output pixel ``i`` (1-based) sits at input position ``u_i = r i + (1 - r) / 2``; each row of
  weights is normalised to sum 1 and the taps beyond the border are mirrored symmetrically
  (``... b a | a b c ... ``), as MATLAB does.
* ``PoolingSuperResolution``: mean over ``r x r`` blocks (the operator of DDRM's and DDNM's "SR by
  pooling"). Its 1-D factor has orthogonal rows of norm ``1 / sqrt(r)``; the SVD is written down exactly:
  ``U = I``, singular values ``1 / sqrt(r)`` (so ``1 / r`` in 2-D), right singular vectors the normalised
  block indicators, completed per block by the orthonormal DCT-II.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .base import Operator
from .noise import GaussianNoise, NoiseModel


def cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (Keys 1981, eq. 15), ``a = -0.5`` as in MATLAB and PIL."""
    t = np.abs(t)
    t2, t3 = t**2, t**3
    inner = (a + 2) * t3 - (a + 3) * t2 + 1
    outer = a * t3 - 5 * a * t2 + 8 * a * t - 4 * a
    return np.where(t <= 1, inner, np.where(t < 2, outer, 0.0))


def imresize_matrix(in_len: int, out_len: int, antialias: bool = True) -> np.ndarray:
    """The ``[out_len, in_len]`` matrix of MATLAB's ``imresize(..., 'bicubic')`` along one axis (float64).

    Follows MATLAB's ``contributions``: for output pixel ``i`` (1-based) the input coordinate is
    ``u = i / scale + (1 - 1 / scale) / 2``; taps ``j = floor(u - width / 2) + (0 .. ceil(width) + 1)``
    get weight ``h(u - j)``, normalised per row; out-of-range taps are mirrored (symmetric padding)."""
    scale = out_len / in_len
    if antialias and scale < 1:
        kernel = lambda t: scale * cubic(scale * t)  # noqa: E731  kernel widened by 1 / scale
        width = 4.0 / scale
    else:
        kernel, width = cubic, 4.0
    u = np.arange(1, out_len + 1) / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    j = left[:, None] + np.arange(taps)[None, :]                 # 1-based input indices [out, taps]
    w = kernel(u[:, None] - j)
    w = w / w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    cols = mirror[np.mod(j.astype(np.int64) - 1, 2 * in_len)]
    rows = np.broadcast_to(np.arange(out_len)[:, None], cols.shape)
    mat = np.zeros((out_len, in_len))
    np.add.at(mat, (rows, cols), w)
    return mat


def _check_factor(name: str, input_shape: tuple[int, ...], factor: int) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"{name}: scale_factor must be a positive integer (2, 4, 8), got {factor!r}.")
    if len(input_shape) != 3:
        raise ValueError(f"{name}: input_shape must be (C, H, W), got {input_shape}.")
    _, h, w = input_shape
    if h % factor or w % factor:
        raise ValueError(
            f"{name}: scale_factor {factor} does not divide the image size {h} x {w}; "
            f"choose a factor dividing both H and W or crop the image."
        )
    return int(factor)


class SeparableOperator(Operator):
    """``Y_c = A_h X_c A_w^T`` per channel, with its exact SVD from the 1-D factors (module docstring).

    Spectral coordinates are ordered with the ``C * m_h * m_w`` observed ones first (channel, row, column
    order), so ``Ut`` is ``U_h^T Y U_w`` flattened and zero-padded and ``U`` reads the first ``numel(y)``
    entries, as ``base.Operator`` asks.

    The matrices are kept in float64 (their orthogonality holds to 1e-16 there, not in float32) and cast
    to the input's dtype at each call, so a float32 input is computed in float32; ``singulars()`` answers in
    the module's dtype (float32 unless converted with ``.to``), the dtype samplers work in."""

    linear = True
    differentiable = True
    has_svd = True

    def __init__(self, input_shape: Sequence[int], mat_h: np.ndarray, mat_w: np.ndarray,
                 noise: NoiseModel | None = None, svd_h=None, svd_w=None):
        super().__init__(input_shape, noise if noise is not None else GaussianNoise(0.05))
        c, h, w = self.input_shape
        (m_h, n_h), (m_w, n_w) = mat_h.shape, mat_w.shape
        if (n_h, n_w) != (h, w) or m_h > h or m_w > w:
            raise ValueError(f"{type(self).__name__}: factor shapes {mat_h.shape}, {mat_w.shape} do not fit {h} x {w}.")
        self.output_shape = (c, m_h, m_w)
        for tag, mat, svd, n in (("h", mat_h, svd_h, h), ("w", mat_w, svd_w, w)):
            u, s, vt = svd if svd is not None else np.linalg.svd(mat, full_matrices=True)
            s_full = np.zeros(n)
            s_full[: s.size] = s
            self.register_buffer(f"A_{tag}", torch.from_numpy(np.ascontiguousarray(mat)))
            self.register_buffer(f"U_{tag}", torch.from_numpy(np.ascontiguousarray(u)))
            self.register_buffer(f"s_{tag}", torch.from_numpy(s_full))
            self.register_buffer(f"V_{tag}", torch.from_numpy(np.ascontiguousarray(vt.T)))
        # observed block first: flat (c, i, j) indices with i < m_h and j < m_w, then the rest
        idx = np.arange(c * h * w).reshape(c, h, w)
        observed = np.zeros((c, h, w), dtype=bool)
        observed[:, :m_h, :m_w] = True
        order = np.concatenate([idx[observed], idx[~observed]])
        # float32 marker that follows .to(dtype): the dtype singulars() answers in
        self.register_buffer("_dtype_probe", torch.zeros(()), persistent=False)
        self.register_buffer("_order", torch.from_numpy(order))
        self.register_buffer("_inverse_order", torch.from_numpy(np.argsort(order)))

    def _m(self, name: str, like: Tensor) -> Tensor:
        return getattr(self, name).to(dtype=like.dtype)

    def forward(self, x: Tensor) -> Tensor:
        x = self.check_input(x)
        return self._m("A_h", x) @ x @ self._m("A_w", x).T

    def adjoint(self, y: Tensor) -> Tensor:
        return self._m("A_h", y).T @ y @ self._m("A_w", y)

    def singulars(self) -> Tensor:
        c = self.input_shape[0]
        s = (self.s_h[:, None] * self.s_w[None, :]).expand(c, -1, -1).reshape(1, -1)
        return s[:, self._order].to(self._dtype_probe.dtype)

    def Vt(self, x: Tensor) -> Tensor:
        coef = self._m("V_h", x).T @ x @ self._m("V_w", x)
        return coef.reshape(x.shape[0], -1)[:, self._order]

    def V(self, c: Tensor) -> Tensor:
        coef = c[:, self._inverse_order].reshape(c.shape[0], *self.input_shape)
        return self._m("V_h", c) @ coef @ self._m("V_w", c).T

    def Ut(self, y: Tensor) -> Tensor:
        coef = (self._m("U_h", y).T @ y @ self._m("U_w", y)).reshape(y.shape[0], -1)
        return torch.nn.functional.pad(coef, (0, self.input_dim - coef.shape[1]))

    def U(self, c: Tensor) -> Tensor:
        n_y = math.prod(self.output_shape)
        coef = c[:, :n_y].reshape(c.shape[0], *self.output_shape)
        return self._m("U_h", c) @ coef @ self._m("U_w", c).T


class BicubicSuperResolution(SeparableOperator):
    """Bicubic antialiased downsampling by ``scale_factor`` (MATLAB ``imresize``; DPS / ReSample SR task).

    ``y = A x`` has shape ``[B, C, H / r, W / r]`` on the image's ``[-1, 1]`` scale; noise sigma is on that
    scale (DPS: 0.05, ReSample: 0.01). The adjoint is the exact transpose (DPS used nearest upsampling as a
    stand-in ``transpose``; we do not)."""

    def __init__(self, input_shape: Sequence[int] = (3, 256, 256), scale_factor: int = 4,
                 noise: NoiseModel | None = None, antialias: bool = True):
        input_shape = tuple(int(s) for s in input_shape)
        r = _check_factor(type(self).__name__, input_shape, scale_factor)
        _, h, w = input_shape
        mat_h = imresize_matrix(h, h // r, antialias)
        mat_w = mat_h if w == h else imresize_matrix(w, w // r, antialias)
        super().__init__(input_shape, mat_h, mat_w, noise)
        self.scale_factor = r

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, scale_factor={self.scale_factor}"


def _dct_basis(r: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``[r, r]``; row 0 is the constant ``1 / sqrt(r)``."""
    k = np.arange(r)[:, None]
    a = np.arange(r)[None, :]
    q = np.sqrt(2.0 / r) * np.cos(np.pi * (a + 0.5) * k / r)
    q[0] = 1.0 / np.sqrt(r)
    return q


def _pooling_factor(n: int, r: int):
    """1-D mean pooling ``P [n / r, n]`` with its exact SVD ``(U, s, V^T)``."""
    m = n // r
    mat = np.kron(np.eye(m), np.full((1, r), 1.0 / r))
    basis = np.kron(np.eye(m), _dct_basis(r).T)              # column i * r + k: block i, DCT vector k
    cols = np.arange(n).reshape(m, r)
    v = basis[:, np.concatenate([cols[:, 0], cols[:, 1:].ravel()])]  # block means first, then the rest
    return mat, (np.eye(m), np.full(m, 1.0 / np.sqrt(r)), v.T)


class PoolingSuperResolution(SeparableOperator):
    """Average pooling over ``scale_factor x scale_factor`` blocks with its exact SVD (singular value
    ``1 / r`` on each block-mean direction, 0 elsewhere); ``y`` has shape ``[B, C, H / r, W / r]``."""

    def __init__(self, input_shape: Sequence[int] = (3, 256, 256), scale_factor: int = 4,
                 noise: NoiseModel | None = None):
        input_shape = tuple(int(s) for s in input_shape)
        r = _check_factor(type(self).__name__, input_shape, scale_factor)
        _, h, w = input_shape
        mat_h, svd_h = _pooling_factor(h, r)
        mat_w, svd_w = (mat_h, svd_h) if w == h else _pooling_factor(w, r)
        super().__init__(input_shape, mat_h, mat_w, noise, svd_h, svd_w)
        self.scale_factor = r

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, scale_factor={self.scale_factor}"

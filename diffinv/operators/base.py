"""The operator contract (``docs/conventions.md#operator-contract``).

An operator is a batched ``nn.Module`` for one forward model:

* ``forward(x) -> y``: the noise-free measurement;
* ``noise``: the noise model, so ``measure(x, generator)`` draws ``y_obs`` and ``loss(y_hat, y_obs)``
  scores the misfit per sample (``[B]``);
* flags ``linear`` and ``differentiable`` say what a sampler may use, ``has_svd`` says whether the
  singular value decomposition below is available;
* linear operators give ``adjoint(y)`` and ``pinv(y)``; those with a cheap SVD ``A = U diag(s) V^T``
  expose it in a spectral space of dimension ``d = prod(input_shape)``:
  ``Vt(x) -> [B, d]``, ``V(c) -> x``, ``Ut(y) -> [B, d]`` (zero-padded beyond the rank),
  ``U(c) -> y`` (reads the first ``numel(y)`` entries) and ``singulars() -> [1 or B, d]`` (zeros on
  the null space). DDRM, DiffPIR and PiGDM work in that basis.

Operators whose definition is random (inpainting masks, motion-blur kernels) draw it from a seed;
``for_sample(sample_id)`` returns the operator of that sample so that every rank and every re-run
sees the same measurement.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..checks import require
from .noise import GaussianNoise, NoiseModel


class Operator(nn.Module):
    linear: bool = False
    differentiable: bool = True
    has_svd: bool = False

    def __init__(self, input_shape: Sequence[int], noise: NoiseModel | None = None):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.noise = noise if noise is not None else GaussianNoise(0.0)

    # ------------------------------------------------------------------ measurement
    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def measure(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Noisy measurement ``y_obs = noise(A(x))``."""
        with torch.no_grad():
            return self.noise(self(self.check_input(x)), generator)

    def loss(self, y_hat: Tensor, y_obs: Tensor) -> Tensor:
        """Per-sample misfit ``[B]`` (negative log-likelihood up to a constant)."""
        return self.noise.loss(y_hat, y_obs)

    def misfit(self, x: Tensor, y_obs: Tensor) -> Tensor:
        return self.loss(self(x), y_obs)

    @property
    def sigma(self) -> float:
        """Noise standard deviation on the measurement's scale."""
        return float(self.noise.sigma)

    def for_sample(self, sample_id: int) -> "Operator":
        """The operator of one sample id (only operators with random parts override this)."""
        return self

    def check_input(self, x: Tensor) -> Tensor:
        name = type(self).__name__
        if x.dim() != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{name}: expected input of shape [B, {', '.join(map(str, self.input_shape))}], "
                f"got {list(x.shape)}; resize the image or build the operator for this shape."
            )
        require(torch.isfinite(x), f"{name}: input contains NaN or Inf values.")
        return x

    # ------------------------------------------------------------------ linear algebra
    def adjoint(self, y: Tensor) -> Tensor:
        """``A^T y``. Default: the vector-Jacobian product of ``forward`` (exact for linear maps)."""
        self._require_linear("adjoint")
        if self.has_svd:
            return self.V(self.singulars() * self.Ut(y))
        with torch.enable_grad():
            x = torch.zeros((y.shape[0], *self.input_shape), dtype=y.dtype, device=y.device, requires_grad=True)
            (g,) = torch.autograd.grad(self(x), x, grad_outputs=y)
        return g

    def pinv(self, y: Tensor, tol: float = 1e-6, max_iter: int = 200) -> Tensor:
        """Moore-Penrose pseudo-inverse ``A^+ y``: in the SVD basis when available, otherwise conjugate
        gradients on the normal equations started at 0 (which converges to the minimum-norm solution)."""
        self._require_linear("pinv")
        if self.has_svd:
            s = self.singulars()
            inv = torch.where(s > 1e-8 * s.max(), 1.0 / s.clamp_min(1e-30), torch.zeros_like(s))
            return self.V(inv * self.Ut(y))
        b = self.adjoint(y)
        return conjugate_gradient(lambda v: self.adjoint(self(v)), b, tol=tol, max_iter=max_iter)

    def _require_linear(self, what: str) -> None:
        if not self.linear:
            raise ValueError(f"{type(self).__name__} is nonlinear: {what} is defined for linear operators only.")

    # SVD interface, overridden by operators with has_svd = True
    def singulars(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} exposes no SVD")

    def Vt(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} exposes no SVD")

    def V(self, c: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} exposes no SVD")

    def Ut(self, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} exposes no SVD")

    def U(self, c: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} exposes no SVD")

    @property
    def input_dim(self) -> int:
        return math.prod(self.input_shape)


def conjugate_gradient(apply, b: Tensor, x0: Tensor | None = None, tol: float = 1e-6, max_iter: int = 200) -> Tensor:
    """Solve ``apply(x) = b`` for a symmetric positive (semi-)definite ``apply``, batched per sample."""
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    dims = tuple(range(1, b.dim()))
    r = b - apply(x)
    p = r.clone()
    rs = (r * r).sum(dims, keepdim=True)
    b_norm = (b * b).sum(dims, keepdim=True).sqrt().clamp_min(1e-30)
    for _ in range(max_iter):
        if bool((rs.sqrt() <= tol * b_norm).all()):
            break
        Ap = apply(p)
        pAp = (p * Ap).sum(dims, keepdim=True)
        alpha = torch.where(pAp > 0, rs / pAp.clamp_min(1e-30), torch.zeros_like(pAp))
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = (r * r).sum(dims, keepdim=True)
        p = r + torch.where(rs > 0, rs_new / rs.clamp_min(1e-30), torch.zeros_like(rs)) * p
        rs = rs_new
    return x


def dense_matrix(operator: Operator, dtype: torch.dtype = torch.float64) -> Tensor:
    """The matrix ``[d_y, d]`` of a linear operator, built by applying it to the identity basis
    (for small problems: exact posteriors and tests)."""
    operator._require_linear("dense_matrix")
    d = operator.input_dim
    eye = torch.eye(d, dtype=dtype).reshape(d, *operator.input_shape)
    with torch.no_grad():
        cols = copy.deepcopy(operator).to(dtype)(eye)
    return cols.reshape(d, -1).T.contiguous()

"""A dense linear operator ``y = A x`` with its exact SVD: the random measurement matrices of the
Gaussian-mixture benchmark (Cardoso et al. 2023) and the ground-truth tests."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import Operator
from .noise import NoiseModel


class MatrixOperator(Operator):
    linear = True
    differentiable = True
    has_svd = True

    def __init__(self, matrix: Tensor, input_shape: Sequence[int] | None = None, noise: NoiseModel | None = None):
        if matrix.dim() != 2:
            raise ValueError(f"MatrixOperator: matrix must be 2-D [d_y, d], got shape {list(matrix.shape)}.")
        d_y, d = matrix.shape
        input_shape = tuple(input_shape) if input_shape is not None else (d,)
        if torch.Size(input_shape).numel() != d:
            raise ValueError(f"MatrixOperator: input_shape {input_shape} has not d = {d} entries.")
        super().__init__(input_shape, noise)
        self.register_buffer("matrix", matrix.clone())
        self._svd_cache: tuple = ()

    def _svd(self) -> tuple[Tensor, Tensor, Tensor]:
        """``U [d_y, d_y]``, ``s [d]`` (zero-padded), ``Vh [d, d]`` of the current matrix, computed in float64
        once per dtype / device (so a module moved to float64 gets a float64-accurate SVD)."""
        key = (self.matrix.dtype, self.matrix.device, self.matrix.data_ptr())
        if not self._svd_cache or self._svd_cache[0] != key:
            U, S, Vh = torch.linalg.svd(self.matrix.double(), full_matrices=True)
            s = torch.zeros(self.input_dim, dtype=torch.float64, device=S.device)
            s[: S.numel()] = S
            self._svd_cache = (key, *(t.to(self.matrix.dtype) for t in (U, s, Vh)))
        return self._svd_cache[1:]

    @classmethod
    def random(cls, d_y: int, d: int, generator: torch.Generator | None = None, noise: NoiseModel | None = None,
               dtype: torch.dtype = torch.float32) -> "MatrixOperator":
        """Gaussian matrix with unit-variance entries scaled by 1/sqrt(d) (rows of roughly unit norm)."""
        a = torch.randn(d_y, d, generator=generator, dtype=torch.float64) / d**0.5
        return cls(a.to(dtype), noise=noise)

    def forward(self, x: Tensor) -> Tensor:
        return self.check_input(x).reshape(x.shape[0], -1) @ self.matrix.T

    def adjoint(self, y: Tensor) -> Tensor:
        return (y @ self.matrix).reshape(y.shape[0], *self.input_shape)

    def singulars(self) -> Tensor:
        return self._svd()[1].unsqueeze(0)

    def Vt(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1) @ self._svd()[2].T

    def V(self, c: Tensor) -> Tensor:
        return (c @ self._svd()[2]).reshape(c.shape[0], *self.input_shape)

    def Ut(self, y: Tensor) -> Tensor:
        c = y @ self._svd()[0]
        d = self.input_dim
        return c[:, :d] if c.shape[1] >= d else torch.nn.functional.pad(c, (0, d - c.shape[1]))

    def U(self, c: Tensor) -> Tensor:
        U = self._svd()[0]
        r = min(U.shape[0], self.input_dim)
        return c[:, :r] @ U[:, :r].T

"""The checks every operator passes (``docs/conventions.md#operator-contract``), shared by the per-family test files.

Each family test builds small instances and calls ``check_operator(op)``; ``tests/test_operator_contract.py``
collects every family's ``SMALL_OPERATORS`` list into one registry and loops it through these checks.
"""
from __future__ import annotations

import copy

import torch

from diffinv.operators import Operator


class NoBackward(torch.autograd.Function):
    """Identity whose backward raises: wrapped around a forward model, any differentiation through it fails."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("the sampler differentiated the forward model, which a derivative-free sampler must not")


def _inputs(op: Operator, batch: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((batch, *op.input_shape), generator=g, dtype=dtype) * 2 - 1) * 0.9


def check_operator(op: Operator, *, gradcheck: bool = True) -> None:
    op64 = copy.deepcopy(op).to(torch.float64)
    x = _inputs(op64, 3)
    # shape and dtype, float32 path
    y32 = op(x.float())
    assert y32.shape[0] == 3 and y32.dtype in (torch.float32, torch.complex64), (type(op).__name__, y32.dtype)
    y = op64(x)
    # batch elements are independent
    y1 = op64(x[1:2])
    assert torch.allclose(y[1:2], y1, rtol=1e-7, atol=1e-9), f"{type(op).__name__}: batch elements interact"
    # noise model scores per sample
    y_obs = op.noise(y32, torch.Generator().manual_seed(1))
    assert op.loss(y32, y_obs).shape == (3,)
    if op.linear:
        _check_linear(op64)
    if op.differentiable and gradcheck:
        xs = _inputs(op64, 2, seed=3)[:, ...].clone().requires_grad_(True)
        f = lambda v: op64(v).real if torch.is_complex(op64(v)) else op64(v)  # noqa: E731
        assert torch.autograd.gradcheck(f, (xs,), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def _check_linear(op: Operator) -> None:
    name = type(op).__name__
    x = _inputs(op, 2, seed=5)
    y = torch.randn_like(op(x))
    lhs = (op(x) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-5, atol=1e-8), f"{name}: <Ax, y> = {lhs} != <x, A^T y> = {rhs}"
    # pseudo-inverse: A A^+ A x = A x
    ax = op(x)
    assert torch.allclose(op(op.pinv(ax)), ax, rtol=1e-4, atol=1e-5 * ax.abs().max().item()), f"{name}: A A^+ A != A"
    if op.has_svd:
        s = op.singulars()
        rec = op.U(s * op.Vt(x))
        assert torch.allclose(rec, ax, rtol=1e-6, atol=1e-8), f"{name}: U S V^T x != A x"
        # V is orthogonal: V(Vt(x)) = x
        assert torch.allclose(op.V(op.Vt(x)), x, atol=1e-8), f"{name}: V V^T != I"
        assert torch.allclose(op.Ut(op.U(op.Ut(y))), op.Ut(y), atol=1e-8), f"{name}: U^T U != I on the range"

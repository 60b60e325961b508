"""Data-fidelity gradients shared by the gradient-based samplers."""
from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion import Cost
from ..operators.base import Operator


MISFITS = ("residual", "loss")


def squared_residual(y_hat: Tensor, y: Tensor) -> Tensor:
    """Per-sample ``||y - y_hat||^2`` (complex-safe)."""
    return (y - y_hat).abs().pow(2).reshape(y_hat.shape[0], -1).sum(1)


def misfit(operator: Operator, y_hat: Tensor, y: Tensor, kind: str) -> Tensor:
    """Per-sample data misfit of the derivative-free samplers: ``"residual"`` is ``||y - y_hat||^2``, the loss of
    InverseBench's operators (``inverse_problems/base.py``, ``BaseOperator.loss``) that DPG, SCG and DPS-GSG were tuned
    with; ``"loss"`` is the operator's own noise model (``operator.loss``: closure quantities, Poisson counts)."""
    return squared_residual(y_hat, y) if kind == "residual" else operator.loss(y_hat, y)


def residual_norm(operator: Operator, y_hat: Tensor, y: Tensor) -> Tensor:
    """Per-sample ``||y - y_hat||`` (complex-safe), with gradient 0 where the residual is exactly 0 (the plain
    ``sqrt`` has gradient 0 / 0 = NaN there: with one measurement a float32 residual does hit 0, and one such draw
    turned a whole DPS run into NaN)."""
    sq = squared_residual(y_hat, y)
    zero = sq == 0
    return torch.where(zero, torch.zeros_like(sq), torch.where(zero, torch.ones_like(sq), sq).sqrt())


def dps_gradient(x: Tensor, sigma: Tensor, y: Tensor, operator: Operator, prior, cost: Cost,
                 mode: str = "norm") -> tuple[Tensor, Tensor, Tensor]:
    """Gradient through the denoiser of the measurement misfit at Tweedie's estimate
    (Chung et al. 2023, Eq. 16 / Algorithm 1): returns ``(grad_x m(A(D(x, sigma))), x0_hat, m)``.

    ``mode="norm"``: m = ||y - A(x0_hat)|| per sample (the reference code's choice, not squared);
    ``mode="loss"``: m = the noise model's negative log-likelihood ``operator.loss``.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        x0 = prior.denoise(x, sigma)
        y_hat = operator(x0)
        m = residual_norm(operator, y_hat, y) if mode == "norm" else operator.loss(y_hat, y)
        (grad,) = torch.autograd.grad(m.sum(), x)
    cost.nfe += 1
    cost.forward_calls += 1
    cost.grad_calls += 1
    return grad, x0.detach(), m.detach()


def likelihood_gradient(x0: Tensor, y: Tensor, operator: Operator, cost: Cost) -> tuple[Tensor, Tensor]:
    """``grad_x0 loss(A(x0), y)`` without the denoiser (proximal and MCMC steps)."""
    with torch.enable_grad():
        x0 = x0.detach().requires_grad_(True)
        loss = operator.loss(operator(x0), y)
        (grad,) = torch.autograd.grad(loss.sum(), x0)
    cost.forward_calls += 1
    cost.grad_calls += 1
    return grad, loss.detach()

"""DPS's misfit ||y - A(x0_hat)|| has a finite gradient where the residual is exactly 0. With one measurement a
float32 residual does hit 0: on the MCGdiff mixture at d = 80, d_y = 1 (seed 0, 500 draws) one draw did at step
661 of 1000, its gradient 0 / 0 = NaN made the next iterate NaN and the whole run failed."""
from __future__ import annotations

import torch

from diffinv.operators import GaussianNoise, MatrixOperator
from diffinv.samplers import DPS
from diffinv.samplers.evaluation import make_gmm_problem
from diffinv.samplers.guidance import residual_norm


def test_residual_norm_gradient_is_zero_at_an_exact_fit():
    op = MatrixOperator(torch.eye(3), noise=GaussianNoise(0.1))
    y = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    y_hat = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 0.0]], requires_grad=True)
    m = residual_norm(op, y_hat, y)
    (g,) = torch.autograd.grad(m.sum(), y_hat)
    assert m.tolist() == [0.0, 5.0]
    assert torch.equal(g[0], torch.zeros(3)) and torch.allclose(g[1], torch.tensor([0.6, 0.8, 0.0]))


def test_dps_survives_one_measurement_on_the_mixture():
    torch.manual_seed(0)
    prior, op, y, _ = make_gmm_problem(80, 1, None, 0)
    out = DPS(num_steps=1000, zeta=0.5).sample(y, op, prior, num_samples=500, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()

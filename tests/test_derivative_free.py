"""The derivative-free samplers (DPG, SCG, DPS-GSG, EnKG, EKI): they never differentiate the forward model, the
Gaussian-smoothed gradient estimator behaves as its theory says, DPG's policy gradient points along the gradient of
the smoothed likelihood, SCG's selection is the reverse SDE plus a best-of-K choice, no sampler reads a tensor back to
the host inside its step loop, and each uses the data on the Gaussian-mixture benchmark."""
from __future__ import annotations

import math

import pytest
import torch

from diffinv.operators import GaussianNoise, MatrixOperator
from diffinv.priors import GaussianPrior, Prior
from diffinv.samplers import DDNM, DPG, DPSGSG, EKI, LGD, SCG, EnKG
from diffinv.samplers.evaluation import run_gmm_benchmark
from diffinv.samplers.sde_grid import sde_grid
from diffinv.samplers.smoothing import directions, gsg_gradient, smoothed_gradient
from operator_checks import NoBackward

D, DY = 6, 4


class BlackBox(MatrixOperator):
    """A forward model that cannot be differentiated (its backward raises) and that a sampler may only query: flagged
    nonlinear and non-differentiable, so only samplers requiring nothing of it accept it. Counts its calls and how many
    of its outputs were part of an autograd graph."""

    linear, differentiable, has_svd = False, False, False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = self.graph_outputs = 0

    def forward(self, x):
        self.calls += 1
        out = NoBackward.apply(super().forward(x))
        self.graph_outputs += int(out.requires_grad)
        return out


class RaisingDifferentiable(BlackBox):
    """The same raising backward behind a "differentiable" flag: the negative control (a gradient sampler is caught)."""

    differentiable = True


def toy_problem(seed: int = 0, op_class=MatrixOperator, sigma: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    prior = GaussianPrior(torch.zeros(D), torch.full((D,), 4.0))
    a = torch.randn(DY, D, generator=g) / math.sqrt(D) * 2
    op = op_class(a, noise=GaussianNoise(sigma))
    x = torch.stack([torch.full((D,), 2.0), torch.full((D,), -2.0)])
    return prior, op, op.measure(x, g)


DERIVATIVE_FREE = {
    "DPG": lambda: DPG(num_steps=20, num_mc_samples=8, guidance_scale=20.0, batch_size=16),
    "SCG": lambda: SCG(num_steps=20, num_candidates=4, batch_size=8),
    "DPSGSG": lambda: DPSGSG(num_steps=20, num_queries=8, guidance_scale=1.0, batch_size=16),
    "DPSGSG-forward": lambda: DPSGSG(num_steps=20, num_queries=8, guidance_scale=1.0, central=False, batch_size=None),
    "EnKG": lambda: EnKG(num_steps=10, num_updates=1, max_ode_steps=2, batch_size=None),
    "EnKG-kalman": lambda: EnKG(num_steps=10, num_updates=1, max_ode_steps=2, batch_size=None, update="kalman"),
    "EKI": lambda: EKI(num_iterations=3, fit_samples=8),
}


@pytest.mark.parametrize("name", sorted(DERIVATIVE_FREE))
def test_derivative_free_samplers_never_call_the_operators_backward(name):
    prior, op, y = toy_problem(op_class=BlackBox)
    with pytest.raises(RuntimeError, match="differentiated"):            # the operator really cannot be differentiated
        op(torch.zeros(1, D, requires_grad=True)).sum().backward()
    op.calls = op.graph_outputs = 0
    sampler = DERIVATIVE_FREE[name]()
    assert not sampler.requires
    out = sampler.sample(y, op, prior, 4, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()
    assert op.calls == sampler.cost.forward_calls > 0                   # every query counted
    assert op.graph_outputs == 0                                         # no output was ever part of a graph


def test_the_raising_operator_catches_a_sampler_that_differentiates_it():
    """Negative control: LGD differentiates the forward model, and the same operator stops it."""
    prior, op, y = toy_problem(op_class=RaisingDifferentiable)
    with pytest.raises(RuntimeError, match="differentiated"):
        LGD(num_steps=5, num_mc_samples=2).sample(y, op, prior, 2, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------------------- the SDE grid
@pytest.mark.parametrize("schedule", ["vp", "edm"])
def test_grid_step_is_the_euler_maruyama_step_of_the_reverse_sde(schedule):
    """InverseBench's constants (shrink, factor) give the same step as ``diffusion.sde_drift`` with alpha = 1 (the
    reverse SDE) plus the noise ``s sqrt(2 sigma' sigma dt)``, at the grid's own times (float64, to 1e-10)."""
    from diffinv.diffusion import EDMSDE, VPSDE, sde_drift

    grid = sde_grid(12, schedule)
    sde = VPSDE() if schedule == "vp" else EDMSDE()
    t = sde.sigma_inv(torch.tensor(grid.sigma, dtype=torch.float64))
    prior = GaussianPrior(torch.zeros(D, dtype=torch.float64), torch.linspace(0.5, 2.0, D, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    for i in (0, 5, 10):
        x = torch.randn(3, D, generator=g, dtype=torch.float64) * grid.sigma[i] * grid.scale[i]
        n = torch.randn(3, D, generator=g, dtype=torch.float64)
        d = prior.denoise(x / grid.scale[i], grid.sigma[i])
        ours = grid.step(x, grid.score(x, d, i), i, n)
        dt = t[i + 1] - t[i]
        noise = sde.scale(t[i]) * (2 * sde.sigma_deriv(t[i]) * sde.sigma(t[i]) * (-dt)).sqrt() * n
        ref = x + dt * sde_drift(prior, x, t[i], sde, 1.0, None) + noise
        assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10), (i, (ours - ref).abs().max())


@pytest.mark.parametrize("schedule", ["vp", "edm"])
def test_unguided_grid_samples_the_prior(schedule):
    """SCG with an empty guidance window is the plain reverse SDE on the grid: 4000 draws of a Gaussian prior have its
    mean (within 5 standard errors) and its std per coordinate (within 6 %: the std of 4000 draws has a 1.1 % standard
    error, plus the 200-step discretisation)."""
    prior = GaussianPrior(torch.zeros(D), torch.linspace(0.25, 4.0, D))
    _, op, y = toy_problem()
    out = SCG(num_steps=200, threshold=1.0, schedule=schedule).sample(y[:1], op, prior, 4000,
                                                                      generator=torch.Generator().manual_seed(0))
    std = torch.linspace(0.25, 4.0, D).sqrt()
    assert (out.mean(0).abs() < 5 * std / math.sqrt(4000)).all(), out.mean(0)
    assert ((out.std(0) / std - 1).abs() < 0.06).all(), out.std(0) / std


# ----------------------------------------------------------------------------------------- the GSG estimator
def quadratic(d: int = 5, seed: int = 0):
    """f(x) = 1/2 x^T H x + b^T x per row, with its gradient."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    h, b = m @ m.T / d + torch.eye(d, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    f = lambda x: 0.5 * ((x @ h) * x).sum(1) + x @ b  # noqa: E731
    return f, lambda x: x @ h + b


def test_central_differences_are_exact_for_a_quadratic_at_any_mu():
    """f(x + mu u) - f(x - mu u) = 2 mu grad f . u for a quadratic: the estimate is (1/K sum u u^T) grad f exactly
    (float64 rounding only), whatever mu."""
    f, grad = quadratic()
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u = torch.randn(7, 3, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = torch.einsum("knd,kne,ne->nd", u, u, grad(x)) / 7
    for mu in (1e-3, 0.1, 3.0):
        g, f0 = smoothed_gradient(f, x, u, mu, central=True)
        assert torch.allclose(g, expected, rtol=1e-9, atol=1e-9) and torch.allclose(f0, f(x))
        g_fwd, _ = smoothed_gradient(f, x, u, mu, central=False)
        # forward differences carry the curvature term mu / 2 (u^T H u) u per draw, so they are not exact per draw
        assert not torch.allclose(g_fwd, expected, rtol=1e-6, atol=1e-6)


def test_forward_differences_are_unbiased_for_a_quadratic():
    """E[(f(x + mu u) - f(x)) u] / mu = grad f + mu / 2 E[(u^T H u) u] = grad f (odd moments vanish), so the mean of many
    independent estimates matches the smoothed gradient (= grad f) within 5 standard errors of that mean, even at a
    large mu; the curvature term shows in the spread, not in the mean."""
    f, grad = quadratic()
    n = 4000
    x = torch.randn(1, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64).expand(n, 5)
    g, _ = gsg_gradient(f, x, num_queries=4, mu=1.0, central=False, generator=torch.Generator().manual_seed(4))
    se = g.std(0) / math.sqrt(n)
    assert ((g.mean(0) - grad(x[:1])[0]).abs() < 5 * se).all(), ((g.mean(0) - grad(x[:1])[0]) / se)


def test_the_estimate_error_falls_as_one_over_sqrt_directions():
    """E||g_K - grad f||^2 = E||(u u^T - I) grad f||^2 / K = (d + 1) ||grad f||^2 / K for the central estimate of a
    quadratic: 16x the directions, a quarter of the RMS error. 500 repetitions estimate each RMS to about 3 %, so the
    ratio is checked within [3.3, 4.8] and each RMS within 15 % of its theory."""
    f, grad = quadratic()
    n, d = 500, 5
    x = torch.randn(1, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64).expand(n, d)
    theory = lambda k: math.sqrt((d + 1) / k) * float(grad(x[:1]).norm())  # noqa: E731
    rms = {}
    for k in (16, 256):
        g, _ = gsg_gradient(f, x, num_queries=2 * k, mu=0.1, central=True, generator=torch.Generator().manual_seed(k))
        rms[k] = float((g - grad(x)).norm(dim=1).pow(2).mean().sqrt())
        assert abs(rms[k] / theory(k) - 1) < 0.15, (k, rms[k], theory(k))
    assert 3.3 < rms[16] / rms[256] < 4.8, rms


def test_gsg_takes_every_value_in_one_batched_call():
    calls = []
    f, _ = quadratic()
    counted = lambda x: calls.append(x.shape[0]) or f(x)  # noqa: E731
    x = torch.zeros(3, 5, dtype=torch.float64)
    gsg_gradient(counted, x, num_queries=8, mu=0.1, central=True)
    gsg_gradient(counted, x, num_queries=8, mu=0.1, central=False)
    assert calls == [3 * (1 + 2 * directions(8, True)), 3 * (1 + directions(8, False))] == [27, 27]


# ----------------------------------------------------------------------------------------- DPG and SCG
def test_dpg_policy_gradient_points_along_the_smoothed_likelihood_gradient():
    """With the reward R = exp(-(m - m_ref) / Z), m = ||y - A x0||^2 and x0 ~ N(x0_hat, r^2 I), E[v] = -grad E[R] whose
    direction is that of -grad log E[R] = -2 c A^T (I + 2 c r^2 A A^T)^{-1} (y - A x0_hat), c = 1 / Z (a Gaussian
    integral). 40000 draws: the cosine to the closed form is above 0.99 (a few-percent Monte Carlo error)."""
    _, op, y = toy_problem(sigma=0.0)
    y = y[:1].double()
    op = MatrixOperator(op.matrix.double(), noise=GaussianNoise(0.0))
    x_hat = torch.full((1, D), 0.5, dtype=torch.float64)
    sampler = DPG(num_steps=2, num_mc_samples=40000, batch_size=None)
    m_ref = ((y - op(x_hat)) ** 2).sum(1)
    z = 4 * m_ref                                                              # any positive scale; r from it
    v = sampler.policy_gradient(x_hat, m_ref, z, op, y, torch.Generator().manual_seed(0))
    r = float((z / D).sqrt() / 2)
    a, c = op.matrix, 1 / float(z)
    closed = 2 * c * a.T @ torch.linalg.solve(torch.eye(DY, dtype=torch.float64) + 2 * c * r**2 * a @ a.T,
                                              (y - op(x_hat))[0])
    cos = torch.nn.functional.cosine_similarity(-v[0], closed, dim=0)
    assert cos > 0.99, cos


def test_scg_with_one_candidate_is_the_unguided_reverse_sde():
    """One candidate leaves nothing to choose: the draws equal SCG with the guidance window empty (threshold 1), the
    plain Euler-Maruyama sampler of the same grid (same random stream), up to float rounding."""
    prior, op, y = toy_problem()
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    one = SCG(num_steps=30, num_candidates=1, batch_size=None).sample(y, op, prior, 4, generator=gen())
    unguided = SCG(num_steps=30, threshold=1.0).sample(y, op, prior, 4, generator=gen())
    assert torch.allclose(one, unguided, atol=1e-5), (one - unguided).abs().max()


def test_scg_misfit_falls_as_candidates_grow():
    """Best of K proposals: the final misfit, averaged over 64 draws of each of two measurements, falls with K."""
    prior, op, y = toy_problem()
    y_rep = y.repeat(64, 1)
    mis = []
    for k in (1, 4, 16):
        out = SCG(num_steps=30, num_candidates=k, batch_size=None).sample(y, op, prior, 64,
                                                                           generator=torch.Generator().manual_seed(0))
        mis.append(float(op.loss(op(out), y_rep).mean()))
    assert mis[0] > 2 * mis[1] > 0 and mis[1] > mis[2], mis


# ----------------------------------------------------------------------------------------- no host reads per step
class _PlainPrior(Prior):
    """A Gaussian denoiser without the input validation of ``Prior.denoise`` (which reads sigma back once per call)."""

    def __init__(self):
        super().__init__((D,))

    def denoise(self, x, sigma):
        sig = torch.as_tensor(sigma, dtype=x.dtype)
        return 4.0 / (4.0 + sig**2) * x


class _PlainMatrix(MatrixOperator):
    """``MatrixOperator`` without the finite-input check of ``check_input`` (one host read per call)."""

    def forward(self, x):
        return x.reshape(x.shape[0], -1) @ self.matrix.T


def _host_reads(sampler_factory, num_steps: int) -> int:
    prior, op, y = toy_problem(op_class=_PlainMatrix)
    count = [0]
    originals = {name: getattr(torch.Tensor, name) for name in ("__bool__", "item", "__float__", "__int__", "tolist")}

    def counting(name):
        def wrapper(self, *args, **kwargs):
            count[0] += 1
            return originals[name](self, *args, **kwargs)
        return wrapper

    sampler = sampler_factory(num_steps)
    try:
        for name in originals:
            setattr(torch.Tensor, name, counting(name))
        sampler._sample(y, op, _PlainPrior(), 3, torch.Generator().manual_seed(0), None)
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
    return count[0]


@pytest.mark.parametrize("name, factory", [
    ("DPG", lambda n: DPG(num_steps=n, num_mc_samples=4, batch_size=8)),
    ("SCG", lambda n: SCG(num_steps=n, num_candidates=3, batch_size=4)),
    ("DPSGSG", lambda n: DPSGSG(num_steps=n, num_queries=6, batch_size=8)),
    ("LGD", lambda n: LGD(num_steps=n, num_mc_samples=2, guidance_scale=0.01, batch_size=4)),
    ("DDNM", lambda n: DDNM(num_steps=n)),
])
def test_no_host_reads_inside_the_step_loop(name, factory):
    """The count of ``bool`` / ``item`` / ``float`` / ``int`` / ``tolist`` calls on tensors does not grow with the
    number of steps (set-up work, such as DDNM's schedule, happens once)."""
    assert _host_reads(factory, 8) == _host_reads(factory, 16), name


# ----------------------------------------------------------------------------------------- the data are used
def test_new_samplers_use_the_data_on_the_gaussian_mixture():
    """On the MCGdiff mixture (d = 8, d_y = 4, seed 3) each new sampler, at its benchmark settings, ends with a sliced
    Wasserstein distance to exact draws well below that of prior draws (at most 0.6 of it; measured 0.02-0.41, the
    posterior mean copied N times 0.07) and most of its mass in the right modes (total variation of the mode weights
    below 0.65; measured 0-0.48, prior draws 0.95): it uses the data. The mode check is the one that catches a sampler
    fitting other data: DPG given y = 0 lands in one wrong mode at 0.48 of the prior's distance, but with TV 1."""
    names = ["DDNM", "DPG", "DPSGSG", "LGD", "SCG"]
    report = run_gmm_benchmark(dim=8, dy=4, seed=3, num_samples=300, num_projections=300, algorithms=names)
    res = report["results"]
    ratios = {n: res[n]["sliced_wasserstein"] / res["prior"]["sliced_wasserstein"] for n in names}
    tv = {n: res[n]["mode_tv"] for n in names}
    assert all(r < 0.6 for r in ratios.values()), ratios
    assert all(t < 0.65 for t in tv.values()), tv

"""Navier–Stokes solver, operator, random field and data generator (small grids, a few seconds in all)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffinv.operators import GaussianNoise
from diffinv.operators.navier_stokes import NavierStokes, NavierStokes2DSolver, relative_l2
from diffinv.operators.random_fields import GaussianRandomField

sys.path.insert(0, str(Path(__file__).parent))
from operator_checks import check_operator  # noqa: E402
from operators_ns import SMALL_OPERATORS  # noqa: E402





def _smooth_field(solver, dtype=torch.float64):
    x, y = solver.grid(dtype)
    return (3 * torch.cos(x) + 2 * torch.sin(x + 2 * y) + torch.cos(3 * y))[None]


# ------------------------------------------------------------------ exact solutions
@pytest.mark.parametrize("mode", [(1, 0), (1, 2), (0, 3)])
def test_single_mode_decays_exactly(mode):
    """Without forcing a single Fourier mode has no advection (u is along the level sets) and decays
    as exp(-nu |k|^2 t); Crank–Nicolson's (1,1) Pade factor is within 1e-6 of it at these steps."""
    solver = NavierStokes2DSolver(32, forcing_amplitude=0.0)
    x, y = solver.grid()
    kx, ky = mode
    w0 = (2.5 * torch.cos(kx * x + ky * y + 0.3))[None]
    t = 1.0
    w_t = solver.solve(w0, t)
    exact = w0 * math.exp(-solver.nu * (kx**2 + ky**2) * t)
    assert ((w_t - exact).norm() / exact.norm()).item() < 1e-6


def test_kolmogorov_laminar_flow_is_steady():
    """With f = -A cos(k_f y), the field w* = -A cos(k_f y) / (nu k_f^2) solves nu Lap w* + f = 0 and has
    no advection, so the scheme keeps it to round-off (for A = 4, k_f = 4: w* = -cos(4 y) / (4 nu))."""
    solver = NavierStokes2DSolver(32)
    _, y = solver.grid()
    w_star = (-4.0 * torch.cos(4 * y) / (solver.nu * 16))[None]
    assert torch.allclose(w_star, (-torch.cos(4 * y) / (4 * solver.nu))[None])
    w_t, steps = solver.solve(w_star, 1.0, return_steps=True)
    assert ((w_t - w_star).abs().max() / w_star.abs().max()).item() < 1e-12
    # the laminar speed is A / k_f / (nu k_f^2) = 12.5 everywhere on the grid maxima: dt = 0.5 / (32 * 12.5)
    assert 800 <= int(steps) <= 801


def test_forcing_varies_along_the_last_axis():
    solver = NavierStokes2DSolver(16, dt=1e-3)
    t = 0.01
    w_t = solver.solve(torch.zeros(1, 16, 16, dtype=torch.float64), t)
    _, y = solver.grid()
    assert torch.allclose(w_t[0], -4 * torch.cos(4 * y) * t, rtol=1e-3, atol=1e-6)
    assert torch.allclose(w_t[0, :, 3], w_t[0, 0, 3].expand(16))  # constant along the first axis


def test_mean_vorticity_is_conserved():
    solver = NavierStokes2DSolver(32)
    w0 = GaussianRandomField(32).sample(2, torch.Generator().manual_seed(0), dtype=torch.float64) * 20 + 3.0
    w_t = solver.solve(w0, 0.5)
    assert torch.allclose(w_t.mean(dim=(-2, -1)), w0.mean(dim=(-2, -1)), atol=1e-12)


def test_second_order_in_time():
    """Errors against a fine-step reference on a smooth nonlinear forced flow halve twice per halving."""
    n, t = 32, 0.5
    w0 = _smooth_field(NavierStokes2DSolver(n))
    ref = NavierStokes2DSolver(n, dt=0.02 / 64).solve(w0, t)
    errs = [((NavierStokes2DSolver(n, dt=dt).solve(w0, t) - ref).norm() / ref.norm()).item()
            for dt in (0.02, 0.01, 0.005)]
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(1.85 < p < 2.2 for p in orders), (errs, orders)


def test_adaptive_matches_fine_fixed_step():
    n = 32
    w0 = _smooth_field(NavierStokes2DSolver(n))
    ref = NavierStokes2DSolver(n, dt=1e-4).solve(w0, 0.5)
    w_t = NavierStokes2DSolver(n).solve(w0, 0.5)
    assert ((w_t - ref).norm() / ref.norm()).item() < 5e-4  # dt ~ 0.0046 here: error ~ 2e-4


def test_dealias_modes_agree_on_resolved_flow():
    n = 32
    w0 = _smooth_field(NavierStokes2DSolver(n))
    a = NavierStokes2DSolver(n, dealias="two_thirds").solve(w0, 0.3)
    b = NavierStokes2DSolver(n, dealias="inversebench").solve(w0, 0.3)
    assert ((a - b).norm() / a.norm()).item() < 1e-3


# ------------------------------------------------------------------ batching, precision, autograd
def test_batch_equals_one_at_a_time_and_chunking():
    solver = NavierStokes2DSolver(16)
    w0 = GaussianRandomField(16).sample(4, torch.Generator().manual_seed(1), dtype=torch.float64) * 30
    w0[2] *= 3  # a faster sample takes more steps than the others
    batched, steps = solver.solve(w0, 0.2, return_steps=True)
    assert len(set(steps.tolist())) > 1
    for i in range(4):
        single, s_i = solver.solve(w0[i:i + 1], 0.2, return_steps=True)
        assert torch.allclose(batched[i:i + 1], single, rtol=1e-10, atol=1e-10)
        assert int(s_i) == int(steps[i])
    chunked = NavierStokes2DSolver(16, chunk_size=3).solve(w0, 0.2)
    assert torch.allclose(batched, chunked, rtol=1e-10, atol=1e-10)


def test_waiting_samples_join_as_running_ones_arrive():
    """With chunk_size 2 a batch of 6 samples of different speeds runs as one stream: a waiting sample takes the
    place of one that has arrived, so the loop runs about total steps / 2 iterations, not the sum of each
    pair's slowest count, and every sample equals its solve alone (steps included)."""
    solver = NavierStokes2DSolver(16, chunk_size=2)
    w0 = GaussianRandomField(16).sample(6, torch.Generator().manual_seed(6), dtype=torch.float64) * 30
    w0 *= torch.tensor([1.0, 3.0, 1.5, 1.0, 2.5, 1.2], dtype=torch.float64)[:, None, None]
    calls = []
    rhs = solver._rhs

    def counted(w, spec, speed=False):
        if speed:
            calls.append(w.shape[0])
        return rhs(w, spec, speed)

    solver._rhs = counted
    batched, steps = solver.solve(w0, 0.2, return_steps=True)
    solver._rhs = rhs
    per_pair = sum(int(steps[i:i + 2].max()) for i in range(0, 6, 2))
    assert len(calls) < per_pair and len(calls) <= math.ceil(int(steps.sum()) / 2) + int(steps.max()) // 2
    assert max(calls) == 2
    for i in range(6):
        single, s_i = NavierStokes2DSolver(16).solve(w0[i:i + 1], 0.2, return_steps=True)
        assert torch.allclose(batched[i:i + 1], single, rtol=1e-10, atol=1e-10)
        assert int(s_i) == int(steps[i])


@pytest.mark.parametrize("dealias", ["two_thirds", "inversebench"])
def test_right_hand_side_matches_the_full_2d_transforms(dealias):
    """The 1-D passes that skip the columns the 2/3 rule zeroes give N(w) = -div(u w) + f of the plain formula:
    u from the de-aliased psi, the flux's 2-D FFT, its divergence (masked for the 2/3 rule) and the forcing's
    FFT, all on the whole half spectrum; the skipped columns of the plain result are zero."""
    n = 24
    solver = NavierStokes2DSolver(n, dealias=dealias)
    w = GaussianRandomField(n).sample(3, torch.Generator().manual_seed(7), dtype=torch.float64) * 10
    w_hat = torch.fft.rfft2(w)
    kx = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)[:, None]
    ky = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64)[None, :]
    lap = kx**2 + ky**2
    if dealias == "two_thirds":
        mask = (kx.abs() <= n / 3) & (ky.abs() <= n / 3)
    else:
        mask = lap <= 2 * (n / 3) ** 2
    mask = mask & (lap > 0)
    dx = 1j * torch.where(kx.abs() == n // 2, 0.0, kx)
    dy = 1j * torch.where(ky.abs() == n // 2, 0.0, ky)
    w_d = torch.where(mask, w_hat, 0)
    psi = w_d / torch.where(lap > 0, lap, 1.0)
    ux, uy, wf = (torch.fft.irfft2(f, s=(n, n)) for f in (dy * psi, -dx * psi, w_d))
    plain = -(dx * torch.fft.rfft2(ux * wf) + dy * torch.fft.rfft2(uy * wf))
    if dealias == "two_thirds":
        plain = torch.where(mask, plain, 0)
    plain = plain + torch.fft.rfft2(solver.forcing())
    spec = solver._spectral(torch.float64, None)
    got = solver._rhs(w_hat[..., :spec.cols], spec)
    assert torch.allclose(got, plain[..., :spec.cols], rtol=0, atol=1e-9 * plain.abs().max())
    if dealias == "two_thirds":
        assert spec.cols == n // 3 + 1 and plain[..., spec.cols:].abs().max() < 1e-9 * plain.abs().max()
    else:
        assert spec.cols == n // 2 + 1


def test_float32_agrees_with_float64():
    op = NavierStokes(resolution=32, time=0.2, downsample=1)
    x = GaussianRandomField(32).sample(2, torch.Generator().manual_seed(2), dtype=torch.float64) [:, None] * 3
    y32 = op(x.float())
    y64 = op(x)
    assert y32.dtype == torch.float32 and y64.dtype == torch.float64
    assert (relative_l2(y32.double(), y64) < 1e-4).all()


def test_gradcheck_and_no_grad():
    op = NavierStokes(resolution=12, time=0.02, downsample=2)
    x = (torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64) - 0.5)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(op, (x,), eps=1e-6, atol=1e-6, rtol=1e-5)
    # the misfit's gradient is what gradient samplers use
    y_obs = op(x).detach() + 0.1
    (g,) = torch.autograd.grad(op.misfit(x, y_obs).sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    with torch.no_grad():
        y = op(x)
    assert y.grad_fn is None and not y.requires_grad
    assert torch.equal(y, op(x).detach())


def test_small_operators_pass_the_contract():
    for name, factory in SMALL_OPERATORS:
        check_operator(factory())


# ------------------------------------------------------------------ operator semantics and errors
def test_operator_units_and_subsampling():
    op = NavierStokes(resolution=16, time=0.1, downsample=4, scale=10.0)
    x = GaussianRandomField(16).sample(2, torch.Generator().manual_seed(4), dtype=torch.float64)[:, None]
    y = op(x)
    assert y.shape == (2, 1, 4, 4) and op.output_shape == (1, 4, 4)
    full = op.solver.solve(10.0 * x[:, 0], 0.1)
    assert torch.allclose(y[:, 0], full[:, ::4, ::4])
    assert op.last_steps.shape == (2,)
    assert op.sigma == 0.0 and NavierStokes(16, noise=GaussianNoise(2.0)).sigma == 2.0


def test_bad_inputs_raise_value_errors():
    op = NavierStokes(resolution=16, time=0.05)
    with pytest.raises(ValueError, match="shape"):
        op(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        op(torch.zeros(2, 16, 16))
    bad = torch.zeros(1, 1, 16, 16)
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        op(bad)
    with pytest.raises(ValueError, match="downsample"):
        NavierStokes(resolution=16, downsample=3)
    with pytest.raises(ValueError, match="downsample"):
        NavierStokes(resolution=16, downsample=0)
    with pytest.raises(ValueError, match="resolution"):
        NavierStokes(resolution=15)
    with pytest.raises(ValueError, match="time"):
        NavierStokes(resolution=16, time=0.0)
    with pytest.raises(ValueError, match="dt"):
        NavierStokes(resolution=16, dt=-1.0)
    with pytest.raises(ValueError, match="dealias"):
        NavierStokes(resolution=16, dealias="square")
    with pytest.raises(ValueError, match="w0"):
        NavierStokes2DSolver(16).solve(torch.zeros(1, 1, 16, 16), 1.0)
    with pytest.raises(ValueError, match="not finite"):
        NavierStokes2DSolver(16).solve(torch.full((1, 16, 16), float("inf")), 1.0)


def test_blow_up_is_reported():
    solver = NavierStokes2DSolver(16, dt=0.5)
    w0 = GaussianRandomField(16).sample(1, torch.Generator().manual_seed(5), dtype=torch.float64) * 500
    with pytest.raises(RuntimeError, match="blew up"):
        solver.solve(w0, 20.0)


def test_relative_l2():
    x = torch.ones(2, 1, 4, 4)
    x_hat = x.clone()
    x_hat[1] *= 1.5
    assert torch.allclose(relative_l2(x_hat, x), torch.tensor([0.0, 0.5]))
    assert torch.allclose(relative_l2(x_hat, x[:1]), torch.tensor([0.0, 0.5]))  # broadcast truth


# ------------------------------------------------------------------ Gaussian random field
def test_grf_variance_seed_and_mean():
    grf = GaussianRandomField(32, alpha=2.5, tau=7.0)
    assert math.isclose(grf.sigma, 7.0**1.5)
    w = grf.sample(400, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert w.shape == (400, 32, 32) and w.dtype == torch.float64
    assert w.mean(dim=(-2, -1)).abs().max() < 1e-12                  # mean mode removed
    ratio = w.var().item() / grf.pointwise_variance()
    assert 0.93 < ratio < 1.07, ratio
    again = grf.sample(400, torch.Generator().manual_seed(0), dtype=torch.float32)
    assert torch.allclose(again.double(), w, atol=1e-6)
    # spectrum: the power of mode (1, 0) matches lambda_k
    power = torch.fft.rfft2(w).abs().pow(2).mean(0) / 32**4          # E|u_hat_k / N^2|^2 = lambda_k / L^2
    lam = grf.eigenvalues()
    assert 0.8 < (power[1, 0] / lam[1, 0]).item() < 1.2


def test_grf_rejects_bad_parameters():
    with pytest.raises(ValueError, match="resolution"):
        GaussianRandomField(7)
    with pytest.raises(ValueError, match="tau"):
        GaussianRandomField(16, tau=-1.0)


# ------------------------------------------------------------------ data generator
def _load_generator():
    from diffinv.datasets import navier_stokes
    return navier_stokes


def test_generate_dataset_writes_shards_and_resumes(tmp_path):
    gen = _load_generator()
    kw = dict(resolution=16, num_train=5, num_val=1, num_test=2, seed=3, shard_size=2, burn_in=0.05, progress=False)
    m = gen.generate_dataset(tmp_path, **kw)
    assert m["complete"] and [len(m["splits"][s]["shards"]) for s in ("train", "val", "test")] == [3, 1, 1]
    train = gen.load_split(tmp_path, "train")
    assert train.shape == (5, 1, 16, 16) and train.dtype == np.float32
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["grf"]["alpha"] == 2.5 and manifest["grf"]["tau"] == 7.0 and manifest["scale"] == 10.0
    assert not list(tmp_path.rglob("*.tmp"))
    # the evolved field is the solver's output from the seeded random field
    grf = GaussianRandomField(16)
    w0 = grf.sample(2, torch.Generator().manual_seed(gen._shard_seed(3, "train", 0)))
    expected = NavierStokes2DSolver(16).solve(w0, 0.05).numpy()
    np.testing.assert_allclose(train[:2, 0], expected, rtol=1e-5, atol=1e-5)
    # resume: a lost shard is rewritten identically, finished shards are kept
    kept = tmp_path / "train" / "shard_00000.npy"
    mtime = kept.stat().st_mtime_ns
    (tmp_path / "train" / "shard_00001.npy").unlink()
    gen.generate_dataset(tmp_path, **kw)
    assert kept.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(gen.load_split(tmp_path, "train"), train)
    with pytest.raises(ValueError, match="burn_in"):
        gen.generate_dataset(tmp_path, **{**kw, "burn_in": 0.1})

"""Per-sample cost of every forward model, batched (64) versus one sample at a time.

    python scripts/benchmark_operators.py [--batch 64] [--single 8] [--device cpu|cuda] [--threads N]
                                          [--only NAME ...] [--json PATH]

For each operator it times ``forward`` on a batch of ``--batch`` samples and on ``--single`` samples
passed one by one, and prints the per-sample times and their ratio (batching must pay). Then, for the
Navier–Stokes solver at 64 x 64 and 128 x 128, the cost of one time step of a batch against the FFTs alone that
such a step must do (2 evaluations of the right-hand side, each an inverse FFT of 3 fields and a forward FFT of 2,
on the solver's own chunks): ``step/FFT`` against torch's 2-D transforms of the whole half spectrum is the
solver's overhead over that bound; ``step/pruned`` against the 1-D passes the solver calls, which skip the k_y
columns the 2/3 rule zeroes, is its overhead over the transforms it actually does. On a GPU it also reports
Navier–Stokes solves per second for 64 members at 128 x 128.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffinv.operators import (BicubicSuperResolution, BlackHoleImaging, CircularMotionBlur, GaussianBlur,  # noqa: E402
                               Inpainting, MotionBlur, NavierStokes, NonlinearBlur, PhaseRetrieval,
                               PoolingSuperResolution)

OPERATORS = {
    "sr_bicubic_x4": lambda: BicubicSuperResolution((3, 256, 256), scale_factor=4),
    "sr_pool_x4": lambda: PoolingSuperResolution((3, 256, 256), scale_factor=4),
    "gaussian_blur": lambda: GaussianBlur((3, 256, 256)),
    "motion_blur": lambda: MotionBlur((3, 256, 256), seed=0),
    "circular_motion_blur": lambda: CircularMotionBlur((3, 256, 256), seed=0),
    "inpaint_random": lambda: Inpainting((3, 256, 256), mask_type="random", seed=0),
    "nonlinear_blur": lambda: NonlinearBlur((3, 256, 256), seed=0),
    "phase_retrieval": lambda: PhaseRetrieval((3, 256, 256)),
    "blackhole_eht2017": lambda: BlackHoleImaging(npix=64),
    "navier_stokes_64": lambda: NavierStokes(resolution=64, downsample=4),
    "navier_stokes_128": lambda: NavierStokes(resolution=128, downsample=2),
}


def _inputs(op, n: int, device) -> torch.Tensor:
    if isinstance(op, NavierStokes):
        from diffinv.operators import GaussianRandomField
        from diffinv.operators.navier_stokes import NavierStokes2DSolver
        # realistic states: random fields evolved a little, in prior units (physical / 10)
        w0 = GaussianRandomField(op.input_shape[-1]).sample(n, torch.Generator().manual_seed(0))
        return (NavierStokes2DSolver(op.input_shape[-1]).solve(w0, 0.5) / 10.0)[:, None].to(device)
    return (torch.rand((n, *op.input_shape), generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)


def _clock():
    """CPU time of this process for one CPU thread (immune to other jobs taking the core), else wall time."""
    return time.process_time() if torch.get_num_threads() == 1 and not torch.cuda.is_initialized() else time.perf_counter()


def _timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = _clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return _clock() - t


def bench(name: str, batch: int, single: int, device) -> dict:
    op = OPERATORS[name]().to(device)
    x = _inputs(op, batch, device)
    with torch.no_grad():
        op(x[:2])                                                     # warm-up (plans, caches)
        t_batch = _timed(lambda: op(x), device) / batch
        t_single = _timed(lambda: [op(x[i:i + 1]) for i in range(single)], device) / single
    return {"per_sample_batched_ms": 1e3 * t_batch, "per_sample_single_ms": 1e3 * t_single,
            "speedup": t_single / t_batch}


def _ffts(batch: int, chunk: int, resolution: int, cols: int | None, device):
    """The transforms of one solver step of ``batch`` samples (2 right-hand sides, each an inverse FFT of 3 fields
    and a forward FFT of 2), on chunks of ``chunk``: torch's 2-D transforms of the whole half spectrum
    (``cols=None``), or the 1-D passes that skip all but the first ``cols`` k_y columns, as the solver does."""
    n, m = resolution, resolution // 2 + 1
    spec_in = torch.randn(min(chunk, batch), 3, n, m if cols is None else cols, dtype=torch.complex64, device=device)
    phys_in = torch.randn(min(chunk, batch), 2, n, n, device=device)
    if cols is None:
        def rhs():
            torch.fft.irfft2(spec_in, s=(n, n))
            torch.fft.rfft2(phys_in)
    else:
        def rhs():
            torch.fft.irfft(torch.fft.ifft(spec_in, dim=-2), n=n, dim=-1)
            torch.fft.fft(torch.fft.rfft(phys_in, dim=-1)[..., :cols], dim=-2)

    def step():
        for _ in range(0, batch, chunk):
            rhs()
            rhs()
    return step


def ns_step_ratio(resolution: int, batch: int, device, horizon: float = 1.0, repeats: int = 3) -> dict:
    """Seconds per time step of a ``batch`` of evolved fields (adaptive steps to the problem's t = 1, hundreds of
    steps per sample) and of the FFTs alone for as many steps: the two timings are interleaved, each window as
    long as the other, and the fastest of ``repeats`` kept (the machines are noisy, in bursts)."""
    op = NavierStokes(resolution=resolution)
    solver = op.solver
    w0 = (_inputs(op, batch, device)[:, 0] * op.scale)
    _, steps = solver.solve(w0, horizon, return_steps=True)
    mean_steps = float(steps.double().mean())
    chunk = solver.chunk(batch, device)
    cols = solver._spectral(w0.dtype, w0.device).cols
    full, pruned = _ffts(batch, chunk, resolution, None, device), _ffts(batch, chunk, resolution, cols, device)
    calls = max(1, round(mean_steps))
    runs = {"step": (lambda: solver.solve(w0, horizon), mean_steps),
            "fft": (lambda: [full() for _ in range(calls)], calls),
            "fft_pruned": (lambda: [pruned() for _ in range(calls)], calls)}
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, (fn, per) in runs.items():
            best[name] = min(best[name], _timed(fn, device) / per)
    return {"step_ms": 1e3 * best["step"], "fft_ms": 1e3 * best["fft"], "fft_pruned_ms": 1e3 * best["fft_pruned"],
            "step_over_fft": best["step"] / best["fft"], "step_over_pruned_fft": best["step"] / best["fft_pruned"],
            "steps_per_sample": mean_steps}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--single", type=int, default=8, help="samples timed one at a time")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--only", nargs="*", default=None, choices=sorted(OPERATORS))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {}
    print(f"{'operator':24s} {'batched ms/sample':>18s} {'single ms/sample':>17s} {'speedup':>8s}")
    for name in args.only or OPERATORS:
        r = bench(name, args.batch, args.single, device)
        results[name] = r
        print(f"{name:24s} {r['per_sample_batched_ms']:18.2f} {r['per_sample_single_ms']:17.2f} {r['speedup']:8.1f}x",
              flush=True)
    print(f"\n{'Navier-Stokes step':18s} {'step ms':>8s} {'FFT ms':>8s} {'step/FFT':>9s} {'pruned FFT ms':>14s} "
          f"{'step/pruned':>12s}   (batch {args.batch}, {torch.get_num_threads()} thread(s), "
          f"{'CPU' if torch.get_num_threads() == 1 and device.type == 'cpu' else 'wall'} time)")
    for n in (64, 128):
        r = ns_step_ratio(n, args.batch, device)
        results[f"navier_stokes_{n}_step"] = r
        print(f"{f'{n} x {n}':18s} {r['step_ms']:8.2f} {r['fft_ms']:8.2f} {r['step_over_fft']:9.2f} "
              f"{r['fft_pruned_ms']:14.2f} {r['step_over_pruned_fft']:12.2f}", flush=True)
    if device.type == "cuda":
        op = NavierStokes(resolution=128, downsample=2).to(device)
        x = _inputs(op, 64, device)
        with torch.no_grad():
            op(x)
            t = _timed(lambda: op(x), device)
        results["navier_stokes_128_gpu_solves_per_s"] = 64 / t
        print(f"Navier-Stokes 128 x 128, T = 1, 64 members: {64 / t:.1f} solves/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                                               "results": results}, indent=2))


if __name__ == "__main__":
    main()

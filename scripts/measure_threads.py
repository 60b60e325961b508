#!/usr/bin/env python3
"""Measure what torch's intra-op threads buy on this machine, for the work diffinv does on CPUs.

Each case runs in a fresh process per thread count (``torch.set_num_threads(n)``), best of ``--repeats``:

* ``ns_solve_B``: the Navier–Stokes forward model (64 x 64, adaptive step, t = 1) on B fields;
* ``denoise_B``: the shipped ns64 prior's network (EDMPrecond + SongUNet) on a batch of B;
* ``dps_step_4``: one DPS-style gradient step (prior + forward model + backward) on 4 samples;
* ``fit_step_32``: one training step of the ns64 prior (EDM loss, AdamW) on a batch of 32.

    python scripts/measure_threads.py [--threads 1 2] [--repeats 3] [--cases ns_solve_1 denoise_32 ...]

Prints one row per case with the seconds per call for each thread count, and the load average before and
after (other processes on the machine change the answer: report it with the figures).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ["ns_solve_1", "ns_solve_4", "ns_solve_32", "denoise_1", "denoise_4", "denoise_32", "denoise_128",
         "dps_step_4", "fit_step_32"]


def _network():
    from diffinv.networks import EDMPrecond

    return EDMPrecond(img_resolution=64, img_channels=1, model_type="SongUNet", model_channels=16,
                      channel_mult=[1, 2, 2, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)


def _fields(b: int, g) -> "torch.Tensor":
    """``b`` fields of the Navier–Stokes training data (prior units), 64 x 64: those of data/navier_stokes_64
    when it is there, else Gaussian random fields of the same law before evolution."""
    import numpy as np
    import torch

    shard = ROOT / "data" / "navier_stokes_64" / "train" / "shard_00000.npy"
    if shard.is_file():
        return torch.from_numpy(np.array(np.load(shard, mmap_mode="r")[:b], dtype=np.float32)).reshape(b, 1, 64, 64) / 10
    from diffinv.operators.random_fields import GaussianRandomField

    return GaussianRandomField(64).sample(b, generator=g).float()[:, None] / 10


def _case(name: str):
    """A zero-argument callable doing one unit of the named work (set-up excluded)."""
    import torch

    from diffinv.operators.navier_stokes import NavierStokes

    g = torch.Generator().manual_seed(0)
    kind, _, size = name.rpartition("_")
    b = int(size)
    if kind == "ns_solve":
        op = NavierStokes(resolution=64, downsample=4)
        x = _fields(b, g)
        return lambda: op(x)
    net = _network().eval()
    if kind == "denoise":
        x = torch.randn(b, 1, 64, 64, generator=g)
        sigma = torch.full((b,), 1.0)

        def run():
            with torch.no_grad():
                net(x, sigma)
        return run
    if kind == "dps_step":
        op = NavierStokes(resolution=64, downsample=4, dt=0.01)
        x = torch.randn(b, 1, 64, 64, generator=g)
        y = torch.zeros(b, 1, 16, 16)

        def run():
            xt = x.clone().requires_grad_(True)
            x0 = net(xt, torch.full((b,), 1.0))
            ((op(x0) - y) ** 2).sum().backward()
        return run
    if kind == "fit_step":
        from diffinv.losses import EDMLoss

        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        loss_fn = EDMLoss()
        x = 0.5 * torch.randn(b, 1, 64, 64, generator=g)

        def run():
            opt.zero_grad()
            loss_fn(net, x).mean().backward()
            opt.step()
        return run
    raise ValueError(f"unknown case {name!r}; choose from {CASES}")


def _child(name: str, threads: int, repeats: int) -> None:
    import torch

    torch.set_num_threads(threads)
    run = _case(name)
    run()                                    # warm-up (allocations, spectral tables)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"case": name, "threads": threads, "seconds": min(times)}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]), int(args.child[2]))
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)          # torch.set_num_threads decides
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}", flush=True)
    print(f"{'case':<14}" + "".join(f"{f'{n} thread(s)':>14}" for n in args.threads) + "   speed-up", flush=True)
    for case in args.cases:
        row = []
        for n in args.threads:
            out = subprocess.run([sys.executable, __file__, "--child", case, str(n), str(args.repeats)], env=env,
                                 capture_output=True, text=True, check=True)
            row.append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
        speedup = row[0] / row[-1]
        print(f"{case:<14}" + "".join(f"{t:>13.3f}s" for t in row) + f"   {speedup:8.2f}x", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

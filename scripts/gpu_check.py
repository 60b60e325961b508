"""The GPU check: one command on a CUDA machine, one table.

    python scripts/gpu_check.py [--particles 2048] [--ns-batch 2048] [--skip-fit] [--json out.json]

1. ``pytest -m cuda``: device placement of every prior config, operator and sampler, no host synchronisation in
   any pixel sampler's steps (``torch.cuda.set_sync_debug_mode("error")``), and a bf16 training step of every fit
   config that trains in bf16;
2. ``diffinv fit`` images/s for the DPS FFHQ-size network in bf16, without and with ``torch.compile``
   (``scripts/benchmark_fit.py --device cuda --size dps``);
3. EnKG on the 128 x 128 Navier–Stokes problem: seconds per guided step at ``--particles`` particles with the
   InverseBench-size network (``configs/prior/inversebench_ns.yaml``) at random weights, at the first guided step
   (20 ODE steps per x0 prediction, the reference's maximum) and at the last (1);
4. Navier–Stokes solves per second (128 x 128 to t = 1) at batch ``--ns-batch``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from diffinv.operators import GaussianRandomField, NavierStokes  # noqa: E402
from diffinv.priors import PixelPrior  # noqa: E402
from diffinv.priors.loading import build  # noqa: E402
from diffinv.samplers import EnKG  # noqa: E402
from diffinv.samplers.particles import LocalParticles  # noqa: E402


DEVICE = "cuda"


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def cuda_tests() -> dict:
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests"], cwd=ROOT, capture_output=True,
                       text=True)
    last = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(r.stdout[-4000:], r.stderr[-2000:], sep="\n")
    return {"pytest -m cuda": last, "ok": r.returncode == 0}


def fit_throughput() -> dict:
    out = ROOT / "outputs" / "gpu_check_fit.json"
    out.parent.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "scripts/benchmark_fit.py", "--device", "cuda", "--size", "dps", "--compile",
                    "both", "--repeats", "1", "--json", str(out)], cwd=ROOT, check=True)
    rows = json.loads(out.read_text())
    return {f"fit DPS-FFHQ bf16 compile={r['compile']} (images/s)": round(r["wall"]["lightning_img_s"], 1) for r in rows}


def ns_problem(batch: int, resolution: int = 128):
    op = NavierStokes(resolution=resolution, downsample=2).to(DEVICE)
    w0 = GaussianRandomField(resolution).sample(batch, torch.Generator().manual_seed(0)).to(DEVICE)
    x = (op.solver.solve(w0, 0.5) / op.scale)[:, None]          # evolved fields, in prior units
    return op, x


def enkg_step(particles: int, config: str = "configs/prior/inversebench_ns.yaml") -> dict:
    """Seconds per EnKG guided step with the network of ``config`` at random weights, on the Navier-Stokes problem
    at that network's resolution."""
    init = yaml.safe_load((ROOT / config).read_text())["model"]["init_args"]
    prior = PixelPrior(build(init["network"])).to(DEVICE).eval()
    op, x = ns_problem(particles, prior.event_shape[-1])
    y = op(x[:1])
    sampler = EnKG()
    sigma = torch.tensor(10.0)
    results = {}
    for k in (sampler.max_ode_steps, 1):
        def step():
            sampler._update(x.clone(), y.repeat(particles, 1, 1, 1), op, prior, sigma, k, 1.0,
                            LocalParticles(particles), 1)
        with torch.no_grad():
            step()                                                    # warm-up (cuDNN plans, FFT plans)
            results[f"EnKG guided step, {particles} particles, K={k} ODE steps (s)"] = round(timed(step), 2)
    return results


def ns_throughput(batch: int) -> dict:
    op, x = ns_problem(batch)
    with torch.no_grad():
        op(x[:64])
        t = timed(lambda: op(x))
    return {f"Navier-Stokes 128x128 to t=1, batch {batch} (solves/s)": round(batch / t, 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--particles", type=int, default=2048)
    p.add_argument("--ns-batch", type=int, default=2048)
    p.add_argument("--skip-fit", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of the timing code (use small sizes)")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); run it on a GPU "
                         "machine with a CUDA build of torch.")
    table = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE, "torch": torch.__version__}
    if DEVICE == "cuda":
        table.update(cuda_tests())
    if not args.skip_fit and DEVICE == "cuda":
        table.update(fit_throughput())
    table.update(ns_throughput(args.ns_batch))
    table.update(enkg_step(args.particles))
    width = max(map(len, table))
    print("\n| check | result |\n|---|---|")
    for key, value in table.items():
        print(f"| {key:{width}s} | {value} |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()

"""Ensemble samplers split over the ranks of a gloo job, for ``tests/test_distributed_ensemble.py``.

``python tests/distributed_cases.py --rank R --world W --store FILE --out DIR`` (or :func:`launch`, which starts
the W processes) runs every case of :data:`CASES` with ``particles=ShardedParticles(N)`` and rank 0 saves each
case's whole ensemble (``collect``) and every rank its traffic to ``DIR``; :func:`one_process` runs the same case
on one process without ranks. The problems are float64: a Gaussian mixture (MCGdiff's, d = 8, 4 observations,
two measurements at once) and a small Navier–Stokes problem (16 x 16 Gaussian prior, vorticity observed every 4th
grid point at t = 0.05, 16 values, noise 0.1). N = 11 particles: 6 + 5 on 2 ranks, 4 + 4 + 3 on 3. The SMC samplers
(MCGdiff, TDS, FPS-SMC) run on the mixture with resampling at every step.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
N = 11


def gmm_problem():
    from diffinv.samplers.evaluation import make_gmm_problem

    prior, op, y, _ = make_gmm_problem(8, 4, seed=0, dtype=torch.float64)
    return prior, op, torch.cat([y, y + 0.5])             # B = 2 measurements, each with its own ensemble


def ns_problem():
    from diffinv.operators import GaussianNoise
    from diffinv.operators.navier_stokes import NavierStokes
    from posterior_checks import image_prior

    prior = image_prior(torch.float64)
    op = NavierStokes(resolution=16, time=0.05, downsample=4, dt=0.01, noise=GaussianNoise(0.1)).to(torch.float64)
    x_true = prior.sample(1, torch.Generator().manual_seed(3))
    return prior, op, op.measure(x_true, torch.Generator().manual_seed(4))


def dense_problem():
    from posterior_checks import gaussian_problem

    p = gaussian_problem("dense", dtype=torch.float64)
    return p.prior, p.operator, p.y


def enkg(**kw):
    from diffinv.samplers import EnKG

    return EnKG(num_steps=kw.pop("num_steps", 12), max_ode_steps=3, batch_size=4, **kw)


def eki():
    from diffinv.samplers import EKI

    return EKI(num_iterations=4, tau=None, fit_samples=8)


def smc(name: str):
    """An SMC sampler that resamples whenever the weights differ (threshold 1), so that particles move between
    ranks at every step."""
    from diffinv.samplers import FPSSMC, TDS, MCGdiff

    return {"MCGdiff": lambda: MCGdiff(num_steps=20, threshold=1.0),
            "TDS": lambda: TDS(num_steps=20, threshold=1.0, data_variance=130.0),
            "FPSSMC": lambda: FPSSMC(num_steps=20, threshold=1.0)}[name]()


# name -> (problem, sampler factory)
CASES = {
    "gmm_mcgdiff": (gmm_problem, lambda: smc("MCGdiff")),
    "gmm_tds": (gmm_problem, lambda: smc("TDS")),
    "gmm_fps_smc": (gmm_problem, lambda: smc("FPSSMC")),
    "gmm_reference": (gmm_problem, lambda: enkg(guidance_scale=1.0)),
    "gmm_kalman": (gmm_problem, lambda: enkg(update="kalman", num_updates=2, stochastic=True, relaxation=0.6)),
    "ns_reference": (ns_problem, lambda: enkg(num_updates=1)),
    "ns_kalman": (ns_problem, lambda: enkg(update="kalman", num_updates=1, stochastic=True, relaxation=0.6)),
    "eki_dense": (dense_problem, eki),
}
SEED = 5


def run_case(name: str, particles=None, checkpoint=None) -> torch.Tensor:
    problem, make = CASES[name]
    prior, op, y = problem()
    with torch.no_grad():
        return make().sample(y, op, prior, num_samples=N, generator=torch.Generator().manual_seed(SEED),
                             particles=particles, checkpoint=checkpoint)


def one_process(name: str) -> torch.Tensor:
    return run_case(name)


def resampling_case(particles=None):
    """Global log-weights and particles ``[N, 3, 4]``; rank r resamples its rows (its generator seeded with r:
    rank 0's uniform is the one used)."""
    from diffinv.samplers.distributed_resampling import resample

    g = torch.Generator().manual_seed(11)
    lw = 3 * torch.randn(N, 3, generator=g, dtype=torch.float64)
    x = torch.randn(N, 3, 4, generator=g, dtype=torch.float64)
    rank = 0 if particles is None else particles.rank
    if particles is not None:
        lw, x = lw[particles.start: particles.start + particles.count], x[particles.start: particles.start + particles.count]
    return resample(lw, x, torch.Generator().manual_seed(100 + rank), particles)


class Interrupt(Exception):
    pass


def failure_case(particles, name: str = "gmm_reference") -> str:
    """Case ``name`` whose forward model raises on rank 1 at its third call: what each rank raised."""
    problem, make = CASES[name]
    prior, op, y = problem()
    calls, forward = [0], op.forward

    def failing(x):
        calls[0] += 1
        if particles.rank == 1 and calls[0] == 3:
            raise RuntimeError("the forward model blew up on rank 1")
        return forward(x)

    op.forward = failing
    try:
        with torch.no_grad():
            make().sample(y, op, prior, num_samples=N, generator=torch.Generator().manual_seed(SEED),
                          particles=particles)
    except Exception as err:     # noqa: BLE001 - the test reads it
        return f"{type(err).__name__}: {err}"
    return "no error"


def checkpoint_case(particles, out: Path) -> None:
    """``gmm_kalman`` saving every 3 steps and stopped after step 7; rank 0 writes the last saved state."""
    from diffinv.samplers.resume import MemoryCheckpoint

    problem, make = CASES["gmm_kalman"]
    prior, op, y = problem()
    store = MemoryCheckpoint(every=3)

    def stop(step, num_steps, x):
        if step == 7:
            raise Interrupt

    try:
        with torch.no_grad():
            make().sample(y, op, prior, num_samples=N, generator=torch.Generator().manual_seed(SEED),
                          callback=stop, particles=particles, checkpoint=store)
    except Interrupt:
        pass
    if particles.rank == 0:
        torch.save(store.saved, out / "checkpoint.pt")
    resumed = run_case("gmm_kalman", particles, MemoryCheckpoint(every=3, saved=store.saved))
    full = particles.collect(resumed.reshape(particles.count * 2, -1))
    if particles.rank == 0:
        torch.save(full, out / "resumed.pt")


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import torch.distributed as dist

    from diffinv.samplers.particles import ShardedParticles

    dist.init_process_group("gloo", init_method=f"file://{args.store}", rank=args.rank, world_size=args.world)
    try:
        traffic = {}
        for name in args.cases:
            particles = ShardedParticles(N)
            local = run_case(name, particles)
            full = particles.collect(local)
            traffic[name] = dict(particles.traffic)
            if args.rank == 0:
                torch.save(full, args.out / f"{name}.pt")
        particles = ShardedParticles(N)
        x_new, ancestors = resampling_case(particles)
        full = particles.collect(x_new.reshape(particles.count * 3, 4)).reshape(N, 3, 4)
        traffic["resampling"] = dict(particles.traffic)
        if args.rank == 0:
            torch.save({"x": full, "ancestors": ancestors}, args.out / "resampling.pt")
        checkpoint_case(ShardedParticles(N), args.out)
        if args.world > 1:       # as the solver does next: every rank learns every rank's outcome
            failures = {}
            for name in ("gmm_reference", "gmm_tds"):
                outcomes = [None] * args.world
                dist.all_gather_object(outcomes, failure_case(ShardedParticles(N), name))
                failures[name] = outcomes
            if args.rank == 0:
                (args.out / "failure.json").write_text(json.dumps(failures))
        torch.save(traffic, args.out / f"traffic{args.rank}.pt")
    finally:
        dist.destroy_process_group()
    return 0


def launch(world: int, out: Path, cases: list[str] | None = None, timeout: float = 300) -> None:
    """Run :func:`main` on ``world`` processes (one torch thread each); raise with their output if one fails."""
    out.mkdir(parents=True, exist_ok=True)
    store = out / "store"
    store.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    extra = [] if cases is None else ["--cases", *cases]
    procs = [subprocess.Popen([sys.executable, str(Path(__file__)), "--rank", str(r), "--world", str(world),
                               "--store", str(store), "--out", str(out), *extra], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    bad = [(r, p.returncode, log) for r, (p, log) in enumerate(zip(procs, logs)) if p.returncode != 0]
    if bad:
        raise AssertionError("\n".join(f"rank {r} exited {rc}:\n{log[-4000:]}" for r, rc, log in bad))


if __name__ == "__main__":
    sys.exit(main())

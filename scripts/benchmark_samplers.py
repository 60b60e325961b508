"""Sampler overhead benchmark on a small UNet prior (CPU by default).

For every registered sampler that can run on a pixel prior with a dense linear operator, the wall time
of one ``sample`` call is compared with the time spent inside the network (forward passes, and backward
passes through it for gradient-based samplers) and inside the forward model during that same call:

    overhead = wall / (network + forward model) - 1          (target: < 10%)

The network and forward-model time are measured in place by timing wrappers (the backward time through
the network is taken between autograd hooks on its output and on its input), so the comparison is on
exactly the batches the sampler used. Then EnKG's wall time per particle for 8 ... 256 particles, which
should fall as the ensemble grows: the particles go through the network in chunks of ``--enkg-batch``
(EnKG's default, 64 as the reference; 0 = all at once) and through the forward model in one call, so the
fixed per-call costs are shared until the chunk is full; beyond it the CPU is saturated and the time per
particle levels off. Each size is timed ``--repeats`` times and the fastest run is reported (the usual
guard against a busy machine).

    python scripts/benchmark_samplers.py [--resolution 16] [--channels 32] [--batch 8] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmark_networks import time_call  # the same timer as the network benchmark (scripts/ is on sys.path)
from diffinv.operators import GaussianNoise, MatrixOperator
from diffinv.priors import DenoiserPrior, Prior
from diffinv.samplers.base import capabilities
from diffinv.samplers.evaluation import load_all_samplers

# A few tens of network evaluations each: long enough to time, short enough for a CPU.
BENCH_KWARGS: dict[str, dict] = {
    "ULA": dict(sigma=0.05, num_steps=30, power_iterations=5),
    "SKRock": dict(sigma=0.05, num_steps=6, num_stages=5, power_iterations=5),
    "REDDiff": dict(num_steps=30),
    "PnPDM": dict(num_iters=4, rho=1.0, rho_min=0.3, num_diffusion_steps=30),
    "PosteriorSDE": dict(num_steps=30),
    "DDRM": dict(num_steps=30),
    "DiffPIR": dict(num_steps=30),
    "DPS": dict(num_steps=30),
    "PiGDM": dict(num_steps=30),
    "DAPS": dict(num_steps=6, ode_steps=3, langevin_steps=5),
    "EnKG": dict(num_steps=10, num_updates=1, max_ode_steps=2, batch_size=None),
    "DPG": dict(num_steps=30, num_mc_samples=16, batch_size=None),
    "SCG": dict(num_steps=30, num_candidates=4, batch_size=None),
    "DPSGSG": dict(num_steps=30, num_queries=16, batch_size=None),
    "DDNM": dict(num_steps=30),
    "LGD": dict(num_steps=30, num_mc_samples=4, guidance_scale=0.01),
    # the SMC samplers: all particles (--batch) in one network call per step
    "MCGdiff": dict(num_steps=30),
    "TDS": dict(num_steps=30),
    "FPSSMC": dict(num_steps=30),
}


class TimedPrior(Prior):
    """Accumulates the time spent in the network's forward passes and in backward passes through it."""

    def __init__(self, inner: Prior):
        super().__init__(inner.event_shape)
        self.inner = inner
        self.forward_s = self.backward_s = 0.0
        self._t_out = None

    def _denoise(self, x, sigma):
        t0 = time.perf_counter()
        if x.requires_grad:
            x_in = x.view_as(x)                     # its gradient is ready once the backward through the net is done
            out = self.inner._denoise(x_in, sigma)
            out.register_hook(self._start_backward)
            x_in.register_hook(self._end_backward)
        else:
            out = self.inner._denoise(x, sigma)
        self.forward_s += time.perf_counter() - t0
        return out

    def _start_backward(self, grad):
        self._t_out = time.perf_counter()

    def _end_backward(self, grad):
        if self._t_out is not None:
            self.backward_s += time.perf_counter() - self._t_out
            self._t_out = None


class TimedMatrixOperator(MatrixOperator):
    seconds = 0.0

    def forward(self, x):
        t0 = time.perf_counter()
        out = super().forward(x)
        TimedMatrixOperator.seconds += time.perf_counter() - t0
        return out


def build_prior(resolution: int, channels: int, seed: int = 0) -> DenoiserPrior:
    """A small EDM-preconditioned SongUNet with random weights (the cost, not the quality, matters here)."""
    from diffinv.networks.edm import EDMPrecond

    torch.manual_seed(seed)
    net = EDMPrecond(img_resolution=resolution, img_channels=1, model_type="SongUNet", model_channels=channels,
                     channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return DenoiserPrior(net, (1, resolution, resolution))


def overhead_table(prior: DenoiserPrior, operator: MatrixOperator, y: torch.Tensor, batch: int,
                   names: list[str]) -> dict:
    registry = load_all_samplers()
    rows = {}
    for name in names:
        cls = registry[name]
        if not cls.requires <= capabilities(operator, prior):
            continue
        sampler = cls(**BENCH_KWARGS.get(name, {}))
        timed = TimedPrior(prior)
        # warm-up (allocator, first-call costs), then the timed run
        sampler.sample(y, operator, timed, num_samples=batch, generator=torch.Generator().manual_seed(0))
        timed.forward_s = timed.backward_s = 0.0
        TimedMatrixOperator.seconds = 0.0
        t0 = time.perf_counter()
        sampler.sample(y, operator, timed, num_samples=batch, generator=torch.Generator().manual_seed(1))
        wall = time.perf_counter() - t0
        bare = timed.forward_s + timed.backward_s + TimedMatrixOperator.seconds
        rows[name] = {"seconds": wall, "network_forward_s": timed.forward_s, "network_backward_s": timed.backward_s,
                      "operator_s": TimedMatrixOperator.seconds, "overhead": wall / bare - 1.0,
                      "nfe": sampler.cost.nfe, "forward_calls": sampler.cost.forward_calls,
                      "grad_calls": sampler.cost.grad_calls}
        r = rows[name]
        print(f"{name:>13s} {wall:8.3f} {r['network_forward_s']:8.3f} {r['network_backward_s']:8.3f} "
              f"{r['operator_s']:8.4f} {100 * r['overhead']:8.1f}% {r['nfe']:6d} {r['forward_calls']:6d}", flush=True)
    return rows


def enkg_scaling(prior, operator, y, particles: list[int], chunk: int, repeats: int) -> dict:
    registry = load_all_samplers()
    if "EnKG" not in registry:
        print("EnKG is not registered; skipping the particle scaling")
        return {}
    kwargs = {**BENCH_KWARGS["EnKG"], "batch_size": chunk if chunk == "auto" else (int(chunk) or None)}
    out = {}
    for n in particles:
        sampler = registry["EnKG"](**kwargs)
        sampler.sample(y, operator, prior, num_samples=n, generator=torch.Generator().manual_seed(0))  # warm-up
        times = []
        for r in range(repeats):
            sampler = registry["EnKG"](**kwargs)
            t0 = time.perf_counter()
            sampler.sample(y, operator, prior, num_samples=n, generator=torch.Generator().manual_seed(1 + r))
            times.append(time.perf_counter() - t0)
        wall = min(times)
        out[n] = {"seconds": wall, "ms_per_particle": 1e3 * wall / n, "nfe": sampler.cost.nfe,
                  "all_seconds": times}
        print(f"{n:6d} particles {wall:8.3f} s {out[n]['ms_per_particle']:8.2f} ms/particle  NFE {sampler.cost.nfe}", flush=True)
    return out


def network_paths(prior: DenoiserPrior, batch: int, repeats: int) -> dict:
    """Network ms per sample of the default CPU path (channels-last, eval mode) against the contiguous layout."""
    x = torch.randn((batch, *prior.event_shape), generator=torch.Generator().manual_seed(0))
    sigma = torch.ones(batch)
    out = {}
    for name, flag in (("contiguous", False), ("channels_last", True), ("contiguous ", False), ("channels_last ", True)):
        prior.channels_last_on_cpu = flag
        if not flag:
            prior.denoiser.to(memory_format=torch.contiguous_format)
            prior._channels_last = False
        with torch.no_grad():
            prior.denoise(x, sigma)
            best = time_call(lambda: prior.denoise(x, sigma), repeats)
        out[name.strip()] = min(out.get(name.strip(), float("inf")), 1e3 * best / batch)
    prior.channels_last_on_cpu = True
    print(f"network ms/sample, batch {batch}: contiguous {out['contiguous']:.2f}, channels_last (default on CPU) "
          f"{out['channels_last']:.2f} ({out['contiguous'] / out['channels_last']:.2f}x)", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--channels", type=int, default=32, help="UNet base channels")
    p.add_argument("--batch", type=int, default=8, help="posterior samples per call (one measurement)")
    p.add_argument("--measurements", type=int, default=64, help="rows of the random measurement matrix")
    p.add_argument("--algorithms", type=str, default=None)
    p.add_argument("--particles", type=str, default="8,16,32,64,128,256")
    p.add_argument("--enkg-batch", default="auto", help="EnKG particles per network call (0: all; auto: the "
                   "device's measured chunk, diffinv.samplers.enkg.NETWORK_CHUNK)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per ensemble size (the fastest counts)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=str, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    prior = build_prior(args.resolution, args.channels)
    d = args.resolution**2
    g = torch.Generator().manual_seed(0)
    a = torch.randn(args.measurements, d, generator=g) / d**0.5
    operator = TimedMatrixOperator(a, input_shape=(1, args.resolution, args.resolution), noise=GaussianNoise(0.05))
    x = torch.rand((1, 1, args.resolution, args.resolution), generator=g) * 2 - 1
    y = operator.measure(x, g)
    registry = load_all_samplers()
    names = sorted(registry) if not args.algorithms else [n.strip() for n in args.algorithms.split(",")]
    print(f"UNet {args.resolution}x{args.resolution}, {args.channels} channels, batch {args.batch}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'sampler':>13s} {'wall s':>8s} {'net fwd':>8s} {'net bwd':>8s} {'A s':>8s} {'overhead':>9s} {'NFE':>6s} {'A calls':>6s}")
    rows = overhead_table(prior, operator, y, args.batch, names)
    print(f"EnKG time per particle (network chunks of {args.enkg_batch or 'all'}, best of {args.repeats}):")
    scaling = enkg_scaling(prior, operator, y, [int(n) for n in args.particles.split(",")], args.enkg_batch,
                           args.repeats)
    paths = {b: network_paths(prior, b, args.repeats) for b in (1, args.batch, 64)}
    report = {"config": vars(args), "overhead": rows, "enkg_scaling": scaling, "network_paths": paths}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])

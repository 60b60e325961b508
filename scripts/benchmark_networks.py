"""Network time per sample of the shipped UNet priors on the CPU: eager (contiguous), ``channels_last`` and
``torch.compile``, at several batch sizes and thread counts, in one run (ratios are what to read on a busy machine).

    python scripts/benchmark_networks.py [--priors ns64 blackhole64] [--batches 1 8 64] [--threads 1 2]
                                         [--variants eager channels_last compile] [--json out.json]

Each cell is the fastest of ``--repeats`` timed calls of ``prior.denoise`` at sigma = 1 (after a warm-up, which
for ``compile`` includes the compilation); ``max|diff|`` is the largest difference to the eager output, which
must stay below 1e-4 for a variant to be eligible as the default.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from diffinv.priors import load_prior  # noqa: E402

VARIANTS = ("eager", "channels_last", "compile")


def prepared(prior, variant: str):
    """The denoiser call of ``variant`` and the input layout it wants."""
    net = prior.denoiser
    if variant == "eager":
        return net, torch.contiguous_format
    if variant == "channels_last":
        return net.to(memory_format=torch.channels_last), torch.channels_last
    if variant == "compile":
        return torch.compile(net, dynamic=False), torch.contiguous_format
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def time_call(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--priors", nargs="*", default=["ns64", "blackhole64"])
    p.add_argument("--batches", nargs="*", type=int, default=[1, 8, 64])
    p.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    print(f"{'prior':12s} {'thr':>3s} {'batch':>5s} " + " ".join(f"{v + ' ms/sample':>24s}" for v in args.variants)
          + "  max|diff| vs eager")
    for name in args.priors:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batches:
                prior = load_prior(ROOT / "configs" / "prior" / f"{name}.yaml").eval()
                x = torch.randn((batch, *prior.event_shape), generator=torch.Generator().manual_seed(0))
                sigma = torch.ones(batch)
                cells, ref, diffs = {}, None, {}
                for variant in args.variants:
                    net, fmt = prepared(load_prior(ROOT / "configs" / "prior" / f"{name}.yaml").eval(), variant)
                    xv = x.contiguous(memory_format=fmt)
                    with torch.no_grad():
                        out = net(xv, sigma)                                  # warm-up (and compilation)
                        t = time_call(lambda: net(xv, sigma), args.repeats)
                    ref = out if ref is None else ref
                    diffs[variant] = float((out - ref).abs().max())
                    cells[variant] = 1e3 * t / batch
                rows.append({"prior": name, "threads": threads, "batch": batch, "ms_per_sample": cells,
                             "max_abs_diff": diffs})
                base = cells[args.variants[0]]
                print(f"{name:12s} {threads:3d} {batch:5d} "
                      + " ".join(f"{cells[v]:14.2f} ({base / cells[v]:4.2f}x)    " for v in args.variants)
                      + "  " + " ".join(f"{diffs[v]:.1e}" for v in args.variants), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

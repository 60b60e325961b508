#!/usr/bin/env python3
"""Navier–Stokes 64 x 64 benchmark: the diffusion samplers against the baselines a scientist would use instead,
on the same held-out test fields and noise, at subsampling 2, 4, 8.

Rows (each one ``diffinv predict`` run through scripts/demo.py's ``solve``, the shipped prior
``checkpoints/ns64``, the problem ``configs/demo/ns_sub4.yaml`` with its subsampling overridden, noise sigma 1):

* baselines: ``PriorMean`` (the average of 64 unconditional prior draws, configs/sampler/prior_samples.yaml:
  the error of knowing nothing), ``Tikhonov`` (regularised least squares through the differentiable solver with
  the prior's stationary Gaussian penalty, its weight by the discrepancy principle, configs/sampler/tikhonov.yaml),
  ``EKI`` (ensemble Kalman inversion, Iglesias et al. 2013, configs/demo/eki.yaml);
* diffinv samplers at CPU size: ``EnKG``, ``DPS``, ``DAPS`` (configs/demo/{enkg,dps,daps}.yaml, settings tuned on
  the validation fields only, never on the test fields reported here).

Results land in ``<output>/sub<k>/predictions/<config>/`` (panels, npz, summary, calibration.png); an
interrupted run resumes where it stopped. The tables report the relative L2 of the posterior mean (mean ± std
over fields), the mean relative L2 of the individual samples (the EnKG reference's metric), the coverage of the
truth by mean ± 2 std (0.95 for a calibrated posterior) and the seconds per field.

    python scripts/benchmark_navier_stokes.py [--fields 10] [--downsample 2 4 8] [--json out.json]
    python scripts/benchmark_navier_stokes.py --algorithms EnKG --downsample 8 --fields 3 \\
        --output outputs/benchmark_navier_stokes/enkg128 -- --model.init_args.num_samples 128
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo import ROOT, SAMPLERS, format_table, solve  # noqa: E402

BASELINES = {"PriorMean": ROOT / "configs" / "sampler" / "prior_samples.yaml",
             "Tikhonov": ROOT / "configs" / "sampler" / "tikhonov.yaml",
             "EKI": ROOT / "configs" / "demo" / "eki.yaml"}
CONFIGS = {**BASELINES, **{k: v for k, v in SAMPLERS.items() if k not in BASELINES}}   # 64-draw prior mean
ALGORITHMS = list(CONFIGS)


def cell(summary: dict, key: str) -> str:
    stats = summary.get("metrics", {}).get(key) or summary.get("cost", {}).get(key)
    if not stats or not math.isfinite(stats["mean"]):
        return "-"
    return f"{stats['mean']:.3f} ± {stats['std']:.2f}"


def table(results: dict[int, dict[str, dict]], key: str) -> str:
    ks = sorted(results)
    head = ["algorithm", *[f"subsampling {k}" for k in ks]]
    names = [n for n in ALGORITHMS if any(n in results[k] for k in ks)]
    rows = [[n, *[cell(results[k][n], key) if n in results[k] else "-" for k in ks]] for n in names]
    return format_table(head, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fields", type=int, default=10)
    p.add_argument("--downsample", type=int, nargs="+", default=[2, 4, 8], choices=[2, 4, 8])
    p.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS)
    p.add_argument("--output", type=Path, default=ROOT / "outputs" / "benchmark_navier_stokes")
    p.add_argument("--json", type=Path, default=None, help="also write the summaries here")
    p.add_argument("extra", nargs="*", help="after --: more `diffinv predict` arguments for every run")
    args = p.parse_args(argv)
    t0 = time.time()
    results = {k: solve(args.algorithms, fields=args.fields, downsample=k, output=args.output / f"sub{k}",
                        extra=args.extra, samplers=CONFIGS)
               for k in args.downsample}
    print(f"\nNavier–Stokes 64 x 64, noise sigma 1, {args.fields} test fields, {time.time() - t0:.0f} s in all")
    print("\nRelative L2 of the posterior mean (mean ± std over fields):")
    print(table(results, "rel_l2"))
    print("\nMean relative L2 of the individual samples (the EnKG reference's metric):")
    print(table(results, "rel_l2_samples"))
    print("\nCoverage of the truth by the posterior mean ± 2 std (fraction of pixels; 0.95 if calibrated):")
    print(table(results, "coverage_2std"))
    print("\nSeconds per field:")
    print(table(results, "seconds"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": {"fields": args.fields, "downsample": args.downsample,
                                                    "algorithms": args.algorithms},
                                         "results": {str(k): v for k, v in results.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Navier–Stokes 64 x 64 benchmark: relative L2 of the EnKG, DPS and DAPS posterior means at subsampling 2, 4, 8.

Each (subsampling, algorithm) cell is one ``diffinv predict`` run (scripts/demo.py's ``solve``: the shipped prior
``checkpoints/ns64``, the demo problem ``configs/demo/ns_sub4.yaml`` with its subsampling overridden, and the
CPU-sized sampler configs ``configs/demo/{enkg,dps,daps}.yaml``) on the first ``--fields`` held-out test fields,
noise sigma 1. Results land in ``<output>/sub<k>/predictions/<sampler>/`` (panels, npz, summary); an interrupted
run resumes where it stopped. The table reports the relative L2 of the posterior mean (mean ± std over fields)
and, as the EnKG reference reports it, the mean over samples of each sample's relative L2.

    python scripts/benchmark_navier_stokes.py [--fields 10] [--downsample 2 4 8] [--json out.json]
    # EnKG's ensemble size: python scripts/benchmark_navier_stokes.py --algorithms EnKG --downsample 8 \
    #     --fields 3 --output outputs/benchmark_navier_stokes/enkg128 -- --model.init_args.num_samples 128
    # the adaptive solver step: ... -- --config configs/demo/ns_adaptive_step.yaml
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

ALGORITHMS = ["EnKG", "DPS", "DAPS"]


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
    p.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=list(SAMPLERS))
    p.add_argument("--output", type=Path, default=ROOT / "outputs" / "benchmark_navier_stokes")
    p.add_argument("--json", type=Path, default=None, help="also write the summaries here")
    p.add_argument("extra", nargs="*", help="after --: more `diffinv predict` arguments for every run")
    args = p.parse_args(argv)
    t0 = time.time()
    results = {k: solve(args.algorithms, fields=args.fields, downsample=k, output=args.output / f"sub{k}",
                        extra=args.extra)
               for k in args.downsample}
    print(f"\nNavier–Stokes 64 x 64, noise sigma 1, {args.fields} test fields, {time.time() - t0:.0f} s in all")
    print("\nRelative L2 of the posterior mean (mean ± std over fields):")
    print(table(results, "rel_l2"))
    print("\nMean relative L2 of the individual samples (the EnKG reference's metric):")
    print(table(results, "rel_l2_samples"))
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

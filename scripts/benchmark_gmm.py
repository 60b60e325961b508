"""Gaussian-mixture benchmark (Cardoso et al. 2023, MCGdiff, Sec. 4.1): every registered sampler that can
run on a dense linear operator with an exact mixture prior, scored by the sliced Wasserstein distance to
exact posterior draws, with its NFE, forward-model calls and wall time, plus the calibration rows
``prior`` (prior draws) and ``exact`` (a second set of exact posterior draws).

    python scripts/benchmark_gmm.py --dim 8 --dy 4 --num-samples 1000 --json outputs/gmm_d8.json
    python scripts/benchmark_gmm.py --dim 8 --dy 4 --seeds 0,1,2,3,4 --num-samples 300
    python scripts/benchmark_gmm.py --grid --seeds 0,1,2,3,4 --num-samples 1000 --markdown outputs/gmm.md

``--grid`` runs d in {8, 80} x d_y in {1, 2, 4} (MCGdiff's table) and prints, per algorithm and problem size, the
mean over seeds of SW / SW(prior draws), the total variation of the mode weights and the median spread inside
the heaviest mode (1 = exact), with the calibration rows ``exact`` and ``posterior mean``.

Per-algorithm settings: ``diffinv.samplers.evaluation.GMM_HPARAMS`` (override with --hparams JSON).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from diffinv.samplers.evaluation import format_table, run_gmm_benchmark, run_gmm_benchmark_seeds


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=8, help="signal dimension d (MCGdiff: 8, 80, 800)")
    p.add_argument("--dy", type=int, default=4, help="number of measurements d_y (MCGdiff: 1, 2, 4)")
    p.add_argument("--sigma", type=float, default=None,
                   help="measurement noise std (default: drawn as in MCGdiff, U(0, 1) times the largest singular value)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=str, default=None,
                   help="comma-separated seeds: average over several random problems (overrides --seed)")
    p.add_argument("--num-samples", type=int, default=1000, help="draws per algorithm (and exact draws)")
    p.add_argument("--num-projections", type=int, default=1000, help="directions of the sliced Wasserstein distance")
    p.add_argument("--algorithms", type=str, default=None, help="comma-separated sampler names (default: all that apply)")
    p.add_argument("--hparams", type=str, default=None, help='JSON overrides, e.g. \'{"ULA": {"num_steps": 500}}\'')
    p.add_argument("--json", type=str, default=None, help="write the report to this path")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: these problems are tiny)")
    p.add_argument("--grid", action="store_true", help="d in {8, 80} x d_y in {1, 2, 4} (see the module docstring)")
    p.add_argument("--markdown", type=str, default=None, help="with --grid: write the table as markdown here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()] if args.algorithms else None
    kwargs = dict(dim=args.dim, dy=args.dy, sigma=args.sigma, num_samples=args.num_samples, algorithms=algorithms,
                  hyperparameters=json.loads(args.hparams) if args.hparams else None, num_projections=args.num_projections)
    if args.grid:
        return grid(args, kwargs)
    if args.seeds:
        report = run_gmm_benchmark_seeds([int(s) for s in args.seeds.split(",")], **kwargs)
    else:
        report = run_gmm_benchmark(seed=args.seed, **kwargs)
    cfg = report["config"]
    sig = cfg["sigma_y"]
    sig = ", ".join(f"{v:.4f}" for v in sig) if isinstance(sig, list) else f"{sig:.4f}"
    print(f"GMM benchmark: d={cfg['dim']} d_y={cfg['dy']} sigma_y={sig} seed={cfg['seed']} N={cfg['num_samples']}")
    print(format_table(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(path)
    return report


def grid(args, kwargs) -> dict:
    seeds = [int(s) for s in (args.seeds or "0,1,2,3,4").split(",")]
    reports = {}
    for dim in (8, 80):
        for dy in (1, 2, 4):
            reports[(dim, dy)] = run_gmm_benchmark_seeds(seeds, **{**kwargs, "dim": dim, "dy": dy})
            print(f"d={dim} d_y={dy} seeds {seeds}:\n{format_table(reports[(dim, dy)])}\n", flush=True)
    names = list(next(iter(reports.values()))["results"])
    head = ["algorithm", *[f"d={d}, d_y={k}" for d, k in reports]]
    rows = []
    for name in names:
        cells = []
        for r in reports.values():
            row = r["results"].get(name, {})
            cells.append("error" if "error" in row or not row else
                         f"{row['ratio_to_prior']:.3f} / {row['mode_tv']:.2f} / {row['mode_spread']:.2f}")
        rows.append([name, *cells])
    table = "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows])
    print(f"SW / SW(prior) / mode-weight TV / spread in the main mode (1 = exact), mean over seeds {seeds}, "
          f"N = {args.num_samples}:\n{table}")
    if args.markdown:
        path = Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table + "\n")
    return {f"{d},{k}": r for (d, k), r in reports.items()}


if __name__ == "__main__":
    main(sys.argv[1:])

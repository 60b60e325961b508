"""Which sampler can be trusted, at what cost: a calibration report on posteriors known exactly.

    python scripts/calibration_report.py OUT_DIR [--problems gaussian mixture] [--seeds 0 1 2] [--dim 8] [--dy 4]
                                         [--samples 1000] [--only NAME ...] [--threads 1]

For every registered sampler that runs on a dense linear operator with an analytic prior, on the linear-Gaussian
problem (``make_gaussian_problem``) and the 25-component Gaussian mixture of MCGdiff (``make_gmm_problem``):
the sliced Wasserstein distance of its draws to exact posterior draws, the coverage of its 50 / 90 / 95 % central
credible intervals along random directions (the fraction of exact draws inside intervals computed from the
sampler's own draws: ``interval_coverage``), its network evaluations (NFE) and wall time, averaged over the seeds.
Two reference rows frame the figures: ``exact`` (a second set of exact draws: the Monte Carlo floor of the distance,
coverage at its nominal level) and ``posterior mean`` (every draw at the exact mean: a collapsed sampler, coverage
0). Writes ``calibration.md`` (the table), ``calibration.png`` (coverage vs nominal per sampler, and distance vs
NFE) and ``calibration.json`` to OUT_DIR. Settings per sampler: ``diffinv.samplers.evaluation.GMM_HPARAMS``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffinv.samplers.base import capabilities  # noqa: E402
from diffinv.samplers.evaluation import (gmm_hparams, interval_coverage, load_all_samplers,  # noqa: E402
                                         make_gaussian_problem, make_gmm_problem, sliced_wasserstein)

PROBLEMS = {"gaussian": make_gaussian_problem, "mixture": make_gmm_problem}
LEVELS = (0.5, 0.9, 0.95)
REFERENCE_ROWS = ("exact", "posterior mean")


def score(samples, ref, seed: int) -> dict:
    cov = interval_coverage(samples, ref, LEVELS, generator=torch.Generator().manual_seed(seed + 7))
    return {"sw": sliced_wasserstein(samples, ref, 500, generator=torch.Generator().manual_seed(seed + 2)),
            **{f"cov{int(100 * k)}": v for k, v in cov.items()}}


def run_problem(problem: str, seed: int, args, names: list[str], progress) -> dict[str, dict]:
    prior, operator, y, _ = PROBLEMS[problem](args.dim, args.dy, seed=seed)
    post = prior.posterior(operator, y)
    ref = post.sample(args.samples, torch.Generator().manual_seed(seed + 1))
    rows = {"exact": {**score(post.sample(args.samples, torch.Generator().manual_seed(seed + 4)), ref, seed),
                      "nfe": 0, "seconds": 0.0},
            "posterior mean": {**score(post.mean().reshape(1, -1).expand(args.samples, -1), ref, seed),
                               "nfe": 0, "seconds": 0.0}}
    registry = load_all_samplers()
    for name in names:
        progress.set_postfix_str(f"{problem} seed {seed} {name}")
        sampler = registry[name](**gmm_hparams(name, operator.sigma))
        t0 = time.perf_counter()
        try:
            out = sampler.sample(y, operator, prior, num_samples=args.samples,
                                 generator=torch.Generator().manual_seed(seed + 5))
        except Exception as err:  # noqa: BLE001 - one failing sampler must not hide the others
            rows[name] = {"error": f"{type(err).__name__}: {err}"}
        else:
            rows[name] = {**score(out, ref, seed), "nfe": int(sampler.cost.nfe), "seconds": time.perf_counter() - t0}
        progress.update()
    return rows


def average(per_seed: list[dict[str, dict]]) -> dict[str, dict]:
    out = {}
    for name in per_seed[0]:
        rows = [r[name] for r in per_seed]
        errors = [r["error"] for r in rows if "error" in r]
        out[name] = {"error": errors[0]} if errors else {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    return out


def markdown(report: dict, args) -> str:
    lines = [f"Calibration on exact posteriors (d = {args.dim}, d_y = {args.dy}, {args.samples} draws, seeds "
             f"{' '.join(map(str, args.seeds))}, {torch.get_num_threads()} thread(s)). SW: sliced Wasserstein distance "
             f"to exact draws; cov50/90/95: coverage of the sampler's central credible intervals (calibrated = the "
             f"nominal level).", ""]
    for problem, rows in report.items():
        lines += [f"### {problem}", "", "| sampler | SW | cov50 | cov90 | cov95 | NFE | seconds |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in rows.items():
            if "error" in r:
                lines.append(f"| {name} | error: {r['error'][:80]} | | | | | |")
            else:
                lines.append(f"| {name} | {r['sw']:.3f} | {r['cov50']:.2f} | {r['cov90']:.2f} | {r['cov95']:.2f} | "
                             f"{r['nfe']:.0f} | {r['seconds']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(report), 2, figsize=(12, 4.6 * len(report)), squeeze=False)
    names = sorted({n for rows in report.values() for n in rows if n not in REFERENCE_ROWS})
    palette = [plt.cm.tab20(i) for i in range(20) if i not in (14, 15)] + [plt.cm.tab20b(i) for i in range(0, 20, 2)]
    colours = {n: palette[i % len(palette)] for i, n in enumerate(names)}   # greys are the reference rows
    colours.update({"exact": "black", "posterior mean": "grey"})
    for (problem, rows), (ax_cov, ax_err) in zip(report.items(), axes):
        ax_cov.plot([0, 1], [0, 1], color="black", lw=0.8, ls=":")
        for name, r in rows.items():
            if "error" in r:
                continue
            style = dict(color=colours[name], marker="o", lw=2.2 if name in REFERENCE_ROWS else 1.2)
            ax_cov.plot(LEVELS, [r["cov50"], r["cov90"], r["cov95"]], label=name, **style)
            if name not in REFERENCE_ROWS:
                ax_err.scatter(max(r["nfe"], 1), r["sw"], color=colours[name], s=30)
                ax_err.annotate(name, (max(r["nfe"], 1), r["sw"]), fontsize=7, xytext=(3, 2),
                                textcoords="offset points")
        for ref in REFERENCE_ROWS:
            if ref in rows:
                ax_err.axhline(rows[ref]["sw"], color=colours[ref], ls="--", lw=1, label=f"{ref} (reference)")
        ax_cov.set(xlabel="nominal coverage", ylabel="observed coverage", xlim=(0.4, 1.0), ylim=(0, 1.02),
                   title=f"{problem}: credible-interval coverage")
        ax_err.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)",
                   ylabel="sliced Wasserstein to exact draws", title=f"{problem}: error vs cost")
        ax_cov.legend(fontsize=6, ncol=2, loc="lower right")
        ax_err.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--dy", type=int, default=4)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--only", nargs="*", default=None, help="samplers to run (default: every one that applies)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    registry = load_all_samplers()
    unknown = sorted(set(args.only or []) - set(registry))
    if unknown:
        raise SystemExit(f"calibration_report: unknown sampler(s) {unknown}; registered: {sorted(registry)}")
    prior, operator, _, _ = make_gmm_problem(args.dim, args.dy)
    caps = capabilities(operator, prior)
    names = [n for n in (args.only or sorted(registry)) if registry[n].requires <= caps]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {}
    with tqdm(total=len(args.problems) * len(args.seeds) * len(names), desc="calibration", unit="run") as progress:
        for problem in args.problems:
            report[problem] = average([run_problem(problem, s, args, names, progress) for s in args.seeds])
    write_atomic(out / "calibration.md", markdown(report, args))
    write_atomic(out / "calibration.json", json.dumps({"config": vars(args), "results": report}, indent=2))
    plot(report, out / "calibration.png")
    print(markdown(report, args))
    return report


if __name__ == "__main__":
    main()

"""``diffinv-compare``: one table and one figure from several ``diffinv predict`` result folders.

Each folder holding a ``summary.json`` (searched recursively below the paths given) is one run: one sampler on
one problem. The sampler is the run's sampler class (``--label CLASS=TEXT`` renames it; ``--label PATH=TEXT``
names the run whose folder ends with PATH, e.g. two runs of one sampler with other settings); the problem is the
folder above ``predictions/`` (``outputs/<problem>/predictions/<sampler>``, the layout ``diffinv predict``
writes; ``--problem-label NAME=TEXT`` renames it). Out:

* ``comparison.csv``: one row per (problem, sampler, metric): mean, std, count, NFE and seconds per item,
  and why a metric is unavailable;
* ``comparison.md``: per metric, a table sampler x problem of ``mean ± std`` (the best in bold) with the
  NFE and seconds per item, in the README's format; unavailable metrics are ``n/a`` with the reason below;
* ``comparison.png``: the error against the wall time (or NFE) per item, one point per sampler, one panel
  per problem.

For RGB image problems the FID of the posterior means against the truths of the run's items is added (from
the ``<id>.npz`` files; ``diffinv.image_quality.fid``), or reported unavailable with the reason.

    diffinv-compare outputs/benchmark_navier_stokes --metrics rel_l2 --problem-label sub2="subsampling 2" ...
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BEST_HIGH = ("psnr", "ssim", "blurred_psnr")        # prefixes of metrics where higher is better
BEST_ONE = ("chi2_",)                               # reduced chi-squares: best closest to 1
RESULT_FILES = ("summary.json", "run.json")


@dataclass
class Run:
    folder: Path
    problem: str
    sampler: str
    count: int
    metrics: dict                     # name -> {"mean", "std", "count"}
    nfe: float | None
    seconds: float | None
    unavailable: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- reading
def find_summaries(paths: list[Path]) -> list[Path]:
    found = []
    for p in paths:
        if not p.exists():
            raise SystemExit(f"diffinv-compare: {p} does not exist.")
        found += [p / "summary.json"] if (p / "summary.json").is_file() else sorted(p.rglob("summary.json"))
    if not found:
        raise SystemExit(f"diffinv-compare: no summary.json under {', '.join(map(str, paths))}; give the folders "
                         f"`diffinv predict` wrote (<root>/predictions/<sampler>).")
    return list(dict.fromkeys(found))


def problem_name(folder: Path) -> str:
    parts = folder.resolve().parts
    if "predictions" in parts[:-1]:
        i = len(parts) - 1 - parts[::-1].index("predictions")
        if i > 0:
            return parts[i - 1]
    return folder.parent.name or folder.name


def _mean(stats: dict | None) -> float | None:
    if not stats or stats.get("mean") is None or not math.isfinite(stats["mean"]):
        return None
    return float(stats["mean"])


def read_run(summary_path: Path, labels: dict, problem_labels: dict) -> Run:
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"diffinv-compare: cannot read {summary_path} ({err}); re-run `diffinv predict` there.")
    folder = summary_path.parent
    sampler = summary.get("sampler") or folder.name
    label = labels.get(sampler, sampler)
    # a label keyed by the end of the run's path (two runs of one sampler) wins over one keyed by class
    parts = folder.resolve().parts
    keyed = [(len(Path(k).parts), v) for k, v in labels.items() if parts[-len(Path(k).parts):] == Path(k).parts]
    if keyed:
        label = max(keyed)[1]
    problem = problem_name(folder)
    cost = summary.get("cost", {})
    return Run(folder, problem_labels.get(problem, problem), label, int(summary.get("count", 0)),
               dict(summary.get("metrics", {})), _mean(cost.get("nfe")), _mean(cost.get("seconds")),
               dict(summary.get("unavailable") or {}))


def item_arrays(run: Run):
    """``(mean, x_true)`` of every complete item of the run, from its ``<id>.npz``."""
    for record in sorted(run.folder.glob("*.json")):
        if record.name in RESULT_FILES or record.name.endswith(".failed.json"):
            continue
        npz = record.with_suffix(".npz")
        if npz.is_file():
            with np.load(npz) as z:
                yield z["mean"], z["x_true"]


def add_fid(run: Run, feature=None) -> None:
    """The FID of the run's posterior means against its truths, for RGB image items."""
    import torch

    from diffinv.image_quality import MetricUnavailable, fid

    first = next(item_arrays(run), None)
    if first is None or first[1].ndim != 3 or first[1].shape[0] != 3:
        return
    means = (torch.from_numpy(m) for m, _ in item_arrays(run))
    truths = (torch.from_numpy(t) for _, t in item_arrays(run))
    try:
        value = fid(means, truths, feature=feature)
    except MetricUnavailable as err:
        run.unavailable["fid"] = str(err)
        run.metrics["fid"] = {"mean": float("nan"), "std": float("nan"), "count": 0}
        return
    run.metrics["fid"] = {"mean": value, "std": float("nan"), "count": run.count}


# ---------------------------------------------------------------------------------------------- formatting
def better(metric: str, a: float, b: float) -> bool:
    if metric.startswith(BEST_ONE):
        return abs(math.log(max(a, 1e-12))) < abs(math.log(max(b, 1e-12)))
    if metric.startswith(BEST_HIGH):
        return a > b
    return a < b


def decimals_for(values: list[float]) -> int:
    """Three significant digits of the largest value (of one column), between 0 and 4 decimals."""
    top = max((abs(v) for v in values if v is not None and math.isfinite(v)), default=1.0) or 1.0
    return int(min(4, max(0, 2 - math.floor(math.log10(top)))))


def cell(stats: dict | None, decimals: int) -> str:
    value = _mean(stats)
    if value is None:
        return "n/a" if stats is not None else "-"
    std = stats.get("std")
    if std is None or not math.isfinite(std) or stats.get("count", 0) < 2:
        return f"{value:.{decimals}f}"
    return f"{value:.{decimals}f} ± {std:.{decimals}f}"


def spread(values: list[float | None], decimals: int = 0) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    lo, hi = min(vals), max(vals)
    fmt = lambda v: f"{v:.{decimals}f}"  # noqa: E731
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}-{fmt(hi)}"


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def ordered(values) -> list:
    return list(dict.fromkeys(values))


def metric_table(runs: list[Run], metric: str, item: str = "item", decimals: int | None = None) -> str:
    """Sampler x problem of one metric (best in bold per problem), with NFE and seconds per item."""
    problems, samplers = ordered(r.problem for r in runs), ordered(r.sampler for r in runs)
    at = {(r.problem, r.sampler): r for r in runs}
    d = {p: decimals_for([_mean(r.metrics.get(metric)) for r in runs if r.problem == p]) if decimals is None
         else decimals for p in problems}          # per column: problems differ in scale
    best = {}
    for p in problems:
        cands = [(s, _mean(at[p, s].metrics.get(metric))) for s in samplers if (p, s) in at]
        cands = [(s, v) for s, v in cands if v is not None]
        if len(cands) > 1:
            s_best, v_best = cands[0]
            for s, v in cands[1:]:
                if better(metric, v, v_best):
                    s_best, v_best = s, v
            best[p] = s_best
    rows = []
    for s in samplers:
        row = [s]
        for p in problems:
            text = cell(at[p, s].metrics.get(metric), d[p]) if (p, s) in at else "-"
            row.append(f"**{text}**" if best.get(p) == s else text)
        mine = [at[p, s] for p in problems if (p, s) in at]
        row += [spread([r.nfe for r in mine]), spread([r.seconds for r in mine])]
        rows.append(row)
    return markdown_table(["algorithm", *problems, "NFE", f"s / {item}"], rows)


def metric_names(runs: list[Run], wanted: list[str] | None) -> list[str]:
    present = ordered(m for r in runs for m in r.metrics)
    if wanted is None:
        return present
    missing = [m for m in wanted if m not in present]
    if missing:
        raise SystemExit(f"diffinv-compare: no run has the metric(s) {missing}; available: {present}.")
    return list(wanted)


def markdown(runs: list[Run], metrics: list[str], item: str = "item", decimals: int | None = None) -> str:
    parts = []
    for m in metrics:
        parts.append(f"**{m}** (mean ± std over {item}s; best in bold)\n\n" + metric_table(runs, m, item, decimals))
        reasons: dict[str, list[str]] = {}
        for r in runs:
            if m in r.unavailable:
                reasons.setdefault(r.unavailable[m].rstrip("."), []).append(f"{r.problem} / {r.sampler}")
        having = [r for r in runs if m in r.metrics]
        for reason, where in reasons.items():
            scope = "every run" if len(where) == len(having) else ", ".join(where)
            parts.append(f"n/a: {m} unavailable ({scope}): {reason}.")
    return "\n\n".join(parts) + "\n"


def csv_text(runs: list[Run], metrics: list[str]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["problem", "sampler", "metric", "mean", "std", "count", "nfe", "seconds", "unavailable"])
    for r in runs:
        for m in metrics:
            s = r.metrics.get(m)
            if s is None:
                continue
            w.writerow([r.problem, r.sampler, m, s.get("mean"), s.get("std"), s.get("count"), r.nfe, r.seconds,
                        r.unavailable.get(m, "")])
    return out.getvalue()


def plot(runs: list[Run], metric: str, x: str, path: Path, item: str = "item") -> None:
    """``metric`` against seconds (or NFE) per item, one panel per problem, one point per sampler."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    problems, samplers = ordered(r.problem for r in runs), ordered(r.sampler for r in runs)
    fig = Figure(figsize=(4.2 * len(problems), 3.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(problems), squeeze=False)[0])
    colors = {s: f"C{i % 10}" for i, s in enumerate(samplers)}
    for ax, p in zip(axes, problems):
        for r in (r for r in runs if r.problem == p):
            xv, st = (r.seconds if x == "seconds" else r.nfe), r.metrics.get(metric)
            yv = _mean(st)
            if xv is None or yv is None:
                continue
            err = st.get("std") if st.get("count", 0) > 1 and math.isfinite(st.get("std") or math.nan) else None
            ax.errorbar([xv], [yv], yerr=None if err is None else [err], fmt="o", color=colors[r.sampler],
                        capsize=3, label=r.sampler)
            ax.annotate(r.sampler, (xv, yv), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xscale("log")
        ax.margins(0.3)
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        lo, hi = ax.get_xlim()
        if hi < 8 * lo:                     # under a decade: label the minor ticks too
            ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(which="both", labelsize=8)
        ax.set_title(p, fontsize=10)
        ax.set_xlabel(f"seconds per {item}" if x == "seconds" else f"network evaluations (NFE) per {item}",
                      fontsize=9)
        ax.set_ylabel(f"{metric} (mean ± std)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path)


# ---------------------------------------------------------------------------------------------- command line
def _pairs(items: list[str], flag: str) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"diffinv-compare: {flag} takes NAME=TEXT, got {it!r}.")
        k, v = it.split("=", 1)
        out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffinv-compare", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="result folders (or folders above them) with summary.json")
    p.add_argument("--out", type=Path, default=Path("comparison"), help="output prefix (.md, .csv, .png)")
    p.add_argument("--metrics", nargs="+", default=None, help="metrics to tabulate (default: all)")
    p.add_argument("--plot-metric", default=None, help="metric of the figure (default: the first tabulated)")
    p.add_argument("--x", choices=("seconds", "nfe"), default="seconds", help="the figure's horizontal axis")
    p.add_argument("--label", nargs="*", default=[], help="sampler labels, CLASS=TEXT or PATH=TEXT")
    p.add_argument("--problem-label", nargs="*", default=[], help="problem labels, NAME=TEXT")
    p.add_argument("--item", default="item", help="what one item is, for the headers (e.g. field, image)")
    p.add_argument("--decimals", type=int, default=None, help="decimals of the table (default: 3 significant)")
    p.add_argument("--no-fid", action="store_true", help="do not compute the FID of RGB image runs")
    args = p.parse_args(argv)
    runs = [read_run(s, _pairs(args.label, "--label"), _pairs(args.problem_label, "--problem-label"))
            for s in find_summaries(args.folders)]
    seen: dict = {}
    for r in runs:
        other = seen.setdefault((r.problem, r.sampler), r)
        if other is not r:
            raise SystemExit(f"diffinv-compare: {other.folder} and {r.folder} are both {r.sampler} on {r.problem}; "
                             f"label one by the end of its path (--label {Path(*r.folder.parts[-3:])}=TEXT) or "
                             f"compare them separately.")
    if not args.no_fid:
        for r in runs:
            add_fid(r)
    metrics = metric_names(runs, args.metrics)
    plot_metric = args.plot_metric or metrics[0]
    if plot_metric not in metric_names(runs, None):
        raise SystemExit(f"diffinv-compare: no run has the metric {plot_metric!r}.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    md = markdown(runs, metrics, args.item, args.decimals)
    args.out.with_suffix(".md").write_text(md)
    args.out.with_suffix(".csv").write_text(csv_text(runs, metrics))
    plot(runs, plot_metric, args.x, args.out.with_suffix(".png"), args.item)
    print(md)
    print(f"{len(runs)} run(s); wrote {args.out.with_suffix('.md')}, .csv and .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""``make demo``: solve a Navier–Stokes inverse problem with the shipped prior, by EnKG and by DPS, against the
prior-mean baseline.

Recover the initial vorticity (64 x 64) from the vorticity at t = 1 subsampled every 4 grid points with
Gaussian noise sigma 1, on a few held-out test fields, with

* the prior mean (16 unconditional draws averaged: the error of ignoring the data),
* EnKG (Zheng et al. 2024, derivative-free ensemble Kalman guidance, in its small-ensemble mode) and
* DPS (Chung et al. 2023, gradients through the solver),

each through the real command line (``diffinv predict --config configs/prior/ns64.yaml --config
configs/demo/ns_sub4.yaml --config configs/demo/<sampler>.yaml``) at demo size (configs/demo/*.yaml), then
print one table (algorithm x metric, with the coverage of the truth by mean ± 2 std) from the ``summary.json``
files, and each sampler's error as a fraction of the prior mean's. Panels (truth | measurement |
posterior mean | posterior std) land in ``outputs/demo/predictions/<sampler>/``; TensorBoard:
``tensorboard --logdir outputs/demo``. A re-run skips the fields already solved (delete outputs/demo to redo).

The test fields come from the prior's dataset (``data/navier_stokes_64``) when it exists, otherwise the
few needed are generated into ``data/navier_stokes_64_demo`` (same seeds as the dataset's test split).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PRIOR_CONFIG = ROOT / "configs" / "prior" / "ns64.yaml"
CHECKPOINT = ROOT / "checkpoints" / "ns64" / "ns64.pt"
PROBLEM = ROOT / "configs" / "demo" / "ns_sub4.yaml"
SAMPLERS = {"PriorMean": ROOT / "configs" / "demo" / "prior_mean.yaml", "EnKG": ROOT / "configs" / "demo" / "enkg.yaml", "DPS": ROOT / "configs" / "demo" / "dps.yaml",
            "DAPS": ROOT / "configs" / "demo" / "daps.yaml"}
DEMO_SAMPLERS = ["PriorMean", "EnKG", "DPS"]
BASELINE = "PriorMean"
TARGET_RATIO = 0.75     # a sampler that uses the data: at most this fraction of the prior mean's error
OUTPUT = ROOT / "outputs" / "demo"
COLUMNS = [("rel_l2", "rel. L2 (mean)"), ("rel_l2_samples", "rel. L2 (per sample)"), ("misfit", "misfit"),
           ("coverage_2std", "coverage ±2 std"),
           ("seconds", "s / field"), ("nfe", "NFE"), ("forward_calls", "forward calls")]


def fail(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr)
    sys.exit(2)


def data_root(explicit: str | None) -> str:
    if explicit:
        return explicit
    full = ROOT / "data" / "navier_stokes_64"
    if (full / "manifest.json").is_file() and json.loads((full / "manifest.json").read_text()).get("complete"):
        return str(full)
    return str(ROOT / "data" / "navier_stokes_64_demo")


def prior_arguments(prior_config: Path, checkpoint: Path) -> list[str]:
    """Where the checkpoint goes: a prior config with a ``network`` takes it as the solver's ``checkpoint``; one
    with a ``prior`` (PixelPrior / LatentPrior) takes it as the prior's."""
    init = (yaml.safe_load(prior_config.read_text()).get("model") or {}).get("init_args") or {}
    if "network" in init:
        return ["--model.init_args.checkpoint", str(checkpoint)]
    if "prior" in init:
        return ["--model.init_args.prior.init_args.checkpoint", str(checkpoint)]
    fail(f"{prior_config} has neither model.init_args.network nor model.init_args.prior.")
    return []


def summary_table(summaries: dict[str, dict]) -> str:
    """Algorithm x metric table, ``mean ± std`` over the fields."""
    def cell(s: dict, key: str) -> str:
        stats = s.get("metrics", {}).get(key) or s.get("cost", {}).get(key)
        if not stats or not math.isfinite(stats["mean"]):
            return "-"
        if key in ("nfe", "forward_calls"):
            return f"{stats['mean']:.0f}"
        if not math.isfinite(stats["std"]):        # a single field has no spread
            return f"{stats['mean']:.3g}"
        return f"{stats['mean']:.3g} ± {stats['std']:.2g}"

    head = ["algorithm", "fields", *[title for _, title in COLUMNS]]
    rows = [[name, str(s.get("count", 0)), *[cell(s, key) for key, _ in COLUMNS]] for name, s in summaries.items()]
    return format_table(head, rows)


def baseline_comparison(summaries: dict[str, dict]) -> str:
    """One line per sampler: its posterior-mean error as a fraction of the prior mean's, against TARGET_RATIO."""
    base = (summaries.get(BASELINE) or {}).get("metrics", {}).get("rel_l2")
    if not base or not math.isfinite(base["mean"]):
        return ""
    lines = [f"\nAgainst the prior mean (rel. L2 {base['mean']:.3g}; a sampler that uses the data should reach "
             f"<= {TARGET_RATIO} x):"]
    for name, s in summaries.items():
        err = s.get("metrics", {}).get("rel_l2")
        if name != BASELINE and err and math.isfinite(err["mean"]):
            ratio = err["mean"] / base["mean"]
            lines.append(f"  {name}: {ratio:.2f} x  ({'meets' if ratio <= TARGET_RATIO else 'does not meet'} the target)")
    return "\n".join(lines)


def format_table(head: list[str], rows: list[list[str]]) -> str:
    """Plain-text table with left-aligned columns and a dashed rule under the header."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *[fmt(r) for r in rows]])


def run_predict(configs: list[Path], output: Path, extra: list[str] = (), label: str = "") -> dict:
    """One ``diffinv predict`` run of ``configs`` (prior, problem, sampler: the last one's sampler names the folder)
    into ``output``; returns its ``summary.json``. Items already solved under ``output`` are skipped (the writer's
    resume)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "lightning_modules.cli", "predict",
           *[a for c in configs for a in ("--config", str(c))], "--trainer.default_root_dir", str(output), *extra]
    print(f"\n=== {label}: diffinv predict {' '.join(cmd[4:])}\n", flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    if rc != 0:
        fail(f"{label} failed (exit code {rc}); see the messages above.")
    print(f"=== {label} finished in {time.time() - t0:.0f} s", flush=True)
    return json.loads((output / "predictions" / predictions_name(configs[-1]) / "summary.json").read_text())


def predictions_name(sampler_config: Path) -> str:
    """The writer's folder for a sampler config: the sampler's class name, lower case."""
    init = (yaml.safe_load(Path(sampler_config).read_text()).get("model") or {}).get("init_args") or {}
    return str((init.get("sampler") or {}).get("class_path", "results")).rsplit(".", 1)[-1].lower()


def solve(algorithms: list[str], fields: int, downsample: int, output: Path, prior_config: Path = PRIOR_CONFIG,
          checkpoint: Path = CHECKPOINT, data: str | None = None, extra: list[str] = (),
          samplers: dict[str, Path] = SAMPLERS) -> dict[str, dict]:
    """``diffinv predict`` with each algorithm's config (``samplers[name]``) on ``fields`` Navier–Stokes test
    fields at subsampling ``downsample`` (``extra``: more command-line arguments for every run); returns each
    run's ``summary.json``."""
    extra = [*prior_arguments(prior_config, checkpoint),
             "--data.init_args.root", data or data_root(None),
             "--data.init_args.num_test", str(fields), "--data.init_args.max_items", str(fields),
             "--data.init_args.operator.init_args.downsample", str(downsample), *extra]
    return {name: run_predict([prior_config, PROBLEM, samplers[name]], output, extra, label=name)
            for name in algorithms}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fields", type=int, default=2, help="held-out test fields to solve (default 2)")
    p.add_argument("--algorithms", nargs="+", default=DEMO_SAMPLERS, choices=list(SAMPLERS))
    p.add_argument("--downsample", type=int, default=4, choices=[2, 4, 8], help="observe every k-th grid point")
    p.add_argument("--prior-config", type=Path, default=PRIOR_CONFIG)
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    p.add_argument("--data-root", help="Navier–Stokes dataset folder (default: see the module docstring)")
    p.add_argument("--output", type=Path, default=OUTPUT)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default 1: measured fastest here, see the README's 'Threads')")
    args = p.parse_args(argv)

    for path, what in ((args.prior_config, "prior config"), (args.checkpoint, "prior checkpoint")):
        if not path.is_file():
            fail(f"the Navier–Stokes {what} {path} is missing. The shipped prior is part of the repository "
                 f"(checkpoints/ns64/ns64.pt, configs/prior/ns64.yaml): restore it with `git checkout -- "
                 f"checkpoints/ns64 configs/prior/ns64.yaml`, or train it with `diffinv fit --config "
                 f"configs/fit/ns64.yaml` and pass --checkpoint outputs/fit/ns64/checkpoints/last.ckpt.")
    if args.fields < 1:
        fail(f"--fields must be >= 1, got {args.fields}")

    extra = [] if args.threads is None else ["--threads", str(args.threads)]
    summaries = solve(args.algorithms, fields=args.fields, downsample=args.downsample, output=args.output,
                      prior_config=args.prior_config, checkpoint=args.checkpoint, data=data_root(args.data_root),
                      extra=extra)
    print(f"\nNavier–Stokes, 64 x 64, subsampling {args.downsample}, noise sigma 1: posterior mean vs truth "
          f"(mean ± std over fields)")
    print(summary_table(summaries))
    print(baseline_comparison(summaries))
    print(f"\nPanels: {args.output}/predictions/<algorithm>/<id>.png   TensorBoard: tensorboard --logdir {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

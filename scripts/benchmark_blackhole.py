#!/usr/bin/env python3
"""Black-hole imaging benchmark: the diffusion samplers against ehtim's own regularised maximum-likelihood imager
(the "EHT-Imaging" row of InverseBench Table 6) and the prior mean, on the same held-out synthetic ehtim models
observed by the EHT 2017 array (closure phases and log closure amplitudes, thermal noise from the SEFDs).

Rows (each one ``diffinv predict`` run of the shipped prior ``configs/prior/blackhole64.yaml`` with the problem
``configs/problem/blackhole_m87.yaml``; measurement noise seeded per image, so every row sees the same data):

* baselines: ``EhtimRML`` (configs/sampler/ehtim_rml.yaml: ``ehtim.imager.Imager`` on the item's closure data,
  simple + TV^2 + l1 + flux regularisers, three rounds re-centred and blurred between them) and ``PriorMean``
  (64 unconditional draws, configs/sampler/prior_samples.yaml);
* diffinv samplers at CPU size: ``DPS``, ``EnKG``, ``PnPDM`` (configs/demo/blackhole_*.yaml).

Printed: the reduced closure-phase and log-closure-amplitude chi-squares of the posterior mean (1 = fits to the
noise), blurred PSNR at 20 uas (InverseBench's image metric), the coverage of the truth by mean ± 2 std and the
seconds per image; then whether each sampler meets the targets (both chi-squares <= 1.5 and blurred PSNR at
least 2 dB above EhtimRML). Results: ``<output>/predictions/<config>/``; a re-run resumes.

    python scripts/benchmark_blackhole.py [--images 10] [--algorithms EhtimRML DPS] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo import ROOT, format_table, run_predict  # noqa: E402

PRIOR = ROOT / "configs" / "prior" / "blackhole64.yaml"
PROBLEM = ROOT / "configs" / "problem" / "blackhole_m87.yaml"
CONFIGS = {"EhtimRML": ROOT / "configs" / "sampler" / "ehtim_rml.yaml",
           "PriorMean": ROOT / "configs" / "sampler" / "prior_samples.yaml",
           "DPS": ROOT / "configs" / "demo" / "blackhole_dps.yaml",
           "EnKG": ROOT / "configs" / "demo" / "blackhole_enkg.yaml",
           "PnPDM": ROOT / "configs" / "demo" / "blackhole_pnp_dm.yaml"}
COLUMNS = [("chi2_cphase", "chi2 closure phase"), ("chi2_logcamp", "chi2 log closure amp."),
           ("blurred_psnr_20", "blurred PSNR 20 uas"), ("coverage_2std", "coverage ±2 std"), ("seconds", "s / image")]


def stat(summary: dict, key: str) -> dict | None:
    s = summary.get("metrics", {}).get(key) or summary.get("cost", {}).get(key)
    return s if s and math.isfinite(s["mean"]) else None


def cell(summary: dict, key: str) -> str:
    s = stat(summary, key)
    if s is None:
        return "-"
    return f"{s['mean']:.3g}" if not math.isfinite(s.get("std", float("nan"))) else f"{s['mean']:.3g} ± {s['std']:.2g}"


def verdicts(results: dict[str, dict], baseline: str = "EhtimRML") -> list[str]:
    ref = stat(results.get(baseline, {}), "blurred_psnr_20")
    lines = []
    for name, s in results.items():
        if name in ("EhtimRML", "PriorMean"):
            continue
        chi = [stat(s, k) for k in ("chi2_cphase", "chi2_logcamp")]
        psnr = stat(s, "blurred_psnr_20")
        fits = all(c is not None and c["mean"] <= 1.5 for c in chi)
        gain = None if psnr is None or ref is None else psnr["mean"] - ref["mean"]
        lines.append(f"{name}: chi-squares <= 1.5: {'yes' if fits else 'no'}; blurred PSNR vs {baseline}: "
                     + ("n/a" if gain is None else f"{gain:+.2f} dB ({'meets' if gain >= 2 else 'below'} +2 dB)"))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10, help="held-out test images")
    p.add_argument("--algorithms", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--prior-config", type=Path, default=PRIOR)
    p.add_argument("--output", type=Path, default=ROOT / "outputs" / "benchmark_blackhole")
    p.add_argument("--json", type=Path, default=None, help="also write the summaries here")
    p.add_argument("extra", nargs="*", help="after --: more `diffinv predict` arguments for every run")
    args = p.parse_args(argv)
    t0 = time.time()
    extra = ["--data.init_args.num_test", str(args.images), "--data.init_args.max_items", str(args.images), *args.extra]
    results = {name: run_predict([args.prior_config, PROBLEM, CONFIGS[name]], args.output, extra, label=name)
               for name in args.algorithms}
    print(f"\nBlack hole 64 x 64, EHT 2017 array, thermal noise, {args.images} held-out synthetic images, "
          f"{time.time() - t0:.0f} s in all (posterior mean; mean ± std over images)")
    print(format_table(["algorithm", *[t for _, t in COLUMNS]],
                       [[n, *[cell(s, k) for k, _ in COLUMNS]] for n, s in results.items()]))
    print("\nTargets (both reduced chi-squares <= 1.5, blurred PSNR >= EhtimRML + 2 dB):")
    print("\n".join(verdicts(results)) or "(no diffusion sampler run)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"images": args.images, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

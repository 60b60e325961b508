"""Does the posterior's uncertainty mean something? Coverage of the truth by the sample posterior's intervals.

For one item with posterior draws ``samples [S, ...]`` and the truth ``x_true [1, ...]``, every pixel gets a
z-score ``z = (x_true - mean) / std`` (sample mean and unbiased std over the S draws). Under a calibrated Gaussian
posterior z ~ N(0, 1), so the interval ``mean +- q std`` (q the standard-normal quantile of the nominal level)
covers the truth at that level. ``calibration`` reports the observed coverage at each nominal level of
``LEVELS`` (the 95.45 % level is the familiar ``mean +- 2 std``) and the histogram of the z-scores on ``Z_EDGES``;
``calibration_curve`` averages items and ``plot_calibration`` draws nominal vs observed coverage (a calibrated
sampler lies on the diagonal; below it the intervals are too narrow, above too wide) with the pooled z-histogram
against the N(0, 1) density.

With a single draw there is no spread: coverage is reported as NaN (not 0), since nothing was claimed.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

LEVELS = (0.5, 0.6827, 0.8, 0.9, 0.9545, 0.99)
Z_EDGES = tuple(-5.0 + 0.5 * i for i in range(21))          # 20 bins on [-5, 5], plus under / overflow


def _quantile(level: float) -> float:
    """q with P(|Z| <= q) = level for Z ~ N(0, 1)."""
    return math.sqrt(2.0) * torch.special.erfinv(torch.tensor(level, dtype=torch.float64)).item()


def calibration(samples: Tensor, x_true: Tensor) -> dict:
    """``{"levels", "coverage", "z_edges", "z_counts"}`` for one item (``samples [S, ...]``, ``x_true [1, ...]``)."""
    s = samples.reshape(samples.shape[0], -1).double()
    truth = x_true.reshape(1, -1).double()
    if s.shape[0] < 2:
        return {"levels": list(LEVELS), "coverage": [math.nan] * len(LEVELS), "z_edges": list(Z_EDGES),
                "z_counts": [0] * (len(Z_EDGES) + 1)}
    std = s.std(0, unbiased=True)
    err = (truth[0] - s.mean(0)).abs()
    coverage = [float((err <= _quantile(a) * std).double().mean()) for a in LEVELS]
    z = torch.where(std > 0, (truth[0] - s.mean(0)) / std.clamp_min(1e-300),
                    torch.where(err > 0, torch.full_like(err, math.inf), torch.zeros_like(err)))
    counts = torch.bucketize(z.clamp(-1e300, 1e300), torch.tensor(Z_EDGES, dtype=torch.float64), right=False)
    return {"levels": list(LEVELS), "coverage": coverage, "z_edges": list(Z_EDGES),
            "z_counts": torch.bincount(counts, minlength=len(Z_EDGES) + 1).tolist()}


def coverage_2std(samples: Tensor, x_true: Tensor) -> float:
    """Fraction of pixels whose truth lies within the posterior mean +- 2 std (nominal 95.45 %)."""
    return calibration(samples, x_true)["coverage"][LEVELS.index(0.9545)]


def calibration_curve(items: Sequence[dict]) -> dict:
    """Mean observed coverage per level over items (NaNs left out) and the pooled z-histogram."""
    cov = torch.tensor([it["coverage"] for it in items], dtype=torch.float64).reshape(len(items), len(LEVELS))
    finite = torch.isfinite(cov)
    mean = torch.where(finite, cov, torch.zeros_like(cov)).sum(0) / finite.sum(0).clamp_min(1)
    mean = torch.where(finite.any(0), mean, torch.full_like(mean, math.nan))
    counts = torch.tensor([it["z_counts"] for it in items]).sum(0) if items else torch.zeros(len(Z_EDGES) + 1)
    return {"levels": list(LEVELS), "coverage": mean.tolist(), "z_edges": list(Z_EDGES),
            "z_counts": [int(c) for c in counts.tolist()], "items": len(items)}


def plot_calibration(curve: dict, title: str = "") -> bytes:
    """PNG: nominal vs observed coverage, and the pooled z-score histogram against N(0, 1)."""
    import io

    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    a.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="calibrated")
    a.plot(curve["levels"], curve["coverage"], "o-", label=f"observed ({curve['items']} items)")
    a.set(xlabel="nominal coverage of mean ± q std", ylabel="fraction of pixels covered", xlim=(0.4, 1.0),
          ylim=(0.0, 1.0), title="coverage")
    a.legend(loc="upper left", fontsize=8)
    edges = torch.tensor(curve["z_edges"])
    counts = torch.tensor(curve["z_counts"], dtype=torch.float64)
    total = counts.sum().clamp_min(1)
    width = float(edges[1] - edges[0])
    centres = (edges[:-1] + edges[1:]) / 2
    b.bar(centres, counts[1:-1] / total / width, width=width * 0.9, label="z = (truth - mean) / std")
    zz = torch.linspace(-5, 5, 201)
    b.plot(zz, torch.exp(-zz**2 / 2) / math.sqrt(2 * math.pi), color="k", lw=1, label="N(0, 1)")
    out = float((counts[0] + counts[-1]) / total)
    b.set(xlabel="z-score", ylabel="density", title=f"z-scores ({100 * out:.1f} % beyond ±5)")
    b.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()

"""The calibration report: interval coverage along random directions, and the script's outputs."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from diffinv.samplers.evaluation import interval_coverage, make_gaussian_problem
from predict_data import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import calibration_report  # noqa: E402


def _draws(n, seed, scale=1.0):
    prior, operator, y, _ = make_gaussian_problem(8, 4, seed=0)
    post = prior.posterior(operator, y)
    x = post.sample(n, torch.Generator().manual_seed(seed))
    mean = post.mean().reshape(1, -1)
    return mean + scale * (x - mean)


def test_coverage_is_nominal_for_exact_draws_and_low_for_narrow_ones():
    ref = _draws(4000, 1)
    exact = interval_coverage(_draws(4000, 2), ref, generator=torch.Generator().manual_seed(3))
    narrow = interval_coverage(_draws(4000, 2, scale=0.5), ref, generator=torch.Generator().manual_seed(3))
    wide = interval_coverage(_draws(4000, 2, scale=2.0), ref, generator=torch.Generator().manual_seed(3))
    for level in (0.5, 0.9, 0.95):
        # 4000 + 4000 draws: the binomial std of one direction's coverage is below 0.01, the quantile error alike
        assert exact[level] == pytest.approx(level, abs=0.03)
        assert narrow[level] < level - 0.15 and wide[level] > min(level + 0.05, 0.99)


def test_report_writes_table_plot_and_json(tmp_path):
    report = calibration_report.main([str(tmp_path), "--problems", "gaussian", "--seeds", "0", "--samples", "400",
                                      "--only", "DDRM"])
    rows = report["gaussian"]
    # exact vs exact with 400 draws each: coverage within 0.06 of nominal (binomial 0.025 + quantile error)
    assert all(abs(rows["exact"][f"cov{k}"] - k / 100) < 0.06 for k in (50, 90, 95))
    assert rows["posterior mean"]["cov90"] == 0.0 and rows["DDRM"]["nfe"] > 0
    assert (tmp_path / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| DDRM |" in (tmp_path / "calibration.md").read_text()
    assert json.loads((tmp_path / "calibration.json").read_text())["results"]["gaussian"]["DDRM"]["sw"] > 0

"""``diffinv-compare`` on real ``diffinv predict`` folders: two samplers on two RGB problems make one markdown
table per metric (sampler x problem, best in bold, NFE and seconds), a long CSV, a figure, and the FID of
each run (computed with a feature extractor, or unavailable with its reason)."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_modules import compare
from lightning_modules.cli import main as cli
from predict_data import prior_config, problem_config, sampler_config, write_configs

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = {"inpaint_box": {"mask_type": "box", "box_size": [6, 6], "margin": [2, 2]},
            "inpaint_random": {"mask_type": "random", "drop_prob": 0.5}}
SAMPLERS = {"DDRM": sampler_config("diffinv.samplers.ddrm.DDRM", num_samples=2, num_steps=3),
            "PiGDM": sampler_config("diffinv.samplers.pigdm.PiGDM", num_samples=2, num_steps=3)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for problem, init in PROBLEMS.items():
            operator = {"class_path": "diffinv.operators.image.Inpainting", "init_args": {"input_shape": [3, 16, 16],
                                                                                         **init}}
            for name, sampler in SAMPLERS.items():
                cfg = problem_config(operator, (3, 16, 16), root / problem, num_items=3, kind="blobs")
                cfg["model"]["init_args"] = {"metrics": ["psnr", "lpips", "misfit"]}
                cli(["predict", *write_configs(root / "configs" / problem / name, prior_config(3, 16), cfg, sampler)])
    finally:
        torch.set_num_threads(n)
    return root


def summaries(root: Path) -> dict:
    return {(p.parents[2].name, json.loads(p.read_text())["sampler"]): json.loads(p.read_text())
            for p in root.rglob("summary.json")}


def test_markdown_csv_and_figure(runs, tmp_path):
    out = tmp_path / "cmp" / "table"
    assert compare.main([str(runs), "--out", str(out), "--label", "PiGDM=ΠGDM (3 steps)", "--item", "image"]) == 0
    md = out.with_suffix(".md").read_text()
    sums = summaries(runs)
    lines = md.splitlines()
    head = "| algorithm | inpaint_box | inpaint_random | NFE | s / image |"
    assert lines.count(head) == 4                   # psnr, lpips, misfit, fid
    psnr = lines[lines.index(head) + 2: lines.index(head) + 4]
    assert psnr[0].startswith("| DDRM |") and psnr[1].startswith("| ΠGDM (3 steps) |")
    for problem in PROBLEMS:                        # each column: one bold cell, on the higher PSNR
        d = compare.decimals_for([sums[problem, s]["metrics"]["psnr"]["mean"] for s in SAMPLERS])   # 3 digits
        a, b = (sums[problem, s]["metrics"]["psnr"]["mean"] for s in ("DDRM", "PiGDM"))
        col = 1 + list(PROBLEMS).index(problem)
        cells = [row.split(" | ")[col] for row in psnr]
        assert [c.startswith("**") for c in cells] == [a > b, b > a]
        s = sums[problem, "DDRM"]["metrics"]["psnr"]
        assert f"{s['mean']:.{d}f} ± {s['std']:.{d}f}" in cells[0]
    nfe = int(sums["inpaint_box", "DDRM"]["cost"]["nfe"]["mean"])
    assert psnr[0].split(" | ")[3] == str(nfe)
    # an unavailable metric is n/a with its reason, never dropped
    from diffinv.image_quality import fid_unavailable, lpips_unavailable

    for metric, reason in (("lpips", lpips_unavailable()), ("fid", fid_unavailable())):
        table = lines[[i for i, line in enumerate(lines) if line.startswith(f"**{metric}**")][0] + 4]
        if reason is None:
            assert "n/a" not in table, table
        else:
            assert table.count("n/a") == 2 and f"n/a: {metric} unavailable (every run): {reason}" in md
    rows = list(csv.DictReader(io.StringIO(out.with_suffix(".csv").read_text())))
    assert len(rows) == 2 * 2 * 4 and {r["metric"] for r in rows} == {"psnr", "lpips", "misfit", "fid"}
    row = next(r for r in rows if (r["problem"], r["sampler"], r["metric"]) == ("inpaint_random", "DDRM", "misfit"))
    s = sums["inpaint_random", "DDRM"]
    assert float(row["mean"]) == pytest.approx(s["metrics"]["misfit"]["mean"])
    assert float(row["seconds"]) == pytest.approx(s["cost"]["seconds"]["mean"])
    with Image.open(out.with_suffix(".png")) as im:
        assert im.format == "PNG" and im.size[0] > 600


class MeanColour(torch.nn.Module):
    """Feature extractor of uint8 images: the mean colour and its spread (6 features)."""

    def forward(self, x):
        x = x.float() / 255.0
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def test_fid_of_a_run(runs):
    from diffinv.image_quality import fid

    run = compare.read_run(runs / "inpaint_box" / "predictions" / "ddrm" / "summary.json", {}, {})
    compare.add_fid(run, feature=MeanColour())
    means, truths = zip(*compare.item_arrays(run))
    expect = fid([torch.from_numpy(m) for m in means], [torch.from_numpy(t) for t in truths], feature=MeanColour())
    assert len(means) == 3 and run.metrics["fid"]["mean"] == pytest.approx(expect) and expect > 0
    assert "fid" not in run.unavailable
    assert compare.cell(run.metrics["fid"], 2) == f"{expect:.2f}"           # one number per run: no ± std


def test_formatting_rules():
    assert compare.better("chi2_cphase", 1.1, 0.5) and not compare.better("chi2_cphase", 3.0, 0.5)
    assert compare.better("psnr", 30.0, 20.0) and compare.better("rel_l2", 0.8, 1.0)
    assert compare.better("blurred_psnr_20", 30.0, 20.0) and compare.better("lpips", 0.1, 0.2)
    assert compare.decimals_for([1.01, 0.79]) == 2 and compare.decimals_for([6565.0, 884.0]) == 0
    assert compare.spread([60.2, 76.4]) == "60-76" and compare.spread([35.0, 35.2]) == "35"
    assert compare.cell({"mean": 1.0, "std": 0.1, "count": 10}, 2) == "1.00 ± 0.10"
    assert compare.cell({"mean": float("nan"), "std": 0.0, "count": 0}, 2) == "n/a" and compare.cell(None, 2) == "-"


def test_errors_name_the_fix(runs, tmp_path):
    with pytest.raises(SystemExit, match="no summary.json"):
        compare.main([str(tmp_path)])
    with pytest.raises(SystemExit, match="no run has the metric"):
        compare.main([str(runs), "--metrics", "rel_l2", "--out", str(tmp_path / "x"), "--no-fid"])
    same = ["--problem-label", "inpaint_random=inpaint_box", "--out", str(tmp_path / "y"), "--no-fid"]
    with pytest.raises(SystemExit, match="both DDRM on inpaint_box.*--label inpaint_random/predictions/ddrm=TEXT"):
        compare.main([str(runs / "inpaint_box"), str(runs / "inpaint_random"), *same])
    # two runs of one sampler on one problem: labelled by the end of their paths
    assert compare.main([str(runs / "inpaint_box"), str(runs / "inpaint_random"), *same, "--metrics", "psnr",
                         "--label", "inpaint_random/predictions/ddrm=DDRM (random-mask run)", "PiGDM=ΠGDM",
                         "inpaint_random/predictions/pigdm=ΠGDM (random-mask run)"]) == 0
    md = (tmp_path / "y.md").read_text()
    assert "| DDRM (random-mask run) |" in md and "| DDRM |" in md and "| ΠGDM |" in md
    assert "| ΠGDM (random-mask run) |" in md


def test_console_script_and_script_agree(runs, tmp_path):
    exe = Path(sys.executable).parent / "diffinv-compare"
    outs = []
    for cmd in ([str(exe)], [sys.executable, str(ROOT / "scripts" / "compare.py")]):
        out = tmp_path / cmd[-1].replace("/", "_")
        done = subprocess.run(cmd + [str(runs), "--no-fid", "--metrics", "psnr", "--out", str(out)],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        outs.append(out.with_suffix(".md").read_text())
    assert outs[0] == outs[1] and "| DDRM |" in outs[0]

"""``diffinv predict`` end to end on tiny problems of each family, and its failures before any sampling.

The command line runs in-process (``lightning_modules.cli.main``) with an untrained tiny EDM prior and a
sampler of a few steps; ``predict_data.TinyProblemDataModule`` supplies procedurally generated truths.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightning_modules.cli import main
from predict_data import (NS_OPERATOR, prior_config, problem_config, sampler_config, write_configs)


@pytest.fixture(autouse=True)
def one_thread():
    # the test machine is shared: one intra-op thread is several times faster than two contended ones
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if any sampler starts sampling."""
    from diffinv.samplers.base import Sampler

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__}.sample was called: the error should come before sampling")

    monkeypatch.setattr(Sampler, "sample", refuse)


def predict(tmp_path: Path, *configs: dict, extra: tuple[str, ...] = ()) -> None:
    main(["predict", *write_configs(tmp_path / "configs", *configs), *extra])


def check_outputs(folder: Path, ids: list[str], metric_names: list[str]) -> dict:
    assert folder.is_dir(), folder
    for sid in ids:
        with np.load(folder / f"{sid}.npz") as z:
            assert {"samples", "mean", "std", "x_true", "y_obs"} <= set(z.files)
            assert z["mean"].shape == z["x_true"].shape == z["std"].shape == z["samples"].shape[1:]
            assert np.isfinite(z["samples"]).all() and (z["std"] >= 0).all()
        rec = json.loads((folder / f"{sid}.json").read_text())
        assert rec["id"] == sid and set(metric_names) <= set(rec["metrics"]), rec
        assert all(math.isfinite(rec["metrics"][m]) for m in metric_names), rec["metrics"]
        assert rec["cost"]["nfe"] > 0 and rec["seconds"] > 0
        with Image.open(folder / f"{sid}.png") as im:
            im.verify()
        with Image.open(folder / f"{sid}.png") as im:
            assert im.format == "PNG" and im.size[0] > 400
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["count"] == len(ids) and summary["missing"] == []
    for m in metric_names:
        assert math.isfinite(summary["metrics"][m]["mean"]) and summary["metrics"][m]["count"] == len(ids)
    rows = (folder / "summary.csv").read_text().splitlines()
    assert rows[0] == "metric,mean,std,count" and any(r.startswith(metric_names[0] + ",") for r in rows)
    assert len((folder / "metrics.csv").read_text().splitlines()) == len(ids) + 1
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    return summary


def test_navier_stokes_enkg_and_resume(tmp_path):
    cfgs = (prior_config(1, 16),
            problem_config(NS_OPERATOR, (1, 16, 16), tmp_path / "run", num_items=2),
            sampler_config("diffinv.samplers.enkg.EnKG", num_samples=6, num_steps=6, sigma_max=2.0, max_ode_steps=2,
                           batch_size=None))
    predict(tmp_path, *cfgs)
    out = tmp_path / "run" / "predictions" / "enkg"
    ids = ["item000", "item001"]
    check_outputs(out, ids, ["rel_l2", "rel_l2_samples", "misfit"])
    # the uncertainty's calibration: per item in its record, over the run in summary.json and calibration.png
    summary = json.loads((out / "summary.json").read_text())
    assert summary["calibration"]["items"] == len(ids) and len(summary["calibration"]["coverage"]) == 6
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((out / "item000.json").read_text())
    assert 0.0 <= record["calibration"]["coverage"][4] <= 1.0 and sum(record["calibration"]["z_counts"]) == 256
    with np.load(out / "item000.npz") as z:
        assert z["samples"].shape == (6, 1, 16, 16) and z["y_obs"].shape == (1, 4, 4)
    # a re-run finds every id complete: nothing is sampled or rewritten
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".npz", ".png", ".json")
              and not p.name.startswith(("summary", "run", "calibration"))}
    predict(tmp_path, *cfgs)
    assert stamps == {p: (out / p).stat().st_mtime_ns for p in stamps}
    log = (out / "_logs" / "rank0.log").read_text().split("\n")
    assert log.count("skipped item000") == 1 and log.count("written item000") == 1


def test_blackhole_dps(tmp_path):
    operator = {"class_path": "diffinv.operators.blackhole.BlackHoleImaging",
                "init_args": {"npix": 32, "fov_uas": 160.0, "tadv_s": 1800.0}}
    predict(tmp_path, prior_config(1, 32),
            problem_config(operator, (1, 32, 32), tmp_path / "run", num_items=1, kind="blobs"),
            sampler_config("diffinv.samplers.dps.DPS", num_samples=2, num_steps=4, zeta=0.3, mode="loss"))
    check_outputs(tmp_path / "run" / "predictions" / "dps", ["item000"],
                  ["chi2_cphase", "chi2_logcamp", "blurred_psnr_10", "blurred_psnr_20", "misfit"])
    with np.load(tmp_path / "run" / "predictions" / "dps" / "item000.npz") as z:
        assert z["y_view"].shape == (1, 32, 32)      # the dirty image shown in the panel


def test_image_inpainting_ddrm(tmp_path):
    operator = {"class_path": "diffinv.operators.image.Inpainting",
                "init_args": {"input_shape": [3, 16, 16], "mask_type": "box", "box_size": [6, 6], "margin": [2, 2]}}
    predict(tmp_path, prior_config(3, 16),
            problem_config(operator, (3, 16, 16), tmp_path / "run", num_items=2, kind="blobs"),
            sampler_config("diffinv.samplers.ddrm.DDRM", num_samples=3, num_steps=4),
            extra=("--trainer.callbacks.init_args.output_dir", str(tmp_path / "chosen")))
    summary = check_outputs(tmp_path / "chosen", ["item000", "item001"], ["psnr", "ssim", "misfit"])
    assert summary["sampler"] == "DDRM"


# ------------------------------------------------------------------------------------------ failures
def test_missing_checkpoint_fails_before_sampling(tmp_path, no_sampling):
    missing = tmp_path / "nowhere" / "prior.ckpt"
    with pytest.raises(FileNotFoundError, match="checkpoint not found") as err:
        predict(tmp_path, prior_config(1, 16, checkpoint=str(missing)),
                problem_config(NS_OPERATOR, (1, 16, 16), tmp_path / "run"),
                sampler_config("diffinv.samplers.enkg.EnKG", num_steps=4))
    assert str(missing) in str(err.value)


@pytest.mark.parametrize("channels,resolution,needle", [(1, 32, "resolution 32x32 vs 16x16"),
                                                        (3, 16, "channels 3 vs 1")])
def test_prior_problem_mismatch_fails_before_sampling(tmp_path, no_sampling, channels, resolution, needle):
    with pytest.raises(ValueError, match=needle) as err:
        predict(tmp_path, prior_config(channels, resolution),
                problem_config(NS_OPERATOR, (1, 16, 16), tmp_path / "run"),
                sampler_config("diffinv.samplers.enkg.EnKG", num_steps=4))
    assert "NavierStokes" in str(err.value) and "Use a prior trained for this problem" in str(err.value)
    assert not list((tmp_path / "run").rglob("*.npz"))


def test_incompatible_sampler_fails_before_sampling(tmp_path, no_sampling):
    with pytest.raises(ValueError, match="DDRM cannot run on NavierStokes") as err:
        predict(tmp_path, prior_config(1, 16), problem_config(NS_OPERATOR, (1, 16, 16), tmp_path / "run"),
                sampler_config("diffinv.samplers.ddrm.DDRM", num_steps=4))
    assert "EnKG" in str(err.value)       # the message lists samplers that work


def test_unknown_sampler_class_is_a_config_error(tmp_path, no_sampling, capsys):
    with pytest.raises(SystemExit) as err:
        predict(tmp_path, prior_config(1, 16), problem_config(NS_OPERATOR, (1, 16, 16), tmp_path / "run"),
                sampler_config("diffinv.samplers.enkg.EnKGG", num_steps=4))
    assert err.value.code != 0
    assert "diffinv.samplers.enkg.EnKGG" in capsys.readouterr().err


def test_missing_sampler_names_the_fix(tmp_path, no_sampling):
    with pytest.raises(ValueError, match="configs/sampler"):
        predict(tmp_path, prior_config(1, 16), problem_config(NS_OPERATOR, (1, 16, 16), tmp_path / "run"))


def test_empty_image_folder_fails_before_sampling(tmp_path, no_sampling):
    import datamodules.images as images  # noqa: F401 - the module must exist
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    operator = {"class_path": "diffinv.operators.image.Inpainting",
                "init_args": {"input_shape": [3, 16, 16], "mask_type": "box", "box_size": [6, 6], "margin": [2, 2]}}
    problem = problem_config(operator, (3, 16, 16), tmp_path / "run")
    problem["data"] = {"class_path": f"{images.__name__}.ImageFolderDataModule",
                       "init_args": {"root": str(empty), "resolution": 16, "operator": operator}}
    with pytest.raises(ValueError) as err:
        predict(tmp_path, prior_config(3, 16), problem, sampler_config("diffinv.samplers.ddrm.DDRM", num_steps=4))
    assert str(empty) in str(err.value)


# ------------------------------------------------------------------------------------------ shipped configs
def _prior_for(problem: str, sampler: str) -> str:
    if sampler in ("latent_dps", "psld", "resample"):
        return "configs/prior/ffhq_ldm_vq4.yaml"
    if problem.startswith("ns_"):
        return "configs/prior/ns64.yaml"
    return "configs/prior/blackhole.yaml" if problem.startswith("blackhole") else "configs/prior/dps_ffhq.yaml"


def test_shipped_configs_compose(capsys):
    """Every configs/problem and configs/sampler file parses (types and class paths checked by jsonargparse)
    when composed prior + problem + sampler; each file appears at least once."""
    from predict_data import ROOT

    problems = sorted(p.stem for p in (ROOT / "configs" / "problem").glob("*.yaml"))
    samplers = sorted(p.stem for p in (ROOT / "configs" / "sampler").glob("*.yaml"))
    assert {"ns_sub2", "ns_sub4", "ns_sub8", "blackhole_m87", "ffhq_sr4"} <= set(problems)
    assert {"enkg", "dps", "ddrm", "diffpir", "pigdm", "daps", "red_diff", "pnp_dm", "posterior_sde", "ula",
            "skrock"} <= set(samplers)
    n = max(len(problems), len(samplers))
    for i in range(n):
        problem, sampler = problems[i % len(problems)], samplers[i % len(samplers)]
        if sampler in ("latent_dps", "psld", "resample"):
            problem = "ffhq_sr4"
        prior = _prior_for(problem, sampler)
        if not (ROOT / prior).exists():
            continue
        with pytest.raises(SystemExit) as err:
            main(["predict", "--config", str(ROOT / prior), "--config", str(ROOT / "configs/problem" / f"{problem}.yaml"),
                  "--config", str(ROOT / "configs/sampler" / f"{sampler}.yaml"), "--print_config"])
        out = capsys.readouterr()
        assert err.value.code in (0, None), f"{prior} + {problem} + {sampler}:\n{out.err[-3000:]}"
        cfg = yaml.safe_load(out.out)
        assert cfg["model"]["class_path"] == "lightning_modules.solver.InverseProblemSolver"
        assert cfg["model"]["init_args"]["sampler"]["class_path"].startswith("diffinv.samplers.")
        assert cfg["trainer"]["callbacks"][0]["class_path"].endswith("PredictionWriter")
        assert cfg["data"]["init_args"]["batch_size"] == 1


def test_demo_without_the_shipped_checkpoint_names_the_fix(tmp_path, capsys):
    import importlib.util

    from predict_data import ROOT

    spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    with pytest.raises(SystemExit) as err:
        demo.main(["--checkpoint", str(tmp_path / "missing.ckpt"), "--output", str(tmp_path / "out")])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "missing.ckpt" in msg and "checkpoints/ns64" in msg and "diffinv fit --config configs/fit/ns64.yaml" in msg
    table = demo.summary_table({"EnKG": {"count": 2, "metrics": {"rel_l2": {"mean": 0.25, "std": 0.01}},
                                         "cost": {"nfe": {"mean": 66.0, "std": 0.0}}}})
    assert "EnKG" in table.splitlines()[2] and "0.25 ± 0.01" in table and "66" in table

"""What the command line says and where it writes (issue 13.7, 13.8, 14.3, 14.5): the project's own error
messages (never torch's advice to load unsafely), a clear word on ``predict --ckpt_path``, TensorBoard logs
that follow the output folder with the run's settings, no empty log folders from failed runs, hints that work.
"""
from __future__ import annotations

import json
import re
import sys

import pytest
import torch
import yaml

from lightning_modules.cli import main
from predict_data import NS_OPERATOR, ROOT, prior_config, problem_config, sampler_config, tiny_network, write_configs

INPAINT = {"class_path": "diffinv.operators.image.Inpainting",
           "init_args": {"input_shape": [1, 16, 16], "mask_type": "random", "drop_prob": 0.5}}
TB = {"class_path": "lightning_modules.tensorboard.TensorBoardLogger"}


@pytest.fixture(autouse=True)
def argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["diffinv"])


def args_for(tmp_path, checkpoint=None, logger=False, num_samples=2, operator=INPAINT, sampler="ddrm.DDRM"):
    problem = problem_config(operator, (1, 16, 16), tmp_path / "run", num_items=2, kind="blobs")
    problem["trainer"]["logger"] = logger
    return write_configs(tmp_path / "configs", prior_config(1, 16, checkpoint=checkpoint), problem,
                         sampler_config(f"diffinv.samplers.{sampler}", num_samples=num_samples, num_steps=3))


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_unreadable_checkpoint_shows_diffinvs_message(tmp_path, damage):
    from diffinv.networks.edm import EDMPrecond

    path = tmp_path / "prior.pt"
    if damage == "random":
        path.write_bytes(bytes(range(256)) * 20)
    else:
        spec = tiny_network(1, 16)
        torch.save(EDMPrecond(**spec["init_args"], **spec["dict_kwargs"]).state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError) as err:
        main(["predict", *args_for(tmp_path, checkpoint=str(path))])
    msg = str(err.value)
    assert str(path) in msg and "weights_only=True" in msg and "weights_only=False" not in msg
    assert ("truncated" in msg) == (damage == "truncated")
    assert "Does not validate" not in msg


def test_predict_ckpt_path_says_where_priors_go(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["predict", *args_for(tmp_path), "--ckpt_path", str(ROOT / "checkpoints/ns64/ns64.pt")])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "--model.init_args.checkpoint" in msg and "missing" not in msg.lower()


def test_tensorboard_follows_the_output_folder_with_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path / "elsewhere"
    main(["predict", *args_for(tmp_path, logger=TB), "--trainer.default_root_dir", str(root)])
    folder = root / "predictions" / "ddrm"
    assert json.loads((folder / "summary.json").read_text())["count"] == 2
    version = folder / "tensorboard" / "version_0"
    hparams = yaml.safe_load((version / "hparams.yaml").read_text())
    assert hparams["sampler"] == "DDRM" and hparams["num_samples"] == 2 and hparams["sampler_args"]["num_steps"] == 3
    acc = EventAccumulator(str(version))
    acc.Reload()
    assert "predict/psnr_mean" in acc.Tags()["scalars"]
    assert "_hparams_/session_start_info" in acc.Tags().get("tensors", []) or acc.summary_metadata
    assert not (tmp_path / "run").exists()        # nothing left at the config's default_root_dir


def test_a_run_that_fails_in_setup_leaves_no_log_folder(tmp_path):
    with pytest.raises(ValueError, match="DDRM cannot run on NavierStokes"):
        main(["predict", *args_for(tmp_path, logger=TB, operator=NS_OPERATOR)])
    logs = tmp_path / "run" / "predictions" / "ddrm" / "tensorboard"
    assert not logs.exists() or not any(logs.iterdir())


def test_settings_mismatch_hint_works_and_promises_no_resume(tmp_path, caplog):
    main(["predict", *args_for(tmp_path)])
    other = args_for(tmp_path, num_samples=3)
    with pytest.raises(ValueError, match="holds results made with other settings") as err:
        main(["predict", *other])
    msg = str(err.value)
    assert "re-running the same command resumes" not in msg and "Nothing was computed" in msg
    assert "re-running" not in caplog.text
    flag = re.search(r"(--trainer\.callbacks\.init_args\.overwrite) (true)", msg)
    main(["predict", *other, flag.group(1), flag.group(2)])        # the hint, as printed, recomputes
    folder = tmp_path / "run" / "predictions" / "ddrm"
    assert json.loads((folder / "item000.json").read_text())["num_samples"] == 3


def test_one_item_summary_has_no_spread(tmp_path, capsys):
    problem = problem_config(INPAINT, (1, 16, 16), tmp_path / "run", num_items=1, kind="blobs")
    main(["predict", *write_configs(tmp_path / "configs", prior_config(1, 16), problem,
                                    sampler_config("diffinv.samplers.ddrm.DDRM", num_samples=2, num_steps=3))])
    table = capsys.readouterr().out.split("Results of 1 item(s)")[1]
    assert re.search(r"^psnr\s+[0-9.]+\s+1$", table, flags=re.M), table     # a value, no "± 0" or "± nan"


def test_every_config_path_in_the_docs_exists():
    """Docs and messages name config files of this repository that exist (the CLI docstring named
    configs/prior/ns_64.yaml). Sampler configs are left out: they also cite the reference implementations'
    own config paths."""
    sources = [ROOT / "README.md", ROOT / "checkpoints" / "README.md", *(ROOT / "checkpoints").glob("*/MODEL_CARD.md"),
               *(ROOT / "lightning_modules").glob("*.py"), *(ROOT / "scripts").rglob("*.py"),
               *[p for d in ("prior", "problem", "fit", "demo") for p in (ROOT / "configs" / d).glob("*.yaml")],
               ROOT / "diffinv" / "checkpoints.py",
               *(ROOT / "diffinv" / "priors").glob("*.py")]
    missing = set()
    for src in sources:
        for path in re.findall(r"configs/[a-z_]+/[A-Za-z0-9_.-]+\.yaml", src.read_text()):
            if not (ROOT / path).is_file() and not re.search(r"/(X|Y|Z)\.yaml$", path):
                missing.add(f"{src.relative_to(ROOT)}: {path}")
    assert not missing, sorted(missing)

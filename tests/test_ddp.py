"""``diffinv predict`` and ``diffinv fit`` under DDP on the CPU: 2 processes, gloo, launched by Lightning
from the real command line (``strategy=ddp``, ``devices=2``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffinv.checkpoints import read_checkpoint

from predict_data import ROOT, TESTS, prior_config, problem_config, sampler_config, write_configs

pytestmark = pytest.mark.ddp

INPAINT = {"class_path": "diffinv.operators.image.Inpainting",
           "init_args": {"input_shape": [1, 16, 16], "mask_type": "random", "drop_prob": 0.5}}
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


def cli_env() -> dict[str, str]:
    """The environment of a ``diffinv`` subprocess: this checkout and the tests on the path, one thread."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "lightning_modules.cli", *args], cwd=cwd, env=cli_env(),
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def test_predict_ddp_writes_each_id_once(tmp_path):
    out = tmp_path / "run"
    args = write_configs(tmp_path / "configs", prior_config(1, 16),
                         problem_config(INPAINT, (1, 16, 16), out, num_items=10, kind="blobs"),
                         sampler_config("diffinv.samplers.ddrm.DDRM", num_samples=2, num_steps=3))
    run_cli(["predict", *args, *DDP], cwd=tmp_path)
    folder = out / "predictions" / "ddrm"
    ids = {f"item{i:03d}" for i in range(10)}
    for suffix in (".json", ".npz", ".png"):
        assert {p.stem for p in folder.glob(f"item*{suffix}")} == ids
    written = {}
    for rank in (0, 1):
        lines = (folder / "_logs" / f"rank{rank}.log").read_text().split()
        written[rank] = [sid for what, sid in zip(lines[::2], lines[1::2]) if what == "written"]
        assert written[rank], f"rank {rank} solved nothing"
    everything = written[0] + written[1]
    assert sorted(everything) == sorted(ids), "an id was written twice or not at all"
    ranks = {json.loads((folder / f"{sid}.json").read_text())["rank"] for sid in ids}
    assert ranks == {0, 1}
    summary = json.loads((folder / "summary.json").read_text())      # rank 0 read every rank's results
    assert summary["count"] == 10 and sorted(summary["ids"]) == sorted(ids)


def test_fit_ddp_two_steps_saves_a_checkpoint(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "fit" / "tiny_cpu.yaml").read_text())
    trainer = cfg["trainer"]
    trainer.update(max_steps=2, default_root_dir=str(tmp_path / "fit"), val_check_interval=None,
                   check_val_every_n_epoch=None, limit_val_batches=0, enable_progress_bar=False, logger=False)
    trainer["callbacks"] = [cb for cb in trainer["callbacks"] if "ModelCheckpoint" in cb["class_path"]
                            or "EMAWeightAveraging" in cb["class_path"]]
    for cb in trainer["callbacks"]:
        if "ModelCheckpoint" in cb["class_path"]:
            cb["init_args"] = {"dirpath": str(tmp_path / "ckpt"), "save_last": False, "every_n_train_steps": 2,
                               "save_top_k": 1}
    cfg["model"]["init_args"]["sample_every_n_steps"] = 0
    cfg["data"]["init_args"].update(num_train=128, num_val=8, batch_size=16)
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_cli(["fit", "--config", str(path), *DDP], cwd=tmp_path)
    ckpts = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert len(ckpts) == 1, ckpts
    assert "step=2" in ckpts[0].name
    state = read_checkpoint(ckpts[0])          # weights_only loading of the EMA state_dict
    assert state and all(k.startswith("network.") for k in state)

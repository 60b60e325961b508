"""``diffinv fit --ckpt_path last`` continues exactly (issue 13.9): a run stopped mid-epoch and resumed ends
with the same weights, EMA and losses as the same run uninterrupted, with random augmentation (flips) on.

Both runs are the real command line on configs/fit/tiny_cpu.yaml's network, with an image-folder DataModule
(random horizontal flips) over 60 small PNGs: 3 batches per epoch, so step 20 is in the middle of an epoch.
One thread: CPU results are then bit-for-bit reproducible.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from datamodules.synthetic import gaussian_blobs
from lightning_modules.cli import main

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, work: Path) -> Path:
    images = tmp_path / "images"
    if not images.is_dir():
        images.mkdir()
        blobs = gaussian_blobs(60, 1, 16, 3, torch.Generator().manual_seed(0))
        for i, b in enumerate(blobs):
            Image.fromarray(((b[0].numpy() + 1) * 127.5).round().astype("uint8")).save(images / f"{i:05d}.png")
    cfg = yaml.safe_load((ROOT / "configs" / "fit" / "tiny_cpu.yaml").read_text())
    cfg["data"] = {"class_path": "datamodules.images.ImageFolderDataModule",
                   "init_args": {"root": str(images), "resolution": 16, "channels": 1, "num_val": 8, "hflip": True,
                                 "batch_size": 16}}
    cfg["model"]["init_args"]["sample_every_n_steps"] = 0
    cfg["trainer"].update(default_root_dir=str(work), enable_progress_bar=False, val_check_interval=10)
    path = work / "fit.yaml"
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def fit(config: Path, steps: int, resume: bool = False) -> None:
    threads = torch.get_num_threads()
    try:
        main(["fit", "--config", str(config), "--trainer.max_steps", str(steps), "--threads", "1",
              *(["--ckpt_path", "last"] if resume else [])])
    finally:
        torch.set_num_threads(threads)


def losses(work: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for version in sorted((work / "tensorboard").glob("version_*")):
        acc = EventAccumulator(str(version), size_guidance={"scalars": 0})
        acc.Reload()
        out.update({e.step: e.value for e in acc.Scalars("train/loss")})
    return out


def final_state(work: Path) -> dict:
    return torch.load(work / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_run(a: Path, b: Path, steps: int) -> None:
    sa, sb = final_state(a), final_state(b)
    assert sa["global_step"] == sb["global_step"] == steps
    for part in ("state_dict", "current_model_state"):          # EMA weights, raw weights
        diff = max(float((sa[part][k] - sb[part][k]).abs().max()) for k in sa[part])
        assert diff == 0.0, f"{part} differs by up to {diff}"
    la, lb = losses(a), losses(b)
    assert [la[s] for s in range(steps)] == [lb[s] for s in range(steps)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    work = tmp / "straight"
    fit(write_config(tmp, work), 30)
    return tmp, work


def test_stopped_mid_epoch_and_resumed_equals_uninterrupted(uninterrupted, monkeypatch):
    tmp, straight = uninterrupted
    monkeypatch.setattr(sys, "argv", ["diffinv"])
    work = tmp / "resumed"
    config = write_config(tmp, work)
    fit(config, 20)
    fit(config, 30, resume=True)
    assert_same_run(straight, work, 30)


@pytest.mark.slow
def test_killed_and_resumed_equals_uninterrupted(uninterrupted):
    """SIGKILL at a random moment after the step-10 checkpoint, then resume from whatever last.ckpt holds."""
    tmp, straight = uninterrupted
    work = tmp / "killed"
    config = write_config(tmp, work)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lightning_modules.cli", "fit", "--config", str(config),
                             "--trainer.max_steps", "30"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and not (work / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.05)
    time.sleep(1.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = final_state(work)["global_step"]
    assert 10 <= step < 30, step
    fit(config, 30, resume=True)
    assert_same_run(straight, work, 30)

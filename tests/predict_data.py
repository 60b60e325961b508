"""Test-only problem DataModule and config builders for the ``diffinv predict`` tests.

``TinyProblemDataModule`` is an ``InverseProblemDataModule`` over procedurally generated truths (smooth
random fields or Gaussian blobs in [-1, 1], one per id, generated from the id), so the predict tests need
no data files. The config helpers write small YAML configs in the layout of ``configs/`` (prior, problem,
sampler) so that the tests run the real ``diffinv predict`` command line.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from datamodules.base import InverseProblemDataModule, TensorItems
from datamodules.synthetic import gaussian_blobs, smooth_fields
from diffinv.operators import Operator

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


class TinyProblemDataModule(InverseProblemDataModule):
    """``num_items`` truths of ``shape`` ([C, H, W]) with ids ``{prefix}{i:03d}``; ``kind`` "fields" or "blobs";
    ``scale`` multiplies the fields (Navier–Stokes vorticity in prior units is about +-1)."""

    def __init__(self, operator: Operator | None = None, shape: Sequence[int] = (1, 16, 16), num_items: int = 4,
                 kind: str = "fields", scale: float = 1.0, prefix: str = "item", batch_size: int = 1,
                 num_workers: int = 0, seed: int = 0, max_items: int | None = None):
        super().__init__(operator=operator, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         max_items=max_items)
        self.shape, self.num_items, self.kind, self.scale, self.prefix = tuple(shape), num_items, kind, scale, prefix

    def _load(self, sample_id: str) -> torch.Tensor:
        c, h, w = self.shape
        g = torch.Generator().manual_seed(zlib.crc32(sample_id.encode()))
        if self.kind == "blobs":
            return gaussian_blobs(1, c, h, 3, g)[0]
        return self.scale * smooth_fields(1, c, h, max(1.0, h / 8), g)[0]

    def predict_truth(self):
        return TensorItems([f"{self.prefix}{i:03d}" for i in range(self.num_items)], self._load)


def tiny_network(channels: int, resolution: int) -> dict[str, Any]:
    """An untrained tiny EDM-preconditioned SongUNet (about 0.2 M parameters)."""
    return {"class_path": "diffinv.networks.edm.EDMPrecond",
            "init_args": {"img_resolution": resolution, "img_channels": channels, "model_type": "SongUNet"},
            "dict_kwargs": {"model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [],
                            "dropout": 0.0}}


def prior_config(channels: int, resolution: int, checkpoint: str | None = None) -> dict[str, Any]:
    return {"model": {"class_path": "lightning_modules.solver.InverseProblemSolver", "init_args": {
        "prior": {"class_path": "diffinv.priors.PixelPrior",
                  "init_args": {"network": tiny_network(channels, resolution), "checkpoint": checkpoint}}}}}


def problem_config(operator: dict, shape: Sequence[int], out: Path, num_items: int = 2, kind: str = "fields",
                   writer: dict | None = None, **trainer) -> dict[str, Any]:
    return {
        "model": {"class_path": "lightning_modules.solver.InverseProblemSolver"},
        "data": {"class_path": "predict_data.TinyProblemDataModule",
                 "init_args": {"operator": operator, "shape": list(shape), "num_items": num_items, "kind": kind,
                               "batch_size": 1}},
        "trainer": {"accelerator": "cpu", "devices": 1, "default_root_dir": str(out), "logger": False,
                    "enable_progress_bar": False,
                    "callbacks": [{"class_path": "lightning_modules.prediction_writer.PredictionWriter",
                                   "init_args": writer or {}}], **trainer},
    }


def sampler_config(class_path: str, num_samples: int = 2, **init_args) -> dict[str, Any]:
    return {"model": {"class_path": "lightning_modules.solver.InverseProblemSolver",
                      "init_args": {"num_samples": num_samples,
                                    "sampler": {"class_path": class_path, "init_args": init_args}}}}


def write_configs(folder: Path, *configs: dict) -> list[str]:
    """Write the configs as ``c0.yaml, c1.yaml, ...`` and return ``--config`` arguments."""
    folder.mkdir(parents=True, exist_ok=True)
    args = []
    for i, cfg in enumerate(configs):
        p = folder / f"c{i}.yaml"
        p.write_text(yaml.safe_dump(cfg, sort_keys=False))
        args += ["--config", str(p)]
    return args


NS_OPERATOR = {"class_path": "diffinv.operators.navier_stokes.NavierStokes",
               "init_args": {"resolution": 16, "downsample": 4, "time": 0.1,
                             "noise": {"class_path": "diffinv.operators.GaussianNoise", "init_args": {"sigma": 0.1}}}}


# ----------------------------------------------------------------------------- running predict
def predict_in_process(args: list[str]) -> None:
    """``diffinv predict ARGS`` in this process, on one intra-op thread (the shared test machine runs several
    times faster so), restoring the thread count after."""
    from lightning_modules.cli import main

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["predict", *args])
    finally:
        torch.set_num_threads(n)


def interrupted_predict(args: list[str], cwd: Path, ready, sig: int) -> tuple[int, str]:
    """Start ``diffinv predict ARGS`` in a subprocess, send ``sig`` once ``ready()`` holds (polled), and return its
    exit code and output. Fails if the run ends before it could be interrupted."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lightning_modules.cli", "predict", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.02)
        assert proc.poll() is None, f"predict ended before it could be interrupted:\n{proc.stdout.read()[-3000:]}"
        proc.send_signal(sig)
        log, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, log

"""Soak test (slow): ``diffinv predict`` over 20 items, interrupted by SIGTERM or SIGKILL every few seconds and
restarted until it finishes by itself; then every artefact must equal that of an uninterrupted run (issue 13).

    python -m pytest -q -m slow tests/test_soak.py
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from predict_data import ROOT, TESTS, prior_config, problem_config, sampler_config, write_configs

pytestmark = pytest.mark.slow
NUM = 20
INPAINT = {"class_path": "diffinv.operators.image.Inpainting",
           "init_args": {"input_shape": [1, 16, 16], "mask_type": "random", "drop_prob": 0.5}}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), "OMP_NUM_THREADS": "1"}


def configs(tmp_path: Path, name: str) -> list[str]:
    return write_configs(tmp_path / f"configs_{name}", prior_config(1, 16),
                         problem_config(INPAINT, (1, 16, 16), tmp_path / name, num_items=NUM, kind="blobs"),
                         sampler_config("diffinv.samplers.ddrm.DDRM", num_samples=2, num_steps=100))


def run(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lightning_modules.cli", "predict", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_random_sigterm_and_sigkill_then_every_artefact_matches(tmp_path):
    reference = run(configs(tmp_path, "reference"), tmp_path)
    assert reference.wait(timeout=900) == 0
    rng = random.Random(0)
    args, folder = configs(tmp_path, "soak"), tmp_path / "soak" / "predictions" / "ddrm"
    signals = []
    for _ in range(100):
        proc = run(args, tmp_path)
        try:
            proc.wait(timeout=rng.uniform(5.0, 12.0))     # start-up takes about 5 s here
        except subprocess.TimeoutExpired:
            # SIGTERM then SIGKILL first (both kinds whatever the machine's speed), then at random
            sig = [signal.SIGTERM, signal.SIGKILL][len(signals)] if len(signals) < 2 else \
                rng.choice([signal.SIGTERM, signal.SIGKILL])
            proc.send_signal(sig)
            signals.append(sig.name)
            t0 = time.time()
            proc.wait(timeout=60)
            if sig == signal.SIGTERM:
                assert time.time() - t0 < 15, "SIGTERM did not stop the run promptly"
            continue
        if proc.returncode == 0:
            break
    else:
        pytest.fail(f"never finished after {len(signals)} interruptions")
    assert {"SIGTERM", "SIGKILL"} <= set(signals), signals

    ref = tmp_path / "reference" / "predictions" / "ddrm"
    for i in range(NUM):
        sid = f"item{i:03d}"
        with np.load(ref / f"{sid}.npz") as a, np.load(folder / f"{sid}.npz") as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                assert np.array_equal(a[k], b[k]), (sid, k)
        ra, rb = (json.loads((f / f"{sid}.json").read_text()) for f in (ref, folder))
        assert ra["metrics"] == rb["metrics"] and ra["cost"] == rb["cost"], sid
        assert (ref / f"{sid}.png").read_bytes() == (folder / f"{sid}.png").read_bytes(), sid
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["count"] == NUM and summary["failed"] == 0 and summary["missing"] == []
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name == "run.lock"]
    assert not leftovers, leftovers

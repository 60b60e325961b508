"""An interrupted ``diffinv predict`` leaves only complete results, and re-running it redoes nothing complete.

The first run is a subprocess stopped with SIGTERM once a few ids are complete (Lightning records the
signal; the solver stops at the next sampler step). The re-run (in-process) must finish the remaining ids,
leave the complete ones untouched (same mtimes, logged as skipped) and leave no half-written file.
"""
from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from predict_data import (interrupted_predict, predict_in_process, prior_config, problem_config,
                          sampler_config, write_configs)

NUM = 6


def test_sigterm_then_rerun_resumes(tmp_path):
    out = tmp_path / "run"
    operator = {"class_path": "diffinv.operators.image.Inpainting",
                "init_args": {"input_shape": [1, 16, 16], "mask_type": "random", "drop_prob": 0.5}}
    args = write_configs(tmp_path / "configs", prior_config(1, 16),
                         problem_config(operator, (1, 16, 16), out, num_items=NUM, kind="blobs"),
                         # a few hundred denoiser calls per id: about a second each, so SIGTERM lands mid-run
                         sampler_config("diffinv.samplers.ddrm.DDRM", num_samples=2, num_steps=80))
    folder = out / "predictions" / "ddrm"
    code, log = interrupted_predict(args, tmp_path, lambda: len(list(folder.glob("item*.json"))) >= 2, signal.SIGTERM)
    assert code != 0, log[-3000:]
    done = sorted(p.stem for p in folder.glob("item*.json"))
    assert 2 <= len(done) < NUM, (done, log[-3000:])
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.stem in done}
    assert len(stamps) == 3 * len(done)          # npz, png and json of each complete id

    # re-run: completes the rest, touches nothing complete
    predict_in_process(args)
    assert {p: (folder / p).stat().st_mtime_ns for p in stamps} == stamps
    lines = (folder / "_logs" / "rank0.log").read_text().splitlines()
    assert sorted(line.split()[1] for line in lines if line.startswith("skipped")) == done
    written = [line.split()[1] for line in lines if line.startswith("written")]
    assert sorted(written) == [f"item{i:03d}" for i in range(NUM)]           # each id written exactly once
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")], names
    for i in range(NUM):
        with np.load(folder / f"item{i:03d}.npz") as z:
            assert z["samples"].shape == (2, 1, 16, 16) and np.isfinite(z["mean"]).all()
        assert json.loads((folder / f"item{i:03d}.json").read_text())["id"] == f"item{i:03d}"
    assert json.loads((folder / "summary.json").read_text())["count"] == NUM


@pytest.mark.parametrize("name", ["x.json", "x.npz"])
def test_atomic_write_leaves_no_partial_file(tmp_path, name):
    from lightning_modules.prediction_writer import atomic_write

    target = tmp_path / name
    atomic_write(target, lambda f: f.write(b"complete"))

    def crash(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_bytes() == b"complete" and sorted(p.name for p in tmp_path.iterdir()) == [name]

"""Ensemble checkpoints: a pre-empted EnKG run resumes from its last checkpoint and ends with the particles of an
uninterrupted run.

* In process: EnKG (Kalman update with ancestral noise, so the generator's state matters) saving into a
  ``MemoryCheckpoint`` every 3 steps, stopped by its callback, then resumed: the same particles bit for bit, the
  same cost, and the resumed run starts at the saved step.
* ``diffinv predict`` (``model.init_args.checkpoint_every``) killed with SIGTERM, and with SIGKILL, once
  ``item000.ensemble.pt`` exists: the re-run logs ``resumed item000 at step k`` and writes the same samples as an
  uninterrupted run into another folder; the checkpoint is gone once the item is complete.
* Data-parallel ``diffinv predict`` on 2 processes (each rank solves its own item): each rank checkpoints the item
  it solves (seen on disk during the run, for both items) and the run ends with the one-process samples and no
  checkpoint left.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from diffinv.samplers import EnKG
from diffinv.samplers.resume import MemoryCheckpoint
from lightning_modules.ensemble_checkpoint import EnsembleCheckpoint
from posterior_checks import gaussian_problem
from predict_data import (interrupted_predict, predict_in_process, prior_config, problem_config,
                          sampler_config, write_configs)
from test_ddp import DDP, cli_env


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Stop(Exception):
    pass


def test_resume_in_process_is_exact():
    p = gaussian_problem("dense")
    sampler = EnKG(num_steps=20, batch_size=None, update="kalman", num_updates=1, stochastic=True, relaxation=0.6)

    def run(callback=None, checkpoint=None):
        with torch.no_grad():
            return sampler.sample(p.y, p.operator, p.prior, num_samples=8, generator=torch.Generator().manual_seed(0),
                                  callback=callback, checkpoint=checkpoint)

    want = run()
    cost = sampler.cost

    def stop(step, num_steps, x):
        if step == 13:
            raise Stop

    store = MemoryCheckpoint(every=3)
    with pytest.raises(Stop):
        run(stop, store)
    assert store.saves == 4 and store.saved["step"] == 12          # after steps 2, 5, 8, 11
    steps = []
    got = run(lambda step, n, x: steps.append(step), store)
    assert steps[0] == 12 and torch.equal(got, want) and sampler.cost == cost


def test_a_checkpoint_of_other_settings_is_ignored(tmp_path):
    path = tmp_path / "a.ensemble.pt"
    EnsembleCheckpoint(path, 2, "settings-1", write=True).save({"step": 4, "x": torch.zeros(2)})
    assert EnsembleCheckpoint(path, 2, "settings-1", write=True).load()["step"] == 4
    assert EnsembleCheckpoint(path, 2, "settings-2", write=True).load() is None
    assert EnsembleCheckpoint(path, 2, "settings-1", write=True, ignore_saved=True).load() is None
    EnsembleCheckpoint(path, 2, "settings-1", write=False).save({"step": 6, "x": torch.zeros(2)})
    assert EnsembleCheckpoint(path, 2, "settings-1", write=True).load()["step"] == 4      # rank != 0 never writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ensemble.pt"]


INPAINT = {"class_path": "diffinv.operators.image.Inpainting",
           "init_args": {"input_shape": [1, 16, 16], "mask_type": "random", "drop_prob": 0.5}}


def configs(folder, out, num_items: int = 1):
    s = sampler_config("diffinv.samplers.enkg.EnKG", num_samples=12, num_steps=60, batch_size=None,
                       update="kalman", stochastic=True, relaxation=0.6, max_ode_steps=4, ode_steps_divisor=2)
    s["model"]["init_args"]["checkpoint_every"] = 2
    return write_configs(folder, prior_config(1, 16), problem_config(INPAINT, (1, 16, 16), out,
                                                                       num_items=num_items, kind="blobs"), s)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    predict_in_process(configs(tmp / "configs", tmp / "run"))
    with np.load(tmp / "run" / "predictions" / "enkg" / "item000.npz") as z:
        return z["samples"]


@pytest.mark.parametrize("kill", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_predict_resumes_from_its_ensemble_checkpoint(tmp_path, uninterrupted, kill):
    out = tmp_path / "run"
    args = configs(tmp_path / "configs", out)
    folder = out / "predictions" / "enkg"
    code, log = interrupted_predict(args, tmp_path, lambda: (folder / "item000.ensemble.pt").exists(), kill)
    assert code != 0, log[-3000:]
    assert not (folder / "item000.json").exists(), "the item finished before the signal: nothing was resumed"
    saved = torch.load(folder / "item000.ensemble.pt", weights_only=True)
    assert saved["step"] >= 2 and saved["x"].shape == (12, 1, 16, 16)

    predict_in_process(args)
    lines = (folder / "_logs" / "rank0.log").read_text().splitlines()
    resumed = [line for line in lines if line.startswith("resumed item000 at step ")]
    assert len(resumed) == 1 and int(resumed[0].split()[-1]) >= saved["step"], lines
    with np.load(folder / "item000.npz") as z:
        assert np.array_equal(z["samples"], uninterrupted)
    assert json.loads((folder / "item000.json").read_text())["id"] == "item000"
    assert not [p.name for p in folder.iterdir() if p.name.endswith((".ensemble.pt", ".tmp"))]


def test_each_rank_checkpoints_the_item_it_solves(tmp_path):
    items = ("item000", "item001")
    args = configs(tmp_path / "c2", tmp_path / "two", num_items=2)
    folder = tmp_path / "two" / "predictions" / "enkg"
    run = subprocess.Popen([sys.executable, "-m", "lightning_modules.cli", "predict", *args, *DDP], cwd=tmp_path,
                           env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, start = set(), time.monotonic()
    while run.poll() is None and time.monotonic() - start < 300:
        seen |= {sid for sid in items if (folder / f"{sid}.ensemble.pt").exists()}
        time.sleep(0.02)
    log = run.communicate(timeout=60)[0]
    assert run.returncode == 0, log[-3000:]
    assert seen == set(items), f"ensemble checkpoints seen during the run: {sorted(seen)}\n{log[-2000:]}"
    solvers = {json.loads((folder / f"{sid}.json").read_text())["rank"] for sid in items}
    assert solvers == {0, 1}, solvers                                  # each rank solved one of the items
    predict_in_process(configs(tmp_path / "c1", tmp_path / "one", num_items=2))
    one = tmp_path / "one" / "predictions" / "enkg"
    for sid in items:
        with np.load(folder / f"{sid}.npz") as a, np.load(one / f"{sid}.npz") as b:
            np.testing.assert_allclose(a["samples"], b["samples"], rtol=0, atol=1e-5 * np.abs(b["samples"]).max())
    assert not [p.name for p in folder.iterdir() if p.name.endswith((".ensemble.pt", ".tmp"))]

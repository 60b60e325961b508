"""``diffinv predict`` with ``model.init_args.sample_parallel: true``: every rank works on every item.

* DPS (independent draws, 5 per item in blocks of 2: ranks draw 2 + 2 and 1) on 2 processes (Lightning DDP,
  gloo) writes the same samples, mean, std and metrics as on 1 process with the same settings; each item is
  written once, by rank 0, and rank 1 logs it as ``shared``.
* EnKG and MCGdiff (one ensemble of 7 particles, 4 + 3 on 2 ranks) on 2 processes write the samples of the plain
  one-process run (no sample_parallel) to float32 round-off.
* The block layout: block 0 keeps a one-call run's seed, the blocks of a rank are contiguous.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from datamodules.base import sample_seed
from lightning_modules import sample_parallel as sp
from predict_data import predict_in_process, prior_config, problem_config, sampler_config, write_configs
from test_ddp import DDP, run_cli

INPAINT = {"class_path": "diffinv.operators.image.Inpainting",
           "init_args": {"input_shape": [1, 16, 16], "mask_type": "random", "drop_prob": 0.5}}
ITEMS = ["item000", "item001"]


def test_blocks():
    assert sp.blocks(5, 2) == [(0, 2), (2, 2), (4, 1)] and sp.blocks(4, 4) == [(0, 4)]
    assert [list(r) for r in sp.rank_blocks(3, 2)] == [[0, 1], [2]]
    assert [list(r) for r in sp.rank_blocks(1, 3)] == [[0], [], []]
    assert sp.block_seed(3, "a", 0) == sample_seed(3, "a/sampler") != sp.block_seed(3, "a", 1)


def configs(folder, out, sampler):
    return write_configs(folder, prior_config(1, 16),
                         problem_config(INPAINT, (1, 16, 16), out, num_items=len(ITEMS), kind="blobs"), sampler)


def load(folder, sid):
    with np.load(folder / f"{sid}.npz") as z:
        arrays = {k: z[k] for k in ("samples", "mean", "std")}
    return arrays, json.loads((folder / f"{sid}.json").read_text())


def events(folder, rank):
    lines = (folder / "_logs" / f"rank{rank}.log").read_text().split()
    return list(zip(lines[::2], lines[1::2]))


def test_dps_two_processes_make_the_draws_of_one(tmp_path):
    sampler = sampler_config("diffinv.samplers.dps.DPS", num_samples=5, num_steps=10)
    sampler["model"]["init_args"].update(sample_parallel=True, samples_per_call=2)
    run_cli(["predict", *configs(tmp_path / "c2", tmp_path / "two", sampler), *DDP], cwd=tmp_path)
    predict_in_process(configs(tmp_path / "c1", tmp_path / "one", sampler))
    two, one = (tmp_path / name / "predictions" / "dps" for name in ("two", "one"))
    assert events(two, 0) == [("written", sid) for sid in ITEMS]
    assert events(two, 1) == [("shared", sid) for sid in ITEMS]
    for sid in ITEMS:
        (a, ra), (b, rb) = load(two, sid), load(one, sid)
        assert a["samples"].shape == (5, 1, 16, 16)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=f"{sid} {k}")
        assert ra["rank"] == 0 and ra["cost"] == rb["cost"] and ra["cost"]["nfe"] == 3 * 10    # 3 calls, summed
        assert ra["metrics"] == pytest.approx(rb["metrics"], rel=1e-5, abs=1e-6)
    assert json.loads((two / "run.json").read_text())["samples_per_call"] == 2
    assert json.loads((two / "summary.json").read_text())["count"] == len(ITEMS)


ENSEMBLES = {
    "enkg": sampler_config("diffinv.samplers.enkg.EnKG", num_samples=7, num_steps=10, batch_size=4,
                           update="kalman", stochastic=True, relaxation=0.6, max_ode_steps=2),
    "mcgdiff": sampler_config("diffinv.samplers.mcgdiff.MCGdiff", num_samples=7, num_steps=10, threshold=1.0),
}


@pytest.mark.parametrize("name", list(ENSEMBLES))
def test_ensemble_split_over_two_processes(tmp_path, name):
    """One particle system, 4 + 3 particles on 2 ranks (an SMC sampler's particles move between them when it
    resamples): the samples of the plain one-process run."""
    sampler = json.loads(json.dumps(ENSEMBLES[name]))
    plain = json.loads(json.dumps(sampler))
    sampler["model"]["init_args"]["sample_parallel"] = True
    run_cli(["predict", *configs(tmp_path / "c2", tmp_path / "two", sampler), *DDP], cwd=tmp_path)
    predict_in_process(configs(tmp_path / "c1", tmp_path / "one", plain))
    two, one = (tmp_path / n / "predictions" / name for n in ("two", "one"))
    if name == "mcgdiff":                      # the ESS of the whole system, as on one process
        (_, ra), (_, rb) = load(two, ITEMS[0]), load(one, ITEMS[0])
        ea, eb = ra["checks"]["ess"], rb["checks"]["ess"]
        assert ea.pop("per_step") == pytest.approx(eb.pop("per_step"), abs=1e-3) and ea == pytest.approx(eb)
        assert ea["particles"] == 7
    assert events(two, 0) == [("written", sid) for sid in ITEMS]
    assert events(two, 1) == [("shared", sid) for sid in ITEMS]
    for sid in ITEMS:
        (a, _), (b, _) = load(two, sid), load(one, sid)
        assert a["samples"].shape == (7, 1, 16, 16)
        scale = np.abs(b["samples"]).max()
        assert np.abs(a["samples"] - b["samples"]).max() <= 1e-5 * scale
    assert json.loads((two / "run.json").read_text()) == json.loads((one / "run.json").read_text())

"""One item that goes wrong does not take the run with it, and says where and why (issue 13.4, 13.5, 13.10).

The samplers of ``failing_samplers`` fail the way real ones do with too large a step or guidance: the iterate
grows until the forward model gives up, or turns NaN. Every run is the real ``diffinv predict``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from lightning_modules.cli import main
from predict_data import NS_OPERATOR, ROOT, TESTS, prior_config, problem_config, sampler_config, write_configs

INPAINT = {"class_path": "diffinv.operators.image.Inpainting",
           "init_args": {"input_shape": [1, 16, 16], "mask_type": "random", "drop_prob": 0.5}}
NS_ADAPTIVE = {**NS_OPERATOR, "init_args": {**NS_OPERATOR["init_args"], "dt": None}}


def run(tmp_path, operator, sampler: dict, num_items: int = 2, extra: tuple[str, ...] = (), **model):
    if model:
        sampler["model"]["init_args"].update(model)
    args = write_configs(tmp_path / "configs", prior_config(1, 16),
                         problem_config(operator, (1, 16, 16), tmp_path / "run", num_items=num_items), sampler)
    main(["predict", *args, *extra])
    return args


def folder_of(tmp_path, name: str):
    return tmp_path / "run" / "predictions" / name


def test_blow_up_in_the_forward_model_is_recorded_and_the_run_goes_on(tmp_path, capsys):
    run(tmp_path, NS_ADAPTIVE, sampler_config("failing_samplers._Diverging", num_samples=2, num_steps=12))
    folder = folder_of(tmp_path, "_diverging")
    failure = json.loads((folder / "item000.failed.json").read_text())
    msg = failure["message"]
    assert msg.startswith("item000: _Diverging failed at step ") and failure["step"] >= 2
    assert "step size or guidance is too large" in msg and "grew from max |x|" in msg
    assert "NavierStokes2DSolver" in msg and "max |w0|" in msg        # the solver names the field's amplitude
    assert not (folder / "item000.json").exists()
    assert json.loads((folder / "item001.json").read_text())["id"] == "item001"     # the next item ran
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["count"] == 1 and summary["failed"] == 1 and summary["missing"] == []
    assert summary["failures"]["item000"] == msg
    assert "FAILED item000" in capsys.readouterr().out


def test_a_recorded_failure_is_not_redone(tmp_path):
    args = run(tmp_path, NS_ADAPTIVE, sampler_config("failing_samplers._Diverging", num_samples=2, num_steps=12))
    main(["predict", *args])      # a new process would fail again the same way (seeded): not redone
    folder = folder_of(tmp_path, "_diverging")
    lines = (folder / "_logs" / "rank0.log").read_text().splitlines()
    assert lines.count("failed item000") == 1 and lines.count("skipped item000") == 1


def test_nan_iterate_on_an_image_operator_names_the_sampler(tmp_path):
    run(tmp_path, {"class_path": "diffinv.operators.image.BicubicSuperResolution",
                   "init_args": {"input_shape": [1, 16, 16], "scale_factor": 2}},
        sampler_config("failing_samplers._Diverging", num_samples=2, num_steps=6, growth=1.0, nan_at=3))
    failure = json.loads((folder_of(tmp_path, "_diverging") / "item000.failed.json").read_text())
    assert failure["step"] == 4 and "non-finite" in failure["message"] and "_Diverging" in failure["message"]


def test_on_failure_stop_records_then_stops(tmp_path):
    with pytest.raises(RuntimeError, match="item000: _Diverging failed at step") as err:
        run(tmp_path, NS_ADAPTIVE, sampler_config("failing_samplers._Diverging", num_samples=2, num_steps=12),
            on_failure="stop")
    assert "on_failure" in str(err.value)
    folder = folder_of(tmp_path, "_diverging")
    assert (folder / "item000.failed.json").exists() and not (folder / "item001.json").exists()


def test_a_misfit_far_above_the_noise_is_flagged(tmp_path, capsys):
    run(tmp_path, INPAINT, sampler_config("failing_samplers._Constant", num_samples=2, value=50.0))
    folder = folder_of(tmp_path, "_constant")
    record = json.loads((folder / "item000.json").read_text())
    check = record["checks"]["misfit"]
    assert check["flagged"] and check["reference"] == 16 * 16 / 2       # m / 2, m = 256 measured values
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["flagged"]) == {"item000", "item001"}
    assert "FLAGGED item000" in capsys.readouterr().out


def test_one_unreadable_image_is_a_recorded_failure(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("L", (16, 16), color=40 * i).save(images / f"{i:05d}.png")
    (images / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))      # a damaged file
    problem = problem_config(INPAINT, (1, 16, 16), tmp_path / "run")
    problem["data"] = {"class_path": "datamodules.images.ImageFolderDataModule",
                       "init_args": {"root": str(images), "resolution": 16, "channels": 1, "operator": INPAINT}}
    main(["predict", *write_configs(tmp_path / "configs", prior_config(1, 16), problem,
                                    sampler_config("diffinv.samplers.ddrm.DDRM", num_samples=2, num_steps=3))])
    folder = folder_of(tmp_path, "ddrm")
    failure = json.loads((folder / "00001.failed.json").read_text())
    assert "00001.png" in failure["message"] and "cannot read image" in failure["message"]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["count"] == 2 and summary["failed"] == 1


def test_adaptive_solver_work_is_bounded_by_default():
    """A huge field used to run 20,000+ steps (minutes per call): now the derived step cap stops it within a
    second or two, naming the field's amplitude."""
    from diffinv.operators.navier_stokes import NavierStokes2DSolver

    solver = NavierStokes2DSolver(32)
    g = torch.Generator().manual_seed(0)
    w0 = 1e3 * torch.randn(1, 32, 32, generator=g, dtype=torch.float64)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"max \|w0\| = [0-9.e+]+") as err:
        solver.solve(w0, 1.0)
    assert time.perf_counter() - t0 < 10
    assert "max_steps" in str(err.value)
    ok = torch.randn(1, 32, 32, generator=g, dtype=torch.float64) * 10     # typical data: far below the cap
    _, steps = solver.solve(ok, 1.0, return_steps=True)
    assert int(steps.max()) < solver.step_cap(1.0) / 4


def test_sigterm_inside_a_long_forward_call_stops_within_seconds(tmp_path):
    args = write_configs(tmp_path / "configs", prior_config(1, 16),
                         problem_config(INPAINT, (1, 16, 16), tmp_path / "run", num_items=2),
                         sampler_config("failing_samplers._Sleepy", num_samples=1, seconds=120.0))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lightning_modules.cli", "predict", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lock = folder_of(tmp_path, "_sleepy") / "run.lock"
        deadline = time.time() + 120
        while time.time() < deadline and not lock.exists():
            time.sleep(0.1)
        time.sleep(3)                        # well inside the first item's 120 s call
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        stopped = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and stopped < 10, (stopped, out[-2000:])
    assert not list(folder_of(tmp_path, "_sleepy").glob("item*.json"))


def test_likely_cause_tells_a_diverging_sampler_from_a_healthy_one():
    from lightning_modules.diagnosis import Trajectory

    healthy, diverging = Trajectory(reference=2.0), Trajectory(reference=2.0)
    for step, amp in enumerate([300.0, 120.0, 40.0, 9.0, 3.0]):       # shrinks to the data's scale
        healthy.record(step, 10, torch.full((1, 4), amp))
    for step, amp in enumerate([300.0, 290.0, 310.0, 450.0, 540.0]):   # DPS with zeta 1000: grows again
        diverging.record(step, 10, torch.full((1, 4), amp))
    assert "not the sampler's growth" in healthy.cause()
    assert "grew from max |x| = 290 (step 2) to 540" in diverging.cause() and "truth's max |x| is 2" in diverging.cause()

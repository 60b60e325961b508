"""Results that survive what goes wrong: one run per output folder (issue 13.1), resume verifies every artefact
(13.2) and treats an unreadable record as an unfinished item (13.3).

Each test runs the real ``diffinv predict`` on a tiny inpainting problem (DDRM, untrained tiny prior)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lightning_modules.cli import main
from lightning_modules.output_folder import FolderLock, FolderLockedError
from predict_data import ROOT, TESTS, prior_config, problem_config, sampler_config, write_configs

INPAINT = {"class_path": "diffinv.operators.image.Inpainting",
           "init_args": {"input_shape": [1, 16, 16], "mask_type": "random", "drop_prob": 0.5}}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), "OMP_NUM_THREADS": "1"}


def configs(tmp_path, num_items: int = 3, num_steps: int = 3, **writer):
    return write_configs(tmp_path / "configs", prior_config(1, 16),
                         problem_config(INPAINT, (1, 16, 16), tmp_path / "run", num_items=num_items, kind="blobs",
                                        writer=writer or None),
                         sampler_config("diffinv.samplers.ddrm.DDRM", num_samples=2, num_steps=num_steps))


def events(folder) -> list[tuple[str, str]]:
    lines = (folder / "_logs" / "rank0.log").read_text().splitlines()
    return [tuple(line.split(maxsplit=1)) for line in lines]


def test_second_run_into_a_busy_folder_is_refused(tmp_path):
    args = configs(tmp_path, num_items=6, num_steps=80)        # about a second per item
    folder = tmp_path / "run" / "predictions" / "ddrm"
    first = subprocess.Popen([sys.executable, "-m", "lightning_modules.cli", "predict", *args], cwd=tmp_path, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None and not list(folder.glob("item*.json")):
            time.sleep(0.05)
        assert first.poll() is None, first.stdout.read()[-3000:]
        with pytest.raises(FolderLockedError, match=f"pid {first.pid} on host") as err:
            main(["predict", *args])
        assert "--trainer.default_root_dir" in str(err.value)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    written = [sid for what, sid in events(folder) if what == "written"]
    assert len(written) == len(set(written)), written           # the refused run computed nothing


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    folder = tmp_path / "run" / "predictions" / "ddrm"
    folder.mkdir(parents=True)
    # a lock file left by a killed run: its process is gone, so nobody holds the flock
    (folder / FolderLock.NAME).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "yesterday"}))
    main(["predict", *configs(tmp_path)])
    assert json.loads((folder / "summary.json").read_text())["count"] == 3
    assert not (folder / FolderLock.NAME).exists()              # released at the end


def test_live_lock_in_another_process_is_refused(tmp_path):
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from lightning_modules.output_folder import FolderLock; "
            "FolderLock(sys.argv[2]).acquire(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError, match=f"pid {holder.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = FolderLock(tmp_path)          # the holder died (SIGKILL): its lock is free again
    lock.acquire()
    lock.release()


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip"])
def test_corrupt_or_missing_npz_is_redone_on_resume(tmp_path, damage, caplog):
    args = configs(tmp_path)
    main(["predict", *args])
    folder = tmp_path / "run" / "predictions" / "ddrm"
    npz = folder / "item001.npz"
    good = npz.read_bytes()
    if damage == "truncate":
        npz.write_bytes(good[: len(good) // 2])
    elif damage == "delete":
        npz.unlink()
    else:                                               # same size, one byte changed
        npz.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])
    main(["predict", *args])
    assert npz.read_bytes() == good                     # recomputed, bit-identical (seeded by the id)
    with np.load(npz) as z:
        assert z["samples"].shape == (2, 1, 16, 16)
    log = events(folder)
    assert [sid for what, sid in log if what == "written"].count("item001") == 2
    assert ("redone", "item001") in [(w, s.split()[0]) for w, s in log if w == "redone"]
    assert "item001" in caplog.text and "item001.npz" in caplog.text      # says why it is redone
    assert json.loads((folder / "summary.json").read_text())["count"] == 3


def test_truncated_json_is_redone_not_a_crash(tmp_path):
    args = configs(tmp_path)
    main(["predict", *args])
    folder = tmp_path / "run" / "predictions" / "ddrm"
    record = folder / "item000.json"
    record.write_text(record.read_text()[:40])
    (folder / "summary.json").write_text("stale")
    main(["predict", *args])
    assert json.loads(record.read_text())["id"] == "item000"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["count"] == 3 and summary["missing"] == []


def test_summary_names_an_unreadable_record(tmp_path):
    """A record damaged after its run (e.g. while another process reads the folder) is reported by name, not
    a bare JSONDecodeError."""
    from lightning_modules.prediction_writer import PredictionWriter

    main(["predict", *configs(tmp_path)])
    folder = tmp_path / "run" / "predictions" / "ddrm"
    (folder / "item002.json").write_text("{")
    writer = PredictionWriter(output_dir=str(folder))
    writer.output_dir = folder
    summary = writer.summarize(["item000", "item001", "item002"])
    assert summary["count"] == 2 and summary["missing"] == ["item002"]
    assert "item002.json is unreadable" in summary["problems"]["item002"]

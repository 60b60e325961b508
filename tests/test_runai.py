"""``scripts/runai/submit.py --dry-run``: the exact Run:AI commands, and the pod script they run.

The pod script is also executed here with stand-ins for ``torchrun`` / ``diffinv`` (which print their
arguments) and a fake Run:AI / Kubeflow environment, to check the volume links and the launch line."""
from __future__ import annotations

import importlib.util
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "runai" / "submit.py"


def load():
    spec = importlib.util.spec_from_file_location("runai_submit", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dry_run(capsys, *argv: str) -> list[str]:
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    assert load().main([*argv[:cut], "--dry-run", *argv[cut:]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# ")
    return shlex.split(lines[1])


COMMON = ["-p", "proj", "-i", "reg/diffinv:1", "--data-pvc", "datasets", "--output-pvc", "results"]
CONFIG = ["--", "--config", "configs/fit/tiny_cpu.yaml"]


def test_single_pod_fit(capsys):
    cmd = dry_run(capsys, "fit", "tiny", *COMMON, *CONFIG)
    assert cmd[:4] == ["runai", "training", "submit", "tiny"]
    assert cmd[4:10] == ["-p", "proj", "-i", "reg/diffinv:1", "-g", "1"]
    assert "claimname=datasets,path=/mnt/data" in cmd and "claimname=results,path=/mnt/outputs" in cmd
    assert cmd[-5:-1] == ["--command", "--", "bash", "-c"]
    script = cmd[-1]
    assert "diffinv fit --config configs/fit/tiny_cpu.yaml --trainer.devices=1" in script
    assert "torchrun" not in script and "--workers" not in cmd


@pytest.mark.parametrize("workers", [1, 4])
def test_distributed_fit(capsys, workers):
    cmd = dry_run(capsys, "fit", "big", *COMMON, "--workers", str(workers), "--gpus", "8", *CONFIG)
    assert cmd[:5] == ["runai", "training", "pytorch", "submit", "big"]
    assert cmd[5:7] == ["--workers", str(workers)] and cmd[cmd.index("-g") + 1] == "8"
    script = cmd[-1]
    assert ('torchrun --nnodes="${PET_NNODES:-$WORLD_SIZE}" --nproc-per-node=8 --rdzv-backend=c10d '
            '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"') in script
    assert "-m lightning_modules.cli fit --config configs/fit/tiny_cpu.yaml" in script
    assert '--trainer.num_nodes="${PET_NNODES:-$WORLD_SIZE}" --trainer.devices=8 --trainer.strategy=ddp' in script
    assert "/mnt/outputs/\"${JOB_NAME" in script          # logs under the output volume, per job


@pytest.mark.parametrize("workers", [1, 4])
def test_legacy_cli(capsys, workers):
    cmd = dry_run(capsys, "predict", "old", *COMMON, "--workers", str(workers), "--legacy-cli", *CONFIG)
    assert cmd[:7] == ["runai", "submit-dist", "pytorch", "old", "--workers", str(workers), "-p"]
    cmd = dry_run(capsys, "predict", "old1", *COMMON, "--legacy-cli", *CONFIG)
    assert cmd[:3] == ["runai", "submit", "old1"]


PREDICT = ["--", "--config", "configs/prior/ns64.yaml", "--config", "configs/problem/ns_sub4.yaml", "--config",
           "configs/sampler/enkg.yaml"]
SHARE = "--model.init_args.sample_parallel=true --trainer.use_distributed_sampler=false"


def test_sample_parallel_distributed_predict(capsys):
    argv = ["predict", "one", *COMMON, "--workers", "1", "--gpus", "8", "--sample-parallel", *PREDICT]
    assert load().main([*argv[:argv.index("--")], "--dry-run", *argv[argv.index("--"):]]) == 0
    head, line = capsys.readouterr().out.strip().splitlines()
    assert "all 16 ranks work on each item" in head
    cmd = shlex.split(line)
    assert cmd[:5] == ["runai", "training", "pytorch", "submit", "one"]
    assert (f"-m lightning_modules.cli predict --config configs/prior/ns64.yaml --config configs/problem/ns_sub4.yaml "
            f"--config configs/sampler/enkg.yaml {SHARE} --trainer.num_nodes=") in cmd[-1]


def test_sample_parallel_one_pod(capsys):
    script = dry_run(capsys, "predict", "one", *COMMON, "--gpus", "4", "--sample-parallel", *PREDICT)[-1]
    assert "diffinv predict --config configs/prior/ns64.yaml" in script
    assert f"{SHARE} --trainer.devices=4 --trainer.accelerator=gpu --trainer.strategy=ddp" in script
    plain = dry_run(capsys, "predict", "one", *COMMON, "--gpus", "4", *PREDICT)[-1]
    assert "sample_parallel" not in plain


def test_sample_parallel_is_for_predict(capsys):
    with pytest.raises(SystemExit):
        load().main(["fit", "x", *COMMON, "--sample-parallel", "--dry-run", *CONFIG])
    assert "--sample-parallel is a predict option" in capsys.readouterr().err


def test_configs_are_required(capsys):
    with pytest.raises(SystemExit):
        load().main(["fit", "x", *COMMON, "--dry-run"])
    assert "--config" in capsys.readouterr().err


def test_pod_script_runs(tmp_path, capsys):
    """Execute the distributed pod script with a stand-in torchrun in a fake pod."""
    repo, data, out = tmp_path / "repo", tmp_path / "data", tmp_path / "out"
    for d in (repo, data, out):
        d.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for exe in ("torchrun", "diffinv"):
        stub = bin_dir / exe
        stub.write_text(f'#!/bin/sh\necho {exe} "$@"\n')
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    cmd = dry_run(capsys, "fit", "job", *COMMON[:4], "--output-pvc", "o", "--output-mount", str(out), "--data-pvc",
                  "d", "--data-mount", str(data), "--workdir", str(repo), "--workers", "4", "--gpus", "2", *CONFIG)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "JOB_NAME": "job", "JOB_UUID": "u-1",
           "PET_NNODES": "5", "WORLD_SIZE": "5", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456"}
    res = subprocess.run(cmd[-3:], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [
        "torchrun", "--nnodes=5", "--nproc-per-node=2", "--rdzv-backend=c10d", "--rdzv-endpoint=job-master-0:23456",
        "--rdzv-id=u-1", "-m", "lightning_modules.cli", "fit", "--config", "configs/fit/tiny_cpu.yaml",
        "--trainer.num_nodes=5", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=gpu"]
    assert (repo / "outputs").resolve() == (out / "job").resolve() and (out / "job").is_dir()
    assert (repo / "data").resolve() == data.resolve()


def test_script_runs_from_the_command_line():
    res = subprocess.run([sys.executable, str(SCRIPT), "predict", "p1", *COMMON, "--dry-run", *CONFIG],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "runai training submit p1" in res.stdout

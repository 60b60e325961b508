"""The command line and the library's independence from Lightning."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def diffinv(*args: str) -> subprocess.CompletedProcess:
    exe = BIN / "diffinv"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lightning_modules.cli"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("args", [["--help"], ["fit", "--help"], ["predict", "--help"]])
def test_cli_help_exits_zero(args):
    out = diffinv(*args)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage" in out.stdout
    if len(args) > 1:
        assert "--threads" in out.stdout


@pytest.mark.parametrize("sub", ["test", "validate"])
def test_only_working_subcommands_are_offered(sub):
    """``test`` / ``validate`` used to be advertised and then failed with "No test_step()"."""
    out = diffinv(sub, "--help")
    assert out.returncode == 2 and "choose from 'fit', 'predict'" in out.stderr
    assert "validate" not in diffinv("--help").stdout.split("positional arguments")[-1].split("options")[0]


def test_importing_diffinv_does_not_import_lightning():
    code = (
        "import importlib, pkgutil, sys, diffinv\n"
        "for m in pkgutil.walk_packages(diffinv.__path__, 'diffinv.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]

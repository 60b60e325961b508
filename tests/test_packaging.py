"""The command line and the library's independence from Lightning."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("args", [["--help"], ["fit", "--help"], ["predict", "--help"], ["validate", "--help"],
                                  ["test", "--help"]])
def test_cli_help_exits_zero(args):
    exe = BIN / "diffinv"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lightning_modules.cli"]
    out = subprocess.run(cmd + args, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage" in out.stdout


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

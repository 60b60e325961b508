"""Packaging: the licence is an SPDX expression, ehtim is the optional extra 'blackhole' (asked for by name
when missing, and imported without changing matplotlib or printing), taming comes from the one no-deps pin."""
from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})


def test_license_is_an_spdx_string_and_builds_without_warnings(tmp_path):
    assert PYPROJECT["project"]["license"] == "MIT" and (ROOT / "LICENSE").is_file()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    (tmp_path / "diffinv").mkdir()
    (tmp_path / "diffinv" / "__init__.py").write_text("")
    code = ("import os, warnings\n"
            f"os.chdir({str(tmp_path)!r})\n"
            "from setuptools import build_meta\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            f"    name = build_meta.prepare_metadata_for_build_wheel({str(tmp_path)!r})\n"
            "print('LICENSE WARNINGS', [str(w.message)[:300] for w in caught if 'icense' in str(w.message)])\n"
            f"print(open(os.path.join({str(tmp_path)!r}, name, 'METADATA')).read())\n")
    out = run_python(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LICENSE WARNINGS []" in out.stdout, out.stdout[-2000:]
    assert "License-Expression: MIT" in out.stdout


def test_ehtim_is_the_blackhole_extra():
    core = [re.split(r"[<>=\[ ;]", r)[0].lower() for r in PYPROJECT["project"]["dependencies"]]
    assert "ehtim" not in core
    assert any(r.startswith("ehtim") for r in PYPROJECT["project"]["optional-dependencies"]["blackhole"])
    make = (ROOT / "Makefile").read_text()
    docker = (ROOT / "Dockerfile").read_text()
    assert '".[test,blackhole]"' in make and '".[test,blackhole]"' in docker


BLOCK_EHTIM = "import sys\nsys.modules['ehtim'] = None   # as if ehtim were not installed\n"


def test_without_ehtim_everything_imports_and_the_blackhole_code_names_the_extra():
    code = BLOCK_EHTIM + (
        "import importlib, pkgutil\n"
        "import diffinv, lightning_modules, datamodules\n"
        "for pkg in (diffinv, lightning_modules, datamodules):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "from diffinv.operators.blackhole import BlackHoleImaging\n"
        "from diffinv.datasets.blackhole_synthetic import SyntheticBlackHoles\n"
        "from datamodules.blackhole import BlackHoleDataModule\n"
        "for make in (lambda: BlackHoleImaging(npix=16), SyntheticBlackHoles,\n"
        "             lambda: BlackHoleDataModule(root=None, synthetic_dir='/nonexistent').prepare_data()):\n"
        "    try:\n"
        "        make()\n"
        "    except ImportError as err:\n"
        "        print('ERR', err)\n"
        "    else:\n"
        "        print('NO ERROR')\n")
    out = run_python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(("ERR", "NO ERROR"))]
    assert len(lines) == 3, out.stdout
    for line in lines:
        assert "pip install 'diffinv[blackhole]'" in line, line


def test_importing_ehtim_leaves_matplotlib_and_stdout_alone():
    code = ("import matplotlib\n"
            "before = dict(matplotlib.rcParams)\n"
            "from diffinv.operators.blackhole import BlackHoleImaging\n"
            "BlackHoleImaging(npix=16, tadv_s=3600.0)\n"
            "changed = {k: (before[k], v) for k, v in matplotlib.rcParams.items() if before[k] != v}\n"
            "print('CHANGED', changed)\n")
    out = run_python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "CHANGED {}", out.stdout
    assert "eht-imaging" not in out.stderr and "NFFT" not in out.stderr


def test_taming_pin_has_one_home():
    pins = [line for line in (ROOT / "requirements-no-deps.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert pins == [f"taming-transformers-rom1504=={importlib.metadata.version('taming-transformers-rom1504')}"]
    for name in ("Makefile", "Dockerfile"):
        text = (ROOT / name).read_text()
        assert "--no-deps -r requirements-no-deps.txt" in text, name
        assert "taming-transformers-rom1504==" not in text, f"{name} repeats the pin"

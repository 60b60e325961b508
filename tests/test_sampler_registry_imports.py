"""A sampler module that does not import fails the registry loudly (issue 13, "Also"): it used to be skipped
with a warning, so a benchmark could run without it and report the rest as complete."""
from __future__ import annotations

import sys

import pytest

import diffinv.samplers as pkg
from diffinv.samplers.evaluation import load_all_samplers


def test_a_broken_sampler_module_fails_the_registry(tmp_path, monkeypatch):
    (tmp_path / "broken_sampler.py").write_text("import a_package_that_is_not_installed\n")
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "diffinv.samplers.broken_sampler", raising=False)
    with pytest.raises(ImportError, match=r"diffinv\.samplers\.broken_sampler failed to import .*"
                                          r"a_package_that_is_not_installed"):
        load_all_samplers()


def test_the_shipped_modules_all_import():
    assert {"EnKG", "DPS", "DDRM", "DAPS"} <= set(load_all_samplers())

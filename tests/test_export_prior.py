"""``scripts/export_prior.py`` turns a fit run into a shipped prior whose description is checked at load time
(issue 13.6): weights, ``<name>.prior.json`` (network, parameterisation, problem, data statistics, SHA-256), a
model card whose snippet runs. A tiny 4-step fit of configs/fit/tiny_cpu.yaml is exported here."""
from __future__ import annotations

import importlib.util
import json
import re
import sys

import pytest
import torch
import yaml

from diffinv.checkpoints import sha256_of
from diffinv.priors import PixelPrior, load_prior
from diffinv.priors.description import PriorMismatchError
from lightning_modules.cli import main

from predict_data import ROOT


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    run, out = tmp / "fit", tmp / "tiny"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["diffinv"])
        try:
            main(["fit", "--config", str(ROOT / "configs/fit/tiny_cpu.yaml"), "--trainer.max_steps", "4",
                  "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
                  "--model.init_args.sample_every_n_steps", "0", "--trainer.val_check_interval", "4"])
            prior_cfg = yaml.safe_load((ROOT / "configs/fit/tiny_cpu.yaml").read_text())
            init = {"network": prior_cfg["model"]["init_args"]["network"], "checkpoint": str(out / "tiny.pt"),
                    "parameterization": "edm"}
            (tmp / "tiny_prior.yaml").write_text(yaml.safe_dump({"model": {
                "class_path": "lightning_modules.solver.InverseProblemSolver", "init_args": init}}))
            spec = importlib.util.spec_from_file_location("export_prior", ROOT / "scripts" / "export_prior.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.main(["--config", str(ROOT / "configs/fit/tiny_cpu.yaml"), "--run", str(run), "--out", str(out),
                         "--name", "tiny", "--problem", "image", "--prior-config", str(tmp / "tiny_prior.yaml"),
                         "--num-images", "4", "--sample-steps", "4", "--data", "procedural blobs"])
        finally:
            torch.set_num_threads(threads)
    return tmp, out


def test_export_writes_weights_and_their_description(exported):
    tmp, out = exported
    desc = json.loads((out / "tiny.prior.json").read_text())
    assert desc["weights"] == {"file": "tiny.pt", "size": (out / "tiny.pt").stat().st_size,
                               "sha256": sha256_of(out / "tiny.pt")}
    assert desc["network"]["class_path"] == "diffinv.networks.EDMPrecond" and desc["parameterization"] == "edm"
    assert desc["problem"] == "image" and desc["data"]["shape"] == [1, 16, 16]
    assert desc["data"]["description"] == "procedural blobs" and desc["training"]["global_step"] == 4
    prior = load_prior(tmp / "tiny_prior.yaml")
    assert isinstance(prior, PixelPrior) and prior.description == desc


def test_exported_model_card_snippet_runs(exported, monkeypatch):
    tmp, out = exported
    code = re.findall(r"```python\n(.*?)```", (out / "MODEL_CARD.md").read_text(), flags=re.S)[0]
    scope: dict = {}
    exec(compile(code, "MODEL_CARD.md", "exec"), scope)
    assert scope["x0_hat"].shape == (2, 1, 16, 16)


def test_exported_weights_refuse_another_network(exported):
    tmp, out = exported
    from diffinv.networks import VPPrecond

    cfg = yaml.safe_load((ROOT / "configs/fit/tiny_cpu.yaml").read_text())["model"]["init_args"]["network"]
    with pytest.raises(PriorMismatchError, match="network class VPPrecond"):
        PixelPrior(VPPrecond(**cfg["init_args"], **cfg["dict_kwargs"]), checkpoint=str(out / "tiny.pt"))


def test_re_export_replaces_the_description(exported):
    """Exporting again into the same folder (the lead's retraining) must not trip over the old hash."""
    tmp, out = exported
    old = json.loads((out / "tiny.prior.json").read_text())
    spec = importlib.util.spec_from_file_location("export_prior", ROOT / "scripts" / "export_prior.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--config", str(ROOT / "configs/fit/tiny_cpu.yaml"), "--run", str(tmp / "fit"), "--out", str(out),
                 "--name", "tiny", "--problem", "image", "--prior-config", str(tmp / "tiny_prior.yaml"),
                 "--num-images", "4", "--sample-steps", "4"])
    assert json.loads((out / "tiny.prior.json").read_text())["weights"]["sha256"] == old["weights"]["sha256"]

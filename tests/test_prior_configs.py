"""Prior configs describe a prior and nothing else; priors know what they are (issue 13.6, 14.4, 14.6, 14.7).

* ``configs/prior/*.yaml`` compose with a problem and a sampler in any order, with no training setting in the
  run; a ``configs/fit`` file given to predict (or the reverse) is refused, naming the file;
* a shipped prior's description (``<name>.prior.json``) is checked at load time: hash, network, problem;
* ``load_prior`` builds a prior from its config, and the model cards' snippets run as written.
"""
from __future__ import annotations

import itertools
import json
import re
import shutil
import sys

import pytest
import torch
import yaml

from diffinv.checkpoints import PUBLIC_CHECKPOINTS, ChecksumError, PublicCheckpoint, sha256_of
from diffinv.priors import PixelPrior, load_prior
from diffinv.priors.description import PriorMismatchError, description_path
from lightning_modules.cli import main
from predict_data import ROOT, tiny_network

PRIOR, PROBLEM, SAMPLER = "configs/prior/ns64.yaml", "configs/problem/ns_sub4.yaml", "configs/sampler/enkg.yaml"
TRAINER_DEFAULTS = {"max_steps": -1, "max_time": None, "val_check_interval": None, "gradient_clip_val": None,
                    "accumulate_grad_batches": 1}       # what a fit config would change


@pytest.fixture(autouse=True)
def argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["diffinv"])


def printed(capsys, *configs: str, sub: str = "predict") -> dict:
    with pytest.raises(SystemExit) as done:
        main([sub, *[a for c in configs for a in ("--config", str(ROOT / c))], "--print_config"])
    out = capsys.readouterr()
    assert done.value.code in (0, None), out.err[-3000:]
    return yaml.safe_load(out.out)


def test_prior_problem_sampler_compose_in_any_order_with_nothing_leaking(capsys):
    runs = [printed(capsys, *order) for order in itertools.permutations((PRIOR, PROBLEM, SAMPLER))]
    assert all(r == runs[0] for r in runs[1:])
    cfg = runs[0]
    model = cfg["model"]
    assert model["class_path"] == "lightning_modules.solver.InverseProblemSolver"
    assert model["init_args"]["checkpoint"] == "checkpoints/ns64/ns64.pt"
    assert model["init_args"]["sampler"]["class_path"] == "diffinv.samplers.enkg.EnKG"
    assert model["init_args"]["network"]["class_path"] == "diffinv.networks.EDMPrecond"
    assert {k: cfg["trainer"][k] for k in TRAINER_DEFAULTS} == TRAINER_DEFAULTS
    assert cfg["data"]["init_args"].get("augment") in (None, False)


@pytest.mark.parametrize("fit_config", ["configs/fit/ns64.yaml", "configs/fit/ffhq_ldm_vq4.yaml"])
def test_a_fit_config_in_predict_is_refused_in_any_position(capsys, fit_config):
    for configs in ((fit_config, PROBLEM, SAMPLER), (PROBLEM, SAMPLER, fit_config)):
        with pytest.raises(SystemExit) as err:
            main(["predict", *[a for c in configs for a in ("--config", str(ROOT / c))]])
        assert err.value.code == 2
        msg = capsys.readouterr().err
        assert fit_config.split("/")[-1] in msg and "training config" in msg and "configs/prior/" in msg


def test_a_predict_config_in_fit_is_refused(capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(ROOT / PRIOR)])
    assert err.value.code == 2 and "configs/fit/" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["ns64", "blackhole64", "inversebench_ns", "blackhole", "ffhq_ldm_vq4",
                                  ("dps_ffhq", "dps_ffhq_finetune")])
def test_fit_and_prior_configs_build_the_same_network(name):
    prior_name, fit_name = (name, name) if isinstance(name, str) else name
    prior = yaml.safe_load((ROOT / "configs" / "prior" / f"{prior_name}.yaml").read_text())["model"]["init_args"]
    fit = yaml.safe_load((ROOT / "configs" / "fit" / f"{fit_name}.yaml").read_text())["model"]["init_args"]
    if "prior" in prior:
        strip = lambda p: {k: v for k, v in p["init_args"].items() if k != "checkpoint"}  # noqa: E731
        assert strip(prior["prior"]) == strip(fit["prior"])
    else:
        assert prior["network"] == fit["network"]


def test_every_fit_config_parses(capsys):
    for path in sorted((ROOT / "configs" / "fit").glob("*.yaml")):
        if path.stem == "medical_super_resolution":       # an overlay on ffhq_ldm_vq4.yaml
            printed(capsys, "configs/fit/ffhq_ldm_vq4.yaml", f"configs/fit/{path.name}", sub="fit")
            continue
        cfg = printed(capsys, f"configs/fit/{path.name}", sub="fit")
        assert cfg["model"]["class_path"].endswith("Training")


# ------------------------------------------------------------------------------------------ descriptions
def test_shipped_priors_load_with_their_descriptions():
    for name, problem in (("ns64", "navier_stokes"), ("blackhole64", "blackhole")):
        prior = load_prior(ROOT / "configs" / "prior" / f"{name}.yaml")
        assert isinstance(prior, PixelPrior) and prior.description["problem"] == problem
        assert prior.description["weights"]["sha256"] == sha256_of(ROOT / "checkpoints" / name / f"{name}.pt")


def test_blackhole_weights_in_the_navier_stokes_config_are_refused():
    """Weights for another problem and network: refused from their description, before the key check, with both."""
    with pytest.raises(PriorMismatchError) as err:
        load_prior(ROOT / PRIOR, ROOT / "checkpoints" / "blackhole64" / "blackhole64.pt")
    msg = str(err.value)
    assert "EDMPrecond" in msg and "num_blocks" in msg and "blackhole problems" in msg


def test_a_prior_for_another_problem_fails_before_sampling(capsys):
    """The black-hole prior with its own config, used on the Navier–Stokes problem: refused in setup."""
    from diffinv.samplers.base import Sampler

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Sampler, "sample", lambda *a, **k: pytest.fail("sampling started"))
        with pytest.raises(PriorMismatchError, match="for blackhole problems.*navier_stokes problem"):
            main(["predict", "--config", str(ROOT / "configs/prior/blackhole64.yaml"), "--config",
                  str(ROOT / "configs/demo/ns_sub4.yaml"), "--config", str(ROOT / "configs/demo/dps.yaml"),
                  "--trainer.default_root_dir", str(ROOT / "outputs" / "_test_prior_mismatch"), "--trainer.logger",
                  "false"])
    shutil.rmtree(ROOT / "outputs" / "_test_prior_mismatch", ignore_errors=True)


def test_damaged_shipped_weights_fail_the_hash_check(tmp_path):
    for f in ("ns64.pt", "ns64.prior.json"):
        shutil.copy(ROOT / "checkpoints" / "ns64" / f, tmp_path / f)
    data = bytearray((tmp_path / "ns64.pt").read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "ns64.pt").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="SHA-256"):
        load_prior(ROOT / PRIOR, tmp_path / "ns64.pt")


def test_description_of_another_file_is_refused(tmp_path):
    shutil.copy(ROOT / "checkpoints" / "ns64" / "ns64.pt", tmp_path / "other.pt")
    shutil.copy(ROOT / "checkpoints" / "ns64" / "ns64.prior.json", description_path(tmp_path / "other.pt"))
    with pytest.raises(PriorMismatchError, match="describes ns64.pt, not other.pt"):
        load_prior(ROOT / PRIOR, tmp_path / "other.pt")


def test_public_checkpoint_hash_is_verified_when_known(tmp_path, monkeypatch):
    from diffinv.networks.edm import EDMPrecond

    spec = tiny_network(1, 16)
    net = EDMPrecond(**spec["init_args"], **spec["dict_kwargs"])
    path = tmp_path / "ns-5m.pt"
    torch.save({"ema": net.state_dict()}, path)
    good = PublicCheckpoint("ns-5m.pt", "test", "the test", "configs/prior/inversebench_ns.yaml",
                            size=path.stat().st_size, sha256=sha256_of(path))
    monkeypatch.setitem(PUBLIC_CHECKPOINTS, "ns-5m.pt", good)
    PixelPrior(EDMPrecond(**spec["init_args"], **spec["dict_kwargs"]), checkpoint=str(path))
    monkeypatch.setitem(PUBLIC_CHECKPOINTS, "ns-5m.pt", PublicCheckpoint(
        "ns-5m.pt", "test", "the test source", "x", size=path.stat().st_size, sha256="0" * 64))
    with pytest.raises(ChecksumError, match="expected SHA-256 0{64}.*the test source"):
        PixelPrior(EDMPrecond(**spec["init_args"], **spec["dict_kwargs"]), checkpoint=str(path))


@pytest.mark.parametrize("name", sorted(PUBLIC_CHECKPOINTS))
def test_missing_public_checkpoint_names_its_source(tmp_path, name):
    with pytest.raises(FileNotFoundError) as err:
        load_prior(ROOT / PUBLIC_CHECKPOINTS[name].config, tmp_path / name)
    msg = str(err.value)
    assert "https://" in msg and PUBLIC_CHECKPOINTS[name].source in msg and "checkpoints/README.md" in msg
    assert (ROOT / PUBLIC_CHECKPOINTS[name].config).is_file()


def test_public_checkpoint_table_matches_the_registry():
    readme = (ROOT / "checkpoints" / "README.md").read_text()
    for name, entry in PUBLIC_CHECKPOINTS.items():
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}`"))
        assert entry.config in row and re.search(r"https://\S+", entry.source).group(0) in row


# ------------------------------------------------------------------------------------------ load_prior
def test_load_prior_from_a_fit_config_and_a_fit_checkpoint(tmp_path):
    spec = tiny_network(1, 16)
    from diffinv.networks.edm import EDMPrecond

    net = EDMPrecond(**spec["init_args"], **spec["dict_kwargs"])
    torch.save({"state_dict": {f"network.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "last.ckpt")
    cfg = {"model": {"class_path": "lightning_modules.prior_training.PriorTraining",
                     "init_args": {"network": spec, "loss": "edm"}}}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(cfg))
    prior = load_prior(tmp_path / "fit.yaml", tmp_path / "last.ckpt")
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in prior.network.state_dict().items())
    with pytest.raises(ValueError, match="names no checkpoint"):
        load_prior(tmp_path / "fit.yaml")


def test_load_prior_refuses_foreign_class_paths(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"model": {"init_args": {
        "network": {"class_path": "os.system", "init_args": {}}, "checkpoint": "x.pt"}}}))
    with pytest.raises(ValueError, match="not a diffinv class"):
        load_prior(tmp_path / "bad.yaml")


@pytest.mark.parametrize("card", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "checkpoints").glob("*/MODEL_CARD.md")))
def test_model_card_snippets_run(card, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / card).read_text(), flags=re.S)
    assert blocks, f"{card} has no Python snippet"
    monkeypatch.chdir(ROOT)
    for code in blocks:
        scope: dict = {}
        exec(compile(code, card, "exec"), scope)
        assert isinstance(scope["prior"], PixelPrior) and scope["x0_hat"].shape == scope["x"].shape


def test_descriptions_are_the_exporters_format():
    for path in (ROOT / "checkpoints").glob("*/*.prior.json"):
        desc = json.loads(path.read_text())
        assert desc["format"] == "diffinv-prior/1" and desc["weights"]["file"] == path.name.replace(".prior.json", ".pt")
        assert {"network", "parameterization", "problem", "data", "training"} <= desc.keys()
        assert {"mean", "std", "shape", "description"} <= desc["data"].keys()

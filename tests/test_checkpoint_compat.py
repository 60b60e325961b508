"""Checkpoint compatibility of diffinv.networks with the public reference implementations.

Reads the fixture folder documented in its own README (default ``<repo>/../shared/fixtures/
checkpoint_compat``, override with the environment variable ``CHECKPOINT_COMPAT_FIXTURES``):

* every ``*.json`` manifest (a full-size published configuration): the network built from its
  ``config`` on the ``meta`` device has exactly the listed state-dict keys, shapes and buffers,
  and the listed parameter count;
* every ``*.pt`` fixture (a shrunk configuration with weights, inputs and reference outputs): the
  network built from ``config`` loads ``state_dict`` strictly through ``diffinv.checkpoints`` and
  reproduces every tensor of ``outputs`` within atol 1e-4 (integer outputs exactly).

Which network a file describes is decided from the form of its ``config`` (and ``target``), never
from the file name, so any fixture set in the same format can be pointed at.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from diffinv.checkpoints import load_state_dict_into
from diffinv.networks import EDMPrecond, UNetModel, VPPrecond, VQFirstStage, create_adm_model, timestep_embedding

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("CHECKPOINT_COMPAT_FIXTURES", REPO.parent / "shared" / "fixtures" / "checkpoint_compat"))
ATOL = 1e-4

MANIFESTS = sorted(FIXTURES.glob("*.json")) if FIXTURES.is_dir() else []
SMALL = sorted(FIXTURES.glob("*.pt")) if FIXTURES.is_dir() else []
_missing = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"fixture folder {FIXTURES} not found; "
                              "set CHECKPOINT_COMPAT_FIXTURES to the checkpoint_compat fixture folder")

_PRECONDS = {"EDMPrecond": EDMPrecond, "VPPrecond": VPPrecond}


def family(config: dict) -> str:
    """The network family a fixture config describes, from the form of its keyword arguments."""
    if "model_type" in config:
        return "edm"                     # InverseBench preconditioner kwargs
    if "ddconfig" in config:
        return "vq"                      # latent-diffusion VQModelInterface kwargs
    if "num_channels" in config:
        return "adm_create_model"        # guided-diffusion / DPS create_model kwargs
    if "model_channels" in config and "num_res_blocks" in config:
        return "adm_unet"                # UNetModel kwargs (latent-diffusion)
    raise ValueError(f"unrecognised fixture config keys {sorted(config)}")


def build(config: dict, target: str | None = None) -> torch.nn.Module:
    kind = family(config)
    if kind == "edm":
        name = (target or "").rsplit(".", 1)[-1]
        if name not in _PRECONDS:
            raise ValueError(f"EDM fixture needs a 'target' naming one of {sorted(_PRECONDS)}, got {target!r}")
        return _PRECONDS[name](**config)
    if kind == "vq":
        return VQFirstStage(**config)
    if kind == "adm_create_model":
        return create_adm_model(**config)
    return UNetModel(**config)


def run_outputs(model: torch.nn.Module, config: dict, inputs: dict) -> dict[str, torch.Tensor]:
    """Evaluate the call convention of each family; returns the tensors named as in the fixtures."""
    kind = family(config)
    if kind in ("adm_unet", "adm_create_model"):
        t = inputs["timesteps"]
        return {"out": model(inputs["x"], t), "timestep_embedding": timestep_embedding(t, model.model_channels)}
    if kind == "vq":
        h = model.encode(inputs["x"])
        z_q, indices = model.quantize_latent(h)
        return {"h": h, "z_q": z_q, "indices": indices, "dec": model.decode(h),
                "dec_no_quant": model.decode(h, force_not_quantize=True)}
    x, sigma = inputs["x"], inputs["sigma"]
    _, _, c_in, c_noise = model.coefficients(sigma.reshape(-1, 1, 1, 1))
    return {"D": model(x, sigma), "F_x": model.model(c_in * x, c_noise.flatten(), None), "c_noise": c_noise.flatten()}


@_missing
def test_fixture_folder_is_populated():
    assert MANIFESTS and SMALL, f"no *.json manifests or *.pt fixtures in {FIXTURES}"


@_missing
@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_full_size_state_dict_layout(path):
    manifest = json.loads(path.read_text())
    with torch.device("meta"):          # full-size nets (up to 274 M parameters): no memory, no init time
        model = build(manifest["config"], manifest.get("target"))
    sd = model.state_dict()
    got = {k: list(v.shape) for k, v in sd.items()}
    want = {k: list(v) for k, v in manifest["params"].items()}
    assert sorted(set(want) - set(got)) == [], "keys missing from the implementation"
    assert sorted(set(got) - set(want)) == [], "keys the reference does not have"
    assert {k: s for k, s in got.items() if want[k] != s} == {}, "shape mismatches"
    assert sorted(n for n, _ in model.named_buffers() if n in sd) == sorted(manifest["buffers"])
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    assert len(sd) == manifest["num_state_dict_entries"]
    assert sum(v.numel() for v in sd.values()) == manifest["num_state_dict_elements"]
    assert all(v.dtype == torch.float32 for v in sd.values())


@_missing
@pytest.mark.parametrize("path", SMALL, ids=[p.stem for p in SMALL])
def test_reproduces_reference_outputs(path):
    fixture = torch.load(path, map_location="cpu", weights_only=True)
    model = build(fixture["config"], fixture.get("target")).eval()
    # Through the project loader, which must pick fixture["state_dict"] and load it strictly.
    info = load_state_dict_into(model, path, expected_config=fixture["config"])
    assert info.entry == "'state_dict'" and info.prefix == "" and info.num_tensors == len(fixture["state_dict"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, fixture["state_dict"][key]), key

    with torch.no_grad():
        outputs = run_outputs(model, fixture["config"], fixture["inputs"])
    assert set(fixture["outputs"]) <= set(outputs), f"outputs not produced: {set(fixture['outputs']) - set(outputs)}"
    errors = {}
    for name, want in fixture["outputs"].items():
        got = outputs[name]
        assert got.shape == want.shape, name
        if want.dtype.is_floating_point:
            errors[name] = (got - want).abs().max().item()
        else:
            assert torch.equal(got.to(want.dtype), want), f"{name} differs in {int((got != want).sum())} entries"
    print(f"{path.name}: max abs errors {errors}")
    assert all(e <= ATOL for e in errors.values()), errors

"""CUDA checks (marker ``cuda``: deselected by default, run on a GPU machine by ``scripts/gpu_check.py``).

Every prior config, operator and sampler keeps its work on the GPU: outputs come back on the device of the inputs,
finite; the networks that the fit configs train in bf16 run a bf16 autocast forward and backward. The samplers'
freedom from host synchronisations is ``tests/test_host_syncs.py::test_no_cuda_synchronisation_in_sampling``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from diffinv.priors import PixelPrior
from diffinv.priors.loading import build
from test_operator_contract import REGISTRY
from test_sampler_contract import FAST_KWARGS, NAMES, SAMPLERS, _runnable

DEVICE = os.environ.get("DIFFINV_TEST_DEVICE", "cuda")   # "cpu" runs the same checks here, to check the checks
ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                                   reason="needs a CUDA device")]


def _prior_from_config(path: Path):
    """The prior a config describes, at random weights (public checkpoints are not on the machine)."""
    init = yaml.safe_load(path.read_text())["model"]["init_args"]
    if "network" in init:
        return PixelPrior(build(init["network"]))
    return build(init["prior"], overrides={"checkpoint": None})


@pytest.mark.parametrize("config", sorted((ROOT / "configs" / "prior").glob("*.yaml")), ids=lambda p: p.stem)
def test_prior_runs_on_the_device(config):
    prior = _prior_from_config(config).to(DEVICE).eval()
    x = torch.randn((2, *prior.event_shape), device=DEVICE)
    with torch.no_grad():
        out = prior.denoise(x, torch.tensor([0.5, 5.0], device=DEVICE))
    assert out.device.type == DEVICE and out.shape == x.shape and bool(torch.isfinite(out).all())
    if hasattr(prior, "decode"):
        with torch.no_grad():
            image = prior.decode(out)
        assert image.device.type == DEVICE and bool(torch.isfinite(image).all())


@pytest.mark.parametrize("name,factory", REGISTRY, ids=[n for n, _ in REGISTRY])
def test_operator_runs_on_the_device(name, factory):
    op = factory().to(DEVICE)
    x = torch.rand((2, *op.input_shape), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    y = op(x)
    noisy = op.measure(x, torch.Generator(DEVICE).manual_seed(0))
    assert y.device.type == DEVICE and noisy.device.type == DEVICE
    assert bool(torch.isfinite(torch.view_as_real(y) if y.is_complex() else y).all())


@pytest.mark.parametrize("name", NAMES)
def test_sampler_runs_on_the_device(name):
    prior, op, y, _ = _runnable(name)
    prior, op, y = prior.to(DEVICE), op.to(DEVICE), y.to(DEVICE)
    out = SAMPLERS[name](**FAST_KWARGS.get(name, {})).sample(y, op, prior, num_samples=2,
                                                              generator=torch.Generator(DEVICE).manual_seed(0))
    assert out.device.type == DEVICE and bool(torch.isfinite(out).all())


def _bf16_fit_configs():
    for path in sorted((ROOT / "configs" / "fit").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if "bf16" in str(cfg.get("trainer", {}).get("precision", "")) and "network" in cfg["model"]["init_args"]:
            yield path


@pytest.mark.parametrize("config", list(_bf16_fit_configs()), ids=lambda p: p.stem)
def test_bf16_training_step_of_fit_configs(config):
    init = yaml.safe_load(config.read_text())["model"]["init_args"]
    net = build(init["network"]).to(DEVICE)
    prior = PixelPrior(net)
    x = torch.randn((2, *prior.event_shape), device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss = (net(x, torch.full((2,), 1.0, device=DEVICE)).float() - x).square().mean()
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)

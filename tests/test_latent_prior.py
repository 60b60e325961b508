"""LatentPrior: LDM checkpoint loading (prefixes, LitEma preference, schedule and scale_factor checks) and the
encode / decode / denoise contract, checked against the checkpoint-compatibility fixtures of the networks issue
(``ldm_unet_small.pt``, ``vq_f4_small.pt``; folder from ``CHECKPOINT_COMPAT_FIXTURES``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from diffinv.checkpoints import CheckpointMismatchError
from diffinv.diffusion import DiscreteVPSchedule
from diffinv.networks import UNetModel, VQFirstStage
from diffinv.priors import Prior
from diffinv.priors.latent import LatentPrior

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("CHECKPOINT_COMPAT_FIXTURES", REPO.parent / "shared" / "fixtures" / "checkpoint_compat"))
UNET_FIX, VQ_FIX = FIXTURES / "ldm_unet_small.pt", FIXTURES / "vq_f4_small.pt"
needs_fixtures = pytest.mark.skipif(not (UNET_FIX.is_file() and VQ_FIX.is_file()),
                                    reason=f"LDM fixtures not found in {FIXTURES}; set CHECKPOINT_COMPAT_FIXTURES")
ATOL = 1e-4


def tiny_latent_prior(seed: int = 0, quantize_decode: bool = False, image_size: int = 16) -> LatentPrior:
    """A random-weight latent prior for CPU tests: images ``[3, S, S]`` <-> latents ``[3, S/2, S/2]`` (VQ, f = 2)."""
    torch.manual_seed(seed)
    vq = VQFirstStage(3, 64, dict(double_z=False, z_channels=3, resolution=image_size, in_channels=3, out_ch=3, ch=32,
                                  ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0))
    unet = UNetModel(image_size=image_size // 2, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                     attention_resolutions=[], channel_mult=[1, 2], num_head_channels=32)
    return LatentPrior(unet, vq, quantize_decode=quantize_decode).eval().requires_grad_(False)


def _fixtures():
    u = torch.load(UNET_FIX, map_location="cpu", weights_only=True)
    v = torch.load(VQ_FIX, map_location="cpu", weights_only=True)
    return u, v


def _ldm_checkpoint(path: Path, u: dict, v: dict, *, ema: bool, schedule: DiscreteVPSchedule | None = None,
                    scale_factor: float | None = None) -> Path:
    """An LDM-style Lightning file: ``state_dict`` with model.diffusion_model.*, first_stage_model.*, the schedule
    buffers and (``ema``) LitEma copies ``model_ema.<name without dots>`` holding the real weights while the raw
    UNet weights are perturbed."""
    sd = {}
    for k, t in u["state_dict"].items():
        sd["model.diffusion_model." + k] = t + 0.1 if ema else t
        if ema:
            sd["model_ema.diffusion_model" + k.replace(".", "")] = t
    if ema:
        sd["model_ema.decay"], sd["model_ema.num_updates"] = torch.tensor(0.9999), torch.tensor(100, dtype=torch.int)
    sd.update({"first_stage_model." + k: t for k, t in v["state_dict"].items()})
    sched = schedule or DiscreteVPSchedule("sqrt_linear")
    sd["betas"] = sched.betas.float()
    sd["alphas_cumprod"] = sched.alphas_cumprod.float()
    if scale_factor is not None:
        sd["scale_factor"] = torch.tensor(scale_factor)
    torch.save({"state_dict": sd, "global_step": 1}, path)
    return path


def _build(u, v, **kw) -> LatentPrior:
    return LatentPrior(UNetModel(**u["config"]), VQFirstStage(**v["config"]), **kw).eval()


@needs_fixtures
@pytest.mark.parametrize("ema", [False, True], ids=["raw", "litema"])
def test_fixtures_through_latent_prior(tmp_path, ema):
    u, v = _fixtures()
    prior = _build(u, v, checkpoint=str(_ldm_checkpoint(tmp_path / "model.ckpt", u, v, ema=ema)))
    assert isinstance(prior, Prior) and prior.event_shape == (3, 32, 32)
    x = v["inputs"]["x"]
    with torch.no_grad():
        h = prior.encode(x)
        z_q, idx = prior.first_stage.quantize_latent(h)
        dec = prior.decode(h)
    assert (h - v["outputs"]["h"]).abs().max() <= ATOL
    assert torch.equal(idx, v["outputs"]["indices"])
    assert (dec - v["outputs"]["dec"]).abs().max() <= ATOL
    # denoise: the UNet sees sqrt(abar) z at t(sigma); with z = x / sqrt(abar_t) and sigma = sigma_t it must return
    # z - sigma * eps, eps the stored UNet output at the stored timesteps (999 and 42).
    xt, t = u["inputs"]["x"], u["inputs"]["timesteps"]
    abar = prior.schedule.alphas_cumprod[t].float()
    sigma = ((1 - abar) / abar).sqrt()
    z = xt / abar.sqrt().view(-1, 1, 1, 1)
    with torch.no_grad():
        d = prior.denoise(z, sigma)
    eps_implied = (z - d) / sigma.view(-1, 1, 1, 1)
    assert (eps_implied - u["outputs"]["out"]).abs().max() <= ATOL
    expected = z - sigma.view(-1, 1, 1, 1) * u["outputs"]["out"]
    assert ((d - expected).abs().amax(dim=(1, 2, 3)) <= ATOL * (1 + sigma)).all()


@needs_fixtures
def test_scale_factor_from_checkpoint_and_mismatch(tmp_path):
    u, v = _fixtures()
    path = str(_ldm_checkpoint(tmp_path / "m.ckpt", u, v, ema=False, scale_factor=0.5))
    prior = _build(u, v, checkpoint=path, scale_factor=None)
    x = v["inputs"]["x"]
    with torch.no_grad():
        z = prior.encode(x)
        assert torch.allclose(z, 0.5 * v["outputs"]["h"], atol=ATOL)
        assert (prior.decode(z) - v["outputs"]["dec"]).abs().max() <= ATOL   # decode divides by scale_factor
    with pytest.raises(ValueError, match="scale_factor=0.5"):
        _build(u, v, checkpoint=path, scale_factor=1.0)


@needs_fixtures
def test_schedule_and_architecture_mismatch_are_errors(tmp_path):
    u, v = _fixtures()
    path = str(_ldm_checkpoint(tmp_path / "lin.ckpt", u, v, ema=False, schedule=DiscreteVPSchedule("linear")))
    with pytest.raises(ValueError, match="different noise schedule"):
        _build(u, v, checkpoint=path)
    good = str(_ldm_checkpoint(tmp_path / "ok.ckpt", u, v, ema=False))
    wrong_unet = dict(u["config"], model_channels=64)
    with pytest.raises(CheckpointMismatchError, match="UNet"):
        LatentPrior(UNetModel(**wrong_unet), VQFirstStage(**v["config"]), checkpoint=good)


def test_contract_shapes_sigma_and_differentiable_decode():
    prior = tiny_latent_prior(quantize_decode=True)
    assert prior.event_shape == (3, 8, 8) and prior.pixel_shape == (3, 16, 16) == prior.image_shape
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = prior.encode(x)
    assert z.shape == (2, 3, 8, 8)
    d_float, d_vec = prior.denoise(z, 0.7), prior.denoise(z, torch.tensor([0.7, 0.7]))
    assert torch.allclose(d_float, d_vec)
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(prior.decode(zz).square().sum(), zz)          # straight-through quantiser
    assert g.abs().sum() > 0
    with pytest.raises(ValueError, match="divisible by 2"):
        prior.encode(torch.zeros(1, 3, 15, 15))
    with pytest.raises(ValueError, match="event shape"):
        prior.denoise(torch.zeros(1, 3, 4, 4), 1.0)

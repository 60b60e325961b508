"""diffinv.checkpoints: format selection (EMA first), prefix detection, strict errors, safe reading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffinv.checkpoints import CheckpointMismatchError, load_state_dict_into, read_checkpoint
from diffinv.networks import EDMPrecond


class Tiny(nn.Module):
    """A small module with nested names and a persistent buffer."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, width), nn.SiLU(), nn.Linear(width, 2))
        self.register_buffer("scale", torch.ones(2))

    def forward(self, x):
        return self.body(x) * self.scale


def weights(seed: int, width: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) for k, v in Tiny(width).state_dict().items()}


def prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


def assert_loaded(module: nn.Module, sd: dict):
    for k, v in module.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_raw_state_dict_file(tmp_path):
    sd = weights(0)
    torch.save(sd, tmp_path / "raw.pt")
    module = Tiny()
    info = load_state_dict_into(module, tmp_path / "raw.pt")
    assert_loaded(module, sd)
    assert (info.entry, info.prefix, info.num_tensors) == ("<top level>", "", 5)
    assert read_checkpoint(tmp_path / "raw.pt").keys() == sd.keys()


@pytest.mark.parametrize("prefix", ["model.", "net.", "prior.net.", "module.", "model.diffusion_model."])
def test_lightning_prefixed_state_dict_is_detected(tmp_path, prefix):
    sd = weights(1)
    ckpt = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.6.0",
            "state_dict": {**prefixed(sd, prefix), "other.weight": torch.zeros(1), "betas": torch.zeros(10)},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}], "hyper_parameters": {"lr": 1e-4}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    module = Tiny()
    assert load_state_dict_into(module, tmp_path / "last.ckpt").prefix == prefix
    assert_loaded(module, sd)


def test_explicit_prefix_and_in_memory_source():
    sd, other = weights(2), weights(3)
    source = {"state_dict": {**prefixed(sd, "a."), **prefixed(other, "b.")}}
    module = Tiny()
    with pytest.raises(CheckpointMismatchError, match="several complete copies"):
        load_state_dict_into(module, source)
    assert load_state_dict_into(module, source, prefix="b.").prefix == "b."
    assert_loaded(module, other)


def test_ema_prefix_preferred_over_raw_copy():
    raw, ema = weights(4), weights(5)
    module = Tiny()
    info = load_state_dict_into(module, {"state_dict": {**prefixed(raw, "net."), **prefixed(ema, "ema_net.")}})
    assert info.prefix == "ema_net."
    assert_loaded(module, ema)


def test_ldm_litema_copies_replace_raw_weights(tmp_path):
    """latent-diffusion: model_ema.<name without dots> buffers hold the EMA of model.<name>."""
    raw, ema = weights(6), weights(7)
    state = {**prefixed(raw, "model.diffusion_model."), "betas": torch.linspace(0, 1, 5),
             "first_stage_model.encoder.weight": torch.zeros(2)}
    state.update({"model_ema.diffusion_model" + k.replace(".", ""): v for k, v in ema.items() if k != "scale"})
    state.update({"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(100)})
    torch.save({"state_dict": state}, tmp_path / "model.ckpt")
    module = Tiny()
    info = load_state_dict_into(module, tmp_path / "model.ckpt")
    assert info.prefix == "model.diffusion_model." and "LitEma weights for 4 tensors" in info.entry
    assert torch.equal(module.scale, raw["scale"])                        # buffer: LitEma keeps no copy
    for k in ("body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"):
        assert torch.equal(module.state_dict()[k], ema[k])


def test_lightning_ema_callback_checkpoint_uses_state_dict():
    """EMAWeightAveraging: EMA under state_dict, raw weights under current_model_state."""
    ema, raw = weights(8), weights(9)
    module = Tiny()
    load_state_dict_into(module, {"state_dict": prefixed(ema, "net."), "current_model_state": prefixed(raw, "net.")})
    assert_loaded(module, ema)


def test_inversebench_prefers_ema_then_net(tmp_path):
    net, ema = weights(10), weights(11)
    opt = {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}
    torch.save({"net": net, "ema": ema, "optimizer": opt, "scheduler": {"last_epoch": 5}}, tmp_path / "both.pt")
    torch.save({"net": net, "ema": None, "optimizer": opt}, tmp_path / "no_ema.pt")
    module = Tiny()
    assert load_state_dict_into(module, tmp_path / "both.pt").entry == "'ema'"
    assert_loaded(module, ema)
    assert load_state_dict_into(module, tmp_path / "no_ema.pt").entry == "'net'"
    assert_loaded(module, net)


def test_pickled_module_entry_gives_conversion_hint(tmp_path):
    torch.save({"ema": Tiny(), "net": Tiny()}, tmp_path / "modules.pt")
    with pytest.raises(ValueError, match=r"weights_only=True.*state_dict\(\)"):
        load_state_dict_into(Tiny(), tmp_path / "modules.pt")


class _CallbackKey:
    """Stands for a Lightning callback class pickled as a dict key in old checkpoints."""


def test_metadata_objects_are_read_as_inert_placeholders(tmp_path):
    sd = weights(12)
    torch.save({"state_dict": prefixed(sd, "model."), "callbacks": {_CallbackKey: {"best": 1.0}},
                "hparams": _CallbackKey()}, tmp_path / "old.ckpt")
    module = Tiny()
    load_state_dict_into(module, tmp_path / "old.ckpt")
    assert_loaded(module, sd)


def test_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file

    sd = weights(13)
    save_file(prefixed(sd, "module."), str(tmp_path / "model.safetensors"))
    module = Tiny()
    assert load_state_dict_into(module, tmp_path / "model.safetensors").prefix == "module."
    assert_loaded(module, sd)


def test_wrong_keys_are_listed_with_the_expected_config(tmp_path):
    sd = weights(14)
    sd["body.3.weight"] = sd.pop("body.2.weight")
    torch.save({"state_dict": prefixed(sd, "net.")}, tmp_path / "bad.ckpt")
    module = Tiny()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_into(module, tmp_path / "bad.ckpt", expected_config={"width": 4})
    msg = str(err.value)
    assert "body.2.weight" in msg and "net.body.3.weight" in msg
    assert "Tiny(width=4)" in msg and str(tmp_path / "bad.ckpt") in msg and "prefix tried: 'net.'" in msg
    assert_loaded(module, before)                                             # nothing was half-loaded


def test_wrong_shapes_are_listed():
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_into(Tiny(width=4), weights(15, width=8), expected_config={"width": 4})
    msg = str(err.value)
    assert "body.0.weight: checkpoint (8, 3) vs module (4, 3)" in msg and "Tiny(width=4)" in msg
    assert "missing keys" in msg and "shape mismatches (3)" in msg


def test_wrong_explicit_prefix_is_an_error():
    with pytest.raises(CheckpointMismatchError, match="prefix tried: 'ema.'"):
        load_state_dict_into(Tiny(), prefixed(weights(16), "net."), prefix="ema.")


def test_missing_resample_filter_buffers_are_reported():
    """InverseBench state dicts carry persistent resample_filter buffers; a strict load needs them."""
    config = dict(img_resolution=8, img_channels=1, model_channels=32, channel_mult=[1, 2], attn_resolutions=[4],
                  num_blocks=1, dropout=0.0)
    net = EDMPrecond(**config)
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("resample_filter")}
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_into(EDMPrecond(**config), {"ema": sd}, expected_config=config)
    assert "model.enc.4x4_down.skip.resample_filter" in str(err.value)
    assert "EDMPrecond(img_resolution=8" in str(err.value)
    other = EDMPrecond(**config)
    load_state_dict_into(other, {"ema": net.state_dict()})
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        assert torch.equal(other(x, sigma), net(x, sigma))


def test_missing_file_names_path_and_help(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_state_dict_into(Tiny(), tmp_path / "nowhere" / "ffhq_10m.pt")
    assert "ffhq_10m.pt" in str(err.value) and "checkpoints/README.md" in str(err.value)


def test_create_adm_model_loads_model_path_strictly(tmp_path):
    """Unlike DPS's create_model, a checkpoint that does not fit raises instead of keeping random weights."""
    from diffinv.networks import create_adm_model

    kwargs = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", learn_sigma=True,
                  attention_resolutions="8", num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True)
    reference = create_adm_model(**kwargs)
    torch.save(reference.state_dict(), tmp_path / "adm.pt")
    loaded = create_adm_model(**kwargs, model_path=str(tmp_path / "adm.pt"))
    assert_loaded(loaded, reference.state_dict())
    with pytest.raises(CheckpointMismatchError, match="learn_sigma"):
        create_adm_model(**{**kwargs, "learn_sigma": False}, model_path=str(tmp_path / "adm.pt"))

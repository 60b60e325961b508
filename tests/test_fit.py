"""``diffinv fit``: prior training end to end on CPU with configs/fit/tiny_cpu.yaml, plus the losses,
the image grid and the network sections of the full-size configs.

The CLI runs in-process (``lightning_modules.cli.main``) in a temporary working directory, so the
config's relative ``outputs/fit/tiny/...`` paths land there; one 20-step run and one resume to 30
steps are shared by the tests of this module (about 20 s on one CPU thread)."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest
import torch
import yaml

from diffinv.checkpoints import CheckpointMismatchError
from diffinv.image_grid import make_grid
from diffinv.losses import EDMLoss, VPEpsilonLoss, VPLoss
from diffinv.networks import EDMPrecond, UNetModel, VPPrecond
from diffinv.priors.pixel import PixelPrior

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fit" / "tiny_cpu.yaml"
FIXTURES = ROOT.parent / "shared" / "fixtures" / "checkpoint_compat"
OUT = Path("outputs/fit/tiny")


def tiny_network() -> EDMPrecond:
    """The network of tiny_cpu.yaml."""
    net = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]["network"]
    return EDMPrecond(**net["init_args"], **net["dict_kwargs"])


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def images(run_dir: Path, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc.Images(tag) if tag in acc.Tags()["images"] else []


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Run ``diffinv fit`` for 20 steps, then resume from ``last`` to 30; records, at every sample grid,
    the weights the sampler used."""
    from lightning_modules.cli import main
    from lightning_modules.prior_training import PriorTraining

    work = tmp_path_factory.mktemp("fit")
    sampled_with: dict[int, dict[str, torch.Tensor]] = {}
    original = PriorTraining.sample_images

    def spy(self, num, steps, generator=None):
        sampled_with[self.global_step] = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
        return original(self, num, steps, generator)

    threads = torch.get_num_threads()
    common = ["--trainer.enable_progress_bar", "false", "--model.init_args.sample_every_n_steps", "10"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setattr(sys, "argv", ["diffinv"])     # main(args) is the whole command line
        mp.setattr(PriorTraining, "sample_images", spy)
        torch.set_num_threads(1)        # the test machine's cores are shared: one thread is much faster here
        try:
            main(["fit", "--config", str(CONFIG), "--trainer.max_steps", "20", *common])
            first = {p.name: load(p) for p in (work / OUT / "checkpoints").glob("*.ckpt")}
            main(["fit", "--config", str(CONFIG), "--trainer.max_steps", "30", "--ckpt_path", "last", *common])
        finally:
            torch.set_num_threads(threads)
    return {"dir": work / OUT, "first": first, "sampled_with": sampled_with}


def test_loss_falls_and_tensorboard_has_scalars_and_images(fitted):
    run0 = fitted["dir"] / "tensorboard" / "version_0"
    loss = [v for _, v in scalars(run0, "train/loss")]
    assert len(loss) == 20
    first, last = statistics.mean(loss[:5]), statistics.mean(loss[-5:])
    assert last < 0.85 * first, f"training loss did not fall: first 5 {first:.3f}, last 5 {last:.3f}"
    lr = scalars(run0, "train/lr")
    assert lr[0][1] == pytest.approx(2e-3 / 5) and lr[-1][1] == pytest.approx(2e-3)     # 5 warm-up steps
    assert [s for s, _ in scalars(run0, "val/loss")] == [19]        # logged at the last step of the 20-step run
    assert len(images(run0, "train/images")) == 1
    grids = images(run0, "samples")
    assert [g.step for g in grids] == [10, 20]
    assert (grids[0].width, grids[0].height) == (74, 74)            # 4 x 4 tiles of 16 px with 2 px padding


def test_resume_continues_global_step_optimizer_and_ema(fitted):
    ckpt = load(fitted["dir"] / "checkpoints" / "last.ckpt")
    before = fitted["first"]["last.ckpt"]
    assert before["global_step"] == 20 and ckpt["global_step"] == 30
    assert float(before["averaging_state"]["n_averaged"]) == 20 and float(ckpt["averaging_state"]["n_averaged"]) == 30
    assert ckpt["callbacks"]["EMAWeightAveraging"]["latest_update_step"] == 30
    steps = {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert steps == {30.0}                                          # AdamW state carried over, not restarted
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 30
    run1 = fitted["dir"] / "tensorboard" / "version_1"
    assert [s for s, _ in scalars(run1, "train/loss")] == list(range(20, 30))
    assert [g.step for g in images(run1, "samples")] == [30]


def test_checkpoint_holds_ema_weights_and_sampler_used_them(fitted):
    ckpt = fitted["first"]["last.ckpt"]
    ema, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert ema.keys() == raw.keys() and all(k.startswith("network.") for k in ema)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    # The step-20 grid was drawn after the step-20 EMA update and checkpoint: with the EMA weights.
    used = fitted["sampled_with"][20]
    assert all(torch.equal(used[k], ema["network." + k]) for k in used)
    assert any(not torch.equal(used[k], raw["network." + k]) for k in used)
    assert set(fitted["sampled_with"]) == {10, 20, 30}
    # Hyper-parameters: network / loss / optimiser only; sampling settings stay out (--ckpt_path merges them).
    hp = ckpt["hyper_parameters"]
    assert hp["network"]["class_path"] == "diffinv.networks.EDMPrecond" and hp["loss"] == "edm"
    assert not {"sample_every_n_steps", "num_sample_images", "sample_steps", "compile"} & hp.keys()


def test_pixel_prior_loads_ema_weights_from_lightning_checkpoint(fitted):
    path = fitted["dir"] / "checkpoints" / "last.ckpt"
    prior = PixelPrior(tiny_network(), checkpoint=str(path))
    ema = load(path)["state_dict"]
    assert all(torch.equal(v, ema["network." + k]) for k, v in prior.network.state_dict().items())
    x = torch.zeros(2, 1, 16, 16)
    assert prior.denoise(x, 1.0).shape == x.shape


def test_init_from_lightning_checkpoint_and_bf16_with_grad_clip(fitted, tmp_path, monkeypatch):
    """Fine-tune from the run's own last.ckpt (EMA weights, prefix network.) for 3 steps in bf16-mixed with
    the module's grad_clip instead of the trainer's."""
    from lightning_modules.cli import main
    from lightning_modules.prior_training import PriorTraining

    source = fitted["dir"] / "checkpoints" / "last.ckpt"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["diffinv"])
    clip_values = []
    clip = PriorTraining.clip_gradients

    def spy(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip_values.append((gradient_clip_val, gradient_clip_algorithm))
        return clip(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    monkeypatch.setattr(PriorTraining, "clip_gradients", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["fit", "--config", str(CONFIG), "--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false",
              "--trainer.precision", "bf16-mixed", "--trainer.gradient_clip_val", "null",
              "--model.init_args.grad_clip", "0.5", "--model.init_args.init_from", str(source),
              "--model.init_args.sample_every_n_steps", "0", "--trainer.val_check_interval", "3"])
    finally:
        torch.set_num_threads(threads)
    ckpt = load(tmp_path / OUT / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["current_model_state"].values())
    assert scalars(tmp_path / OUT / "tensorboard" / "version_0", "val/loss")
    assert clip_values == [(0.5, "norm")] * 3


def test_init_from_with_wrong_key_fails_with_strict_loader_message(tmp_path):
    from lightning_modules.prior_training import PriorTraining

    sd = {"network." + k: v for k, v in tiny_network().state_dict().items()}
    sd["network.model.not_a_layer.weight"] = torch.zeros(3)
    torch.save({"state_dict": sd}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointMismatchError, match="does not match the module") as err:
        PriorTraining(tiny_network(), init_from=str(tmp_path / "bad.ckpt"))
    assert "model.not_a_layer.weight" in str(err.value)


def test_prior_training_rejects_mismatched_loss_and_network():
    from lightning_modules.prior_training import PriorTraining

    with pytest.raises(ValueError, match="vp_epsilon"):
        PriorTraining(tiny_network(), loss="vp_epsilon")
    with pytest.raises(ValueError, match="unknown|choose"):
        PriorTraining(tiny_network(), loss="l2")


# ---------------------------------------------------------------------------------------------- losses
def test_edm_loss_weight_and_perfect_denoiser():
    loss = EDMLoss()
    sigma = torch.tensor([0.1, 0.5, 2.0])
    assert torch.allclose(loss.weight(sigma), (sigma**2 + 0.25) / (sigma * 0.5) ** 2)
    x0 = torch.randn(4, 1, 8, 8)
    assert torch.all(loss(lambda x, s: x0, x0) == 0)                   # D = x0 exactly: zero loss
    # D = identity (F = 0 is not it, but a check of the scale): E[lambda sigma^2] per pixel
    g = torch.Generator().manual_seed(0)
    val = loss(lambda x, s: x, torch.zeros(4096, 1, 1, 1), generator=g)
    g = torch.Generator().manual_seed(0)
    sig = (torch.randn(4096, 1, 1, 1, generator=g) * 1.2 - 1.2).exp()
    noise = torch.randn(4096, 1, 1, 1, generator=g)
    assert torch.allclose(val, (loss.weight(sig) * (sig * noise) ** 2).flatten(), rtol=1e-5)


def test_vp_losses_are_epsilon_regression():
    x0 = torch.rand(64, 3, 8, 8) * 2 - 1
    # VPPrecond's D = x - sigma F: with F = true epsilon the VP loss is zero.
    vp = VPLoss()

    class Oracle(torch.nn.Module):
        def forward(self, x, sigma):
            return x0 + 0 * x          # a perfect denoiser
    assert torch.allclose(vp(Oracle(), x0), torch.zeros(64), atol=1e-6)
    # L_simple: an epsilon net that returns zeros scores E||eps||^2 = 1 per pixel; 2C outputs use the first C.
    eps_loss = VPEpsilonLoss("linear")
    zeros6 = lambda x, t: torch.zeros(x.shape[0], 6, *x.shape[2:])      # noqa: E731
    val = eps_loss(zeros6, x0, generator=torch.Generator().manual_seed(1))
    assert val.shape == (64,) and abs(val.mean().item() - 1.0) < 0.05
    with pytest.raises(ValueError, match="channels"):
        eps_loss(lambda x, t: torch.zeros(x.shape[0], 4, 8, 8), x0)


def test_make_grid_layout():
    imgs = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 1, 2, 3)
    grid = make_grid(imgs, nrow=3, padding=1, pad_value=-1)
    assert grid.shape == (1, 2 * 3 + 1, 3 * 4 + 1)
    assert grid[0, 1, 1] == 0 and grid[0, 1, 5] == 1 and grid[0, 4, 5] == 4 and grid[0, 4, 9] == -1
    assert grid[0, 0].eq(-1).all() and grid[0, :, 0].eq(-1).all()


# --------------------------------------------------------------- full-size configs vs. public checkpoints
@pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"checkpoint manifests not found at {FIXTURES}")
@pytest.mark.parametrize("config, manifest", [
    ("dps_ffhq_finetune.yaml", "dps_ffhq256_unet.json"),
    ("inversebench_ns.yaml", "inversebench_ns_dhariwal_edm.json"),
    ("blackhole.yaml", "inversebench_blackhole_song_vp.json"),
])
def test_full_size_config_networks_match_public_checkpoints(config, manifest):
    """The network each config trains has exactly the state-dict layout of the public checkpoint it
    fine-tunes from / reproduces (built on the meta device: no memory, no time)."""
    net = yaml.safe_load((ROOT / "configs" / "fit" / config).read_text())["model"]["init_args"]["network"]
    cls = {"diffinv.networks.UNetModel": UNetModel, "diffinv.networks.EDMPrecond": EDMPrecond,
           "diffinv.networks.VPPrecond": VPPrecond}[net["class_path"]]
    with torch.device("meta"):
        model = cls(**net.get("init_args", {}), **net.get("dict_kwargs", {}))
    want = json.loads((FIXTURES / manifest).read_text())["params"]
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == {k: list(v) for k, v in want.items()}


@pytest.mark.parametrize("config", ["dps_ffhq_finetune.yaml", "inversebench_ns.yaml", "blackhole.yaml"])
def test_full_size_configs_parse(config, monkeypatch, capsys):
    """Every class path and argument name in the GPU configs (network, data module, callbacks) is valid
    for the CLI (``--print_config`` parses and validates without building anything)."""
    from lightning_modules.cli import main

    monkeypatch.setattr(sys, "argv", ["diffinv"])
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(ROOT / "configs" / "fit" / config), "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "lightning_modules.prior_training.PriorTraining"
    assert printed["trainer"]["precision"] == "bf16-mixed"

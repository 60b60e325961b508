"""Every ``configs/sampler/*.yaml`` is either the published setting it names, checked here number by number in
this project's units (steps, the timesteps actually visited, step sizes, weights, schedule end points), or says in
its comment how and why it differs ("Differs on purpose" / "Not a published setting"). The sources are the
reference implementations named in each config and sampler module."""
from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import torch
import yaml

from diffinv.samplers.diffpir import diffpir_timesteps
from diffinv.samplers.latent_dps import ddim_grid
from diffinv.samplers.smoothing import directions

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "sampler"


def load(name: str):
    """The sampler a config builds, its number of samples and its comment header."""
    text = (CONFIGS / name).read_text()
    init = yaml.safe_load(text)["model"]["init_args"]
    spec = init["sampler"]
    module, cls = spec["class_path"].rsplit(".", 1)
    sampler = getattr(importlib.import_module(module), cls)(**spec.get("init_args", {}))
    comment = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    return sampler, init.get("num_samples"), comment


def ts(sampler, n):
    return sampler.schedule.timesteps(n).tolist()


def check_ddrm(s, n):
    assert ts(s, s.num_steps) == list(range(0, 1000, 50))[::-1]            # runners/diffusion.py: range(0, T, skip)
    assert (s.num_steps, s.eta, s.eta_b) == (20, 0.85, 1.0)                  # README: --timesteps 20 --eta 0.85 --etaB 1
    assert abs(float(s.sigmas()[-2]) - 0.0100) < 1e-4 and float(s.sigmas()[-1]) == 0  # ends at t = 0, then x0


def check_dps(s, n):
    assert ts(s, s.num_steps) == list(range(999, -1, -1)) and s.mode == "norm"   # respacing "1000", ||y - A x0||
    assert s.zeta in (0.3, 0.5, 1.0) and not s.scale_by_sigma_y                     # configs/*_config.yaml scales


def check_diffpir(s, n):
    t = diffpir_timesteps(100, 1000, "quad")
    assert s.timesteps == t and t[0] == 999 and t[-1] == 0 and len(t) == 100       # quad, seq[-1] -= 1
    assert math.isclose(4 * s.lambda_, 7.0) and s.zeta == 0.3                       # lambda 7 on [0, 1], zeta 0.3


def check_pigdm(s, n):
    assert ts(s, s.num_steps) == list(range(990, -1, -10)) and s.eta == 1.0          # exp.num_steps=100, eta 1.0
    assert s.data_variance == 1.0 and s.scale == 1.0                                   # r_t^2 = sigma^2 / (1 + sigma^2)


def check_daps(s, n):
    lv = s.levels()                                                                    # 201 poly-7 points, last dropped
    assert len(lv) == 201 and math.isclose(lv[0], 100.0) and lv[-1] == 0.0 and abs(lv[-2] - 0.1057) < 1e-3
    assert (s.num_steps, s.ode_steps, s.ode_sigma_min, s.langevin_steps) == (200, 5, 0.01, 100)
    assert (s.lr, s.lr_min_ratio, s.tau) == (1e-4, 0.01, 0.01)
    assert math.isclose(s.step_size(200), 1e-4 * (1 - 0.99 * 200 / 201))               # get_lr(step / 201)


def check_enkg(s, n, window, scale, updates, ratio, particles):
    assert [i for i in range(80) if s.guided(i)] == list(range(*window))
    assert (s.num_steps, s.sigma_min, s.sigma_max, s.rho) == (80, 0.002, 80.0, 7.0)
    assert (s.guidance_scale, s.num_updates, s.update, s.stochastic) == (scale, updates, "reference", False)
    assert [s.ode_steps(i) for i in (5, 20, 75)] == [min(1 + (80 - i) // 4, 20) for i in (5, 20, 75)]
    assert math.isclose(s.lr(40), scale * ((1 - ratio) * 40 / 80 + ratio)) and n == particles


def check_red_diff(s, n):
    sig = s.sigmas()
    assert len(sig) == 1000 and sig == sorted(sig, reverse=True)                       # every timestep, 999 -> 0
    assert (s.lr, s.lam, s.betas, s.weighting, s.reference_scaling) == (0.1, 0.25, (0.9, 0.99), "linear", True)
    assert s.init == "auto" and s.init_std == 0.0                                      # H^+ y, sigma_x0 0


def check_pnp_dm(s, n):
    r = s.rhos()
    assert len(r) == 100 and r[0] == 10.0 and r[33] > 0.3 and r[34:] == [0.3] * 66     # max(0.3, 10 * 0.9^k)
    assert (s.sde, s.alpha, s.solver, s.num_diffusion_steps) == ("edm", 1.0, "euler", 100)
    assert (s.sigma_min, s.sigma_max, s.rho_schedule) == (0.002, 80.0, 7.0)


def check_psld(s, n):
    from diffinv.diffusion import DiscreteVPSchedule
    grid, _ = ddim_grid(DiscreteVPSchedule("sqrt_linear"), s.num_steps, None, torch.float64)
    assert grid == list(range(999, -1, -1)) and (s.eta, s.omega, s.gamma) == (0.0, 1.0, 0.1)   # scripts/inverse.py


def check_resample(s, n):
    from diffinv.diffusion import DiscreteVPSchedule
    grid, _ = ddim_grid(DiscreteVPSchedule("sqrt_linear"), s.num_steps, None, torch.float64)
    assert grid == list(range(999, 0, -2)) and s.eta == 0.0 and s.dps_scale == 0.5     # 1, 3, ..., 999; 0.5 abar_t
    assert (s.consistency_every, s.num_splits, s.time_travel_steps, s.gamma) == (10, 3, 5, 40.0)
    assert (s.pixel_lr, s.pixel_max_iters, s.latent_lr, s.latent_max_iters, s.latent_patience) == (1e-2, 2000, 5e-3,
                                                                                                  500, 200)


def check_latent_dps(s, n):
    assert (s.num_steps, s.eta, s.zeta, s.scale_by_abar) == (1000, 1.0, 1.0, False)     # DPS in latent space


def check_vp_grid(s):
    """InverseBench's Scheduler(schedule/timestep/scaling "vp"): 1000 times linear from 1 to 1e-3, then sigma_final 0.01."""
    g = s.grid
    assert (s.num_steps, s.schedule, g.num_steps, len(g.sigma)) == (1000, "vp", 1000, 1001)
    assert math.isclose(g.sigma[0], math.sqrt(math.expm1(0.5 * 19.9 + 0.1)))                  # sigma(1) = 152.2
    assert math.isclose(g.sigma[-2], math.sqrt(math.expm1(0.5 * 19.9e-6 + 1e-4)))             # sigma(1e-3) = 0.0105
    assert math.isclose(g.sigma[-1], 0.01) and math.isclose(g.start_std, g.sigma[0] * g.scale[0])


def check_dpg(s, n):
    check_vp_grid(s)
    assert (s.guidance_scale, s.num_mc_samples, s.beta, s.rmin) == (64.0, 4000, 0.1, 0.0)      # Navier-Stokes runs
    assert (s.sde, s.misfit, s.batch_size, n) == (True, "residual", 500, 1)


def check_scg(s, n):
    check_vp_grid(s)
    assert (s.num_candidates, s.threshold, int(1000 * s.threshold), s.batch_size, n) == (512, 0.25, 250, 64, 1)


def check_dps_gsg(s, n, central):
    g = s.grid                                                                              # linear, poly-7, 100 -> 0.01
    assert (s.num_steps, s.schedule, len(g.sigma)) == (1000, "edm", 1001)
    assert math.isclose(g.sigma[0], 100.0) and math.isclose(g.sigma[-2], 0.01) and math.isclose(g.sigma[-1], 0.01)
    assert g.factor[-1] == 0.0 and g.start_std == 100.0                                     # the last step: guidance only
    assert (s.guidance_scale, s.num_queries, s.mu, s.central, s.sde) == (0.1, 2048, 0.01, central, True)
    assert directions(s.num_queries, s.central) == (1024 if central else 2048) and s.batch_size == 512 and n == 1


def check_ddnm(s, n):
    sig = s.steps()
    ts = [990 - 10 * i for i in range(100)]                                                  # T_sampling 100, then x0
    assert len(sig) == 100 and all(math.isclose(a, float(s.schedule.sigmas[t])) for (a, _), t in zip(sig, ts))
    assert sig[-1][1] == 0.0 and (s.eta, s.travel_length, s.travel_repeat) == (0.85, 1, 1)


def check_fps_smc(s, n):
    assert ts(s, s.num_steps) == list(range(999, -1, -1)) and s.c_rate == 0.95      # 1000 steps, --c_rate=0.95
    assert n == 5                                                                      # --particle_size=5


PUBLISHED = {
    "ddrm.yaml": check_ddrm, "dps.yaml": check_dps, "diffpir.yaml": check_diffpir, "pigdm.yaml": check_pigdm,
    "daps.yaml": check_daps, "red_diff.yaml": check_red_diff, "pnp_dm.yaml": check_pnp_dm,
    "psld.yaml": check_psld, "fps_smc.yaml": check_fps_smc, "resample.yaml": check_resample, "latent_dps.yaml": check_latent_dps,
    "enkg.yaml": lambda s, n: check_enkg(s, n, (5, 76), 2.0, 2, 0.0, 2048),            # scripts/navier-stokes.sh
    "enkg_blackhole.yaml": lambda s, n: check_enkg(s, n, (9, 72), 3.5, 1, 1e-3, 1024),
    "dpg.yaml": check_dpg, "scg.yaml": check_scg, "ddnm.yaml": check_ddnm,
    "dps_gsg.yaml": lambda s, n: check_dps_gsg(s, n, True), "dps_fgsg.yaml": lambda s, n: check_dps_gsg(s, n, False),
}
DIFFERS = ("Differs on purpose", "Not a published setting")


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_config_is_the_published_setting_or_says_why_not(name):
    sampler, num_samples, comment = load(name)
    if name in PUBLISHED:
        PUBLISHED[name](sampler, num_samples)
    else:
        assert any(d in comment for d in DIFFERS), f"{name}: neither checked as published nor says how it differs"


def test_a_wrong_number_is_caught():
    """The checks can fail: a config with one published number changed does not pass its check."""
    s, n, _ = load("daps.yaml")
    s.tau = 0.02
    with pytest.raises(AssertionError):
        check_daps(s, n)
    s, n, _ = load("ddrm.yaml")
    s.num_steps = 19
    with pytest.raises(AssertionError):
        check_ddrm(s, n)
    s, n, _ = load("dpg.yaml")
    s.num_mc_samples = 5000
    with pytest.raises(AssertionError):
        check_dpg(s, n)

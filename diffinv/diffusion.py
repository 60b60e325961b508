"""Diffusion core: noise schedules, the VP-epsilon adapter, SDE parametrisations and the
unconditional samplers (DDPM ancestral, DDIM, Euler / Heun on the probability-flow ODE and the
reverse SDE).

Everything works in the denoiser convention (``docs/conventions.md#denoiser-convention``; Karras et al. 2022, "EDM"):
``x = x0 + sigma * n`` and ``denoise(x, sigma) = E[x0 | x]``. A variance-preserving state
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` is the same point scaled by ``s = sqrt(abar_t)``,
with ``sigma_t = sqrt((1 - abar_t) / abar_t)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor, nn

Denoiser = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Cost:
    """What a sampler spent: network (denoiser) evaluations counted per batched call, forward-model
    calls and gradient evaluations (backward passes)."""

    nfe: int = 0
    forward_calls: int = 0
    grad_calls: int = 0

    def reset(self) -> "Cost":
        self.nfe = self.forward_calls = self.grad_calls = 0
        return self


class HasDenoise(Protocol):
    def denoise(self, x: Tensor, sigma: Tensor | float) -> Tensor: ...


# ---------------------------------------------------------------------------------------------
# Discrete variance-preserving schedules
# ---------------------------------------------------------------------------------------------
def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM (Ho et al. 2020, section 4): beta linear from 1e-4 to 0.02 over 1000 steps."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def sqrt_linear_betas(num_steps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.0195) -> Tensor:
    """Latent diffusion (Rombach et al. 2022), called "linear" in its configs: linear in sqrt(beta)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2


_BETAS = {"linear": linear_betas, "sqrt_linear": sqrt_linear_betas}


class DiscreteVPSchedule(nn.Module):
    """A discrete VP schedule ``abar_t`` (t = 0 .. T-1) with the sigma <-> timestep maps."""

    def __init__(self, name: str = "linear", num_steps: int = 1000, beta_start: float | None = None,
                 beta_end: float | None = None):
        super().__init__()
        if name not in _BETAS:
            raise ValueError(f"unknown schedule {name!r}; allowed: {sorted(_BETAS)} (or ve / karras via sigma functions)")
        kwargs = {k: v for k, v in (("beta_start", beta_start), ("beta_end", beta_end)) if v is not None}
        betas = _BETAS[name](num_steps, **kwargs)
        abar = torch.cumprod(1.0 - betas, dim=0)
        self.name = name
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas_cumprod", abar, persistent=False)
        self.register_buffer("sigmas", ((1 - abar) / abar).sqrt(), persistent=False)
        self.register_buffer("log_sigmas", self.sigmas.log(), persistent=False)

    @property
    def num_steps(self) -> int:
        return self.betas.numel()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Continuous timestep by linear interpolation of log sigma on the discrete grid (exact at the
        grid points, so a sigma taken from the schedule gives its integer timestep back)."""
        log_sigma = sigma.to(self.log_sigmas.dtype).clamp_min(1e-30).log()
        ls = self.log_sigmas.to(log_sigma.device)
        idx = torch.searchsorted(ls, log_sigma.contiguous()).clamp(1, ls.numel() - 1)
        lo, hi = ls[idx - 1], ls[idx]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1 + w).to(sigma.dtype)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        t = t.to(self.log_sigmas.dtype).clamp(0, self.num_steps - 1)
        lo = t.floor().long().clamp(max=self.num_steps - 2)
        w = t - lo
        ls = self.log_sigmas.to(t.device)
        return ((1 - w) * ls[lo] + w * ls[lo + 1]).exp()

    def abar(self, t: Tensor) -> Tensor:
        return 1.0 / (1.0 + self.t_to_sigma(t) ** 2)

    def strided_sigmas(self, num_steps: int) -> list[float]:
        """The sigma levels at :meth:`timesteps` (descending), as floats."""
        return self.sigmas[self.timesteps(num_steps)].tolist()

    def timesteps(self, num_steps: int, offset: int = 0) -> Tensor:
        """Descending DDIM / DDRM sub-sequence of ``num_steps`` integer timesteps: ``i * (T // num_steps) + offset``
        for i = num_steps - 1, ..., 0, i.e. ``range(0, T, T // n)`` reversed (Song et al. 2021, "uniform" skip;
        Kawar et al. 2022): 950, 900, ..., 0 for 20 of 1000, so the last step lands at t = 0 (sigma ~0.01 on the
        DDPM schedule). Latent diffusion's DDIM adds ``offset = 1`` (999, 997, ..., 1 for 500 of 1000). When
        ``num_steps`` does not divide T the first ``num_steps`` entries of that range are used."""
        if not 1 <= num_steps <= self.num_steps:
            raise ValueError(f"num_steps must be in [1, {self.num_steps}], got {num_steps}")
        stride = self.num_steps // num_steps
        if not 0 <= offset <= self.num_steps - 1 - (num_steps - 1) * stride:
            raise ValueError(f"offset {offset} moves the grid of {num_steps} steps (stride {stride}) past t = "
                             f"{self.num_steps - 1}")
        return (torch.arange(num_steps) * stride + offset).flip(0)


class VPEpsilonDenoiser(nn.Module):
    """Adapts a VP epsilon-prediction network ``eps(x_t, t)`` (guided-diffusion, LDM) to ``denoise``:
    the network sees ``sqrt(abar) x`` at timestep ``t(sigma)`` and ``x0_hat = x - sigma * eps``.
    Learned-variance networks (2C outputs) use their first C channels as epsilon."""

    def __init__(self, net: nn.Module, schedule: DiscreteVPSchedule, quantize: bool = False):
        super().__init__()
        self.net = net
        self.schedule = schedule
        self.quantize = quantize

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        t = self.schedule.sigma_to_t(sigma)
        if self.quantize:
            t = t.round()
        s = (1.0 / (1.0 + sigma**2).sqrt()).view(-1, *([1] * (x.dim() - 1)))
        out = self.net(s * x, t)
        c = x.shape[1]
        if out.shape[1] == 2 * c:
            out = out[:, :c]
        elif out.shape[1] != c:
            raise ValueError(f"VPEpsilonDenoiser: network returned {out.shape[1]} channels for a {c}-channel input; "
                             f"expected {c} (epsilon) or {2 * c} (epsilon + learned variance).")
        return x - sigma.view(-1, *([1] * (x.dim() - 1))) * out


# ---------------------------------------------------------------------------------------------
# Continuous sigma sequences and SDE parametrisations (Karras et al. 2022, Table 1)
# ---------------------------------------------------------------------------------------------
def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  append_zero: bool = True) -> Tensor:
    """EDM Eq. 5: sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    if num_steps < 1 or not 0 < sigma_min < sigma_max:
        raise ValueError(f"karras_sigmas needs num_steps >= 1 and 0 < sigma_min < sigma_max, got "
                         f"{num_steps}, {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    sig = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sig, sig.new_zeros(1)]) if append_zero else sig


def ve_sigmas(num_steps: int, sigma_min: float = 0.02, sigma_max: float = 100.0, append_zero: bool = True) -> Tensor:
    """VE (Song et al. 2021): geometric sequence from sigma_max to sigma_min."""
    sig = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), num_steps, dtype=torch.float64))
    return torch.cat([sig, sig.new_zeros(1)]) if append_zero else sig


class SDE:
    """``x = s(t) (x0 + sigma(t) n)``: sigma(t), s(t), their derivatives and the inverse sigma -> t."""

    name = "base"

    def sigma(self, t: Tensor) -> Tensor: raise NotImplementedError  # noqa: E704
    def sigma_deriv(self, t: Tensor) -> Tensor: raise NotImplementedError  # noqa: E704
    def sigma_inv(self, sigma: Tensor) -> Tensor: raise NotImplementedError  # noqa: E704

    def scale(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def scale_deriv(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)


class EDMSDE(SDE):
    """sigma(t) = t, s(t) = 1."""

    name = "edm"

    def sigma(self, t): return t  # noqa: E704
    def sigma_deriv(self, t): return torch.ones_like(t)  # noqa: E704
    def sigma_inv(self, sigma): return sigma  # noqa: E704


class VESDE(SDE):
    """sigma(t) = sqrt(t), s(t) = 1 (Song et al. 2021 VE in EDM's Table 1)."""

    name = "ve"

    def sigma(self, t): return t.sqrt()  # noqa: E704
    def sigma_deriv(self, t): return 0.5 / t.sqrt()  # noqa: E704
    def sigma_inv(self, sigma): return sigma**2  # noqa: E704


class VPSDE(SDE):
    """EDM Table 1, VP: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), s(t) = 1 / sqrt(1 + sigma(t)^2)."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_d: float = 19.9):
        self.beta_min, self.beta_d = beta_min, beta_d

    def _expo(self, t):
        return 0.5 * self.beta_d * t**2 + self.beta_min * t

    def sigma(self, t):
        return torch.expm1(self._expo(t)).sqrt()

    def sigma_deriv(self, t):
        return 0.5 * (self.beta_min + self.beta_d * t) * torch.exp(self._expo(t)) / self.sigma(t)

    def sigma_inv(self, sigma):
        return ((self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2)).sqrt() - self.beta_min) / self.beta_d

    def scale(self, t):
        return torch.exp(-0.5 * self._expo(t))

    def scale_deriv(self, t):
        return -0.5 * (self.beta_min + self.beta_d * t) * self.scale(t)


_SDES = {"edm": EDMSDE, "ve": VESDE, "vp": VPSDE}


def make_sde(name: str) -> SDE:
    if name not in _SDES:
        raise ValueError(f"unknown SDE {name!r}; allowed: {sorted(_SDES)}")
    return _SDES[name]()


# ---------------------------------------------------------------------------------------------
# Single steps shared by the samplers (written in VP coordinates x_t = sqrt(abar_t) (x0 + sigma_t n))
# ---------------------------------------------------------------------------------------------
def ddpm_posterior(x_t: Tensor, x0_hat: Tensor, abar_t: Tensor, abar_prev: Tensor) -> tuple[Tensor, Tensor]:
    """Ho et al. 2020, Eq. 7: mean and variance of q(x_{t-1} | x_t, x0) with
    alpha_t = abar_t / abar_prev and beta_t = 1 - alpha_t (valid for strided schedules too)."""
    alpha_t = abar_t / abar_prev
    beta_t = 1 - alpha_t
    mean = abar_prev.sqrt() * beta_t / (1 - abar_t) * x0_hat + alpha_t.sqrt() * (1 - abar_prev) / (1 - abar_t) * x_t
    var = (1 - abar_prev) / (1 - abar_t) * beta_t
    return mean, var


def ddpm_step(x_t: Tensor, x0_hat: Tensor, abar_t: Tensor, abar_prev: Tensor, noise: Tensor) -> Tensor:
    mean, var = ddpm_posterior(x_t, x0_hat, abar_t, abar_prev)
    return mean + var.sqrt() * noise


def ddim_step(x_t: Tensor, x0_hat: Tensor, abar_t: Tensor, abar_prev: Tensor, eta: float, noise: Tensor) -> Tensor:
    """Song et al. 2021, Eq. 12 with sigma_t(eta) of Eq. 16."""
    eps = (x_t - abar_t.sqrt() * x0_hat) / (1 - abar_t).sqrt()
    sigma_t = eta * ((1 - abar_prev) / (1 - abar_t)).sqrt() * (1 - abar_t / abar_prev).sqrt()
    return abar_prev.sqrt() * x0_hat + (1 - abar_prev - sigma_t**2).clamp_min(0).sqrt() * eps + sigma_t * noise


def _randn(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu" if generator is None
                       else generator.device).to(x.device)


def _denoise(prior: HasDenoise, x: Tensor, sigma: Tensor | float, cost: Cost | None) -> Tensor:
    if cost is not None:
        cost.nfe += 1
    sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return prior.denoise(x, sig.expand(x.shape[0]) if sig.dim() == 0 else sig)


# ---------------------------------------------------------------------------------------------
# Unconditional samplers
# ---------------------------------------------------------------------------------------------
def sample_ddpm(prior: HasDenoise, shape: tuple[int, ...], schedule: DiscreteVPSchedule, num_steps: int | None = None,
                generator: torch.Generator | None = None, cost: Cost | None = None, device=None,
                dtype=torch.float32) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) over ``num_steps`` timesteps (all by default)."""
    ts = schedule.timesteps(num_steps or schedule.num_steps).tolist()
    abar = schedule.alphas_cumprod.to(device=device, dtype=dtype)
    x = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    for i, t in enumerate(ts):
        a_t = abar[t]
        x0 = _denoise(prior, x / a_t.sqrt(), ((1 - a_t) / a_t).sqrt(), cost)
        if i == len(ts) - 1:
            return x0
        x = ddpm_step(x, x0, a_t, abar[ts[i + 1]], _randn(x, generator))
    return x


def sample_ddim(prior: HasDenoise, shape: tuple[int, ...], schedule: DiscreteVPSchedule, num_steps: int = 50,
                eta: float = 0.0, generator: torch.Generator | None = None, cost: Cost | None = None, device=None,
                dtype=torch.float32) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12) with ``eta`` in [0, 1]; the last step returns ``x0_hat``."""
    ts = schedule.timesteps(num_steps).tolist()
    abar = schedule.alphas_cumprod.to(device=device, dtype=dtype)
    x = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    for i, t in enumerate(ts):
        a_t = abar[t]
        x0 = _denoise(prior, x / a_t.sqrt(), ((1 - a_t) / a_t).sqrt(), cost)
        if i == len(ts) - 1:
            return x0
        x = ddim_step(x, x0, a_t, abar[ts[i + 1]], eta, _randn(x, generator))
    return x


def sde_drift(prior: HasDenoise, x: Tensor, t: Tensor, sde: SDE, alpha: float, cost: Cost | None) -> Tensor:
    """Drift of the family dx = [s'/s x + (1 + alpha) sigma'/sigma (x - s D(x/s, sigma))] dt + s sqrt(2 alpha sigma' sigma) dw,
    which has the same marginals for every alpha (EDM Eq. 4 / Eq. 6 with the score written through D);
    alpha = 0 is the probability-flow ODE, alpha = 1 the reverse SDE."""
    s, ds = sde.scale(t), sde.scale_deriv(t)
    sig, dsig = sde.sigma(t), sde.sigma_deriv(t)
    d = _denoise(prior, x / s, sig, cost)
    return (ds / s) * x + (1 + alpha) * (dsig / sig) * (x - s * d)


def solve_sde(prior: HasDenoise, x: Tensor, ts: Tensor, sde: SDE, alpha: float = 0.0, method: str = "heun",
              generator: torch.Generator | None = None, cost: Cost | None = None,
              callback: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """Integrate from ``ts[0]`` down to ``ts[-1]`` (a final time of 0 means sigma = 0 and ends with an
    Euler step to D). Euler-Maruyama, or stochastic Heun (Karras et al. 2022, Algorithm 1 generalised:
    the noise is added first, the drift is averaged over the two ends)."""
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown solver {method!r}; allowed: 'euler', 'heun'")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0 = probability-flow ODE, 1 = reverse SDE), got {alpha}")
    # the grid stays on the host: branching on a device value would stall an accelerator at every step
    ts = torch.as_tensor(ts).to(dtype=x.dtype, device="cpu")
    final = float(ts[-1]) == 0
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        dt = t_next - t
        if final and i == len(ts) - 2:  # last step: x -> s(0) D(x / s, sigma(t)) (the Euler step of EDM's final iteration)
            s = sde.scale(t)
            x = sde.scale(t_next) * _denoise(prior, x / s, sde.sigma(t), cost)
        else:
            if alpha > 0:
                g = sde.scale(t) * (2 * alpha * sde.sigma_deriv(t) * sde.sigma(t) * (-dt)).sqrt()
                noise = g * _randn(x, generator)
            else:
                noise = 0.0
            d = sde_drift(prior, x, t, sde, alpha, cost)
            x_next = x + dt * d + noise
            if method == "heun":
                d_next = sde_drift(prior, x_next, t_next, sde, alpha, cost)
                x_next = x + dt * 0.5 * (d + d_next) + noise
            x = x_next
        if callback is not None:
            callback(i, x)
    return x


def sde_times(sde: SDE, sigmas: Tensor) -> Tensor:
    """Time grid of an SDE for a sigma sequence (a trailing sigma 0 maps to t = 0)."""
    return torch.where(sigmas > 0, sde.sigma_inv(sigmas.clamp_min(1e-30)), torch.zeros_like(sigmas))


def sample_sde(prior: HasDenoise, shape: tuple[int, ...], sigmas: Tensor, sde: SDE | str = "edm", alpha: float = 0.0,
               method: str = "heun", generator: torch.Generator | None = None, cost: Cost | None = None,
               device=None, dtype=torch.float32) -> Tensor:
    """Unconditional sampling on the ODE (alpha = 0) or SDE (alpha > 0) of ``sde`` over ``sigmas``
    (e.g. ``karras_sigmas``), starting from ``s(t0) sigma(t0) n``."""
    sde = make_sde(sde) if isinstance(sde, str) else sde
    ts = sde_times(sde, sigmas.to(torch.float64)).to(dtype)
    t0 = ts[0]
    x = torch.randn(shape, generator=generator, dtype=dtype) * (sde.scale(t0) * sde.sigma(t0))
    return solve_sde(prior, x.to(device), ts, sde, alpha, method, generator, cost)

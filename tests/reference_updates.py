"""Independent transcriptions of the published update steps, for ``tests/test_reference_equivalence.py``.

Every function here is written from the paper's algorithm and the authors' reference code (named in each
docstring), in plain float64 tensor algebra: no diffinv sampler code, no diffinv diffusion helpers and no autograd.
Jacobians of the toy denoiser / decoder / encoder below are written in closed form, so that even the gradient
steps (DPS, PiGDM, PSLD, ReSample) are transcribed without ``torch.autograd``.

What *is* shared with diffinv is the problem definition: the toy prior's ``_denoise`` (the same function is the
"network" for both sides), the operator's matrix and its SVD transforms ``V / Vt / Ut / singulars`` (the reference
codes read the same ``H_funcs`` interface; the spectral basis must be the same one for a spectral noise draw to
map to the same image), and the Gaussian draws, which are recorded by :class:`NoiseTape` in the order the sampler
asks for them and replayed here in the order the reference algorithm consumes them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from diffinv.diffusion import DiscreteVPSchedule
from diffinv.priors.base import Prior

F64 = torch.float64


# ============================================================================================ test plumbing
class NoiseTape:
    """Stands in for the module-level ``randn`` of a sampler module (and ``diffinv.diffusion._randn``): draws from
    its own generator, records every draw, and replays them (``take``) with a shape check, so that the
    transcription consumes exactly the noise the sampler used, in the same order."""

    def __init__(self, seed: int = 1234):
        self.gen = torch.Generator().manual_seed(seed)
        self.draws: list[Tensor] = []
        self._pos = 0

    def randn(self, shape, generator=None, like=None, dtype=None, device=None) -> Tensor:
        t = torch.randn(tuple(shape), generator=self.gen, dtype=F64)
        self.draws.append(t)
        return t.clone()

    def randn_like(self, x: Tensor, generator=None) -> Tensor:          # signature of diffinv.diffusion._randn
        return self.randn(x.shape)

    def take(self, shape) -> Tensor:
        if self._pos >= len(self.draws):
            raise AssertionError(f"the transcription needs noise draw #{self._pos} {tuple(shape)} but the sampler "
                                 f"drew only {len(self.draws)}")
        t = self.draws[self._pos]
        if tuple(t.shape) != tuple(shape):
            raise AssertionError(f"noise draw #{self._pos}: the sampler drew {tuple(t.shape)}, the reference "
                                 f"algorithm needs {tuple(shape)} here (draws out of order?)")
        self._pos += 1
        return t.clone()

    @property
    def remaining(self) -> int:
        return len(self.draws) - self._pos


class StopSampling(Exception):
    pass


def run_steps(sampler, y: Tensor, operator, prior, num_samples: int, steps: int | None = None):
    """Run ``sampler`` and collect the iterate after each step (the ``callback``), stopping after ``steps`` steps.
    Returns ``(iterates, output)``; ``output`` is None when stopped early."""
    iterates: list[Tensor] = []

    def callback(i, n, x):
        iterates.append(x.detach().clone())
        if steps is not None and len(iterates) >= steps:
            raise StopSampling

    try:
        out = sampler.sample(y, operator, prior, num_samples, generator=torch.Generator().manual_seed(0),
                             callback=callback)
    except StopSampling:
        out = None
    return iterates, out


def mismatch(actual: Tensor, expected: Tensor) -> tuple[float, float]:
    """(max |actual - expected|, scale = max |expected|)."""
    err = float((actual.double() - expected.double()).abs().max())
    return err, float(expected.abs().max())


def assert_same(actual: Tensor, expected: Tensor, what: str, tol: float = 1e-10) -> None:
    """``allclose(rtol=0, atol=tol * scale)`` with ``scale = max |expected|`` (the magnitude of the values)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err, scale = mismatch(actual, expected)
    assert torch.allclose(actual.double(), expected.double(), rtol=0, atol=tol * max(scale, 1e-300)), \
        f"{what}: max |diffinv - reference| = {err:.3e} ({err / max(scale, 1e-300):.3e} of the scale {scale:.3e})"


# ============================================================================================ toy models
def _sech2(h: Tensor) -> Tensor:
    return 1 - torch.tanh(h) ** 2


class TanhPrior(Prior):
    """A smooth nonlinear "denoiser" with a non-symmetric Jacobian: ``D(x, s) = a tanh(M x / sqrt(1 + s^2) + b)``.
    Not a posterior mean of anything; it only has to be a fixed, differentiable function of ``(x, sigma)`` whose
    values stay in (-a, a) for every sigma (so the reference codes' clipping of x0_hat to [-1, 1] never acts)."""

    def __init__(self, dim: int, seed: int = 0, gain: float = 1.5, amp: float = 0.9):
        super().__init__((dim,))
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("M", torch.randn(dim, dim, generator=g, dtype=F64) * gain / math.sqrt(dim))
        self.register_buffer("b", 0.3 * torch.randn(dim, generator=g, dtype=F64))
        self.amp = amp

    def _pre(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = torch.as_tensor(sigma, dtype=F64).reshape(-1, 1)
        return (x.reshape(x.shape[0], -1) @ self.M.T) / torch.sqrt(1 + s**2) + self.b

    def _denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return (self.amp * torch.tanh(self._pre(x, sigma))).reshape(x.shape)

    # closed forms used by the transcriptions
    def D(self, x: Tensor, sigma) -> Tensor:
        sig = torch.as_tensor(sigma, dtype=F64).reshape(-1).expand(x.shape[0])
        return self._denoise(x, sig)

    def J(self, x: Tensor, sigma) -> Tensor:
        """dD/dx, ``[B, d, d]``."""
        sig = torch.as_tensor(sigma, dtype=F64).reshape(-1).expand(x.shape[0])
        h = self._pre(x, sig)
        return self.amp * _sech2(h)[:, :, None] * self.M[None] / torch.sqrt(1 + sig**2)[:, None, None]


class TanhLatentPrior(TanhPrior):
    """The same denoiser on latents ``z in R^k``, with a nonlinear decoder ``x = W1 z + 0.3 tanh(W2 z)`` to images
    ``x in R^d`` and a nonlinear encoder ``z = P x + 0.2 tanh(Q x)``, and latent diffusion's schedule (the interface
    latent samplers read: ``encode``, ``decode``, ``schedule``, ``pixel_shape``, ``latent_shape``)."""

    def __init__(self, latent_dim: int, pixel_dim: int, seed: int = 0):
        super().__init__(latent_dim, seed=seed)
        g = torch.Generator().manual_seed(seed + 100)
        k, d = latent_dim, pixel_dim
        self.register_buffer("W1", torch.randn(d, k, generator=g, dtype=F64) / math.sqrt(k))
        self.register_buffer("W2", torch.randn(d, k, generator=g, dtype=F64) / math.sqrt(k))
        self.register_buffer("P", torch.randn(k, d, generator=g, dtype=F64) / math.sqrt(d))
        self.register_buffer("Q", torch.randn(k, d, generator=g, dtype=F64) / math.sqrt(d))
        self.schedule = DiscreteVPSchedule("sqrt_linear")
        self._pixel_dim = d

    @property
    def pixel_shape(self):
        return (self._pixel_dim,)

    @property
    def latent_shape(self):
        return self.event_shape

    def decode(self, z: Tensor) -> Tensor:
        return z @ self.W1.T + 0.3 * torch.tanh(z @ self.W2.T)

    def encode(self, x: Tensor) -> Tensor:
        return x @ self.P.T + 0.2 * torch.tanh(x @ self.Q.T)

    def J_decode(self, z: Tensor) -> Tensor:
        """dx/dz, ``[B, d, k]``."""
        return self.W1[None] + 0.3 * _sech2(z @ self.W2.T)[:, :, None] * self.W2[None]

    def J_encode(self, x: Tensor) -> Tensor:
        """dz/dx, ``[B, k, d]``."""
        return self.P[None] + 0.2 * _sech2(x @ self.Q.T)[:, :, None] * self.Q[None]


def matvec(Jm: Tensor, v: Tensor) -> Tensor:
    """Batched ``J v``: ``[B, m, n] x [B, n] -> [B, m]``."""
    return torch.einsum("bmn,bn->bm", Jm, v)


def vecmat(v: Tensor, Jm: Tensor) -> Tensor:
    """Batched ``J^T v``: ``[B, m] x [B, m, n] -> [B, n]`` (a vector-Jacobian product)."""
    return torch.einsum("bm,bmn->bn", v, Jm)


def rownorm(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).pow(2).sum(1).sqrt()[:, None]


# ============================================================================================ schedules
def ddpm_abar(T: int = 1000) -> Tensor:
    """Ho et al. 2020 Sec. 4: beta linear 1e-4 .. 0.02; abar_t = prod_{s <= t} (1 - beta_s) (guided-diffusion's
    ``get_named_beta_schedule("linear")`` / DDRM's ``get_beta_schedule``)."""
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=F64), 0)


def ldm_abar(T: int = 1000) -> Tensor:
    """Latent diffusion's "linear" schedule (``make_beta_schedule``): beta = linspace(sqrt 0.0015, sqrt 0.0195)^2."""
    return torch.cumprod(1 - torch.linspace(0.0015**0.5, 0.0195**0.5, T, dtype=F64) ** 2, 0)


def vp_sigma(abar) -> Tensor:
    abar = torch.as_tensor(abar, dtype=F64)
    return torch.sqrt((1 - abar) / abar)


def karras(n: int, smin: float, smax: float, rho: float = 7.0) -> Tensor:
    """EDM Eq. 5: sigma_i = (smax^(1/rho) + i / (n - 1) (smin^(1/rho) - smax^(1/rho)))^rho, i = 0 .. n - 1."""
    i = torch.arange(n, dtype=F64)
    return (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho


def ddim_seq(n: int, T: int = 1000, offset: int = 0) -> list[int]:
    """DDIM's "uniform" skip (Song et al. 2021; DDRM ``runners/diffusion.py``; RED-diff ``get_timesteps``):
    ``range(0, T, T // n)``, visited in reverse; LDM's ``make_ddim_timesteps`` adds 1. diffinv documents that it
    keeps the first n entries when n does not divide T (the range has more than n entries then)."""
    return [t + offset for t in list(range(0, T, T // n))[:n]][::-1]


# ============================================================================================ DDIM
def ddim_eq12(x_t: Tensor, x0: Tensor, a_t, a_prev, eta: float, noise: Tensor) -> Tensor:
    """Song, Meng, Ermon 2021 (DDIM), Eq. 12 with sigma_t(eta) of Eq. 16:
    x_{t-1} = sqrt(a') x0 + sqrt(1 - a' - s^2) eps + s n,  eps = (x_t - sqrt(a) x0) / sqrt(1 - a),
    s = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')."""
    a_t, a_prev = torch.as_tensor(a_t, dtype=F64), torch.as_tensor(a_prev, dtype=F64)
    eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    s = eta * torch.sqrt((1 - a_prev) / (1 - a_t)) * torch.sqrt(1 - a_t / a_prev)
    return a_prev.sqrt() * x0 + torch.sqrt(1 - a_prev - s**2) * eps + s * noise


# ============================================================================================ DPS
def dps_step(prior: TanhPrior, A: Tensor, y: Tensor, x_t: Tensor, a_t, a_prev, zeta: float,
             noise: Tensor) -> tuple[Tensor, Tensor]:
    """DPS, Chung et al. 2023 Algorithm 1 (lines 3-7) as run by DPS2022/diffusion-posterior-sampling:
    ``gaussian_diffusion.py`` DDPM ``p_sample`` on the respaced chain (``SpacedDiffusion``: beta' = 1 - a_t / a_prev)
    with the epsilon mean processor and the fixed posterior variance (diffinv documents that it does not use the
    learned variance), then ``condition_methods.py`` ``PosteriorSampling``:
    x_{t-1} = x'_{t-1} - zeta grad_{x_t} ||y - A x0_hat(x_t)||  (the norm, not squared; one image per run, so the
    norm of the reference's batch is one sample's norm). x0_hat = x_t / sqrt(a) - sqrt(1/a - 1) eps_theta, which in
    the denoiser view is D(x_t / sqrt(a), sigma_t) (DPS Eq. 16).

    Returns (x_{t-1}, x0_hat)."""
    a_t, a_prev = torch.as_tensor(a_t, dtype=F64), torch.as_tensor(a_prev, dtype=F64)
    sig = vp_sigma(a_t)
    xv = x_t / a_t.sqrt()
    x0 = prior.D(xv, sig)
    beta = 1 - a_t / a_prev                                   # the respaced chain's beta
    coef1 = beta * a_prev.sqrt() / (1 - a_t)                  # posterior_mean_coef1
    coef2 = (1 - a_prev) * torch.sqrt(1 - beta) / (1 - a_t)   # posterior_mean_coef2
    var = beta * (1 - a_prev) / (1 - a_t)                     # posterior_variance ("fixed_small")
    sample = coef1 * x0 + coef2 * x_t + var.sqrt() * noise    # var = 0 on the last step (no noise at t = 0)
    r = y - x0 @ A.T
    # grad_{x_t} ||r|| = -(1 / sqrt(a)) J^T A^T r / ||r||, J = dD/dx at x_t / sqrt(a)
    grad = -vecmat((r / rownorm(r)) @ A, prior.J(xv, sig)) / a_t.sqrt()
    return sample - zeta * grad, x0


# ============================================================================================ DDRM
def ddrm_init(op, y: Tensor, sigma_T: float, sigma_y: float, n: Tensor, code_scaling: bool = False) -> Tensor:
    """DDRM Eq. 7 (Kawar et al. 2022), spectral coordinates xbar = V^T x of the VE point x = x0 + sigma n:
    xbar_T,i = ybar_i + sqrt(sigma_T^2 - sigma_y^2 / s_i^2) n_i where s_i sigma_T > sigma_y, else sigma_T n_i.
    ``code_scaling=True`` gives what bahjat-kawar/ddrm ``efficient_generalized_steps`` actually starts from: it
    divides that vector by sigma_T and the step then reads it as ``x_T / sqrt(a_T)``, i.e. the VE point above times
    1 / sqrt(1 - a_T). Returns the VE point x_T (image space)."""
    s = op.singulars().to(F64)
    obs = s > 0
    ybar = torch.where(obs, op.Ut(y) / torch.where(obs, s, torch.ones_like(s)), torch.zeros_like(s))
    big = obs & (s * sigma_T > sigma_y)
    rem = torch.where(big, sigma_T**2 - (sigma_y / torch.where(obs, s, torch.ones_like(s))) ** 2,
                      torch.full_like(s, sigma_T**2))
    xbar = torch.where(big, ybar, torch.zeros_like(ybar)) + rem.clamp_min(0).sqrt() * n
    if code_scaling:
        a_T = 1 / (1 + sigma_T**2)
        xbar = xbar / math.sqrt(1 - a_T)
    return op.V(xbar)


def ddrm_step(prior: TanhPrior, op, y: Tensor, x: Tensor, sigma: float, sigma_next: float, sigma_y: float,
              eta: float, eta_b: float, n: Tensor) -> Tensor:
    """One step of bahjat-kawar/ddrm ``functions/denoising.py::efficient_generalized_steps`` (DDRM Eq. 8), in the VE
    view (``xt_mod = x_t / sqrt(a_t)``; the VP factor sqrt(a_{t-1}) the code multiplies back in and divides out
    again at the next step cancels): with x0bar = V^T D(x, sigma) and eps_bar = V^T et = (xbar - x0bar) / sigma,

    * null space ("missing pixels"):    x0bar + sqrt(1 - eta^2) sigma' eps_bar + eta sigma' n
    * s_i sigma' < sigma_y ("after"):    x0bar + sqrt(1 - eta^2) sigma' (U^T y - s_i x0bar) / sigma_y + eta sigma' n
    * s_i sigma' > sigma_y ("before"):   eta_b ybar + (1 - eta_b) x0bar + sqrt(sigma'^2 - eta_b^2 sigma_y^2 / s_i^2) n

    The code draws the noise of the three groups in three ``randn_like`` calls; one standard normal per spectral
    coordinate is the same law, and diffinv's single draw is replayed coordinate by coordinate. Returns the next VE
    point (image space)."""
    s = op.singulars().to(F64)
    obs = s > 0
    s_safe = torch.where(obs, s, torch.ones_like(s))
    uty = op.Ut(y)
    ybar = torch.where(obs, uty / s_safe, torch.zeros_like(s))
    xbar = op.Vt(x)
    x0bar = op.Vt(prior.D(x, sigma))
    eps_bar = (xbar - x0bar) / sigma
    tilde = math.sqrt(1 - eta**2) * sigma_next
    null = x0bar + tilde * eps_bar + eta * sigma_next * n
    after = x0bar + tilde * (uty - s * x0bar) / sigma_y + eta * sigma_next * n
    before = eta_b * ybar + (1 - eta_b) * x0bar \
        + torch.sqrt((sigma_next**2 - sigma_y**2 / s_safe**2 * eta_b**2).clamp_min(0)) * n
    out = torch.where(~obs, null, torch.where(s * sigma_next < sigma_y, after, before))
    return op.V(out)


# ============================================================================================ DiffPIR
def diffpir_seq(n: int, T: int = 1000, skip_type: str = "quad") -> list[int]:
    """yuanzhi-zhu/DiffPIR ``main_ddpir_deblur.py``: ``seq`` ("quad": int(sqrt(linspace(0, T^2, n))) with the last
    entry minus 1; "uniform": i * skip for i < n, plus T - 1 when skip > 1), and the timestep of each iteration
    t_i = T - 1 - seq[i] (``find_nearest`` of ``sigmas[seq[i]]`` on the reversed sigma table)."""
    if skip_type == "quad":
        seq = [int(v) for v in torch.linspace(0, T**2, n, dtype=F64).sqrt().tolist()]
        seq[-1] -= 1
    else:
        skip = T // n
        seq = [i * skip for i in range(n)] + ([T - 1] if skip > 1 else [])
    return [T - 1 - s for s in seq]


def diffpir_step(prior: TanhPrior, op, y: Tensor, x: Tensor, a_t, a_prev, lam_ref: float, sigma_y: float,
                 zeta: float, n: Tensor | None) -> Tensor:
    """One iteration of DiffPIR Algorithm 1 (Zhu et al. 2023) as in ``main_ddpir_deblur.py`` (generate_mode
    "DiffPIR", model output "pred_xstart", analytic data step, eta = 0, one inner iteration):

    x0 = D(x_t / sqrt(a), sigma_bar);  rho_t = lambda sigma_n^2 / sigma_bar^2;
    x0 <- argmin_z ||y - A z||^2 + rho_t ||z - x0||^2   (``sr.data_solution``; here in the SVD basis of A);
    eps = (x_t - sqrt(a) x0) / sqrt(1 - a);
    x_{t-1} = sqrt(a') x0 + sqrt(1 - zeta) sqrt(1 - a') eps + sqrt(zeta) sqrt(1 - a') n

    (the eta_sigma terms vanish at eta = 0; the code's first of its two draws only multiplies eta_sigma = 0).
    The reference states sigma_n on the [0, 1] image scale while y, x live on [-1, 1]: its rho with lambda_ref and
    sigma_n = sigma_y / 2 is diffinv's rho with lambda = lambda_ref / 4 and sigma_y (documented in diffinv's module).
    ``n=None`` is the last iteration: diffinv returns the denoised estimate x0 there (documented choice; the code
    at this commit leaves x at its last noisy iterate)."""
    a_t = torch.as_tensor(a_t, dtype=F64)
    sb = vp_sigma(a_t)
    x0 = prior.D(x / a_t.sqrt(), sb)
    if n is None:
        return x0
    rho = lam_ref * (sigma_y / 2) ** 2 / sb**2
    s = op.singulars().to(F64)
    zbar = (s * op.Ut(y) + rho * op.Vt(x0)) / (s**2 + rho)
    z = op.V(zbar)
    eps = (x - a_t.sqrt() * z) / (1 - a_t).sqrt()
    a_prev = torch.as_tensor(a_prev, dtype=F64)
    return a_prev.sqrt() * z + (1 - a_prev).sqrt() * (math.sqrt(1 - zeta) * eps + math.sqrt(zeta) * n)


def diffpir_step_dense(prior: TanhPrior, A: Tensor, y: Tensor, x: Tensor, a_t, a_prev, lam_ref: float,
                       sigma_y: float, zeta: float, n: Tensor) -> Tensor:
    """The same iteration with the data step solved as the normal equations (A^T A + rho I) z = A^T y + rho x0
    by a dense solve (the problem ``sr.data_solution`` solves in Fourier space)."""
    a_t = torch.as_tensor(a_t, dtype=F64)
    sb = vp_sigma(a_t)
    x0 = prior.D(x / a_t.sqrt(), sb)
    rho = float(lam_ref * (sigma_y / 2) ** 2 / sb**2)
    d = A.shape[1]
    lhs = A.T @ A + rho * torch.eye(d, dtype=F64)
    z = torch.linalg.solve(lhs, (y @ A + rho * x0).T).T
    eps = (x - a_t.sqrt() * z) / (1 - a_t).sqrt()
    a_prev = torch.as_tensor(a_prev, dtype=F64)
    return a_prev.sqrt() * z + (1 - a_prev).sqrt() * (math.sqrt(1 - zeta) * eps + math.sqrt(zeta) * n)


# ============================================================================================ PiGDM
def pigdm_reference_step(prior: TanhPrior, A: Tensor, y: Tensor, x_t: Tensor, a_t, a_s, eta: float,
                         weight: float, n: Tensor) -> Tensor:
    """NVlabs/RED-diff ``algos/pgdm.py`` ``PGDM.sample``, one iteration with its published switches (awd=True,
    cond_awd=False, mcg=False, sigma_y = 0 so H_pinv is the plain pseudo-inverse):

    c1 = eta sqrt((1 - a_t / a_s)(1 - a_s) / (1 - a_t)),  c2 = sqrt(1 - a_s - c1^2)
    mat = H^+ y - H^+ H x0_pred;  grad_term = grad_{x_t} <sg(mat), x0_pred(x_t)>;  coeff = sqrt(a_s) sqrt(a_t) w
    x_s = sqrt(a_s) x0_pred + c1 n + c2 e_t + coeff grad_term      (e_t the model's epsilon, awd=True)"""
    a_t, a_s = torch.as_tensor(a_t, dtype=F64), torch.as_tensor(a_s, dtype=F64)
    sig = vp_sigma(a_t)
    xv = x_t / a_t.sqrt()
    x0 = prior.D(xv, sig)
    e_t = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    c1 = torch.sqrt((1 - a_t / a_s) * (1 - a_s) / (1 - a_t)) * eta
    c2 = torch.sqrt((1 - a_s) - c1**2)
    Hp = torch.linalg.pinv(A)
    mat = y @ Hp.T - (x0 @ A.T) @ Hp.T
    grad_term = vecmat(mat, prior.J(xv, sig)) / a_t.sqrt()        # d x0_pred / d x_t = J / sqrt(a_t)
    coeff = a_s.sqrt() * a_t.sqrt() * weight
    return a_s.sqrt() * x0 + c1 * n + c2 * e_t + coeff * grad_term


def pigdm_exact_step(prior: TanhPrior, A: Tensor, y: Tensor, x_t: Tensor, a_t, a_s, eta: float, scale: float,
                     data_variance: float, sigma_y: float, n: Tensor) -> Tensor:
    """diffinv's ``guidance="exact"`` (its module docstring), from the math: PiGDM (Song et al. 2023) Eq. 7,
    p(y | x_t) ~ N(H x0_hat, r_t^2 H H^T + sigma_y^2 I) with r_t^2 = v sigma_t^2 / (v + sigma_t^2), and Eq. 8,
    g = J^T H^T (r_t^2 H H^T + sigma_y^2 I)^{-1} (y - H x0_hat) (J = d x0_hat / dx in the denoiser's coordinates
    x = x_t / sqrt(a_t)); the conditional Tweedie estimate x0_y = x0_hat + scale sigma_t^2 g replaces x0_hat in DDIM
    Eq. 12 (with its own implied epsilon)."""
    a_t = torch.as_tensor(a_t, dtype=F64)
    sig = vp_sigma(a_t)
    xv = x_t / a_t.sqrt()
    x0 = prior.D(xv, sig)
    r2 = data_variance * sig**2 / (data_variance + sig**2)
    cov_y = r2 * A @ A.T + sigma_y**2 * torch.eye(A.shape[0], dtype=F64)
    u = torch.linalg.solve(cov_y, (y - x0 @ A.T).T).T @ A
    g = vecmat(u, prior.J(xv, sig))
    x0y = x0 + scale * sig**2 * g
    return ddim_eq12(x_t, x0y, a_t, a_s, eta, n)


# ============================================================================================ RED-diff
def reddiff_run(prior: TanhPrior, A: Tensor, y: Tensor, mu0: Tensor, sigmas: list[float], noises: list[Tensor],
                lam: float, lr: float, betas=(0.9, 0.99), obs_weight: float = 1.0,
                adam_eps: float = 1e-8) -> list[Tensor]:
    """NVlabs/RED-diff ``algos/reddiff.py`` ``REDDIFF.sample`` (sigma_x0 = 0, awd=True, denoise_term_weight "linear"),
    with Adam transcribed (Kingma & Ba 2015 Algorithm 1, weight decay 0), one image per run:

    x_t = sqrt(a) mu + sqrt(1 - a) n;  e_t = eps_theta(x_t)   (= (x_t / sqrt(a) - D) / sigma_t in the denoiser view)
    loss = lam (1 / sqrt(SNR_t)) mean(sg(e_t - n) * mu) + obs_weight mean((y - H mu)^2) / 2
    grad = lam sigma_t (e_t - n) / d - obs_weight H^T (y - H mu) / d_y;  Adam(betas) on mu.
    Returns mu after each step."""
    m = torch.zeros_like(mu0)
    v = torch.zeros_like(mu0)
    mu = mu0.clone()
    out = []
    b1, b2 = betas
    d, d_y = mu0.shape[1], y.shape[1]
    for k, (sig, nz) in enumerate(zip(sigmas, noises), start=1):
        a = 1 / (1 + sig**2)
        x_t = math.sqrt(a) * mu + math.sqrt(1 - a) * nz
        e_t = (x_t - math.sqrt(a) * prior.D(x_t / math.sqrt(a), sig)) / math.sqrt(1 - a)
        w_t = lam * math.sqrt(1 - a) / math.sqrt(a)
        g = w_t * (e_t - nz) / d - obs_weight * (y - mu @ A.T) @ A / d_y
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**k), v / (1 - b2**k)
        mu = mu - lr * m_hat / (v_hat.sqrt() + adam_eps)
        out.append(mu.clone())
    return out


# ============================================================================================ DAPS
def daps_levels(num_steps: int, smax: float, smin: float, rho: float) -> list[float]:
    """zhangbingliang2019/DAPS ``cores/scheduler.py``: the annealing scheduler has num_steps + 1 Karras points
    (``Scheduler.__init__`` adds one); ``discretize`` keeps the first num_steps and appends 0."""
    return karras(num_steps + 1, smin, smax, rho)[:-1].tolist() + [0.0]


def daps_level(prior: TanhPrior, A: Tensor, y: Tensor, x_t: Tensor, i: int, levels: list[float], num_steps: int,
               ode_steps: int, ode_smin: float, rho: float, lr: float, lr_min_ratio: float, langevin_steps: int,
               data_weight: float, tape: NoiseTape) -> Tensor:
    """One annealing level of DAPS (Zhang et al. 2025, Algorithm 1) as in the reference's ``sampler.py::DAPS.sample``:

    1. x0hat: ``DiffusionPFODE.sample`` with the EDM scheduler (sigma(t) = t, s = 1) over ode_steps + 1 Karras
       points from sigma_i to ode_sigma_min, torchdiffeq's fixed-grid Euler on dx/dt = -t score(x, t) = (x - D) / t,
       ending at the last grid point (no final denoiser call);
    2. ``cores/mcmc.py`` Langevin (prior_solver "gaussian"): lr_i = lr (1 + ratio (lr_min_ratio - 1)) with
       ratio = i / (num_steps + 1); z = x0hat; repeat: score = -data_weight grad ||A z - y||^2 + (x0hat - z) / sigma_i^2
       (data_term - grad / tau^2, plus xt_term + prior_term), z <- z + lr_i score + sqrt(2 lr_i) eps;
    3. x_{i+1} = x0y + sigma_{i+1} n (the code draws n at the last level too and multiplies it by sigma = 0; diffinv
       does not draw it, which changes no value).
    ``data_weight`` = 1 / tau^2 (the reference), or 1 / (2 sigma_y^2) for diffinv's tau=None (documented)."""
    sig = levels[i]
    x = x_t
    grid = karras(ode_steps + 1, ode_smin, sig, rho).tolist()
    for t, t_next in zip(grid[:-1], grid[1:]):
        x = x + (t_next - t) * (x - prior.D(x, t)) / t
    x0hat = x
    lr_i = lr * (1 + (i / (num_steps + 1)) * (lr_min_ratio - 1))
    z = x0hat
    for _ in range(langevin_steps):
        score = -data_weight * 2 * (z @ A.T - y) @ A + (x0hat - z) / sig**2
        z = z + lr_i * score + math.sqrt(2 * lr_i) * tape.take(z.shape)
    if levels[i + 1] > 0:
        z = z + levels[i + 1] * tape.take(z.shape)
    return z


# ============================================================================================ EnKG
def enkg_ode_x0(prior: TanhPrior, x: Tensor, num_steps: int, sigma_start: float, sigma_eps: float = 0.002,
                rho: float = 7.0) -> Tensor:
    """devzhk/enkg-pytorch ``algo/enkg.py::ode_sampler``: one denoiser call when num_steps == 1, else Euler on the
    EDM PF-ODE over Karras(num_steps, sigma_start -> 0.002) then to 0."""
    if num_steps == 1:
        return prior.D(x, sigma_start)
    t = karras(num_steps, sigma_eps, sigma_start, rho).tolist() + [0.0]
    for t_cur, t_next in zip(t[:-1], t[1:]):
        x = x + (t_next - t_cur) * (x - prior.D(x, t_cur)) / t_cur
    return x


def enkg_step(prior: TanhPrior, A: Tensor, y: Tensor, x: Tensor, i: int, t: list[float], num_steps: int,
              guidance_scale: float, lr_min_ratio: float, num_updates: int, start: float, end: float,
              scaled_min_ratio: bool = False) -> Tensor:
    """One outer step of ``EnKG.inference`` (Zheng et al. 2024, Algorithm 1): inside the window
    start N < i < N - int(end N), ``update_particles`` num_updates times with K = min(1 + (N - i) // 4, 20) ODE
    steps for x0:  ys = A(x0s); err = 0.5 grad_ys ||ys - y||^2 = ys - y; C = err (ys - mean ys)^T / N_p;
    x <- x - (lr_i / ||C||_F) C (x - mean x); then the Euler step x + (t' - t)(x - D(x, t)) / t.
    lr_i = guidance_scale (1 - r)(N - i) / N + r (``get_lr``); ``scaled_min_ratio=True`` applies diffinv's
    documented convention lr_i = guidance_scale ((1 - r)(N - i) / N + r) instead (the two agree at r = 0)."""
    t_cur, t_next = t[i], t[i + 1]
    if start * num_steps < i < num_steps - int(end * num_steps):
        r = lr_min_ratio
        if scaled_min_ratio:
            lr = guidance_scale * ((1 - r) * (num_steps - i) / num_steps + r)
        else:
            lr = guidance_scale * (1 - r) * (num_steps - i) / num_steps + r
        K = min(1 + (num_steps - i) // 4, 20)
        n_p = x.shape[0]
        for _ in range(num_updates):
            x0s = enkg_ode_x0(prior, x, K, t_cur)
            ys = x0s @ A.T
            xs_diff = x - x.mean(0, keepdim=True)
            ys_diff = ys - ys.mean(0, keepdim=True)
            err = ys - y
            C = err @ ys_diff.T / n_p
            x = x - (lr / torch.linalg.matrix_norm(C)) * (C @ xs_diff)
    return x + (t_next - t_cur) * (x - prior.D(x, t_cur)) / t_cur


# ============================================================================================ PnP-DM
def pnpdm_iteration(prior: TanhPrior, op, y: Tensor, x: Tensor, rho: float, sigma_y: float, grid: Tensor,
                    tape: NoiseTape, final: str = "reference") -> Tensor:
    """One iteration of PnP-DM (Wu et al. 2024, Algorithm 1) as in zihuiwu/PnP-DM-public:

    * likelihood step, ``tasks/__init__.py::LinearSVDOperator.proximal_generator``: per spectral coordinate
      q = s^2 / sigma_y^2 + 1 / rho^2, z = V( Vt(A^T y / sigma_y^2 + x / rho^2) / q + xi / sqrt(q) );
    * prior step, ``samplers/pnp_edm/denoiser_edm.py`` in mode "edm_sde" (the linear-task commands): Euler-Maruyama
      of the reverse SDE with sigma(t) = t, s = 1: d = 2 (x - D(x, t)) / t, x' = x + (t' - t) d + sqrt(t - t')
      sqrt(2 t) n on all but the last step. diffinv documents that it starts at sigma = rho itself (then the grid
      points below it), where the code starts at the first grid point below rho: applied here.
      ``final="reference"``: the last step to t' = 0 is the same Euler step of the SDE drift, x' = 2 D - x (the
      code); ``final="denoiser"``: x' = D(x, t), what diffinv's ``solve_sde`` does."""
    s = op.singulars().to(F64)
    q = s**2 / sigma_y**2 + 1 / rho**2
    xi = tape.take(op.Vt(x).shape)
    z = op.V((s * op.Ut(y) / sigma_y**2 + op.Vt(x) / rho**2) / q + xi / q.sqrt())
    ts = [rho] + [float(g) for g in grid if g < rho] + [0.0]
    xk = z
    for t_cur, t_next in zip(ts[:-1], ts[1:]):
        den = prior.D(xk, t_cur)
        if t_next == 0.0:
            xk = 2 * den - xk if final == "reference" else den
        else:
            noise = tape.take(xk.shape)
            diffusion = math.sqrt(t_cur - t_next) * math.sqrt(2 * t_cur) * noise      # sqrt(dt) g(t) n, g = sqrt(2 t)
            xk = xk + (t_next - t_cur) * 2 * (xk - den) / t_cur + diffusion
    return xk


# ============================================================================================ ULA / SK-ROCK
def langevin_potential_grad(prior: TanhPrior, A: Tensor, y: Tensor, x: Tensor, sigma: float, sigma_y: float,
                            alpha: float) -> Tensor:
    """deepinv's ``likelihood.grad + alpha prior.grad``: L2 data fidelity A^T (A x - y) / sigma_y^2 and the
    ScorePrior gradient -score = (x - D(x, sigma)) / sigma^2 (Tweedie)."""
    return (x @ A.T - y) @ A / sigma_y**2 + alpha * (x - prior.D(x, sigma)) / sigma**2


def ula_step(prior, A, y, x, delta, sigma, sigma_y, alpha, z) -> Tensor:
    """deepinv 0.5.0 ``sampling/langevin.py::ULAIterator`` (PnP-ULA, Laumont et al. 2022 Algorithm 2 without the
    projection; deepinv's ``clip`` left out): x + delta (-grad log-lik - alpha grad prior) + sqrt(2 delta) z."""
    return x - delta * langevin_potential_grad(prior, A, y, x, sigma, sigma_y, alpha) + math.sqrt(2 * delta) * z


def skrock_step(prior, A, y, x, delta, sigma, sigma_y, alpha, s: int, eta: float, z) -> Tensor:
    """deepinv 0.5.0 ``sampling/langevin.py::SKRockIterator``: the SK-ROCK scheme (Abdulle, Almuslimani, Vilmart 2018)
    for the overdamped Langevin diffusion, as in Pereyra, Vargas-Mieles, Zygalakis 2020 (SIAM J. Imaging Sci.,
    arXiv:1908.08845): T_s Chebyshev polynomials of the first kind, w0 = 1 + eta / s^2, w1 = T_s(w0) / T_s'(w0),
    mu1 = w1 / w0, nu1 = s w1 / 2, kappa1 = s w1 / w0;  xi = sqrt(2 delta) z;
    K1 = x - mu1 delta gradU(x + nu1 xi) + kappa1 xi;
    K_j = -mu_j delta gradU(K_{j-1}) + nu_j K_{j-1} + kappa_j K_{j-2}, mu_j = 2 w1 T_{j-1}(w0) / T_j(w0),
    nu_j = 2 w0 T_{j-1}(w0) / T_j(w0), kappa_j = 1 - nu_j;  x <- K_s."""
    T = lambda k, u: math.cosh(k * math.acosh(u))                              # noqa: E731
    Tp = lambda k, u: k * math.sinh(k * math.acosh(u)) / math.sqrt(u * u - 1)  # noqa: E731
    gradU = lambda u: langevin_potential_grad(prior, A, y, u, sigma, sigma_y, alpha)  # noqa: E731
    w0 = 1 + eta / s**2
    w1 = T(s, w0) / Tp(s, w0)
    mu1, nu1, kappa1 = w1 / w0, s * w1 / 2, s * w1 / w0
    xi = math.sqrt(2 * delta) * z
    k_2, k_1 = x, x - mu1 * delta * gradU(x + nu1 * xi) + kappa1 * xi
    for j in range(2, s + 1):
        mu, nu = 2 * w1 * T(j - 1, w0) / T(j, w0), 2 * w0 * T(j - 1, w0) / T(j, w0)
        k_2, k_1 = k_1, -mu * delta * gradU(k_1) + nu * k_1 + (1 - nu) * k_2
    return k_1


# ============================================================================================ latent samplers
def latent_tweedie(prior: TanhLatentPrior, z_t: Tensor, a_t) -> tuple[Tensor, Tensor, Tensor]:
    """LDM's ``pred_x0 = (z_t - sqrt(1 - a) e_t) / sqrt(a)`` with e_t the epsilon implied by the toy denoiser at the VE
    point z_t / sqrt(a): returns (z0, e_t, dz0/dz_t)."""
    a_t = torch.as_tensor(a_t, dtype=F64)
    sig = vp_sigma(a_t)
    zv = z_t / a_t.sqrt()
    z0 = prior.D(zv, sig)
    e_t = (z_t - a_t.sqrt() * z0) / (1 - a_t).sqrt()
    return z0, e_t, prior.J(zv, sig) / a_t.sqrt()


def latent_dps_step(prior: TanhLatentPrior, A: Tensor, y: Tensor, z_t: Tensor, a_t, a_prev, eta: float,
                    step: float, n: Tensor) -> Tensor:
    """DPS (Chung et al. 2023, Algorithm 1, line 7) in latent space with the measurement through the decoder, on a
    DDIM step (Eq. 12): z_{t-1} = DDIM(z_t, z0_hat) - step grad_{z_t} ||y - A dec(z0_hat(z_t))|| (the latent-DPS
    baseline of ReSample Sec. 5 / PSLD Eq. 6 without gluing)."""
    z0, _, Jz = latent_tweedie(prior, z_t, a_t)
    x0 = prior.decode(z0)
    r = y - x0 @ A.T
    g_z0 = -vecmat((r / rownorm(r)) @ A, prior.J_decode(z0))
    grad = vecmat(g_z0, Jz)
    return ddim_eq12(z_t, z0, a_t, a_prev, eta, n) - step * grad


def psld_step(prior: TanhLatentPrior, A: Tensor, y: Tensor, z_t: Tensor, a_t, a_prev, eta: float, omega: float,
              gamma: float, n: Tensor) -> Tensor:
    """LituRout/PSLD ``stable-diffusion/ldm/models/diffusion/psld.py::p_sample_ddim`` (``general_inverse`` branch),
    PSLD Algorithm 1 / Eq. 8: the DDIM step (Eq. 12) from pred_z_0, then
    error = gamma ||E(A^T y + (I - A^T A) D(z0)) - z0|| + omega ||A D(z0) - y||, z_{t-1} = z'_{t-1} - grad_{z_t} error.
    The code's ``noiser(meas_pred)`` is the identity for noise-free measurements (diffinv documents that it never
    adds noise there); A has orthonormal rows in the test, so A^T = A^+ (diffinv's pinv; documented)."""
    z0, _, Jz = latent_tweedie(prior, z_t, a_t)
    x0 = prior.decode(z0)
    Jd = prior.J_decode(z0)                                         # [B, d, k]
    r = x0 @ A.T - y                                                # meas_pred - measurements
    g_meas = vecmat((r / rownorm(r)) @ A, Jd)                       # grad_z0 ||A D(z0) - y||
    P_perp = torch.eye(A.shape[1], dtype=F64) - A.T @ A
    glued = y @ A + x0 @ P_perp.T
    e = prior.encode(glued) - z0
    de_dz0 = torch.einsum("bkd,de,bel->bkl", prior.J_encode(glued), P_perp, Jd) - torch.eye(z0.shape[1], dtype=F64)
    g_glue = vecmat(e / rownorm(e), de_dz0)
    grad = vecmat(gamma * g_glue + omega * g_meas, Jz)
    return ddim_eq12(z_t, z0, a_t, a_prev, eta, n) - grad


def resample_code_x0(z: Tensor, e_t: Tensor, a_t) -> Tensor:
    """soominkwon/resample ``ddim.py::p_sample_ddim``: ``pseudo_x0 = (z - sqrt_one_minus_at**2 * e_t) / sqrt(a_t)``."""
    a_t = torch.as_tensor(a_t, dtype=F64)
    return (z - (1 - a_t) * e_t) / a_t.sqrt()


def resample_dps_step(prior: TanhLatentPrior, A: Tensor, y: Tensor, z_t: Tensor, a_t, a_prev, noise: Tensor,
                      estimate: str = "code") -> Tensor:
    """ReSample (Song et al. 2024) Algorithm 1, the step of every iteration, as ``resample_sampling``: the DDIM step
    from pred_x0 (eta 0, Eq. 12; its noise term is sigma_t n = 0), then ``PosteriorSampling.conditioning`` with scale
    0.5 a_t: z'_{t-1} = DDIM - 0.5 a_t grad_{z_t} ||y - A dec(x0_hat(z_t))||, where x0_hat is the code's pseudo_x0
    (``estimate="code"``, diffinv's ``x0_estimate="reference"``) or Tweedie's pred_x0 as the paper writes it
    (``estimate="tweedie"``, diffinv's default)."""
    a_t = torch.as_tensor(a_t, dtype=F64)
    z0, e_t, Jz = latent_tweedie(prior, z_t, a_t)
    if estimate == "code":
        x0_hat = resample_code_x0(z_t, e_t, a_t)
        # d pseudo_x0 / d z_t = (I - (1 - a) d e_t / d z_t) / sqrt(a), d e_t / d z_t = (I - sqrt(a) Jz) / sqrt(1 - a)
        eye = torch.eye(z_t.shape[1], dtype=F64)[None]
        de = (eye - a_t.sqrt() * Jz) / (1 - a_t).sqrt()
        J_hat = (eye - (1 - a_t) * de) / a_t.sqrt()
    else:
        x0_hat, J_hat = z0, Jz
    r = y - prior.decode(x0_hat) @ A.T
    g_hat = -vecmat((r / rownorm(r)) @ A, prior.J_decode(x0_hat))
    grad = vecmat(g_hat, J_hat)
    return ddim_eq12(z_t, z0, a_t, a_prev, 0.0, noise) - 0.5 * a_t * grad


def resample_time_travel(prior: TanhLatentPrior, z: Tensor, abar_path: list, estimate: str = "code") -> Tensor:
    """The look-ahead of ``resample_sampling`` ("time travel"): unconditional DDIM (eta 0) through the grid points of
    ``abar_path``, returning the x0 estimate at the last one (the code's pseudo_x0, or Tweedie's). The code pairs
    each evaluation with the abar of the point before it (an index off by one); diffinv documents that it uses each
    point's own abar, applied here."""
    for j, a in enumerate(abar_path):
        z0, e_t, _ = latent_tweedie(prior, z, a)
        if j == len(abar_path) - 1:
            return resample_code_x0(z, e_t, a) if estimate == "code" else z0
        z = ddim_eq12(z, z0, a, abar_path[j + 1], 0.0, torch.zeros_like(z))
    raise AssertionError("empty path")


def adamw_mse(var: Tensor, grad_fn, iters: int, lr: float, weight_decay: float = 0.01, betas=(0.9, 0.999),
              eps: float = 1e-8) -> Tensor:
    """``torch.optim.AdamW`` with its defaults as ReSample's ``pixel_optimization`` / ``latent_optimization`` use it,
    transcribed (Loshchilov & Hutter 2019, Algorithm 2): decoupled decay p <- p (1 - lr wd), then the Adam step.
    ``grad_fn(p)`` is the gradient of the MSE loss (one image per run)."""
    m = torch.zeros_like(var)
    v = torch.zeros_like(var)
    p = var.clone()
    b1, b2 = betas
    for k in range(1, iters + 1):
        g = grad_fn(p)
        p = p * (1 - lr * weight_decay)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        p = p - lr * (m / (1 - b1**k)) / ((v / (1 - b2**k)).sqrt() + eps)
    return p


def resample_eq9(z0_y: Tensor, z_prime: Tensor, a_prev, a_t, gamma: float, noise: Tensor) -> Tensor:
    """ReSample Eq. 9 (stochastic resampling) as ``stochastic_resample`` with the code's sigma_t^2 =
    gamma (1 - a') / (1 - a) (1 - a / a'):
    z = (s sqrt(a') z0_y + (1 - a') z') / (s + 1 - a') + sqrt(1 / (1/s + 1/(1 - a'))) n."""
    a_prev, a_t = torch.as_tensor(a_prev, dtype=F64), torch.as_tensor(a_t, dtype=F64)
    s = gamma * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    return (s * a_prev.sqrt() * z0_y + (1 - a_prev) * z_prime) / (s + 1 - a_prev) \
        + noise * torch.sqrt(1 / (1 / s + 1 / (1 - a_prev)))


# ============================================================================================ InverseBench's Scheduler
def ib_vp_scheduler(num_steps: int, sigma_final: float = 0.01) -> dict:
    """devzhk/InverseBench ``utils/scheduler.py::Scheduler(schedule="vp", timestep="vp", scaling="vp")``, written out:
    sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), s(t) = exp(-(beta_d t^2 / 2 + beta_min t) / 2) with
    beta_d 19.9, beta_min 0.1; times 1 - r (1 - 1e-3) for r = linspace(0, 1, N), then sigma_inv(sigma_final);
    scaling_factor_i = 1 - s'(t_i) / s(t_i) (t_i - t_{i+1}), factor_i = max(0, 2 s^2 sigma sigma' (t_i - t_{i+1}));
    the start ``randn * sigma_max`` with sigma_max = sigma(1) s(1)."""
    bd, bm = 19.9, 0.1
    expo = lambda t: bd * t**2 / 2 + bm * t  # noqa: E731
    sigma = lambda t: math.sqrt(math.exp(expo(t)) - 1)  # noqa: E731
    dsigma = lambda t: (bd * t + bm) * math.exp(expo(t)) / 2 / sigma(t)  # noqa: E731
    inv = lambda s: (math.sqrt(bm**2 + 2 * bd * math.log(s**2 + 1)) - bm) / bd  # noqa: E731
    scale = lambda t: 1 / math.sqrt(math.exp(expo(t)))  # noqa: E731
    dscale = lambda t: -(bd * t + bm) / 2 / math.sqrt(math.exp(expo(t)))  # noqa: E731
    ts = [1 - (i / (num_steps - 1)) * (1 - 1e-3) for i in range(num_steps)] + [inv(sigma_final)]
    return {"sigma": [sigma(t) for t in ts], "scale": [scale(t) for t in ts],
            "shrink": [1 - dscale(ts[i]) / scale(ts[i]) * (ts[i] - ts[i + 1]) for i in range(num_steps)],
            "factor": [max(2 * scale(ts[i]) ** 2 * sigma(ts[i]) * dsigma(ts[i]) * (ts[i] - ts[i + 1]), 0.0)
                       for i in range(num_steps)],
            "sigma_max": sigma(1.0) * scale(1.0)}


def ib_edm_scheduler(num_steps: int, sigma_max: float = 100.0, sigma_min: float = 0.01) -> dict:
    """The same ``Scheduler`` with ``schedule="linear", timestep="poly-7", scaling="none"`` (its defaults): sigma(t) = t
    on the Karras grid (EDM Eq. 5, rho 7) from sigma_max to sigma_min, then sigma_final = sigma_min; s = 1, so
    scaling_factor = 1 and factor_i = 2 t_i (t_i - t_{i+1}); the start ``randn * sigma_max``."""
    ts = karras(num_steps, sigma_min, sigma_max).tolist() + [sigma_min]
    return {"sigma": ts, "scale": [1.0] * len(ts), "shrink": [1.0] * num_steps,
            "factor": [max(2 * ts[i] * (ts[i] - ts[i + 1]), 0.0) for i in range(num_steps)], "sigma_max": sigma_max}


def ib_denoise(prior: TanhPrior, x: Tensor, i: int, S: dict) -> tuple[Tensor, Tensor, Tensor]:
    """``denoised = net(x / s_i, sigma_i)``, the reference's ``score = (denoised - x / s_i) / sigma_i^2 / s_i`` and
    d denoised / d x = J(x / s_i) / s_i (closed form)."""
    s, sig = S["scale"][i], S["sigma"][i]
    d = prior.D(x / s, sig)
    return d, (d - x / s) / sig**2 / s, prior.J(x / s, sig) / s


def ib_em(x: Tensor, score: Tensor, i: int, S: dict, noise: Tensor | None) -> Tensor:
    """``x * scaling_factor + factor * score + sqrt(factor) * epsilon`` (sde) or ``+ factor * score * 0.5`` (ode)."""
    if noise is None:
        return x * S["shrink"][i] + S["factor"][i] * score * 0.5
    return x * S["shrink"][i] + S["factor"][i] * score + math.sqrt(S["factor"][i]) * noise


def sq_loss(A: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """InverseBench's ``BaseOperator.loss``: ``(A x - y)^2`` summed per sample (over the last axis)."""
    return ((x @ A.T - y) ** 2).sum(-1)


def dps_gsg_step(prior: TanhPrior, A: Tensor, y: Tensor, x: Tensor, i: int, S: dict, scale: float, mu: float,
                 u: Tensor, noise: Tensor, central: bool) -> Tensor:
    """One step of InverseBench ``algo/dps_gsg.py::DPS_GSG.inference`` with ``central_gsg`` / ``forward_gsg`` (u
    ``[K, N, d]``, K directions per sample; ``prod = u * diff / (mu * sample_size [* 2])`` summed over the draws),
    ``ll_grad = J^T g * 0.5 / sqrt(loss(denoised))`` (per sample, diffinv's documented choice) and
    ``x_next = EM - scale * ll_grad``."""
    d, score, J = ib_denoise(prior, x, i, S)
    k = u.shape[0]
    if central:
        diff = (sq_loss(A, y, d + mu * u) - sq_loss(A, y, d - mu * u)) / (mu * k * 2)
    else:
        diff = (sq_loss(A, y, d + mu * u) - sq_loss(A, y, d)) / (mu * k)
    g = (diff[..., None] * u).sum(0)
    ll = vecmat(g, J) * 0.5 / sq_loss(A, y, d).sqrt()[:, None]
    return ib_em(x, score, i, S, noise) - scale * ll


def dpg_step(prior: TanhPrior, A: Tensor, y: Tensor, x: Tensor, i: int, S: dict, state: dict, scale: float,
             eps: Tensor, noise: Tensor, beta: float = 0.1) -> Tensor:
    """One step of InverseBench ``algo/dpg.py::DPG.inference`` (``state`` carries ``prev_Z`` and ``prev_grad``):
    Z = 0.9 Z + 0.1 loss_ref, r = sqrt(Z / d) / 2, x_mc = denoised + eps r, rewards exp(-(loss - loss_ref) / Z),
    pB = leave-one-out mean; the gradient of ``mean((rewards - pB) ||x_mc - denoised||^2 / (2 r^2))`` with respect to
    x_cur is J^T mean((rewards - pB) (denoised - x_mc)) / r^2; momentum beta beta_3 on the previous raw gradient;
    score + scale * (-g / (||g|| + 1e-7)) (per sample, diffinv's documented choice)."""
    n_steps = len(S["factor"])
    d, score, J = ib_denoise(prior, x, i, S)
    loss_ref = sq_loss(A, y, d)
    z = loss_ref if state.get("Z") is None else 0.9 * state["Z"] + 0.1 * loss_ref
    state["Z"] = z
    r = torch.sqrt(z / d.shape[-1]) / 2
    x_mc = d + eps * r[:, None]
    rewards = torch.exp(-(sq_loss(A, y, x_mc) - loss_ref) / z)
    pb = (rewards.sum(0) - rewards) / (eps.shape[0] - 1)
    raw = vecmat(((rewards - pb)[..., None] * (d - x_mc)).mean(0) / r[:, None] ** 2, J)
    beta3 = (n_steps - i - 1) / n_steps
    g = raw if state.get("prev") is None else beta * beta3 * state["prev"] + (1 - beta * beta3) * raw
    state["prev"] = raw
    return ib_em(x, score - scale * g / (rownorm(g) + 1e-7), i, S, noise)


def scg_run(prior: TanhPrior, A: Tensor, y: Tensor, x: Tensor, S: dict, threshold: float, noises: list[Tensor],
            steps: int) -> list[Tensor]:
    """The first ``steps`` steps of InverseBench ``algo/scg.py::SCG.inference`` for every sample at once (the
    reference loops over samples): unguided Euler-Maruyama steps for i < int(N threshold); from there (diffinv's
    documented choice for i = int(N threshold) itself) K candidates ``x * scaling_factor + factor * score +
    sqrt(factor) eps_k``, each scored by ``loss(net(x_k / s_{i+1}, sigma_{i+1}))``, the argmin kept; the last step
    returns ``denoised``. Returns the iterates."""
    n_steps, out = len(S["factor"]), []
    for i in range(steps):
        d, score, _ = ib_denoise(prior, x, i, S)
        if i == n_steps - 1:
            x = d
        elif i < int(n_steps * threshold):
            x = ib_em(x, score, i, S, noises.pop(0))
        else:
            eps = noises.pop(0)                                                  # [K, N, d]
            cand = x * S["shrink"][i] + S["factor"][i] * score + math.sqrt(S["factor"][i]) * eps
            dc = prior.D(cand.reshape(-1, x.shape[-1]) / S["scale"][i + 1], S["sigma"][i + 1]).reshape(cand.shape)
            best = sq_loss(A, y, dc).argmin(0)
            x = cand[best, torch.arange(x.shape[0])]
        out.append(x)
    return out


def lgd_step(prior: TanhPrior, A: Tensor, y: Tensor, sigma_y: float, x: Tensor, i: int, S: dict, scale: float,
             eps: Tensor, noise: Tensor) -> Tensor:
    """LGD-MC (Song et al. 2023, Sec. 3): x0_k = x0_hat + r_t eps_k with r_t = sigma / sqrt(1 + sigma^2),
    l_k = ||A x0_k - y||^2 / (2 sigma_y^2), grad log (1/n sum exp(-l_k)) = -sum_k softmax(-l)_k A^T (A x0_k - y) /
    sigma_y^2 pulled back by J^T, added to the score of the reference grid's Euler-Maruyama step."""
    d, score, J = ib_denoise(prior, x, i, S)
    sig = S["sigma"][i]
    x0 = d + sig / math.sqrt(1 + sig**2) * eps
    res = x0 @ A.T - y
    w = torch.softmax(-(res**2).sum(-1) / (2 * sigma_y**2), dim=0)
    v = -(w[..., None] * (res @ A)).sum(0) / sigma_y**2
    return ib_em(x, score + scale * vecmat(v, J), i, S, noise)


# ============================================================================================ DDNM
def ddnm_step(prior: TanhPrior, op, y: Tensor, x_vp: Tensor, a_t, a_next, sigma_y: float, eta: float,
              n_spec: Tensor) -> Tensor:
    """One step of wyhuai/DDNM ``functions/svd_ddnm.py::ddnm_plus_diffusion`` with the SVD operators' ``Lambda`` and
    ``Lambda_noise`` (``functions/svd_operators.py``), in VP coordinates: x0_t = (x_t - sqrt(1 - a) e_t) / sqrt(a)
    (Eq. 12; e_t of the denoiser D at x_t / sqrt(a)), x0_hat = x0_t - Lambda A^+ (A x0_t - y) (Eq. 17) with
    lambda_i = s_i sigma_t sqrt(1 - eta^2) / (a' sigma_y) where sigma_t < a' sigma_y / s_i, else 1; x_{t'} =
    a' x0_hat + V(d1 V^T n + d2 V^T e_t) (Eq. 51), (d1, d2) = (sigma_t eta, sigma_t sqrt(1 - eta^2)) in the null space
    and for sigma_y = 0, (sigma_t eta, 0) where sigma_t < a' sigma_y / s_i, (sqrt(sigma_t^2 - a'^2 sigma_y^2 / s_i^2),
    0) where sigma_t > a' sigma_y / s_i; a' = sqrt(a_next), sigma_t = sqrt(1 - a_next). The fresh noise is given in
    the spectral basis (``n_spec`` = V^T n: the same law). The reference's super-resolution ``Lambda_noise`` skips the
    V^T of e_t (its patches are not rotated); the general SVD form rotates it, as here. Returns x_{t'} (VP)."""
    a_t, a_next = float(a_t), float(a_next)
    s = op.singulars().to(F64)
    obs = s > 0
    inv = torch.where(obs, 1 / torch.where(obs, s, torch.ones_like(s)), torch.zeros_like(s))
    x0 = prior.D(x_vp / math.sqrt(a_t), math.sqrt((1 - a_t) / a_t))
    et = (x_vp - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    a, sig_t = math.sqrt(a_next), math.sqrt(1 - a_next)
    lam = torch.ones_like(s)
    d1, d2 = torch.full_like(s, sig_t * eta), torch.full_like(s, sig_t * math.sqrt(1 - eta**2))
    if a != 0 and sigma_y != 0:
        below = sig_t < a * sigma_y * inv
        lam = torch.where(below, s * sig_t * math.sqrt(1 - eta**2) / a / sigma_y, lam)
        d1, d2 = torch.where(below, sig_t * eta, d1), torch.where(below, 0.0, d2)
        above = sig_t > a * sigma_y * inv
        d1 = torch.where(above, (sig_t**2 - a**2 * sigma_y**2 * inv**2).clamp_min(0).sqrt(), d1)
        d2 = torch.where(above, 0.0, d2)
        d1, d2 = torch.where(~obs, sig_t * eta, d1), torch.where(~obs, sig_t * math.sqrt(1 - eta**2), d2)
    pinv_res = inv * op.Ut(op(x0) - y)                                   # V^T A^+ (A x0 - y)
    x0_hat = op.V(op.Vt(x0) - lam * pinv_res)
    return a * x0_hat + op.V(d1 * n_spec + d2 * op.Vt(et))

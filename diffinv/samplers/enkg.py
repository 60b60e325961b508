"""EnKG: ensemble Kalman diffusion guidance, a derivative-free posterior sampler.

Zheng, Tang, Chen, Yue, Azizzadenesheli, Anandkumar, Stuart, Bouman, Yue, "Ensemble Kalman diffusion guidance:
a derivative-free method for inverse problems" (2024, arXiv:2409.20175); reference code devzhk/enkg-pytorch,
``algo/enkg.py`` (settings and deviations: ``docs/references.md#enkg``).

An ensemble of ``num_samples`` particles per measurement follows the probability-flow ODE of EDM (Karras et al.
2022, Algorithm 1 without the Heun correction) on the Karras grid (EDM Eq. 5). Inside the guidance window each
step first moves the particles ``num_updates`` times along the ensemble-preconditioned gradient of the
measurement loss (EnKG Algorithm 1; the statistical linearisation of Sec. 3):

    x0_n  = ODE_{sigma_i -> 0}(x_n)                       (K Euler steps on a Karras sub-grid)
    yh_n  = A(x0_n)                                       (forward model only, no derivatives)
    e_n   = d loss(yh_n, y) / d yh_n                       (gradient w.r.t. the predicted measurement only)
    C_nm  = <e_n, yh_m - mean(yh)> / N                     (N x N per measurement)
    x_n  <- x_n - lr / ||C||_F * sum_m C_nm (x_m - mean(x))

which approximates the preconditioned gradient ``Cov(x, yh) grad_yh loss`` without ever differentiating the
forward model or the denoiser. The operator is called only on ``torch.no_grad()`` inputs, so black-box
simulators (Navier-Stokes solvers, ehtim) work.

Particles of measurement ``b`` interact only with each other: the ensemble of a batch of B measurements is a
``[N, B, ...]`` tensor and every ensemble statistic is taken over its first axis. Returned samples are the
particles, sample-major: particle ``n`` of measurement ``b`` is ``out[n * B + b]``.

The step is ``lr_i = guidance_scale ((1 - r) (N - i) / N + r)`` with ``r = lr_min_ratio`` a fraction of the scale
(1 = constant). The reference's current code adds r unscaled, ``scale (1 - r) (N - i) / N + r``; the two agree at
r = 0, its Navier-Stokes setting (the step decays linearly to 0), and differ by the unscaled floor otherwise. ``e`` is the gradient of the operator's own noise model
(``operator.loss``) with respect to ``yh`` (for Gaussian noise ``(yh - y) / sigma^2``); its scale cancels in
``lr / ||C||_F``.

Small ensembles (``update="kalman"``). The normalised step contracts every ensemble direction at a rate that does
not depend on the spread (about ``lr lambda_k / ||C||_F`` per update), so with tens of particles the ensemble
collapses onto one field long before the data are fitted (measured on a 256-dimensional linear-Gaussian problem with
64 observations: 32 particles end with 0.001 of the exact posterior std and a mean 3 posterior std off). The
Kalman mode replaces it by the tempered Bayesian update of ``diffinv.samplers.ensemble.kalman_analysis``: each of
the M guided updates assimilates the likelihood ``p(y | x0(x))^(1/M)``, so that for a linear x0 prediction the
updates compose to exactly one posterior update (conditioning x_sigma on the data through the deterministic map
x_sigma -> x0 is conditioning x0). Two measured corrections for small ensembles: ``stochastic=True`` replaces the
Euler ODE step by the ancestral step of the VE process, ``x' = D + r (x - D) + sigma' sqrt(1 - r) n`` with
``r = (sigma' / sigma)^2``, whose fresh noise moves the ensemble out of the fixed (N - 1)-dimensional subspace the
deterministic flow keeps it in; ``relaxation`` is the relaxation-to-prior-spread factor of
``diffinv.samplers.ensemble.relax_spread`` against the spurious shrinkage of unobserved coordinates.

One ensemble over many processes (``particles=ShardedParticles(N)``, ``diffinv.samplers.particles``). Rank r holds
the particles ``I_r`` (``n_r ~ N / R`` of them) and runs their network and forward-model calls, batched, on its
own device; every rank passes the same measurement and an identically seeded generator. The update is the
one-process update, with the sums over particles spread over the ranks:

* the random draws (initial noise, the ancestral steps' noise) are drawn for all N particles on every rank,
  each keeping its rows, so particle n gets the same noise whatever R;
* reference update: one all-gather of every particle's ``[x_m | yh_m]`` (``d + m`` values each). Every rank then
  has ``mean(x)``, ``mean(yh)`` and all deviations, forms its rows ``C[I_r, :] = e_{I_r} (yh - mean yh)^T / N``
  and its particles' step ``C[I_r, :] (x - mean x)``; ``||C||_F^2`` is the all-reduced sum of the rows' squares
  (B values). Kalman update: the same all-gather with the misfit gradients too (``d + 2 m`` values); every rank
  forms the same N x N ``S``, its square root and the mean shift, and applies its columns of the transform
  (``kalman_analysis``); the relaxation all-reduces 4 vectors of d values (means and squared deviations before
  and after).

Why this exchange: the step of a particle is ``sum_m C_nm (x_m - mean x)``, a sum over *all* particles' states,
so every rank needs either all deviations (an all-gather, ``(R - 1) / R N d`` values received) or the partial
products of the others (a reduce-scatter of ``C[:, I_r'] X_{r'}``, the same volume, plus an all-gather of the
misfit gradients for C's columns and an all-reduce of the means first: three collectives instead of one).
Gathering the predictions ``yh`` (``N m``) is what C's rows need. The alternative that avoids ``N d``, the
all-reduced cross-covariance ``K = (yh - mean yh)^T (x - mean x) / N`` (``m x d``, with ``||C||_F`` from two
``m x m`` Gram matrices), moves more unless ``m`` is small next to N (``2 (m d + 2 m^2) < N (d + m)``).

Message sizes for N = 2048 particles at 128 x 128 (d = 16384) with m = 4096 observations, B = 1, on R = 8 ranks
(256 particles each), float32: a reference update all-gathers 2048 x 20480 = 41.9 M values (168 MB); each rank
receives 7 x 256 x 20480 x 4 B = 146.8 MB, and 8 bytes of the norm's all-reduce. A Kalman update receives
7 x 256 x 24576 x 4 B = 176.2 MB (+ 0.46 MB for the relaxation). The reference schedule (80 steps, guidance on
71 of them, 2 updates each) makes 142 updates: 20.8 GB per rank per sample, about 0.1 s at the 200 GB/s of one
node's NVLink and 7 s at 3 GB/s between nodes, against hours of network calls. Each rank holds the gathered
``N (d + m)`` values (168 MB) during an update; float64 doubles every figure. ``particles.traffic`` counts the
bytes each rank receives (``scripts/benchmark_distributed.py`` prints them).

A failure in one rank's forward model or denoiser would leave the other ranks waiting in the next collective:
that rank records the error and goes on with NaN particles and no network calls, the NaN reaches every rank
through the gathered statistics, and every rank fails at the end (the failing rank with its own error;
``particles.guard`` / ``particles.run``). There is no host synchronisation in the step loop besides the
collectives themselves.

Checkpoints (``checkpoint=``, ``diffinv.samplers.resume``): after every ``checkpoint.every``-th step the whole
ensemble (gathered), the generator's state and the cost so far are saved; a run started with a saved state
continues from the step after it and ends with exactly the particles of an uninterrupted run (on any number of
ranks, up to round-off when it differs from the saving run's).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion import EDMSDE, karras_sigmas, solve_sde
from . import resume
from .base import Sampler, real_dtype, repeat_measurement
from .ensemble import as_real, kalman_analysis, misfit_gradient, relax_spread
from .particles import LocalParticles


# Particles per network call by device, measured (scripts/benchmark_networks.py, scripts/benchmark_samplers.py): on
# the CPU the shipped 64 x 64 UNet costs 10-12 ms per sample from 4 to 32 samples a call and 15-18 ms at 64-128 (the
# activations leave the cache; 1 thread); on a GPU the reference's 64. A fixed table, not a timing at run time, so
# that the same seed gives the same particles on every machine (a chunk's size can change the last bits).
NETWORK_CHUNK = {"cpu": 16, "cuda": 64}


class EnKG(Sampler):
    """Ensemble Kalman diffusion guidance (derivative-free; ``requires`` nothing of the operator).

    Args:
        num_steps: Karras steps of the outer PF-ODE (reference 80).
        sigma_min, sigma_max, rho: the Karras grid (EDM Eq. 5), 0.002 / 80 / 7.
        guidance_scale: the step ``lr`` of the Kalman update (Navier-Stokes 2.0, black hole 3.5).
        num_updates: Kalman updates per guided step (Navier-Stokes 2, black hole 1).
        start, end: guidance runs on steps ``i`` with ``start * N < i < N - int(end * N)``.
        lr_min_ratio: r in [0, 1]: the step decays linearly from ``guidance_scale`` towards ``r * guidance_scale``
            (reference Navier-Stokes 0: to 0; black hole 1e-3; 1 = constant).
        max_ode_steps, ode_steps_divisor: the x0 prediction uses ``K = min(1 + (N - i) // divisor, max)`` Euler
            steps (reference 20 and 4; InverseBench's copy uses 8).
        batch_size: particles per denoiser call in the x0 prediction (``None``: all at once; ``"auto"``: the
            measured best of the device, ``NETWORK_CHUNK``). Each chunk is one
            network evaluation in ``cost.nfe``.
        update: ``"reference"`` (the published normalised step) or ``"kalman"`` (tempered Bayesian updates for
            small ensembles; ``guidance_scale`` and ``lr_min_ratio`` are then unused).
        stochastic: ancestral (noise-injecting) steps instead of the Euler ODE step (see the module docstring).
        relaxation: relaxation-to-prior-spread factor applied after each Kalman update (0 = none).
    """

    requires = frozenset()
    interacting = shardable = resumable = True

    def __init__(self, num_steps: int = 80, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 guidance_scale: float = 2.0, num_updates: int = 2, start: float = 0.05, end: float = 0.05,
                 lr_min_ratio: float = 0.0, max_ode_steps: int = 20, ode_steps_divisor: int = 4,
                 batch_size: int | str | None = "auto", update: str = "reference", stochastic: bool = False,
                 relaxation: float = 0.0):
        super().__init__()
        if num_steps < 2:
            raise ValueError(f"EnKG: num_steps must be >= 2, got {num_steps}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"EnKG: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if guidance_scale < 0 or num_updates < 0:
            raise ValueError(f"EnKG: guidance_scale and num_updates must be >= 0, got {guidance_scale}, {num_updates}")
        if not (0 <= start <= 1 and 0 <= end <= 1):
            raise ValueError(f"EnKG: start and end are fractions of the steps in [0, 1], got {start}, {end}")
        if not 0 <= lr_min_ratio <= 1:
            raise ValueError(f"EnKG: lr_min_ratio must be in [0, 1] (1 = constant step), got {lr_min_ratio}")
        if max_ode_steps < 1 or ode_steps_divisor < 1:
            raise ValueError(f"EnKG: max_ode_steps and ode_steps_divisor must be >= 1, got {max_ode_steps}, "
                             f"{ode_steps_divisor}")
        if batch_size != "auto" and batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"EnKG: batch_size must be an int >= 1, None (all particles at once) or 'auto' (the "
                             f"device's measured chunk), got {batch_size!r}")
        if update not in ("reference", "kalman"):
            raise ValueError(f"EnKG: update must be 'reference' or 'kalman', got {update!r}")
        if not 0 <= relaxation <= 1:
            raise ValueError(f"EnKG: relaxation must be in [0, 1], got {relaxation}")
        self.num_steps, self.sigma_min, self.sigma_max, self.rho = num_steps, sigma_min, sigma_max, rho
        self.guidance_scale, self.num_updates = guidance_scale, num_updates
        self.start, self.end, self.lr_min_ratio = start, end, lr_min_ratio
        self.max_ode_steps, self.ode_steps_divisor, self.batch_size = max_ode_steps, ode_steps_divisor, batch_size
        self.update, self.stochastic, self.relaxation = update, bool(stochastic), float(relaxation)

    # ------------------------------------------------------------------ schedule pieces
    def guided(self, i: int) -> bool:
        n = self.num_steps
        return self.start * n < i < n - int(self.end * n)

    def lr(self, i: int) -> float:
        r, n = self.lr_min_ratio, self.num_steps
        return self.guidance_scale * ((1 - r) * (n - i) / n + r)

    def tempering(self) -> float:
        """Kalman mode: the likelihood share of each guided update (they sum to one likelihood)."""
        count = sum(self.guided(i) for i in range(self.num_steps)) * self.num_updates
        return 1.0 / count if count else 0.0

    def ode_steps(self, i: int) -> int:
        return min(1 + (self.num_steps - i) // self.ode_steps_divisor, self.max_ode_steps)

    # ------------------------------------------------------------------ denoiser calls
    def _chunks(self, x: Tensor):
        size = {None: x.shape[0], "auto": NETWORK_CHUNK.get(x.device.type, 64)}.get(self.batch_size, self.batch_size)
        return x.split(size)

    def _denoise(self, prior, x: Tensor, sigma: Tensor) -> Tensor:
        out = []
        for chunk in self._chunks(x):
            self.cost.nfe += 1
            out.append(prior.denoise(chunk, sigma.expand(chunk.shape[0])))
        return torch.cat(out)

    def _predict_x0(self, prior, x: Tensor, sigma: Tensor, num_ode: int) -> Tensor:
        """Deterministic x0 of every particle: Euler PF-ODE from ``sigma`` to ``sigma_min`` on a Karras sub-grid
        of ``num_ode`` points, then a last step to 0 (= one denoiser call); ``num_ode = 1`` is Tweedie's D(x, sigma)."""
        s = float(sigma)
        if num_ode == 1 or s <= self.sigma_min:
            sub = torch.tensor([s, 0.0], dtype=torch.float64)
        else:
            sub = karras_sigmas(num_ode, self.sigma_min, s, self.rho)
        return torch.cat([solve_sde(prior, chunk, sub, EDMSDE(), alpha=0.0, method="euler", cost=self.cost)
                          for chunk in self._chunks(x)])

    # ------------------------------------------------------------------ the Kalman update
    def _update(self, x: Tensor, y: Tensor, operator, prior, sigma: Tensor, num_ode: int, lr: float,
                particles, b: int) -> Tensor:
        n = particles.count

        def predict() -> tuple[Tensor, Tensor]:
            x0 = self._predict_x0(prior, x, sigma, num_ode)                   # Alg. 1: x0 prediction per particle
            y_hat = operator(x0)                                              # one batched forward-model call
            self.cost.forward_calls += 1
            e = as_real(misfit_gradient(operator, y_hat, y)).reshape(n, b, -1)   # [N, B, m]
            return as_real(y_hat).reshape(n, b, -1), e

        pred_shape = (n, b, as_real(y[:1]).numel())
        yh, e = particles.guard(predict, pred_shape, pred_shape, like=x)
        xs = x.reshape(n, b, -1)
        if self.update == "kalman":
            out = kalman_analysis(xs, yh, e, self.tempering(), particles)
            return relax_spread(xs, out, self.relaxation, particles).reshape(x.shape)
        xa, yha = particles.gather(xs, yh)                                    # every particle's x and yh
        yd = yha - yha.mean(0, keepdim=True)                                  # yh_m - mean(yh)
        xd = xa - xa.mean(0, keepdim=True)                                    # x_m - mean(x)
        coef = torch.einsum("nbk,mbk->bnm", e, yd) / particles.total          # C = e (yh - mean yh)^T / N [B, n, N]
        dx = torch.einsum("bnm,mbd->nbd", coef, xd)                           # C (x - mean x)
        norm = particles.row_norm(coef).clamp_min(torch.finfo(coef.dtype).tiny)   # ||C||_F per measurement
        return (xs - (lr / norm).view(1, b, 1) * dx).reshape(x.shape)

    def _step(self, x: Tensor, d: Tensor, s: Tensor, s_next: Tensor, generator, particles) -> Tensor:
        """One step of the prior's flow from sigma s to s_next, given D(x, s)."""
        if s_next == 0:
            return d
        if self.stochastic:                                                   # ancestral VE step
            r = (s_next / s) ** 2
            return d + r * (x - d) + s_next * (1 - r).sqrt() * particles.randn(x.shape, generator, like=x)
        return x + (s_next - s) * (x - d) / s                                 # EDM Alg. 1 (Euler, no Heun correction)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback, particles=None,
                checkpoint=None) -> Tensor:
        particles = particles or LocalParticles(num_samples)
        n, b = particles.count, y.shape[0]
        if self.update == "kalman" and num_samples < 2:
            raise ValueError("EnKG: the Kalman update needs num_samples >= 2 particles")
        dtype = real_dtype(y)
        y_rep = repeat_measurement(y, n)
        # the grid stays on the host (0-dim host tensors mix with device tensors; branching on them never syncs)
        sigmas = karras_sigmas(self.num_steps, self.sigma_min, self.sigma_max, self.rho).to(dtype)
        shape = (n * b, *operator.input_shape)
        saved = checkpoint.load() if checkpoint is not None else None
        if saved is not None:
            like = torch.empty((), dtype=dtype, device=y.device)
            first, full = resume.restore(saved, (num_samples * b, *operator.input_shape), self.num_steps, generator,
                                         self.cost, like)
            x = particles.split(full)
        else:
            first = 0
            x = particles.randn(shape, generator, like=y, dtype=dtype) * sigmas[0]   # N(0, sigma_max^2 I)
        with particles.run():
            for i in range(first, self.num_steps):
                s, s_next = sigmas[i], sigmas[i + 1]
                if self.guided(i):
                    for _ in range(self.num_updates):
                        x = self._update(x, y_rep, operator, prior, s, self.ode_steps(i), self.lr(i), particles, b)
                (d,) = particles.guard(lambda x=x, s=s: (self._denoise(prior, x, s),), x.shape, like=x)
                x = self._step(x, d, s, s_next, generator, particles)
                if callback is not None:
                    callback(i, self.num_steps, x)
                if resume.due(checkpoint, i, self.num_steps):
                    checkpoint.save(resume.capture(i + 1, particles.collect(x), generator, self.cost))
        return x

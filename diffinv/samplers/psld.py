"""PSLD: posterior sampling with latent diffusion.

Rout, Raoof, Daras, Caramanis, Dimakis, Shakkottai, "Solving linear inverse problems provably via posterior
sampling with latent diffusion models" (NeurIPS 2023, arXiv:2307.00619); reference code LituRout/PSLD
(``stable-diffusion/ldm/models/diffusion/psld.py``, ``general_inverse`` branch; ``scripts/inverse.py`` defaults
DDIM 1000 steps, eta 0, omega 1, gamma 0.1).

Each DDIM step (Song et al. 2021, Eq. 12) from Tweedie's ``z0_hat(z_t)`` is followed by the gradient step of
PSLD Algorithm 1 / Eq. 8 (the DPS term plus the "gluing" term that keeps ``z0_hat`` a fixed point of
encode o decode on the measured subspace):

    x0_hat  = D(z0_hat)
    x_glued = A^+ y + (I - A^+ A) x0_hat
    z_{t-1} = z'_{t-1} - grad_{z_t} [ omega ||y - A(x0_hat)|| + gamma ||E(x_glued) - z0_hat|| ]

with norms, not squares, as in the code. The paper and code write ``A^T`` for the pseudo-inverse (exact when
``A`` has orthonormal rows, e.g. inpainting masks); diffinv uses the operator's ``pinv`` so that the gluing
projection is a projection for any linear operator (the two agree in the paper's setting). The code also adds
fresh measurement noise to ``A(x0_hat)`` before the norm and takes the norm over the whole batch; diffinv uses
the noise-free prediction and per-sample norms (so samples do not interact). The last DDIM step lands on the
clean estimate (abar = 1, as in Latent-DPS and ReSample here), where the reference's latent-diffusion DDIM lands on
``alphas_cumprod[0] = 0.9985`` and decodes a latent that keeps 0.039 of the predicted noise.

**Samples are returned decoded** (pixel space, ``[num_samples * B, C, H, W]``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion import ddim_step
from .base import Sampler, randn, real_dtype, repeat_measurement
from .guidance import residual_norm
from .latent_dps import PhaseTimer, check_latent_operator, ddim_grid, latent_x0, prior_schedule


class PSLD(Sampler):
    """PSLD on a latent prior with a linear, differentiable operator; returns decoded images.

    Args:
        num_steps: DDIM steps (code default 1000).
        eta: DDIM eta (code default 0).
        omega: weight of the measurement term ``||y - A(D(z0_hat))||`` (1.0).
        gamma: weight of the gluing term ``||E(A^+ y + (I - A^+ A) D(z0_hat)) - z0_hat||`` (0.1).
        profile: synchronise CUDA around timed phases (``self.timings``: ``unet`` forward, ``guidance`` =
            decoder / operator / encoder forward and the backward pass through everything, ``decoder``).
    """

    requires = frozenset({"latent", "differentiable", "linear"})

    def __init__(self, num_steps: int = 1000, eta: float = 0.0, omega: float = 1.0, gamma: float = 0.1,
                 profile: bool = False):
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"PSLD: num_steps must be >= 1, got {num_steps}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"PSLD: eta must be in [0, 1], got {eta}")
        if omega < 0 or gamma < 0:
            raise ValueError(f"PSLD: omega and gamma must be >= 0, got omega={omega}, gamma={gamma}")
        self.num_steps, self.eta, self.omega, self.gamma, self.profile = num_steps, eta, omega, gamma, profile
        self.timings: dict[str, float] = {}

    def _sample(self, y: Tensor, operator, prior, num_samples: int, generator, callback) -> Tensor:
        check_latent_operator(operator, prior, "PSLD")
        timer = PhaseTimer(self.profile)
        dtype = real_dtype(y)
        y_rep = repeat_measurement(y, num_samples)
        with torch.no_grad():
            x_meas = operator.pinv(y_rep)                       # A^+ y, fixed over the run
        ts, abar = ddim_grid(prior_schedule(prior), self.num_steps, y.device, dtype)
        z = randn((y_rep.shape[0], *prior.event_shape), generator, like=y, dtype=dtype)
        for i in range(len(ts)):
            a_t, a_prev = abar[i], abar[i + 1]
            with torch.enable_grad():
                z_t = z.detach().requires_grad_(True)
                with timer("unet"):
                    z0 = latent_x0(prior, z_t, a_t)
                with timer("guidance"):          # decoder, operator, encoder and the whole backward pass
                    x0 = prior.decode(z0)
                    meas = residual_norm(operator, operator(x0), y_rep)                       # ||y - A D(z0)||
                    glued = x_meas + x0 - operator.pinv(operator(x0))                          # A^+ y + (I - A^+ A) x0
                    glue = (prior.encode(glued) - z0).reshape(z0.shape[0], -1).norm(dim=1)   # ||E(x_glued) - z0||
                    (grad,) = torch.autograd.grad((self.omega * meas + self.gamma * glue).sum(), z_t)
            self.cost.nfe += 1
            self.cost.forward_calls += 2
            self.cost.grad_calls += 1
            z0 = z0.detach()
            z_prime = ddim_step(z, z0, a_t, a_prev, self.eta, randn(z.shape, generator, like=z))     # DDIM Eq. 12
            z = (z_prime - grad).detach()                                                           # PSLD Eq. 8
            if callback is not None:
                callback(i, len(ts), z)
        x = timer.decode(prior, z)
        self.timings = timer.seconds
        return x

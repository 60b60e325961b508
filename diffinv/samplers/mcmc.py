"""Langevin MCMC with a diffusion prior at one small noise level: PnP-ULA and SK-ROCK.

* ULA / PnP-ULA: Laumont, Bortoli, Almansa, Delon, Durmus, Pereyra 2022, "Bayesian imaging using
  Plug & Play priors: when Langevin meets Tweedie" (SIAM J. Imaging Sci.), the PnP-ULA recursion
  without its projection onto a compact set; the unadjusted Langevin algorithm itself is Roberts & Tweedie 1996.
* SKRock: Pereyra, Vargas-Mieles, Zygalakis 2020, "Accelerating proximal Markov chain Monte Carlo by
  using an explicit stabilised method" (SIAM J. Imaging Sci.; the SK-ROCK scheme of
  Abdulle, Almuslimani, Vilmart 2018, applied to the overdamped Langevin diffusion).

Both target ``pi(x) ∝ p(y | x) p_s(x)^alpha`` where ``p_s`` is the prior smoothed by Gaussian noise of
std ``s = sigma``; its score comes from the denoiser by Tweedie's formula,
``grad log p_s(x) = (D(x, s) - x) / s^2``, and ``-grad log p(y | x) = grad operator.loss(A x, y)``.
With the exact analytic priors the target is therefore known in closed form: a Gaussian prior
N(mu, S) smoothed at s is N(mu, S + s^2 I).

Differences from deepinv 0.5.0 (``docs/references.md#ula-and-sk-rock``): the chains start from a diverse initialisation
(the pseudo-inverse plus noise, or noise) instead of all at A^T y; nothing is clipped; every one of
the ``num_samples`` returned draws is the final state of its own chain, all chains run in one batch;
the step size defaults to a fraction of the stability limit estimated by power iteration.
An optional annealed burn-in (``sigma_start``) lowers the denoiser noise level geometrically from
``sigma_start`` to ``sigma`` over the first ``anneal_steps`` iterations (annealed Langevin dynamics,
Song & Ermon 2019, Algorithm 1): it lets chains settle in the modes of a multimodal posterior with
roughly the right proportions, which a fixed small ``sigma`` cannot do (chains never cross between
well-separated modes).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..diffusion import Cost
from ..operators.base import Operator
from .base import Sampler, randn, repeat_measurement
from .guidance import likelihood_gradient


def _view(t: Tensor, x: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def likelihood_lipschitz(operator: Operator, x: Tensor, y: Tensor, cost: Cost, iterations: int = 20,
                         generator: torch.Generator | None = None) -> float:
    """Largest eigenvalue of the Hessian of ``operator.loss(A(x), y)`` at ``x`` by power iteration on
    Hessian-vector products (double backward), maximised over the batch: ``||A||^2 / sigma_y^2``
    for a linear operator with Gaussian noise. Each iteration is one forward call and two backward passes."""
    v = randn(x.shape, generator, like=x)
    dims = tuple(range(1, x.dim()))
    lam = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(max(1, iterations)):
        v = v / v.pow(2).sum(dims, keepdim=True).sqrt().clamp_min(1e-30)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            loss = operator.loss(operator(xg), y).sum()
            (g,) = torch.autograd.grad(loss, xg, create_graph=True)
            (hv,) = torch.autograd.grad((g * v).sum(), xg)
        cost.forward_calls += 1
        cost.grad_calls += 2
        lam = hv.pow(2).sum(dims).sqrt()
        v = hv.detach()
        if not bool(torch.isfinite(v).all()):
            raise FloatingPointError("likelihood_lipschitz: the Hessian-vector product is not finite at the "
                                     "initial state; pass lipschitz= explicitly.")
    return float(lam.max())


class _LangevinSampler(Sampler):
    """Shared machinery: initialisation, step size, annealing, chains, trajectory.

    Hyperparameters (keyword arguments):
      sigma          denoiser noise level s of the smoothed prior (images in [-1, 1]: 0.01-0.05).
      alpha          prior weight (1 = Bayesian).
      num_steps      iterations; ``sample`` returns the state after the last one.
      step_size      absolute step delta; ``None`` = ``step_fraction`` times the stability limit
                     computed from ``L = L_y + alpha / s^2`` (``L_y`` by power iteration unless
                     ``lipschitz`` gives it).
      burn_in, thinning   for ``sample_chain`` (the kept trajectory; burn_in defaults to num_steps // 10).
      init           "auto" (pseudo-inverse plus noise when the operator has an SVD, else noise),
                     "pinv" or "noise"; ``init_std`` is the std of the added noise.
      sigma_start, anneal_steps   optional annealed burn-in (see the module docstring).
    """

    requires = frozenset({"differentiable"})
    _default_step_fraction = 0.5

    def __init__(self, sigma: float = 0.05, alpha: float = 1.0, num_steps: int = 1000, step_size: float | None = None,
                 step_fraction: float | None = None, lipschitz: float | None = None, power_iterations: int = 20,
                 burn_in: int | None = None, thinning: int = 10, init: str = "auto", init_std: float = 1.0,
                 sigma_start: float | None = None, anneal_steps: int = 0):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"{type(self).__name__}: sigma must be > 0 (the denoiser's noise level), got {sigma}")
        if num_steps < 1:
            raise ValueError(f"{type(self).__name__}: num_steps must be >= 1, got {num_steps}")
        if init not in ("auto", "pinv", "noise"):
            raise ValueError(f"{type(self).__name__}: init must be 'auto', 'pinv' or 'noise', got {init!r}")
        if step_size is not None and not step_size > 0:
            raise ValueError(f"{type(self).__name__}: step_size must be > 0 or None (automatic), got {step_size}")
        if sigma_start is not None and not (sigma_start > sigma and 0 < anneal_steps <= num_steps):
            raise ValueError(f"{type(self).__name__}: annealing needs sigma_start > sigma and 0 < anneal_steps <= "
                             f"num_steps, got sigma_start={sigma_start}, anneal_steps={anneal_steps}")
        burn_in = num_steps // 10 if burn_in is None else burn_in
        if not 0 <= burn_in < num_steps or thinning < 1:
            raise ValueError(f"{type(self).__name__}: need 0 <= burn_in < num_steps and thinning >= 1, got "
                             f"burn_in={burn_in}, thinning={thinning}, num_steps={num_steps}")
        self.sigma, self.alpha, self.num_steps = float(sigma), float(alpha), int(num_steps)
        self.step_size, self.lipschitz, self.power_iterations = step_size, lipschitz, int(power_iterations)
        self.step_fraction = float(self._default_step_fraction if step_fraction is None else step_fraction)
        self.burn_in, self.thinning = int(burn_in), int(thinning)
        self.init, self.init_std = init, float(init_std)
        self.sigma_start, self.anneal_steps = sigma_start, int(anneal_steps)

    # ------------------------------------------------------------------ public
    def _sample(self, y, operator, prior, num_samples, generator, callback) -> Tensor:
        return self._run(y, operator, prior, num_samples, generator, callback, keep=False)

    def sample_chain(self, y: Tensor, operator: Operator, prior, num_chains: int = 1,
                     generator: torch.Generator | None = None, callback=None) -> Tensor:
        """The thinned trajectory ``[num_kept, num_chains * B, ...]`` (states after ``burn_in``, every
        ``thinning``-th iteration, the last iteration included), for effective-sample-size diagnostics."""
        self.check(operator, prior)
        if num_chains < 1:
            raise ValueError(f"num_chains must be >= 1, got {num_chains}")
        self.cost = Cost()
        return self._run(y, operator, prior, num_chains, generator, callback, keep=True)

    # ------------------------------------------------------------------ pieces
    def _sigmas(self) -> list[float]:
        """Denoiser noise level per iteration (geometric annealing, then constant)."""
        sig = [self.sigma] * self.num_steps
        if self.sigma_start is not None:
            n = self.anneal_steps
            for k in range(n):
                sig[k] = self.sigma_start * (self.sigma / self.sigma_start) ** (k / max(n - 1, 1))
        return sig

    def _init_state(self, y_rep: Tensor, operator: Operator, prior, generator) -> Tensor:
        shape = (y_rep.shape[0], *prior.event_shape)
        use_pinv = self.init == "pinv" or (self.init == "auto" and operator.linear and operator.has_svd)
        if use_pinv and not operator.linear:
            raise ValueError(f"{type(self).__name__}: init='pinv' needs a linear operator; use init='noise'.")
        dtype = y_rep.real.dtype if torch.is_complex(y_rep) else y_rep.dtype
        x = self.init_std * randn(shape, generator, dtype=dtype, device=y_rep.device)
        if use_pinv:
            x = x + operator.pinv(y_rep).reshape(shape).to(x)
        return x

    def _grad_potential(self, x: Tensor, y: Tensor, operator: Operator, prior, sigma: float) -> Tensor:
        """grad U(x) = grad loss(A x, y) + alpha (x - D(x, s)) / s^2 (Tweedie's score, as in PnP-ULA)."""
        g_lik, _ = likelihood_gradient(x, y, operator, self.cost)
        with torch.no_grad():
            d = prior.denoise(x, sigma)
        self.cost.nfe += 1
        return g_lik + self.alpha * (x - d) / sigma**2

    def _step_sizes(self, x: Tensor, y: Tensor, operator: Operator, generator, sigmas: list[float]) -> list[float]:
        if self.step_size is not None:
            return [float(self.step_size)] * len(sigmas)
        L_y = self.lipschitz if self.lipschitz is not None else likelihood_lipschitz(
            operator, x, y, self.cost, self.power_iterations, generator)
        return [self.step_fraction * self._stability_limit(L_y + self.alpha / s**2) for s in sigmas]

    def _stability_limit(self, L: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _step(self, x: Tensor, grad, delta: float, generator) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, y, operator, prior, num_chains, generator, callback, keep: bool) -> Tensor:
        y_rep = repeat_measurement(y, num_chains)
        x = self._init_state(y_rep, operator, prior, generator)
        sigmas = self._sigmas()
        deltas = self._step_sizes(x, y_rep, operator, generator, sigmas)
        kept = []
        for k in range(self.num_steps):
            s = sigmas[k]
            x = self._step(x, lambda u, s=s: self._grad_potential(u, y_rep, operator, prior, s), deltas[k], generator)
            if keep and k >= self.burn_in and (self.num_steps - 1 - k) % self.thinning == 0:
                kept.append(x)
            if callback is not None:
                callback(k, self.num_steps, x)
        return torch.stack(kept) if keep else x


class ULA(_LangevinSampler):
    """Unadjusted Langevin algorithm with a plug-and-play diffusion prior (PnP-ULA, Laumont et al. 2022):
    ``x <- x - delta grad U(x) + sqrt(2 delta) z``. One denoiser call, one forward call and one gradient
    per iteration. Stable for ``delta < 2 / L``; the default step is ``0.5 / L``."""

    def _stability_limit(self, L: float) -> float:
        return 1.0 / L   # step_fraction is relative to 1/L; the Euler-Maruyama recursion diverges beyond 2/L

    def _step(self, x, grad, delta, generator):
        z = randn(x.shape, generator, like=x)
        return x - delta * grad(x) + math.sqrt(2 * delta) * z          # Euler-Maruyama of dX = -grad U dt + sqrt(2) dW


def chebyshev_t(s: int, u: float) -> float:
    """Chebyshev polynomial of the first kind T_s(u) for u >= 1: cosh(s arccosh u)."""
    return math.cosh(s * math.acosh(u))


def chebyshev_t_prime(s: int, u: float) -> float:
    """T_s'(u) = s sinh(s arccosh u) / sqrt(u^2 - 1) for u > 1."""
    return s * math.sinh(s * math.acosh(u)) / math.sqrt(u * u - 1.0)


class SKRock(_LangevinSampler):
    """SK-ROCK (Pereyra, Vargas-Mieles, Zygalakis 2020): ``num_stages`` = s gradient
    evaluations per iteration along a damped Chebyshev recursion, stable for
    ``delta <= l_s / L`` with ``l_s = (s - 0.5)^2 (2 - 4 eta / 3)`` (about s^2 times ULA's limit).

      omega_0 = 1 + eta / s^2,  omega_1 = T_s(omega_0) / T_s'(omega_0)
      mu_1 = omega_1 / omega_0,  nu_1 = s omega_1 / 2,  kappa_1 = s omega_1 / omega_0
      K_0 = x,  K_1 = x - mu_1 delta grad U(x + nu_1 sqrt(2 delta) z) + kappa_1 sqrt(2 delta) z
      K_j = -mu_j delta grad U(K_{j-1}) + nu_j K_{j-1} + kappa_j K_{j-2},  j = 2..s, with
      mu_j = 2 omega_1 T_{j-1}(omega_0) / T_j(omega_0),  nu_j = 2 omega_0 T_{j-1} / T_j,  kappa_j = 1 - nu_j
      x <- K_s
    """

    _default_step_fraction = 0.5

    def __init__(self, num_stages: int = 10, damping: float = 0.05, num_steps: int = 200, **kwargs):
        super().__init__(num_steps=num_steps, **kwargs)
        if num_stages < 2 or not 0 < damping < 1.5:
            raise ValueError(f"SKRock: need num_stages >= 2 and 0 < damping < 1.5, got {num_stages}, {damping}")
        self.num_stages, self.damping = int(num_stages), float(damping)
        s, eta = self.num_stages, self.damping
        w0 = 1.0 + eta / s**2                                   # omega_0
        w1 = chebyshev_t(s, w0) / chebyshev_t_prime(s, w0)      # omega_1
        T = [chebyshev_t(j, w0) for j in range(s + 1)]
        self._w0, self._w1 = w0, w1
        self._mu1, self._nu1, self._kappa1 = w1 / w0, s * w1 / 2, s * w1 / w0
        self._mu = [2 * w1 * T[j - 1] / T[j] for j in range(s + 1)]   # index j = 2..s used
        self._nu = [2 * w0 * T[j - 1] / T[j] for j in range(s + 1)]

    def _stability_limit(self, L: float) -> float:
        s, eta = self.num_stages, self.damping
        return (s - 0.5) ** 2 * (2 - 4.0 / 3.0 * eta) / L       # l_s / L, the stability bound of Pereyra et al. 2020

    def _step(self, x, grad, delta, generator):
        z = randn(x.shape, generator, like=x) * math.sqrt(2 * delta)
        k_prev = x                                                                      # K_0
        k = x - self._mu1 * delta * grad(x + self._nu1 * z) + self._kappa1 * z          # K_1
        for j in range(2, self.num_stages + 1):
            nu = self._nu[j]
            k, k_prev = -self._mu[j] * delta * grad(k) + nu * k + (1 - nu) * k_prev, k  # K_j
        return k

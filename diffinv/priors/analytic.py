"""Exact analytic priors: the ground truth every sampler is held against.

* ``GaussianPrior``: N(mu, diag(D) + U U^T) (diagonal, or low rank plus diagonal);
* ``GaussianMixturePrior``: sum_k w_k N(mu_k, diag(v_k)) with isotropic or diagonal covariances.

Both give the exact ``denoise(x, sigma)`` for every sigma, exact sampling, and, for a linear operator
``y = A x + sigma_y n``, the exact posterior (``posterior(A, y, sigma_y)``): a Gaussian mixture with
weights ``w_k N(y; A mu_k, A S_k A^T + sigma_y^2 I)``, means ``mu_k + G_k (y - A mu_k)`` and covariances
``S_k - G_k A S_k`` with gain ``G_k = S_k A^T (A S_k A^T + sigma_y^2 I)^-1`` (Bishop 2006, Eqs. 2.113-2.117).
Exact posterior draws use Matheron's rule, ``x + G_k (y - A x - sigma_y e)`` with ``x ~ N(mu_k, S_k)``,
which needs no d x d factorisation.
"""
from __future__ import annotations

import math
import torch
from torch import Tensor

from ..operators.base import Operator, dense_matrix
from .base import Prior


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


class GaussianMixturePrior(Prior):
    """``weights [K]`` (normalised here), ``means [K, *event_shape]``, ``variances [K]`` (isotropic)
    or ``[K, *event_shape]`` (diagonal)."""

    def __init__(self, weights: Tensor, means: Tensor, variances: Tensor | float):
        weights = torch.as_tensor(weights)
        means = torch.as_tensor(means)
        K = means.shape[0]
        super().__init__(means.shape[1:])
        if weights.shape != (K,) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f"weights must be a non-negative [K={K}] vector with positive sum, got shape {list(weights.shape)}")
        v = torch.as_tensor(variances, dtype=means.dtype)
        if v.dim() == 0:
            v = v.expand(K)
        if v.dim() == 1:
            v = v.view(K, *([1] * len(self.event_shape))).expand_as(means)
        if v.shape != means.shape or bool((v <= 0).any()):
            raise ValueError(f"variances must be positive, of shape [K], or [K, *event_shape] = {list(means.shape)}")
        self.register_buffer("weights", weights.to(means.dtype) / weights.sum())
        self.register_buffer("means", means.clone())
        self.register_buffer("variances", v.clone())

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def _denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        # p_sigma = sum_k w_k N(mu_k, diag(v_k + sigma^2)); E[x0 | x] = sum_k r_k(x) (mu_k + v_k / (v_k + sigma^2) (x - mu_k))
        xf, mu, v = _flat(x)[:, None], _flat(self.means).to(x)[None], _flat(self.variances).to(x)[None]
        tot = v + sigma.view(-1, 1, 1) ** 2
        diff = xf - mu
        logp = self.weights.to(x).log()[None] - 0.5 * ((diff**2 / tot) + tot.log()).sum(-1)
        r = torch.softmax(logp, dim=1)
        post = mu + v / tot * diff
        return (r[..., None] * post).sum(1).reshape(x.shape)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.weights.cpu().double(), num_samples, replacement=True, generator=generator)
        return self._component_sample(k.to(self.means.device), generator)

    def _component_sample(self, k: Tensor, generator: torch.Generator | None) -> Tensor:
        n = torch.randn((k.numel(), *self.event_shape), generator=generator, dtype=self.means.dtype).to(self.means.device)
        return self.means[k] + self.variances[k].sqrt() * n

    def _component_covs(self) -> Tensor:
        return torch.diag_embed(_flat(self.variances))

    def posterior(self, operator: Operator | Tensor, y: Tensor, sigma_y: float | None = None) -> "GaussianMixturePosterior":
        return GaussianMixturePosterior(self, operator, y, sigma_y)


class GaussianPrior(GaussianMixturePrior):
    """N(mean, diag(variance) + U U^T) with ``cov_factor U`` of shape ``[d, r]`` (optional).

    With a factor, the full covariance ``S = Q diag(lam) Q^T`` is diagonalised once (float64), so that the
    exact denoiser ``x0_hat = mu + Q diag(lam / (lam + sigma^2)) Q^T (x - mu)`` costs two d x d products per
    sample, for any per-sample sigma (``from_covariance`` builds the prior from a full covariance)."""

    def __init__(self, mean: Tensor, variance: Tensor | float, cov_factor: Tensor | None = None):
        mean = torch.as_tensor(mean)
        v = torch.as_tensor(variance, dtype=mean.dtype).expand_as(mean)
        super().__init__(torch.ones(1, dtype=mean.dtype), mean[None], v[None])
        d = mean.numel()
        if cov_factor is not None and (cov_factor.dim() != 2 or cov_factor.shape[0] != d):
            raise ValueError(f"cov_factor must have shape [d={d}, rank], got {list(cov_factor.shape)}")
        self.register_buffer("cov_factor", None if cov_factor is None else cov_factor.to(mean.dtype).clone())
        if cov_factor is None:
            self.register_buffer("eig_values", None)
            self.register_buffer("eig_vectors", None)
        else:
            cov = torch.diag(v.reshape(-1).double()) + cov_factor.double() @ cov_factor.double().T
            lam, Q = torch.linalg.eigh(cov)
            self.register_buffer("eig_values", lam.clamp_min(0).to(mean.dtype))
            self.register_buffer("eig_vectors", Q.to(mean.dtype))

    @classmethod
    def from_covariance(cls, mean: Tensor, covariance: Tensor) -> "GaussianPrior":
        """N(mean, covariance) for a full symmetric positive semi-definite ``covariance [d, d]``."""
        lam, Q = torch.linalg.eigh(covariance.double())
        if float(lam.min()) < -1e-10 * float(lam.max().abs()):
            raise ValueError(f"covariance is not positive semi-definite (smallest eigenvalue {float(lam.min()):.3g})")
        mean = torch.as_tensor(mean)
        nugget = max(0.5 * float(lam.min()), 1e-12 * float(lam.max()))   # the diagonal part must be positive
        factor = Q * (lam - nugget).clamp_min(0).sqrt()
        return cls(mean, torch.full_like(mean, nugget), factor.to(mean.dtype))

    @property
    def mean(self) -> Tensor:
        return self.means[0]

    def covariance(self) -> Tensor:
        return self._component_covs()[0]

    def _denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self.cov_factor is None:
            return super()._denoise(x, sigma)
        Q, lam = self.eig_vectors.to(x), self.eig_values.to(x)
        mu = _flat(self.means).to(x)
        c = (_flat(x) - mu) @ Q                                                     # [B, d] in the eigenbasis
        den = lam[None] + sigma[:, None] ** 2
        shrink = torch.where(den > 0, lam[None] / den.clamp_min(torch.finfo(x.dtype).tiny), torch.ones_like(den))
        return (mu + (shrink * c) @ Q.T).reshape(x.shape)

    def _component_sample(self, k: Tensor, generator: torch.Generator | None) -> Tensor:
        if self.cov_factor is None:
            return super()._component_sample(k, generator)
        z = torch.randn((k.numel(), self.eig_values.numel()), generator=generator, dtype=self.means.dtype)
        z = z.to(self.means.device)
        return (_flat(self.means) + (z * self.eig_values.sqrt()) @ self.eig_vectors.T).reshape(k.numel(), *self.event_shape)

    def _component_covs(self) -> Tensor:
        cov = super()._component_covs()
        if self.cov_factor is not None:
            cov = cov + (self.cov_factor @ self.cov_factor.T)[None]
        return cov


class GaussianMixturePosterior:
    """Exact posterior of a Gaussian-mixture (or Gaussian) prior under ``y = A x + sigma_y n``, for one
    measurement ``y`` (``[d_y]``, ``[1, d_y]`` or the operator's output shape). Computed in float64."""

    def __init__(self, prior: GaussianMixturePrior, operator: Operator | Tensor, y: Tensor, sigma_y: float | None = None):
        if isinstance(operator, Operator):
            A = dense_matrix(operator)
            sigma_y = operator.sigma if sigma_y is None else sigma_y
        else:
            A = torch.as_tensor(operator, dtype=torch.float64)
        if sigma_y is None or not sigma_y >= 0:
            raise ValueError(f"sigma_y must be given and >= 0, got {sigma_y!r}")
        y = y.reshape(-1).to(torch.float64)
        if A.shape != (y.numel(), prior.means[0].numel()):
            raise ValueError(f"operator matrix {list(A.shape)} does not match y ({y.numel()}) and the prior's dimension "
                             f"({prior.means[0].numel()})")
        self.prior, self.event_shape = prior, prior.event_shape
        mu = _flat(prior.means).double()                                            # [K, d]
        S = prior._component_covs().double()                                        # [K, d, d]
        SAt = S @ A.T                                                               # [K, d, dy]
        cov_y = A @ SAt + sigma_y**2 * torch.eye(A.shape[0], dtype=torch.float64)   # [K, dy, dy]
        L = torch.linalg.cholesky(cov_y)
        resid = y[None] - mu @ A.T                                                  # [K, dy]
        self.gain = torch.cholesky_solve(SAt.transpose(1, 2), L).transpose(1, 2)    # G_k = S A^T (A S A^T + s^2 I)^-1
        white = torch.linalg.solve_triangular(L, resid[..., None], upper=False)[..., 0]
        log_evidence = -0.5 * (white**2).sum(-1) - torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(-1) \
            - 0.5 * A.shape[0] * math.log(2 * math.pi)
        self.log_weights = torch.log_softmax(prior.weights.double().log() + log_evidence, dim=0)
        self.means = mu + (self.gain @ resid[..., None])[..., 0]                    # [K, d]
        self.covs = S - self.gain @ A @ S                                           # [K, d, d]
        self.A, self.y, self.sigma_y = A, y, float(sigma_y)

    @property
    def weights(self) -> Tensor:
        return self.log_weights.exp()

    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0).reshape(self.event_shape)

    def covariance(self) -> Tensor:
        w, m = self.weights, self.means
        mbar = (w[:, None] * m).sum(0)
        dm = m - mbar
        return (w[:, None, None] * (self.covs + dm[:, :, None] * dm[:, None, :])).sum(0)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws (Matheron's rule), ``[num_samples, *event_shape]`` in float64."""
        k = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        x = _flat(self.prior._component_sample(k, generator).double())
        e = torch.randn((num_samples, self.A.shape[0]), generator=generator, dtype=torch.float64)
        innov = self.y[None] - x @ self.A.T - self.sigma_y * e
        x = x + (self.gain[k] @ innov[..., None])[..., 0]
        return x.reshape(num_samples, *self.event_shape)


def random_gmm_prior(dim: int, num_components: int = 25, generator: torch.Generator | None = None,
                     dtype=torch.float64) -> GaussianMixturePrior:
    """The mixture geometry of Cardoso et al. 2023 (MCGdiff, section 4.1): 25 components with means on the grid
    (8i, 8j, ..., 8i, 8j) for i, j in {-2, ..., 2} and unit covariance, with weights drawn U(0, 1).
    MCGdiff itself draws squared standard normals as weights; the benchmark problem with MCGdiff's exact
    weights, measurement matrix and noise is ``diffinv.samplers.evaluation.make_gmm_problem``."""
    if num_components != 25:
        raise ValueError("the MCGdiff benchmark mixture has 25 components on a 5 x 5 grid")
    grid = torch.arange(-2, 3, dtype=dtype) * 8.0
    ij = torch.cartesian_prod(grid, grid)                                           # [25, 2]
    means = ij.repeat(1, (dim + 1) // 2)[:, :dim]
    weights = torch.rand(num_components, generator=generator, dtype=torch.float64).to(dtype)
    return GaussianMixturePrior(weights, means, torch.ones(num_components, dtype=dtype))


"""Evaluation of samplers against exact posteriors: the sliced Wasserstein distance and the
Gaussian-mixture benchmark of Cardoso, Idrissi, Le Corff, Moulines 2023 ("Monte Carlo guided diffusion
for Bayesian linear inverse problems", MCGdiff, ICLR 2024; Sec. 4.1 and their ``viz_gaussian.py``).

The benchmark problem, as MCGdiff draws it:
  * prior: 25 Gaussian components with unit covariance and means (8i, 8j, 8i, 8j, ...) for
    i, j in {-2, ..., 2} (``random_gmm_prior``), weights ``w_k ∝ n_k^2`` with ``n_k ~ N(0, 1)``;
  * operator: ``A = U diag(s) V[:d_y]`` where ``U, V`` are the singular vectors of a standard Gaussian
    ``d_y x d`` matrix and the singular values ``s`` are U(0, 1) draws sorted in decreasing order;
  * noise: ``sigma_y = u max(s)`` with ``u ~ U(0, 1)`` (or a fixed ``sigma``), ``y = A x* + sigma_y n`` with
    ``x*`` drawn from the prior;
  * metric: sliced Wasserstein distance between the sampler's N draws and N exact posterior draws.
Calibration rows: ``prior`` (N prior draws: the distance of knowing nothing), ``exact`` (a second,
independent set of N exact draws: the Monte Carlo floor of the metric) and ``posterior mean`` (N copies of the
exact posterior mean: the distance of a sampler that has collapsed onto the right point, which a distance
relative to the prior's alone does not expose: it is about 0.06 of the prior's on this problem).
"""
from __future__ import annotations

import importlib
import pkgutil
import statistics
import time
from typing import Any, Callable

import torch
from torch import Tensor

from ..operators import GaussianNoise, MatrixOperator
from ..priors import GaussianMixturePrior, random_gmm_prior
from . import base as _base

# Per-algorithm settings for the Gaussian-mixture benchmark (tuned at d = 8 / d_y = 4, seeds 0-4, and checked
# at d = 80 / d_y = 4, seed 0; the mixture lives on a scale of +-16 with unit components, so the defaults for images in [-1, 1]
# are not all suitable). Algorithms not listed run with their defaults.
GMM_HPARAMS: dict[str, dict[str, Any] | Callable[[float], dict[str, Any]]] = {
    # annealed MCMC: the denoiser's noise level falls geometrically from sigma_start (see mcmc.py); chains start
    # from broad noise. These still leave 5-20% of the mass in wrong modes (the weights of the smoothed problem
    # at the level where chains stop crossing between modes), see the report in tests/test_gmm_benchmark.py.
    "ULA": dict(sigma=0.1, num_steps=2000, sigma_start=10.0, anneal_steps=1500, init="noise", init_std=16.0),
    "SKRock": dict(sigma=0.1, num_steps=1500, sigma_start=20.0, anneal_steps=1400, init="noise", init_std=16.0),
    # RED-diff: lam in the Bayesian scaling of the data term (module docstring); random starts give the spread
    "REDDiff": dict(num_steps=1000, lr=0.25, lam=16.0, init="zeros", init_std=16.0),
    # PnP-DM: a slower coupling schedule than the paper's (rho 10, decay 0.9) spends longer where modes still mix
    "PnPDM": dict(num_iters=200, rho=8.0, rho_decay=0.98, rho_min=0.1, num_diffusion_steps=40, init_std=16.0),
    # posterior SDE: 100 Euler steps leave a visible discretisation error with the norm guidance; 200 do not
    "PosteriorSDE": dict(num_steps=200, guidance="norm", alpha=1.0, solver="euler"),
    # the other samplers: as tuned in tests/test_samplers_a.py (a value may be a function of sigma_y), except DPS
    # (zeta 0.5: mean SW / prior 0.29 over seeds 0-4 against 0.33 at zeta 1; scale_by_sigma_y diverges) and PiGDM
    # (data_variance 30: 0.12 against 0.59 at 1 and 0.26 at 130), both chosen on seeds 0-4 at d = 8, d_y = 4
    "DPS": dict(zeta=0.5),
    "PiGDM": dict(data_variance=30.0),
    # EnKG: the tempered Kalman update (the reference's normalised step keeps half the within-mode spread: 0.46-0.56
    # of the exact std at seeds 0-4, and ends 2-3 posterior std off); with 1000 particles in 8-80 dimensions the
    # deterministic flow needs neither fresh noise nor spread relaxation
    "EnKG": dict(batch_size=None, update="kalman", num_updates=1),
    "DDRM": dict(num_steps=100),
    "DiffPIR": dict(zeta=1.0, lambda_=1.75),
    "DAPS": lambda sigma_y: dict(lr=0.5 * sigma_y**2),
    # the derivative-free samplers and LGD on shortened grids (their published 1000 steps and thousands of queries
    # are for 128 x 128 fields), chosen on seeds 0-4 at d = 8, d_y = 4 (mean SW / prior in brackets): DPG B = 10
    # (0.12; B = 30 0.28), DPS-GSG zeta 2 (0.57; zeta 1 0.67, 5 0.52 with 5x the exact spread, 20 1.8), LGD weight 0.3
    # with data_variance 30 (0.52; weight 1 0.82: with sigma_y ~ 0.5 the 10 draws' weights degenerate)
    "DPG": dict(num_steps=200, num_mc_samples=32, batch_size=None, guidance_scale=10.0),
    "SCG": dict(num_steps=100, num_candidates=8, batch_size=None),
    "DPSGSG": dict(num_steps=200, num_queries=32, batch_size=None, guidance_scale=2.0),
    "LGD": dict(num_steps=200, num_mc_samples=10, data_variance=30.0, guidance_scale=0.3),
    # the SMC samplers: 1000 steps (with 100 the weights collapse where sigma_y ~ 0.003, and MCGdiff's pinned
    # coordinates come out narrow); TDS's twist inflated with the mixture's variance (its r_t^2 as PiGDM's)
    "MCGdiff": dict(num_steps=1000),
    "TDS": dict(num_steps=1000, data_variance=130.0),
}


def gmm_hparams(name: str, sigma_y: float, overrides: dict | None = None) -> dict:
    """The benchmark's keyword arguments for ``name`` (``overrides`` first, then ``GMM_HPARAMS``)."""
    value = (overrides or {}).get(name, GMM_HPARAMS.get(name, {}))
    return dict(value(sigma_y) if callable(value) else value)


def load_all_samplers() -> dict[str, type]:
    """Import every module of ``diffinv.samplers`` (registering its classes in ``SAMPLERS``); a module that
    fails to import raises an ``ImportError`` naming it: a benchmark that silently lost a sampler would report
    the others as if they were all."""
    import diffinv.samplers as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{pkg.__name__}.{info.name}")
        except Exception as err:  # noqa: BLE001 - re-raised with the module's name
            raise ImportError(f"diffinv.samplers.{info.name} failed to import ({type(err).__name__}: {err}); fix it "
                              f"(or name the module with a leading '_' to keep it out of the registry)") from err
    return dict(_base.SAMPLERS)


def sliced_wasserstein(a: Tensor, b: Tensor, num_projections: int = 1000, p: int = 2,
                       generator: torch.Generator | None = None) -> float:
    """Sliced p-Wasserstein distance ``(E_theta W_p^p(theta^T a, theta^T b))^(1/p)`` between the empirical
    measures of ``a [n, ...]`` and ``b [m, ...]`` (uniform random directions on the sphere). The 1-D
    distances compare quantile functions; when n != m both are evaluated on a common grid of levels."""
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"sliced_wasserstein: dimensions differ ({a.shape[1]} vs {b.shape[1]})")
    theta = torch.randn((a.shape[1], num_projections), generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ theta, dim=0)
    pb, _ = torch.sort(b @ theta, dim=0)
    if pa.shape[0] != pb.shape[0]:
        n = max(pa.shape[0], pb.shape[0])
        levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        pa, pb = _quantiles(pa, levels), _quantiles(pb, levels)
    return float(((pa - pb).abs() ** p).mean() ** (1.0 / p))


def _quantiles(sorted_proj: Tensor, levels: Tensor) -> Tensor:
    n = sorted_proj.shape[0]
    idx = (levels * n).floor().long().clamp(0, n - 1)   # the empirical quantile function (a step function)
    return sorted_proj[idx]


def component_of(samples: Tensor, posterior) -> Tensor:
    """Index of the exact posterior's mixture component of largest responsibility for each draw ``[n]``."""
    x = samples.reshape(samples.shape[0], -1).double()
    L = torch.linalg.cholesky(posterior.covs)                                     # [K, d, d]
    diff = x[None] - posterior.means[:, None]                                     # [K, n, d]
    white = torch.linalg.solve_triangular(L, diff.transpose(1, 2), upper=False)   # [K, d, n]
    log_det = torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(-1)[:, None]
    return (posterior.log_weights[:, None] - 0.5 * white.pow(2).sum(1) - log_det).argmax(0)


def mode_statistics(samples: Tensor, posterior) -> dict[str, float]:
    """How draws split over the exact posterior's mixture components and how they sit inside the heaviest one.

    Each draw is assigned to the component of largest posterior responsibility (the components of the MCGdiff
    mixture are 8 apart with unit variance, so the assignment is unambiguous for draws near any mode).
    ``mode_tv``: total variation between the draws' component frequencies and the exact posterior weights
    (0 = right proportions, 1 = all mass elsewhere). In the heaviest exact component, whitened by its covariance
    ``S_k = Q diag(lam) Q^T``: ``mode_mean_error`` (RMS over directions of the draws' mean offset, in std units)
    and ``mode_spread`` (RMS of the draws' std, 1 for exact draws), from the draws assigned to it."""
    x = samples.reshape(samples.shape[0], -1).double()
    logw, means, covs = posterior.log_weights, posterior.means, posterior.covs
    k = component_of(samples, posterior)
    freq = torch.bincount(k, minlength=means.shape[0]).double() / x.shape[0]
    tv = 0.5 * float((freq - logw.exp()).abs().sum())
    top = int(logw.argmax())
    inside = x[k == top]
    if inside.shape[0] < 2:
        return {"mode_tv": tv, "mode_mean_error": float("inf"), "mode_spread": 0.0}
    lam, Q = torch.linalg.eigh(covs[top])
    c = (inside - means[top]) @ Q / lam.sqrt()
    return {"mode_tv": tv, "mode_mean_error": float(c.mean(0).pow(2).mean().sqrt()),
            "mode_spread": float(c.std(0).pow(2).mean().sqrt())}


def make_gmm_problem(dim: int = 8, dy: int = 4, sigma: float | None = None, seed: int = 0,
                     dtype: torch.dtype = torch.float32):
    """The MCGdiff benchmark problem (see the module docstring): ``(prior, operator, y [1, dy], x_true [1, dim])``."""
    if not 1 <= dy <= dim:
        raise ValueError(f"make_gmm_problem: need 1 <= dy <= dim, got dy={dy}, dim={dim}")
    g = torch.Generator().manual_seed(seed)
    means = random_gmm_prior(dim, generator=g, dtype=torch.float64).means
    weights = torch.randn(25, generator=g, dtype=torch.float64) ** 2           # MCGdiff: randn^2, normalised
    prior = GaussianMixturePrior(weights, means, torch.ones(25, dtype=torch.float64)).to(dtype)
    a = torch.randn(dy, dim, generator=g, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(a, full_matrices=True)
    s = torch.sort(torch.rand(dy, generator=g, dtype=torch.float64), descending=True).values
    A = U @ torch.diag(s) @ Vh[:dy]
    u = float(torch.rand((), generator=g, dtype=torch.float64))
    sigma_y = float(u * s.max()) if sigma is None else float(sigma)
    operator = MatrixOperator(A.to(dtype), noise=GaussianNoise(sigma_y))
    x_true = prior.sample(1, g)
    y = operator.measure(x_true, g)
    return prior, operator, y, x_true


def make_gaussian_problem(dim: int = 8, dy: int = 4, sigma: float | None = 0.1, seed: int = 0,
                          dtype: torch.dtype = torch.float32):
    """The linear-Gaussian companion of ``make_gmm_problem``: one Gaussian component with mean drawn from
    N(0, 4 I) and per-coordinate variances in U(0.5, 4) (anisotropic, so a sampler that ignores the prior's
    shape shows it), under the same operator; the noise is sigma_y = 0.1 by default (``None``: MCGdiff's random
    level), so that the observed directions are informed well beyond the prior and a sampler's intervals there
    are tested. ``(prior, operator, y, x_true)``."""
    g = torch.Generator().manual_seed(10_000 + seed)
    mean = 2.0 * torch.randn(1, dim, generator=g, dtype=torch.float64)
    var = 0.5 + 3.5 * torch.rand(1, dim, generator=g, dtype=torch.float64)
    prior = GaussianMixturePrior(torch.ones(1, dtype=torch.float64), mean, var).to(dtype)
    _, operator, _, _ = make_gmm_problem(dim, dy, sigma, seed, dtype)
    x_true = prior.sample(1, g)
    return prior, operator, operator.measure(x_true, g), x_true


def interval_coverage(samples: Tensor, reference: Tensor, levels=(0.5, 0.9, 0.95), num_directions: int = 200,
                      generator: torch.Generator | None = None) -> dict[float, float]:
    """Coverage of central credible intervals along random directions: for each unit direction u, the interval
    between the (1 - level) / 2 and (1 + level) / 2 quantiles of the sampler's projections ``samples @ u``; the
    coverage is the fraction of the exact draws' projections ``reference @ u`` inside it, averaged over directions.
    A calibrated sampler covers ``level``; narrow (overconfident) draws cover less, wide ones more."""
    s, r = samples.reshape(samples.shape[0], -1).double(), reference.reshape(reference.shape[0], -1).double()
    u = torch.randn(s.shape[1], num_directions, generator=generator, dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    ps, pr = s @ u, r @ u                                                    # [S, J], [R, J]
    out = {}
    for level in levels:
        q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
        lo, hi = torch.quantile(ps, q, dim=0)                                # [J] each
        out[float(level)] = float(((pr >= lo) & (pr <= hi)).double().mean())
    return out


def run_gmm_benchmark(dim: int = 8, dy: int = 4, sigma: float | None = None, seed: int = 0, num_samples: int = 1000,
                      algorithms: list[str] | None = None, hyperparameters: dict[str, dict] | None = None,
                      num_projections: int = 1000, verbose: bool = False,
                      postprocess: Callable[[str, Tensor], Tensor] | None = None) -> dict:
    """Run every requested (default: every registered) sampler that can work on a ``MatrixOperator`` with a
    ``GaussianMixturePrior``; returns ``{"config": {...}, "results": {name: {"sliced_wasserstein", "nfe",
    "forward_calls", "seconds"}}}`` including the calibration rows ``prior`` and ``exact``. A sampler that
    raises is reported with ``"error"`` instead of numbers. ``postprocess(name, samples)`` (tests: deliberately
    broken samplers) transforms each sampler's draws before they are scored."""
    registry = load_all_samplers()
    prior, operator, y, _ = make_gmm_problem(dim, dy, sigma, seed)
    post = prior.posterior(operator, y)
    g_ref = torch.Generator().manual_seed(seed + 1)
    ref = post.sample(num_samples, g_ref)
    g_sw = lambda: torch.Generator().manual_seed(seed + 2)  # noqa: E731 - same projections for every row
    results: dict[str, dict] = {}

    def record(name, samples, cost=None, seconds=0.0):
        results[name] = {"sliced_wasserstein": sliced_wasserstein(samples, ref, num_projections, generator=g_sw()),
                         **mode_statistics(samples, post),
                         "nfe": int(cost.nfe) if cost else 0, "forward_calls": int(cost.forward_calls) if cost else 0,
                         "seconds": float(seconds)}
        if verbose:
            r = results[name]
            print(f"{name:>14s}  SW {r['sliced_wasserstein']:8.4f}  NFE {r['nfe']:7d}  fwd {r['forward_calls']:7d}  "
                  f"{r['seconds']:7.2f} s", flush=True)

    record("prior", prior.sample(num_samples, torch.Generator().manual_seed(seed + 3)))
    record("exact", post.sample(num_samples, torch.Generator().manual_seed(seed + 4)))
    record("posterior mean", post.mean().reshape(1, -1).expand(num_samples, -1))
    names = sorted(registry) if algorithms is None else list(algorithms)
    used: dict[str, dict] = {}
    for name in names:
        if name not in registry:
            raise ValueError(f"unknown algorithm {name!r}; registered: {sorted(registry)}")
        cls = registry[name]
        if not cls.requires <= _base.capabilities(operator, prior):
            continue
        used[name] = gmm_hparams(name, operator.sigma, hyperparameters)
        sampler = cls(**used[name])
        t0 = time.perf_counter()
        try:
            out = sampler.sample(y, operator, prior, num_samples=num_samples, generator=torch.Generator().manual_seed(seed + 5))
        except Exception as err:  # noqa: BLE001 - one failing sampler must not hide the others
            results[name] = {"error": f"{type(err).__name__}: {err}"}
            if verbose:
                print(f"{name:>14s}  ERROR {results[name]['error']}", flush=True)
            continue
        record(name, out if postprocess is None else postprocess(name, out), sampler.cost, time.perf_counter() - t0)
    config = {"dim": dim, "dy": dy, "sigma_y": operator.sigma, "seed": seed, "num_samples": num_samples,
              "num_projections": num_projections, "hyperparameters": used}
    return {"config": config, "results": results}


def run_gmm_benchmark_seeds(seeds: list[int], **kwargs) -> dict:
    """``run_gmm_benchmark`` over several random problems (MCGdiff averages over many): per algorithm the
    mean sliced Wasserstein distance, NFE, forward calls and seconds over the seeds, the per-seed
    distances (``sliced_wasserstein_per_seed``) and the means of the per-seed ratios to the ``prior`` row
    (``ratio_to_prior``) and to the ``posterior mean`` row (``ratio_to_mean``: below 1 means better than collapsing
    onto the exact posterior mean). An algorithm that fails on any seed is reported with that seed's ``error``."""
    if not seeds:
        raise ValueError("run_gmm_benchmark_seeds: give at least one seed")
    reports = [run_gmm_benchmark(seed=s, **kwargs) for s in seeds]
    names = list(reports[0]["results"])
    results: dict[str, dict] = {}
    for name in names:
        rows = [r["results"].get(name, {"error": "missing"}) for r in reports]
        errors = [f"seed {s}: {row['error']}" for s, row in zip(seeds, rows) if "error" in row]
        if errors:
            results[name] = {"error": "; ".join(errors)}
            continue
        sw = [row["sliced_wasserstein"] for row in rows]
        ratio = lambda ref: sum(row["sliced_wasserstein"] / r["results"][ref]["sliced_wasserstein"]  # noqa: E731
                                for row, r in zip(rows, reports)) / len(rows)
        results[name] = {"sliced_wasserstein": sum(sw) / len(sw),
                         "nfe": round(sum(row["nfe"] for row in rows) / len(rows)),
                         "forward_calls": round(sum(row["forward_calls"] for row in rows) / len(rows)),
                         "seconds": sum(row["seconds"] for row in rows) / len(rows),
                         "sliced_wasserstein_per_seed": sw, "ratio_to_prior": ratio("prior"),
                         "ratio_to_mean": ratio("posterior mean"),
                         "mode_tv": sum(row["mode_tv"] for row in rows) / len(rows),
                         "mode_spread": statistics.median(row["mode_spread"] for row in rows),
                         "mode_mean_error": statistics.median(row["mode_mean_error"] for row in rows)}
    config = {**reports[0]["config"], "seed": list(seeds), "sigma_y": [r["config"]["sigma_y"] for r in reports]}
    return {"config": config, "results": results}


def format_table(report: dict) -> str:
    multi = any("ratio_to_prior" in r for r in report["results"].values())
    head = f"{'algorithm':>14s} {'SW':>9s} {'NFE':>8s} {'forward':>8s} {'seconds':>8s}"
    rows = [head + (f" {'SW/prior':>9s} {'SW/mean':>8s}  per seed" if multi else "")]
    for name, r in report["results"].items():
        if "error" in r:
            rows.append(f"{name:>14s}  error: {r['error']}")
            continue
        line = f"{name:>14s} {r['sliced_wasserstein']:9.4f} {r['nfe']:8d} {r['forward_calls']:8d} {r['seconds']:8.2f}"
        if multi:
            line += (f" {r['ratio_to_prior']:9.3f} {r['ratio_to_mean']:8.3f}  "
                     + " ".join(f"{v:.2f}" for v in r["sliced_wasserstein_per_seed"]))
        rows.append(line)
    return "\n".join(rows)


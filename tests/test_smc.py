"""The sequential Monte Carlo samplers (MCGdiff, TDS, FPS-SMC) and their shared mechanism (``diffinv/samplers/smc.py``).

(a) The mechanism: systematic resampling (unbiased copy counts, floor / ceil of N w, never a weightless particle),
    the effective sample size, the ESS-threshold rule applied per measurement, the sample-major gather, and the ESS
    record every sampler publishes.
(b) Convergence on the Gaussian-mixture problem of the test bed (``evaluation.make_gmm_problem``, d = 8): the sliced
    Wasserstein distance to exact posterior draws falls as the particles grow (its median over the seeds, for
    N = 256, 1024, 4096) and at N = 4096 is within twice the ``exact`` row's (a second set of N exact draws against
    the same reference, as in ``run_gmm_benchmark``) on at least 4 of the 5 seeds, for d_y = 1, 2, 4 (``slow``); a
    two-seed d_y = 4 version in the default suite.
(c) A one-component mixture (a Gaussian with diagonal variances 0.1 to 10, so the posterior is a known Gaussian):
    mean and covariance matched within the Monte Carlo tolerance of the draws' effective sample size.

What is measured, not assumed (``python tests/test_smc.py NAME THREADS`` prints the figures): TDS meets (b) and (c)
(SW / exact at N = 4096: d_y 1 [1.73, 3.68, 0.5, 0.6, 1.14], d_y 2 all <= 1.7, d_y 4 all <= 1.39). MCGdiff meets (c)
and its median SW falls with N, but at N = 4096 only 2, 3 and 3 of the 5 seeds are
within 2x for d_y = 1, 2, 4 (worst 12x, 2.2x, 11x): its N draws come from one particle system that resamples every
few tens of steps, so they share ancestors and their Monte Carlo error is several times that of N independent draws
(the paper's mixture experiment draws every sample from its own particle system). With that protocol
(``particles_per_draw``: 256 draws, each from its own system of n = 8, 32, 128 particles, ``slow``) MCGdiff meets
the criterion: the median SW falls with n for every d_y (d_y 1: 2.27, 1.29, 0.85; d_y 2: 2.04, 1.12, 0.68; d_y 4:
0.375, 0.133, 0.115) and at n = 128 it is within 2x on 5, 4 and 5 of the 5 seeds (d_y 2, seed 3: 4.6x).
FPS-SMC is overconfident by construction (its
observations y_t of the different levels are treated as independent given the signal, so the data count many
times: the posterior variance comes out 4-20 % of the exact one, see ``fps_smc.py``). (e) shows that this is the
algorithm's: in 1-D its draws have the variance of the exact filter of its own model (a Kalman recursion, to
0.5-0.7 %), 5-9 % of the posterior's. Its (b) and (c) cases are
``xfail(strict=True)``: if they start passing, the record here is wrong. Broken variants (the weights dropped, which
is plain guided diffusion with the same proposals; resampling by inverted weights; for TDS the likelihood counted
twice) fail the same checks.
"""
from __future__ import annotations

import math
import statistics

import pytest
import torch

from diffinv.operators import GaussianNoise, MatrixOperator
from diffinv.priors import GaussianMixturePrior
from diffinv.samplers import FPSSMC, MCGdiff, TDS
from diffinv.samplers.evaluation import make_gmm_problem, sliced_wasserstein
from diffinv.samplers.smc import (categorical_draw, effective_sample_size, ess_rule, gather_particles,
                                  normalize_log_weights, systematic_resample)
from posterior_cases import _TwiceTheLikelihood


# ============================================================================ (a) the mechanism
def _counts(idx: torch.Tensor, n: int) -> torch.Tensor:
    ones = torch.ones_like(idx, dtype=torch.float64)
    return torch.zeros(n, idx.shape[1], dtype=torch.float64).scatter_add_(0, idx, ones)


def test_systematic_resampling_copies_each_particle_floor_or_ceil_of_n_w_times_and_is_unbiased():
    g = torch.Generator().manual_seed(0)
    n, b, k = 16, 3, 2000
    log_w = 2 * torch.randn(n, b, generator=g, dtype=torch.float64)
    nw = n * torch.softmax(log_w, 0)
    total = torch.zeros(n, b, dtype=torch.float64)
    for j in range(k):                               # u on a fine grid of [0, 1): the average is the integral over u
        idx = systematic_resample(log_w, torch.full((b,), (j + 0.5) / k, dtype=torch.float64))
        assert idx.dtype == torch.long and idx.shape == (n, b) and bool((idx[1:] >= idx[:-1]).all())
        c = _counts(idx, n)
        assert bool(((c == nw.floor()) | (c == nw.ceil())).all()), "systematic resampling copies floor or ceil of N w"
        total += c
    # E_u[count_i] = N w_i exactly; the grid average is off by at most (number of jumps of the count in u) / k
    assert float((total / k - nw).abs().max()) <= 2.0 / k


def test_systematic_resampling_with_random_uniforms_is_unbiased():
    g = torch.Generator().manual_seed(1)
    n, b, k = 8, 2, 4000
    log_w = torch.randn(n, b, generator=g, dtype=torch.float64)
    nw = n * torch.softmax(log_w, 0)
    counts = torch.stack([_counts(systematic_resample(log_w, torch.rand(b, generator=g, dtype=torch.float64)), n)
                          for _ in range(k)])
    # a count is floor or ceil of N w, so its std is at most 1/2: the mean of k counts within 5 * 0.5 / sqrt(k)
    assert float((counts.mean(0) - nw).abs().max()) < 5 * 0.5 / math.sqrt(k)


def test_resampling_keeps_equal_weights_in_place_and_never_picks_a_weightless_particle():
    n = 10
    # (a position that falls exactly on a cumulative weight, u = 0 here, may land on either side in floating point)
    idx = systematic_resample(torch.zeros(n, 3, dtype=torch.float64), torch.tensor([1e-9, 0.5, 0.999],
                                                                                     dtype=torch.float64))
    assert torch.equal(idx, torch.arange(n)[:, None].expand(n, 3))
    log_w = torch.zeros(n, 1, dtype=torch.float64)
    log_w[::2] = -math.inf
    for u in (1e-9, 0.3, 0.999999):
        idx = systematic_resample(log_w, torch.tensor([u], dtype=torch.float64))
        assert bool((idx % 2 == 1).all()) and torch.equal(_counts(idx, n)[1::2, 0], torch.full((n // 2,), 2.0,
                                                                                                dtype=torch.float64))


def test_effective_sample_size_of_uniform_degenerate_and_general_weights():
    n = 64
    assert torch.allclose(effective_sample_size(torch.zeros(n, 3)), torch.full((3,), float(n)))
    one = torch.full((n, 1), -math.inf, dtype=torch.float64)
    one[5] = 3.0
    assert torch.allclose(effective_sample_size(one), torch.ones(1, dtype=torch.float64))
    half = torch.zeros(n, 1, dtype=torch.float64)
    half[: n // 2] = -math.inf
    assert torch.allclose(effective_sample_size(half), torch.tensor([n / 2.0], dtype=torch.float64))
    g = torch.Generator().manual_seed(2)
    lw = torch.randn(n, 4, generator=g, dtype=torch.float64)
    w = lw.exp()
    assert torch.allclose(effective_sample_size(lw), w.sum(0) ** 2 / (w**2).sum(0))
    assert torch.allclose(effective_sample_size(lw + 100.0), effective_sample_size(lw))   # per-column constants
    assert torch.allclose(normalize_log_weights(lw).exp().sum(0), torch.ones(4, dtype=torch.float64))


def test_the_threshold_rule_acts_per_measurement():
    n = 8
    lw = torch.zeros(n, 3, dtype=torch.float64)     # column 0: equal weights (ESS 8)
    lw[1:, 1] = -math.inf                           # column 1: one particle (ESS 1)
    lw[: n // 2, 2] = -math.inf                     # column 2: half the particles (ESS 4 = 0.5 N)
    u = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    idx, new, ess, resampled = ess_rule(lw, 0.5, u)
    assert torch.allclose(ess, torch.tensor([8.0, 1.0, 4.0], dtype=torch.float64))
    assert resampled.tolist() == [False, True, False]                       # strictly below threshold * N
    assert torch.equal(idx[:, 0], torch.arange(n)) and torch.equal(idx[:, 2], torch.arange(n))
    equal = torch.full((n,), -math.log(n), dtype=torch.float64)
    assert bool((idx[:, 1] == 0).all()) and torch.allclose(new[:, 1], equal)
    assert torch.allclose(new[:, 0], normalize_log_weights(lw)[:, 0])          # kept, normalised
    idx, new, _, resampled = ess_rule(lw, 0.6, u)
    assert resampled.tolist() == [False, True, True]
    assert bool((idx[:, 2] >= n // 2).all()) and torch.allclose(new[:, 2], torch.full((n,), -math.log(n),
                                                                                      dtype=torch.float64))
    assert ess_rule(lw, 0.0, u)[3].tolist() == [False, False, False]


def test_gather_follows_the_sample_major_layout():
    n, b = 4, 3
    x = torch.arange(n * b, dtype=torch.float64)[:, None] * torch.ones(1, 2)     # row n * B + b holds n * B + b
    idx = torch.tensor([[3, 0, 1], [3, 0, 1], [2, 1, 1], [0, 2, 3]])
    out = gather_particles(x, idx).view(n, b, 2)
    for k in range(n):
        for j in range(b):
            assert float(out[k, j, 0]) == idx[k, j] * b + j


def _small_problem(b: int = 2, sigma: float = 0.3):
    g = torch.Generator().manual_seed(0)
    prior = GaussianMixturePrior(torch.ones(2), torch.tensor([[2.0] * 4, [-2.0] * 4]), torch.ones(2))
    op = MatrixOperator(torch.randn(2, 4, generator=g), noise=GaussianNoise(sigma))
    x = prior.sample(b, g)
    return prior, op, op.measure(x, g)


@pytest.mark.parametrize("make, decisions", [(lambda: MCGdiff(num_steps=12), 12), (lambda: TDS(num_steps=12), 11),
                                             (lambda: FPSSMC(num_steps=12), 12)], ids=["MCGdiff", "TDS", "FPSSMC"])
def test_every_sampler_records_its_ess_per_step_and_measurement(make, decisions):
    prior, op, y = _small_problem()
    s = make()
    out = s.sample(y, op, prior, num_samples=32, generator=torch.Generator().manual_seed(1))
    assert out.shape == (64, 4)
    assert s.ess.shape == (decisions, 2) and s.resampled.shape == (decisions, 2) and s.resampled.dtype == torch.bool
    assert s.ess.device == s.final_ess.device and bool(((s.ess > 0) & (s.ess <= 32 + 1e-6)).all())
    assert s.final_ess.shape == (2,) and bool(((s.final_ess > 0) & (s.final_ess <= 32 + 1e-6)).all())
    assert torch.equal(s.resampled, s.ess < s.threshold * 32)                     # the rule, per measurement
    s.threshold = 1.0                                                            # resample whenever weights differ
    s.sample(y, op, prior, num_samples=32, generator=torch.Generator().manual_seed(1))
    assert int(s.resampled.sum()) > 0


def test_fps_smc_without_an_svd_follows_its_svd_path():
    """The conjugate-gradient path (Matheron's rule) draws from the same conditionals as the spectral one: on a
    Gaussian prior, the two runs' means and stds per coordinate agree to the runs' Monte Carlo error."""

    class NoSVD(MatrixOperator):
        has_svd = False

    g = torch.Generator().manual_seed(3)
    prior = GaussianMixturePrior(torch.ones(1), torch.zeros(1, 4), torch.tensor([[4.0, 1.0, 0.5, 2.0]]))
    op = MatrixOperator(torch.randn(2, 4, generator=g), noise=GaussianNoise(0.3))
    y = op.measure(prior.sample(2, g), g)
    runs = []
    for o in (op, NoSVD(op.matrix, noise=op.noise)):
        s = FPSSMC(num_steps=100)
        out = s.sample(y, o, prior, num_samples=4000, generator=torch.Generator().manual_seed(0)).view(4000, 2, 4)
        runs.append((out.mean(0), out.std(0), s.cost.forward_calls))
    (m1, s1, f1), (m2, s2, f2) = runs
    assert f1 == 0 and f2 > 0
    # two particle systems that resample share ancestors: their means differ by several times 1 / sqrt(4000) std
    assert float(((m1 - m2) / s1).abs().max()) < 0.25, (m1, m2, s1)
    assert float((s1 / s2 - 1).abs().max()) < 0.15, (s1, s2)          # measured: 0.17 std and 5 %


# ============================================================================ broken variants (proof of failure)
class _NoWeights:
    """Drops every weight: the proposals alone, i.e. guided diffusion without the SMC correction."""

    def _reweight(self, log_w, generator, *tensors):
        return super()._reweight(torch.zeros_like(log_w), generator, *tensors)

    def _finish(self, log_w, x, generator):
        return super()._finish(torch.zeros_like(log_w), x, generator)


class _InvertedResampling:
    """Resamples by the inverted weights (the lightest particles get the copies); the weights are kept."""

    def _reweight(self, log_w, generator, *tensors):
        return super()._reweight(-log_w, generator, *tensors)

    def _finish(self, log_w, x, generator):
        return super()._finish(-log_w, x, generator)


BROKEN = {"no weights": _NoWeights, "inverted resampling": _InvertedResampling,
          "likelihood twice": _TwiceTheLikelihood}


def broken(cls, mixin):
    return type(f"_{mixin.__name__.strip('_')}{cls.__name__}", (mixin, cls), {})


# ============================================================================ (b) convergence on the mixture
# Settings: MCGdiff and TDS with 1000 steps (their weights lose less per step: at 100-200 steps TDS collapses on the
# problems with sigma_y ~ 0.003-0.005 and MCGdiff narrows the observed coordinates, see mcgdiff.py), TDS's twist
# inflated with the mixture's variance (data_variance 130, as PiGDM's r_t^2); FPS-SMC as published.
GMM = {"MCGdiff": lambda: MCGdiff(num_steps=1000), "TDS": lambda: TDS(num_steps=1000, data_variance=130.0),
       "FPSSMC": lambda: FPSSMC()}
SEEDS, DYS, SIZES = (0, 1, 2, 3, 4), (1, 2, 4), (256, 1024, 4096)


def gmm_distances(make, dy: int, seed: int, n: int, num_projections: int = 1000,
                  draws: int | None = None) -> tuple[float, float]:
    """``(SW of the sampler's draws, SW of as many exact draws)`` to the same exact reference draws, with the seeds of
    ``run_gmm_benchmark``. ``draws=None``: the n draws of one system of n particles; ``draws=M``: M draws, each from
    its own system of n particles (``particles_per_draw=n``, the protocol of the MCGdiff paper's mixture runs)."""
    prior, op, y, _ = make_gmm_problem(8, dy, seed=seed)
    post = prior.posterior(op, y)
    m = n if draws is None else draws
    ref = post.sample(m, torch.Generator().manual_seed(seed + 1))
    exact = post.sample(m, torch.Generator().manual_seed(seed + 4))
    sampler = make()
    if draws is not None:
        sampler.particles_per_draw = n
    out = sampler.sample(y, op, prior, num_samples=m, generator=torch.Generator().manual_seed(seed + 5))
    sw = lambda a: sliced_wasserstein(a, ref, num_projections, generator=torch.Generator().manual_seed(seed + 2))  # noqa
    return sw(out), sw(exact)


def convergence_violations(make, dys=DYS, seeds=SEEDS, sizes=SIZES, draws: int | None = None) -> list[str]:
    bad = []
    for dy in dys:
        rows = {n: [gmm_distances(make, dy, s, n, draws=draws) for s in seeds] for n in sizes}
        # the median over the seeds: one seed's mode weights can be off at one N (TDS, d_y 2, seed 4, N 1024: SW 2.0
        # against 0.67 at N 256 and 0.45 at 4096), which a mean would turn into a rise
        medians = [statistics.median(sw for sw, _ in rows[n]) for n in sizes]
        if not all(a > b for a, b in zip(medians, medians[1:])):
            bad.append(f"d_y {dy}: median SW over the seeds does not fall with N {list(sizes)}: {medians}")
        ratios = [sw / ex for sw, ex in rows[sizes[-1]]]
        need = len(seeds) - 1 if len(seeds) == 5 else len(seeds)
        if sum(r <= 2 for r in ratios) < need:
            bad.append(f"d_y {dy}: SW / exact SW at N = {sizes[-1]} is {[round(r, 2) for r in ratios]} (need <= 2 on "
                       f"{need} of {len(seeds)})")
    return bad


FPS_BIASED = pytest.mark.xfail(strict=True, reason="FPS-SMC counts the diffused data as independent observations "
                                                   "(overconfident, see fps_smc.py)")
MCG_SHORT = pytest.mark.xfail(strict=True, reason="MCGdiff's single particle system: ancestors shared by the N draws "
                                                  "(measured: 2-3 of 5 seeds within 2x, see the module docstring)")


# MCGdiff's one system is not in the default suite: its SW ratio at N = 4096 is a draw of its mode-weight error
# (d_y 4, seeds 0-4: 1.73, 1.19, 1.46, 2.02, 11.2; seed 1 gave 2.23 on another CPU), and the fall with N alone does
# not catch it without its weights (measured); the full grid records it (MCG_SHORT), and the default suite holds its
# independent systems to the exact draws (test_mcgdiff_independent_systems_beat_the_proposal_default_suite).
@pytest.mark.parametrize("name", ["TDS", pytest.param("FPSSMC", marks=FPS_BIASED)])
def test_sliced_wasserstein_falls_with_particles_default_suite(name):
    """Small version: d_y = 4, seeds 0 and 1, N = 256 and 4096 (TDS with 200 steps)."""
    fast = {"TDS": lambda: TDS(num_steps=200, data_variance=130.0), "FPSSMC": lambda: FPSSMC(num_steps=200)}[name]
    bad = convergence_violations(fast, dys=(4,), seeds=(0, 1), sizes=(256, 4096))
    assert not bad, bad


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param("MCGdiff", marks=MCG_SHORT), "TDS",
                                  pytest.param("FPSSMC", marks=FPS_BIASED)])
def test_sliced_wasserstein_falls_with_particles_full_grid(name):
    bad = convergence_violations(GMM[name])
    assert not bad, bad


# The paper's protocol (one particle system per draw, gabrielvc/mcg_diff scripts/viz_gaussian.py: 32 particles each):
# the draws share no ancestors, so the error left is the SMC's bias at n particles, which falls with n. With one
# particle per system a draw is the proposal alone (no weighting, no selection): the improvement over it is the
# weights' work. Measured (MCGdiff, 1000 steps, 1 thread): d_y 4, 256 draws of 32 particles, SW / exact 1.02 and 1.09
# on seeds 0 and 1 (64 particles: 1.04, 1.17); d_y 1, 128 draws of 32 particles, 1.69, 1.48, 1.91 on seeds 0, 1,
# 3, where one system of 4096 particles gives 5.1, 4.2 and 12.1.
INDEPENDENT_DRAWS = 256


def test_mcgdiff_independent_systems_beat_the_proposal_default_suite():
    """d_y = 4, seed 0: 256 draws of 32 particles each against 256 draws of one particle each (measured: SW 0.145
    against the exact 0.142, and 7.35 for the proposal alone)."""
    make = lambda: MCGdiff(num_steps=1000)  # noqa: E731
    one = gmm_distances(make, 4, 0, 1, draws=INDEPENDENT_DRAWS)
    many = gmm_distances(make, 4, 0, 32, draws=INDEPENDENT_DRAWS)
    assert many[0] < 0.25 * one[0] and many[0] <= 2 * many[1], (one, many)


@pytest.mark.slow
def test_mcgdiff_independent_systems_full_grid():
    """The convergence criterion on the paper's protocol: 256 draws, each from its own system of n = 8, 32, 128
    particles (one system of 4096 is the 5 x 3 grid's budget per draw; 256 x 4096 particles per run is beyond it)."""
    bad = convergence_violations(GMM["MCGdiff"], sizes=(8, 32, 128), draws=INDEPENDENT_DRAWS)
    assert not bad, bad


def test_independent_systems_layout_and_ess_record():
    prior, op, y = _small_problem()
    s = MCGdiff(num_steps=12, particles_per_draw=8)
    out = s.sample(y, op, prior, num_samples=5, generator=torch.Generator().manual_seed(1))
    assert out.shape == (10, 4) and s.ess.shape == (12, 10) and s.final_ess.shape == (10,)   # 5 systems x 2 meas.
    assert bool((s.final_ess <= 8 + 1e-6).all())
    assert len({tuple(r.tolist()) for r in out.view(5, 2, 4)[:, 0]}) == 5          # five different draws
    one = s.sample(y, op, prior, num_samples=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, one)                                                   # reproducible from the seed
    for bad in (0, 2.5, -1):
        with pytest.raises(ValueError, match="particles_per_draw"):
            MCGdiff(particles_per_draw=bad)


def test_categorical_draw_picks_each_particle_with_its_weight():
    g = torch.Generator().manual_seed(3)
    n, k = 6, 10_000
    log_w = torch.randn(n, 1, generator=g, dtype=torch.float64)
    log_w[2] = -math.inf
    u = (torch.arange(k, dtype=torch.float64) + 0.5) / k                          # k evenly spread uniforms
    idx = categorical_draw(log_w.expand(n, k).contiguous(), u)
    assert idx.shape == (1, k)
    freq = torch.bincount(idx[0], minlength=n).double() / k
    assert float((freq - torch.softmax(log_w[:, 0], 0)).abs().max()) <= 1.0 / k + 1e-12   # quantiles: exact to 1/k
    assert int((idx == 2).sum()) == 0


@pytest.mark.parametrize("name", ["MCGdiff", "TDS"])
@pytest.mark.parametrize("what", ["no weights", pytest.param("inverted resampling", marks=pytest.mark.slow)])
def test_broken_smc_fails_the_convergence_check(name, what):
    cls = {"MCGdiff": MCGdiff, "TDS": TDS}[name]
    kwargs = {"MCGdiff": dict(num_steps=1000), "TDS": dict(num_steps=200, data_variance=130.0)}[name]
    make = lambda: broken(cls, BROKEN[what])(**kwargs)  # noqa: E731
    assert convergence_violations(make, dys=(4,), seeds=(0, 1), sizes=(256, 4096))


# ============================================================================ (c) a one-component mixture
def gaussian_problem(dy: int, sigma: float = 0.1, seed: int = 0, d: int = 8):
    """A one-component mixture with diagonal variances spread over two decades (0.1 to 10, so that no isotropic
    approximation of p(x0 | x_t) is exact and the proposals alone are biased), mean on the mixture's grid, observed
    as in ``make_gmm_problem`` with noise sigma."""
    g = torch.Generator().manual_seed(seed)
    mean = 8.0 * torch.randint(-2, 3, (d,), generator=g).double()
    var = torch.logspace(-1, 1, d, dtype=torch.float64)[torch.randperm(d, generator=g)]
    prior = GaussianMixturePrior(torch.ones(1, dtype=torch.float64), mean[None], var[None])
    a = torch.randn(dy, d, generator=g, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(a, full_matrices=True)
    s = torch.sort(torch.rand(dy, generator=g, dtype=torch.float64), descending=True).values
    op = MatrixOperator(U @ torch.diag(s) @ Vh[:dy], noise=GaussianNoise(sigma))
    x = prior.sample(1, g)
    y = op.measure(x, g)
    post = prior.posterior(op, y)
    return prior.to(torch.float32), op.to(torch.float32), y.float(), post.means[0], post.covs[0]


def gaussian_violations(sampler, dy: int, n: int = 2048, seed: int = 0) -> list[str]:
    """Mean and covariance of the draws against the exact posterior, in its principal basis (whitened: c ~ N(0, I)).

    Tolerance from the draws' effective sample size. A weighted mean over particles of ESS n_e has Monte Carlo std
    sigma / sqrt(n_e) (Kong's ESS is defined by that). The N returned draws are resampled from the final weights,
    and each earlier resampling shared ancestors between them; each resampling adds at most sigma^2 / N to the
    variance of their mean (multinomial adds exactly the weighted variance over N, systematic less). So the draws
    count as ``n_out = 1 / (1 / final_ess + (R + 1) / N)`` independent ones, R the resampling events of the run,
    and each whitened mean is within 5 / sqrt(n_out) of 0, each whitened variance (a sample variance: relative std
    sqrt(2 / n_out)) within 5 sqrt(2 / n_out) of 1, for every one of the d directions."""
    prior, op, y, m, cov = gaussian_problem(dy, seed=seed)
    out = sampler.sample(y, op, prior, num_samples=n, generator=torch.Generator().manual_seed(seed + 1)).double()
    lam, Q = torch.linalg.eigh(cov)
    c = (out - m) @ Q / lam.sqrt()
    r = int(sampler.resampled.sum())
    n_out = 1.0 / (1.0 / float(sampler.final_ess[0]) + (r + 1) / n)
    tol_m, tol_v = 5 / math.sqrt(n_out), 5 * math.sqrt(2 / n_out)
    bad = []
    if float(c.mean(0).abs().max()) > tol_m:
        bad.append(f"whitened mean {[round(v, 3) for v in c.mean(0).tolist()]} beyond {tol_m:.3f}")
    if float((c.var(0) - 1).abs().max()) > tol_v:
        bad.append(f"whitened variances {[round(v, 3) for v in c.var(0).tolist()]} beyond 1 +- {tol_v:.3f}")
    return bad


GAUSS = {"MCGdiff": lambda: MCGdiff(num_steps=1000), "TDS": lambda: TDS(num_steps=200, data_variance=1.0),
         "FPSSMC": lambda: FPSSMC()}


@pytest.mark.parametrize("dy", [1, 4])
@pytest.mark.parametrize("name", ["MCGdiff", "TDS", pytest.param("FPSSMC", marks=FPS_BIASED)])
def test_gaussian_posterior_matched_within_the_ess_tolerance(name, dy):
    bad = gaussian_violations(GAUSS[name](), dy)
    assert not bad, bad


# MCGdiff with its likelihood counted twice passes this check (its one system's draws carry a wide tolerance); the
# exact test bed catches it (tests/posterior_cases.py, DOUBLED)
@pytest.mark.parametrize("name, what", [(n, w) for n in ("MCGdiff", "TDS") for w in BROKEN
                                        if (n, w) != ("MCGdiff", "likelihood twice")])
def test_broken_smc_fails_the_gaussian_check(name, what):
    """Caught on at least one of d_y = 1, 2, 4 (the cheapest first): where the proposals alone are nearly exact (TDS
    at d_y = 4, whose twist is close to the exact Gaussian likelihood there), dropping the weights changes little."""
    cls = {"MCGdiff": MCGdiff, "TDS": TDS}[name]
    kwargs = {"MCGdiff": dict(num_steps=1000), "TDS": dict(num_steps=200, data_variance=1.0)}[name]
    assert any(gaussian_violations(broken(cls, BROKEN[what])(**kwargs), dy) for dy in (1, 2, 4))


# ============================================================================ (e) FPS-SMC's own target
def fps_filter_variance(levels: list[float], c_rate: float | None, prior_var: float, s: float, sy: float) -> float:
    """The variance of x0 under the model FPS-SMC filters (Dou & Song 2024, Sec. 3): the reverse chain of the DDIM
    kernel ``x' ~ N(x0_hat + a (x - x0_hat), v)`` (eta from c_rate; ancestral for None) with the exact denoiser of
    a N(0, prior_var) prior in VE coordinates (x0_hat = k x, k = prior_var / (prior_var + sigma^2)), started from
    N(0, 1 + sigma_0^2), and an observation ``y_t = s x_t + sigma_y e_t`` at every level with *independent* e_t,
    the last one (sigma = 0) of x0 = x0_hat itself. Linear-Gaussian, so the filter's last state is a Kalman
    recursion; its variance does not depend on the observed values."""
    obs_prec = s**2 / sy**2
    p = 1.0 / (1.0 / (1.0 + levels[0] ** 2) + obs_prec)
    for sig, sig1 in zip(levels[:-1], levels[1:]):
        if c_rate is None:
            a, v = sig1**2 / sig**2, sig1**2 * (sig**2 - sig1**2) / sig**2
        else:
            a, v = math.sqrt(1 - c_rate) * sig1 / sig, c_rate * sig1**2
        k = prior_var / (prior_var + sig**2)
        f = a + (1 - a) * k                                    # x' = f x + sqrt(v) z
        p = 1.0 / (1.0 / (f * f * p + v) + obs_prec)
    return p


@pytest.mark.parametrize("c_rate, prior_var, s, sy", [(0.95, 1.0, 1.0, 0.3), (0.95, 4.0, 0.5, 0.2),
                                                      (None, 1.0, 1.0, 0.3)])
def test_fps_smc_draws_follow_its_own_filtering_model(c_rate, prior_var, s, sy):
    """Its draws' variance is that of the model it filters (to the Monte Carlo tolerance of its ESS), 12-20 times
    below the true posterior's: the overconfidence is the published algorithm's, not this implementation's. (With
    independent systems, ``particles_per_draw``, the draws also scatter by the y-sequence each system draws; that
    adds little: 2000 draws of 64 particles each have variance 0.0070 (c_rate 0.95) and 0.0060 (ancestral) against
    0.083 exact, and their mean is off by 0.09, about a third of the exact posterior's std.)"""
    prior = GaussianMixturePrior(torch.ones(1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
                                 torch.full((1, 1), prior_var, dtype=torch.float64))
    op = MatrixOperator(torch.tensor([[s]], dtype=torch.float64), noise=GaussianNoise(sy))
    y = op.measure(torch.full((1, 1), 0.7, dtype=torch.float64), torch.Generator().manual_seed(0))
    sampler = FPSSMC(c_rate=c_rate)
    n = 4096
    out = sampler.sample(y, op, prior, num_samples=n, generator=torch.Generator().manual_seed(1))[:, 0]
    model = fps_filter_variance(sampler.sigmas(), c_rate, prior_var, s, sy)
    exact = 1.0 / (1.0 / prior_var + s**2 / sy**2)
    r = int(sampler.resampled.sum())
    # n_out as in gaussian_violations (a lower bound on the draws' effective number), 4 of its standard errors of a
    # sample variance. Measured: draws / model variance 1.000, 0.995, 1.007 (tolerance 0.48, 0.55, 0.78); the model
    # variance is 8.6 %, 7.0 % and 5.1 % of the exact one, so the draws are outside the tolerance of the exact one
    n_out = 1.0 / (1.0 / float(sampler.final_ess[0]) + (r + 1) / n)
    tol, var = 4 * math.sqrt(2 / n_out), float(out.var())
    assert abs(var / model - 1) < tol, (var, model, exact, n_out)
    assert abs(var / exact - 1) > tol, (var, model, exact, n_out)


# ============================================================================ (d) what a predict run records
PREDICT_SMC = {  # the last: a twist inflated a million times is flat, so the final exact likelihood picks one
    "MCGdiff": ("diffinv.samplers.mcgdiff.MCGdiff", dict(num_steps=8)),
    "MCGdiff-per-draw": ("diffinv.samplers.mcgdiff.MCGdiff", dict(num_steps=8, particles_per_draw=4)),
    "TDS-flat-twist": ("diffinv.samplers.tds.TDS", dict(num_steps=8, data_variance=1e6)),
}


@pytest.mark.parametrize("case", list(PREDICT_SMC))
def test_predict_records_the_effective_sample_size(tmp_path, case, caplog):
    """The item's JSON keeps the ESS of the run (checks.ess), and a warning says so when the final weights rest on
    fewer than 2 particles (and only then)."""
    import json

    from predict_data import predict_in_process, prior_config, problem_config, sampler_config, write_configs

    op = {"class_path": "diffinv.operators.image.Inpainting",
          "init_args": {"input_shape": [1, 16, 16], "mask_type": "random", "drop_prob": 0.5}}
    class_path, kwargs = PREDICT_SMC[case]
    s = sampler_config(class_path, num_samples=4, **kwargs)
    predict_in_process(write_configs(tmp_path / "c", prior_config(1, 16),
                                     problem_config(op, (1, 16, 16), tmp_path / "run", num_items=1, kind="blobs"), s))
    folder = class_path.split(".")[-2]
    record = json.loads((tmp_path / "run" / "predictions" / folder / "item000.json").read_text())
    ess = record["checks"]["ess"]
    systems = 4 if "particles_per_draw" in kwargs else 1
    assert (ess["particles"], ess["systems"], len(ess["per_step"])) == (4, systems, 8 if folder == "mcgdiff" else 7)
    assert 0 < ess["min"] <= 4 + 1e-6 and 0 < ess["final"] <= 4 + 1e-6 and 0 <= ess["resamplings"] <= 8
    assert ("effective sample size" in caplog.text) == (ess["final"] < 2), (ess, caplog.text[-500:])


if __name__ == "__main__":      # the figures of the module docstring
    import sys

    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(GMM)
    for name in names:
        for dy in (1, 4):
            print(name, "gaussian d_y", dy, gaussian_violations(GAUSS[name](), dy) or "ok", flush=True)
        for dy in DYS:
            for n in SIZES:
                rows = [gmm_distances(GMM[name], dy, s, n) for s in SEEDS]
                print(f"{name} d_y {dy} N {n:5d} SW {[round(a, 3) for a, _ in rows]} "
                      f"exact {[round(b, 3) for _, b in rows]} ratio {[round(a / b, 2) for a, b in rows]}", flush=True)

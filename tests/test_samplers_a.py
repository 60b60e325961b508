"""EnKG, DPS, DDRM, DiffPIR, PiGDM and DAPS: the sampler contract, exact cost counting, capability errors and
accuracy on the Gaussian-mixture benchmark of Cardoso et al. 2023 (MCGdiff, Sec. 4.1) against exact posterior
draws."""
from __future__ import annotations

import pytest
import torch

from diffinv.operators import GaussianNoise, MatrixOperator
from diffinv.priors import GaussianPrior, random_gmm_prior
from diffinv.samplers.daps import DAPS
from diffinv.samplers.ddrm import DDRM
from diffinv.samplers.diffpir import DiffPIR
from diffinv.samplers.dps import DPS
from diffinv.samplers.enkg import EnKG
from diffinv.samplers.pigdm import PiGDM
from operator_checks import NoBackward





# ----------------------------------------------------------------------------------------- problems
def mcgdiff_problem(d: int, d_y: int, seed: int, sigma_y: float | None = None):
    """Cardoso et al. 2023, Sec. 4.1: A = U diag(s) V^T from the SVD of a Gaussian matrix with its singular values
    replaced by sorted U(0, 1) draws; sigma_y ~ U(0, max s) unless given; y = A x + sigma_y n with x from the prior."""
    g = torch.Generator().manual_seed(seed)
    prior = random_gmm_prior(d, generator=g)
    u, _, vh = torch.linalg.svd(torch.randn(d_y, d, generator=g, dtype=torch.float64), full_matrices=True)
    s = torch.sort(torch.rand(d_y, generator=g, dtype=torch.float64), descending=True).values
    if sigma_y is None:
        sigma_y = float(torch.rand((), generator=g, dtype=torch.float64) * s.max())
    op = MatrixOperator((u @ torch.diag(s) @ vh[:d_y]).float(), noise=GaussianNoise(sigma_y))
    x = prior.sample(1, generator=g).float()
    return prior, op, op.measure(x, g), g


class CountingPrior:
    """Wraps a prior and counts (and remembers the output of) its ``denoise`` calls."""

    def __init__(self, prior):
        self.prior, self.event_shape, self.calls, self.last = prior, prior.event_shape, 0, None

    def denoise(self, x, sigma):
        self.calls += 1
        self.last = self.prior.denoise(x, sigma)
        return self.last


class CountingMatrix(MatrixOperator):
    """MatrixOperator counting forward and adjoint applications (the SVD transforms are free)."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)

    def adjoint(self, y):
        self.calls += 1
        return super().adjoint(y)


class NoSVDMatrix(CountingMatrix):
    has_svd = False


class NonDifferentiable(CountingMatrix):
    """A black box: nonlinear in the contract's sense (no adjoint, no SVD) and not differentiable."""

    linear, differentiable, has_svd = False, False, False


class BlackBox(NonDifferentiable):
    """Forward model whose output cannot be differentiated and which records whether it ran under no_grad."""

    grad_enabled_calls = 0

    def forward(self, x):
        self.grad_enabled_calls += int(torch.is_grad_enabled())
        return NoBackward.apply(super().forward(x))


def counting(op: MatrixOperator, cls=CountingMatrix):
    return cls(op.matrix, noise=GaussianNoise(op.sigma))


# Small configurations for the contract tests (a few steps each).
FAST = {
    "EnKG": lambda: EnKG(num_steps=12, num_updates=2, start=0.1, end=0.1, max_ode_steps=3, batch_size=5),
    "DPS": lambda: DPS(num_steps=10),
    "DDRM": lambda: DDRM(num_steps=10),
    "DiffPIR": lambda: DiffPIR(num_steps=10),
    "PiGDM": lambda: PiGDM(num_steps=10),
    "DAPS": lambda: DAPS(num_steps=10, ode_steps=3, langevin_steps=10, lr=1e-3),
}


def expected_cost(name: str, s) -> tuple[int | None, int]:
    """Gradient evaluations and forward-model calls each algorithm must report (None: not checked here)."""
    if name == "EnKG":
        guided = [i for i in range(s.num_steps) if s.guided(i)]
        return 0, s.num_updates * len(guided)
    if name == "DPS":
        return s.num_steps, s.num_steps
    if name == "DDRM":
        return 0, 0
    if name == "DiffPIR":
        return 0, 0                                        # closed-form data step in the SVD basis
    if name == "PiGDM":
        return s.num_steps, s.num_steps
    if name == "DAPS":
        return s.num_steps * s.langevin_steps, s.num_steps * s.langevin_steps     # MCMC on every level
    raise KeyError(name)


@pytest.fixture(scope="module")
def two_measurements():
    """Two measurements from opposite corners of the mixture (means (-16, -16, ...) and (16, 16, ...))."""
    prior, op, _, g = mcgdiff_problem(8, 4, seed=3, sigma_y=0.05)
    x = torch.stack([prior.means[0], prior.means[-1]]).float() + 0.1 * torch.randn(2, 8, generator=g)
    return prior, op, op.measure(x, g), x


# ----------------------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", sorted(FAST))
def test_shape_sample_major_and_callback(name, two_measurements):
    prior, op, y, x = two_measurements
    steps = []
    sampler = FAST[name]()
    out = sampler.sample(y, op, prior, num_samples=3, generator=torch.Generator().manual_seed(0),
                         callback=lambda i, n, xi: steps.append((i, n, tuple(xi.shape))))
    assert out.shape == (6, 8) and out.dtype == torch.float32
    # draw s of measurement b is out[s * B + b]: each lies near its own measurement's corner
    per = out.view(3, 2, 8)
    assert bool((per[:, 0].mean(1) < 0).all()) and bool((per[:, 1].mean(1) > 0).all()), per.mean(-1)
    n = steps[0][1]
    assert [s[0] for s in steps] == list(range(n)) and all(s[1] == n and s[2] == (6, 8) for s in steps)


@pytest.mark.parametrize("name", sorted(FAST))
def test_seeded_reproducibility(name, two_measurements):
    prior, op, y, _ = two_measurements
    run = lambda seed: FAST[name]().sample(y, op, prior, 2, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("name", sorted(FAST))
def test_cost_counts_are_exact(name, two_measurements):
    prior, op, y, _ = two_measurements
    cprior, cop = CountingPrior(prior), counting(op)
    sampler = FAST[name]()
    sampler.sample(y, cop, cprior, 2, generator=torch.Generator().manual_seed(0))
    assert sampler.cost.nfe == cprior.calls > 0
    assert sampler.cost.forward_calls == cop.calls
    grads, forwards = expected_cost(name, sampler)
    assert (sampler.cost.grad_calls, sampler.cost.forward_calls) == (grads, forwards)


@pytest.mark.parametrize("name", ["DPS", "DiffPIR", "DAPS", "PiGDM"])
def test_gradient_and_linear_samplers_reject_black_boxes(name, two_measurements):
    prior, op, y, _ = two_measurements
    sampler = FAST[name]()
    with pytest.raises(ValueError) as err:
        sampler.sample(y, counting(op, NonDifferentiable), prior)
    msg = str(err.value)
    need = "linear" if name == "PiGDM" else "differentiable"
    assert name in msg and need in msg and "EnKG" in msg.split("Samplers that work here:")[1]


def test_svd_sampler_rejects_operator_without_svd(two_measurements):
    prior, op, y, _ = two_measurements
    with pytest.raises(ValueError) as err:
        DDRM(num_steps=5).sample(y, counting(op, NoSVDMatrix), prior)
    msg = str(err.value)
    works = msg.split("Samplers that work here:")[1]
    assert "DDRM" in msg and "singular value decomposition" in msg and "PiGDM" in works and "DPS" in works


def test_enkg_never_differentiates_the_operator(two_measurements):
    prior, op, y, _ = two_measurements
    box = counting(op, BlackBox)
    with pytest.raises(RuntimeError, match="differentiated"):     # the operator really cannot be differentiated
        xg = torch.zeros(1, 8, requires_grad=True)
        box(xg).sum().backward()
    box.calls = box.grad_enabled_calls = 0
    sampler = FAST["EnKG"]()
    out = sampler.sample(y, box, prior, 4, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all() and box.calls == sampler.cost.forward_calls > 0
    assert box.grad_enabled_calls == 0 and sampler.cost.grad_calls == 0


def test_enkg_batches_particles_through_network_and_forward_model(two_measurements):
    """Every denoiser call takes a full chunk of ``batch_size`` particles (the last one the remainder) and every
    forward-model call takes the whole ensemble of every measurement at once: no loop over particles."""
    prior, op, y, _ = two_measurements

    class Shapes(CountingMatrix):
        rows: list[int] = []

        def forward(self, x):
            Shapes.rows.append(x.shape[0])
            return super().forward(x)

    box = counting(op, Shapes)
    seen: list[int] = []
    inner = prior.denoise

    class Recording:
        event_shape = prior.event_shape

        def denoise(self, x, sigma):
            seen.append(x.shape[0])
            return inner(x, sigma)

    n = 12                                                  # 2 measurements x 12 particles = 24 rows, chunks of 5
    sampler = FAST["EnKG"]()
    sampler.sample(y, box, Recording(), n, generator=torch.Generator().manual_seed(0))
    assert Shapes.rows and set(Shapes.rows) == {2 * n}
    assert seen and set(seen) <= {5, 4} and seen.count(5) == 4 * seen.count(4)   # 24 = 4 x 5 + 4
    assert len(seen) == sampler.cost.nfe


def test_enkg_particles_only_interact_within_their_measurement(two_measurements):
    """Measurement 0's particles do not depend on measurement 1's data."""
    prior, op, y, _ = two_measurements
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    a = FAST["EnKG"]().sample(y, op, prior, 4, generator=gen()).view(4, 2, 8)
    y2 = y.clone()
    y2[1] = -y2[1]
    b = FAST["EnKG"]().sample(y2, op, prior, 4, generator=gen()).view(4, 2, 8)
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-5) and not torch.allclose(a[:, 1], b[:, 1])


@pytest.mark.parametrize("cls", [DiffPIR, PiGDM])
def test_conjugate_gradient_path_matches_svd_path(cls, two_measurements):
    """In float64 the conjugate-gradient solves reproduce the closed-form SVD solves."""
    prior, op, y, _ = two_measurements
    op, y = counting(op).double(), y.double()
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    svd = cls(num_steps=10, cg_tol=1e-12).sample(y, op, prior, 2, generator=gen())
    sampler = cls(num_steps=10, cg_tol=1e-12)
    cg = sampler.sample(y, counting(op, NoSVDMatrix).double(), prior, 2, generator=gen())
    assert sampler.cost.forward_calls > 10 and cg.dtype == torch.float64
    assert torch.allclose(svd, cg, rtol=0, atol=1e-6 * svd.abs().max().item()), (svd - cg).abs().max()


def test_diffpir_returns_the_final_denoised_estimate(two_measurements):
    prior, op, y, _ = two_measurements
    cprior = CountingPrior(prior)
    out = DiffPIR(num_steps=10).sample(y, op, cprior, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, cprior.last)


def test_diffpir_gradient_path_for_nonlinear_operators(two_measurements):
    """A differentiable operator flagged nonlinear goes through gradient steps on the proximal objective."""
    prior, op, y, _ = two_measurements

    class Nonlinear(CountingMatrix):
        linear, has_svd = False, False

    nl = counting(op, Nonlinear)
    sampler = DiffPIR(num_steps=10, prox_steps=2)
    out = sampler.sample(y, nl, prior, 2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()
    assert sampler.cost.forward_calls == nl.calls > sampler.cost.grad_calls == 2 * 9
    # the backtracked steps decrease the proximal objective: the data misfit ends well below the prior's
    assert op.loss(op(out), y.repeat(2, 1)).mean() < op.loss(op(prior.sample(4).float()), y.repeat(2, 1)).mean() / 10


def test_ddrm_noise_free_data_are_matched_exactly():
    """With sigma_y = 0 and eta_b = 1 the observed spectral coordinates end on S^+ U^T y: A x = y."""
    prior, op, _, g = mcgdiff_problem(8, 4, seed=2, sigma_y=0.0)
    y = op.measure(prior.sample(1, generator=g).float())
    out = DDRM(num_steps=10).sample(y, op, prior, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(op(out), y.expand(3, -1), atol=1e-4)


def test_pigdm_is_exact_for_a_standard_gaussian_prior():
    """For data N(0, I), p(x0 | x_t) = N(x0_hat, r_t^2 I) with r_t^2 = sigma^2 / (1 + sigma^2) (PiGDM's choice), so the
    guidance is the exact measurement score and the samples follow the exact Gaussian posterior."""
    g = torch.Generator().manual_seed(0)
    prior = GaussianPrior(torch.zeros(6, dtype=torch.float64), 1.0)
    op = MatrixOperator.random(3, 6, generator=g, noise=GaussianNoise(0.3))
    y = op.measure(prior.sample(1, g).float(), g)
    post = prior.posterior(op, y)
    out = PiGDM(num_steps=100).sample(y, op, prior, 3000, generator=torch.Generator().manual_seed(1)).double()
    cov = post.covariance()
    assert (out.mean(0) - post.mean()).norm() < 0.1
    assert (torch.cov(out.T) - cov).norm() < 0.12 * cov.norm()

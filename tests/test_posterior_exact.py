"""Every sampler against the exact posterior of linear-Gaussian problems (the test bed of ``posterior_checks``,
the settings and known biases of ``posterior_cases``), and ULA's stationary law in closed form."""
from __future__ import annotations

import math

import pytest

import posterior_cases as cases
import posterior_checks as pc
from diffinv.samplers.evaluation import load_all_samplers

PAIRS = [(name, p) for name, case in cases.CASES.items() for p in case.problems]


@pytest.mark.parametrize("name, problem", PAIRS, ids=[f"{n}-{p}" for n, p in PAIRS])
def test_sampler_meets_its_posterior(name, problem):
    stats = cases.stats(name, problem)
    bad = pc.violations(stats, cases.CASES[name].expect[problem])
    assert not bad, f"{name} on {problem}: {'; '.join(bad)} (stats {stats})"


def test_every_registered_sampler_is_in_the_test_bed():
    covered = {name.split("-")[0] for name in cases.CASES}
    samplers = {n for n, c in load_all_samplers().items() if not getattr(c, "baseline", False)}
    assert samplers <= covered, samplers - covered      # baselines: tests/test_baselines.py


def test_exact_draws_pass_and_limits_are_statistical():
    """Exact posterior draws meet the exact expectation (mean error 0, spreads 1) on every problem, at several
    sample sizes: the Monte Carlo limits are not a loose band but what an exact sampler needs."""
    for name in pc.PROBLEMS:
        p = cases.problem(name)
        for n, seed in ((64, 1), (256, 2), (1024, 3)):
            stats = pc.posterior_stats(pc.exact_draws(p, n, seed), p)
            assert not pc.violations(stats, pc.Expect()), (name, n, stats)
            # and they are close to the limit, not far inside it: the bound is 5 standard errors of the RMS
            assert stats["mean_error"] > 0.5 / math.sqrt(n), stats


def test_ula_stationary_variance_matches_its_closed_form():
    """See ``posterior_cases.ula_closed_form_violations``: the draws' variance along every eigen-direction of the
    target precision is ULA's closed-form stationary variance, and not the target's own."""
    assert not cases.ula_closed_form_violations(cases._ULAFromTarget)

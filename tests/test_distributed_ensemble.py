"""One ensemble split over 1, 2 and 3 gloo processes (``diffinv.samplers.particles.ShardedParticles``) gives the
particles of one process without ranks, to float64 round-off (<= 1e-10 relative; the sums over particles are
only taken in another order).

The cases (``tests/distributed_cases.py``): EnKG's reference update and its Kalman update (with ancestral noise and
relaxation) on a Gaussian mixture (two measurements at once) and on a small Navier–Stokes problem, and EKI on the
dense linear-Gaussian problem; N = 11 particles (6 + 5, 4 + 4 + 3). Also: what the reference update moves (one
all-gather of ``[x | yh]`` per update, the norm's all-reduce, nothing else), resampling across ranks (the same
ancestors and particles as on one process, with rank 0's uniform), an ensemble checkpoint saved on R ranks and
resumed on R ranks (exactly the uninterrupted particles) or on one process (to round-off), and a forward model
failing on one rank failing every rank instead of leaving them waiting (each launch has a time limit).
"""
from __future__ import annotations

import json

import pytest
import torch

from diffinv.samplers.particles import partition
from diffinv.samplers.resume import MemoryCheckpoint
from distributed_cases import CASES, N, launch, one_process, resampling_case, run_case

pytestmark = pytest.mark.ddp

WORLDS = (1, 2, 3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for world in WORLDS:
        out[world] = tmp_path_factory.mktemp(f"world{world}")
        launch(world, out[world])
    return out


@pytest.fixture(scope="module")
def reference():
    return {name: one_process(name) for name in CASES}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_the_shards_are_uneven():
    assert partition(N, 2) == [(0, 6), (6, 5)] and partition(N, 3) == [(0, 4), (4, 4), (8, 3)]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("world", WORLDS)
def test_same_particles_as_one_process(runs, reference, world, case):
    got, want = torch.load(runs[world] / f"{case}.pt", weights_only=True), reference[case]
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert rel(got, want) <= 1e-10, rel(got, want)


@pytest.mark.parametrize("world", (2, 3))
def test_the_reference_update_moves_one_gather_of_x_and_yh(runs, world):
    sampler = CASES["gmm_reference"][1]()
    updates = sum(sampler.guided(i) for i in range(sampler.num_steps)) * sampler.num_updates
    pad, b, d, m, item = -(-N // world), 2, 8, 4, 8          # largest shard, measurements, dims, float64
    traffic = torch.load(runs[world] / "traffic0.pt", weights_only=True)["gmm_reference"]
    gathered_result = (world - 1) * pad * b * d * item        # the final collect of the particles
    assert traffic["all_gather"] == updates * (world - 1) * pad * b * (d + m) * item + gathered_result
    assert traffic["all_reduce"] == updates * (2 * (world - 1) * b * item // world)      # ||C||_F, B values


@pytest.mark.parametrize("world", WORLDS)
def test_resampling_across_ranks(runs, world):
    got = torch.load(runs[world] / "resampling.pt", weights_only=True)
    x, ancestors = resampling_case()           # one process, with rank 0's generator
    assert torch.equal(got["ancestors"], ancestors) and torch.equal(got["x"], x)
    assert len(set(ancestors[:, 0].tolist())) < N           # it did resample (weights 3 N(0, 1) in log)


@pytest.mark.parametrize("world", WORLDS)
def test_checkpoint_resumes_on_any_number_of_ranks(runs, reference, world):
    state = torch.load(runs[world] / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6 and state["x"].shape == (2 * N, 8)
    resumed, straight = (torch.load(runs[world] / f, weights_only=True) for f in ("resumed.pt", "gmm_kalman.pt"))
    assert torch.equal(resumed, straight)
    one = run_case("gmm_kalman", checkpoint=MemoryCheckpoint(every=3, saved=state))
    assert rel(one, reference["gmm_kalman"]) <= 1e-10


@pytest.mark.parametrize("case", ["gmm_reference", "gmm_tds"])
@pytest.mark.parametrize("world", (2, 3))
def test_a_failing_rank_fails_every_rank(runs, world, case):
    got = json.loads((runs[world] / "failure.json").read_text())[case]   # gathered after the run, as the solver does
    assert got[1] == "RuntimeError: the forward model blew up on rank 1"
    # the others end too (with what the NaN caused: a forward model refusing NaN, or non-finite samples)
    assert all(g != "no error" and "rank 1" not in g for r, g in enumerate(got) if r != 1), got

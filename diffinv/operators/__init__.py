"""Forward models (DESIGN.md section 4)."""
from .base import Operator, conjugate_gradient, dense_matrix
from .linear import MatrixOperator
from .noise import GaussianNoise, NoiseModel, PoissonNoise

__all__ = ["Operator", "MatrixOperator", "NoiseModel", "GaussianNoise", "PoissonNoise", "conjugate_gradient", "dense_matrix"]

"""Priors (DESIGN.md section 3): everything is used through ``prior.denoise(x, sigma)``."""
from .analytic import GaussianMixturePosterior, GaussianMixturePrior, GaussianPrior, random_gmm_prior
from .base import DenoiserPrior, Prior
from .pixel import PixelPrior

__all__ = ["Prior", "DenoiserPrior", "PixelPrior", "GaussianPrior", "GaussianMixturePrior", "GaussianMixturePosterior", "random_gmm_prior"]

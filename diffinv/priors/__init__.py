"""Priors (DESIGN.md section 3): everything is used through ``prior.denoise(x, sigma)``."""
from .analytic import GaussianMixturePosterior, GaussianMixturePrior, GaussianPrior, random_gmm_prior
from .base import DenoiserPrior, Prior
from .latent import LatentPrior
from .pixel import PixelPrior

__all__ = ["Prior", "DenoiserPrior", "PixelPrior", "LatentPrior", "GaussianPrior", "GaussianMixturePrior", "GaussianMixturePosterior", "random_gmm_prior"]

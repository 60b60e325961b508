"""Priors: everything is used through ``prior.denoise(x, sigma) = E[x0 | x]`` (``diffinv.priors.base``);
``load_prior(config, checkpoint)`` builds one from a project config."""
from .analytic import GaussianMixturePosterior, GaussianMixturePrior, GaussianPrior, random_gmm_prior
from .base import DenoiserPrior, Prior
from .latent import LatentPrior
from .loading import load_prior
from .pixel import PixelPrior

__all__ = ["Prior", "DenoiserPrior", "PixelPrior", "LatentPrior", "GaussianPrior", "GaussianMixturePrior",
           "GaussianMixturePosterior", "random_gmm_prior", "load_prior"]

"""diffinv: diffusion priors and posterior samplers for inverse problems (pure PyTorch, no Lightning)."""
__version__ = "0.1.0"

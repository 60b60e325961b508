"""Posterior samplers (DESIGN.md section 5). Importing this package registers every algorithm in SAMPLERS."""
from .base import SAMPLERS, Sampler, posterior_stats, repeat_measurement

__all__ = ["SAMPLERS", "Sampler", "posterior_stats", "repeat_measurement"]

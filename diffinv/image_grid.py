"""Tile a batch of images into one image for logging (torchvision's ``make_grid`` is not available here)."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def make_grid(images: Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """``[B, C, H, W] -> [C, rows * (H + p) + p, nrow * (W + p) + p]``: images laid out row by row,
    ``nrow`` per row (default ``ceil(sqrt(B))``), separated and framed by ``padding`` pixels of ``pad_value``."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"make_grid expects a non-empty [B, C, H, W] batch, got shape {list(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, c, h, w = images.shape
    ncol = min(nrow or math.ceil(math.sqrt(b)), b)
    nrows = math.ceil(b / ncol)
    filled = images.new_full((nrows * ncol, c, h, w), pad_value)
    filled[:b] = images
    tiles = torch.nn.functional.pad(filled, (padding, 0, padding, 0), value=pad_value)    # left / top border of each tile
    grid = tiles.view(nrows, ncol, c, h + padding, w + padding).permute(2, 0, 3, 1, 4)
    grid = grid.reshape(c, nrows * (h + padding), ncol * (w + padding))
    return torch.nn.functional.pad(grid, (0, padding, 0, padding), value=pad_value)        # closing right / bottom border


def to_unit_range(images: Tensor) -> Tensor:
    """Images in [-1, 1] (``docs/conventions.md#data-conventions``) to [0, 1] for display, clamped."""
    return ((images.detach().float() + 1) / 2).clamp_(0, 1)

"""The measurement in the spectral basis of an operator with an SVD ``A = U diag(s) V^T`` (DDRM, DDNM): with
``xbar = V^T x``, each observed coordinate (``s_i > 0``) sees ``ybar_i = (U^T y)_i / s_i``, an observation of
``xbar_i`` with noise ``sigma_y / s_i``; the others (``s_i = 0``) span the null space."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import repeat_measurement


def spectral_measurement(operator, y_rep: Tensor, num_samples: int,
                         dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``(s, observed, ybar)``, each ``[1 or num_samples * B, d]``, for the sample-major measurements ``y_rep``
    (singular values given per measurement are repeated sample-major like ``y_rep``)."""
    sv = operator.singulars().to(dtype)                                  # [1 or B, d], zeros on the null space
    b = y_rep.shape[0] // num_samples
    if sv.shape[0] == b and b > 1:
        sv = repeat_measurement(sv, num_samples)
    observed = sv > 0
    s_safe = torch.where(observed, sv, torch.ones_like(sv))
    ybar = torch.where(observed, operator.Ut(y_rep) / s_safe, torch.zeros_like(sv))   # S^+ U^T y
    return sv, observed, ybar

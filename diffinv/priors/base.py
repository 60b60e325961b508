"""The prior contract: every prior is used through ``denoise(x, sigma) = E[x0 | x]``
for ``x = x0 + sigma n``; the score follows from Tweedie's formula."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..checks import require


class Prior(nn.Module):
    """Base class: validates inputs, broadcasts sigma to ``[B]``, and derives the score."""

    def __init__(self, event_shape: Sequence[int]):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)

    def denoise(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        return self._denoise(x, self._check(x, sigma))

    def score(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Tweedie: grad log p_sigma(x) = (E[x0 | x] - x) / sigma^2."""
        sig = self._check(x, sigma)
        require(sig != 0, "score is undefined at sigma = 0; use a small positive sigma.")
        return (self._denoise(x, sig) - x) / sig.view(-1, *([1] * len(self.event_shape))) ** 2

    def _denoise(self, x: Tensor, sigma: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``x`` of shape ``[B, *event_shape]``, ``sigma`` a ``[B]`` tensor."""
        raise NotImplementedError

    def _check(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        name = type(self).__name__
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"{name}: x has shape {list(x.shape)}, expected [B, {', '.join(map(str, self.event_shape))}] "
                             f"(the prior's event shape); check the image size and channel count of the problem.")
        sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sig.dim() == 0:
            sig = sig.expand(x.shape[0])
        elif sig.dim() != 1 or sig.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"{name}: sigma must be a float or a [B] tensor with B = {x.shape[0]}, got shape {list(sig.shape)}.")
        else:
            sig = sig.expand(x.shape[0])
        require(sig >= 0, lambda: f"{name}: sigma must be >= 0 and not NaN, got {sig.tolist()[:4]}.")  # NaN >= 0 is false
        return sig


class DenoiserPrior(Prior):
    """A prior given by a denoiser network ``D(x, sigma)`` (an EDM preconditioner, or a VP epsilon network
    behind ``VPEpsilonDenoiser``). ``sigma_min`` / ``sigma_max`` are the range it was trained on."""

    def __init__(self, denoiser: nn.Module, event_shape: Sequence[int], sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__(event_shape)
        self.denoiser = denoiser
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    # Image networks run in channels-last layout on the CPU in eval mode: measured 1.03-1.27x faster (1-2 threads)
    # for the shipped 64 x 64 UNets at 1-64 samples a call (scripts/benchmark_networks.py), outputs within 4e-6 of
    # the contiguous layout. Not on GPUs (unmeasured there) and not in training (the optimiser's layout stays as it was built).
    channels_last_on_cpu = True

    def _denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self.channels_last_on_cpu and x.dim() == 4 and x.device.type == "cpu" and not self.denoiser.training:
            if not getattr(self, "_channels_last", False):
                self.denoiser.to(memory_format=torch.channels_last)
                self._channels_last = True
            return self.denoiser(x.contiguous(memory_format=torch.channels_last), sigma).contiguous()
        return self.denoiser(x, sigma)

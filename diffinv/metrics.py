"""Reconstruction metrics for the inverse problems, and the default set per problem family.

* images in ``[-1, 1]``: PSNR and SSIM of the posterior mean (clipped to ``[-1, 1]``, data range 2);
  SSIM is Wang et al. 2004 with the usual 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  computed by ``torchmetrics`` (which imports ``lightning_utilities``, not Lightning);
* Navier–Stokes: the relative L2 error of the posterior mean, and the mean over samples of each sample's
  relative L2 error (the number EnKG, Zheng et al. 2024, reports);
* black holes: closure-phase / log-closure-amplitude chi-squares and the PSNR after blurring to the
  array's resolution (InverseBench, Zheng et al. 2025), re-exported from ``operators.blackhole``;
* RGB images: LPIPS (VGG) of the posterior mean (``diffinv.image_quality``), when torchvision and its
  weights are on the machine; FID is a property of a set of images, computed over a run's folder by
  ``scripts/compare.py``;
* every problem: the measurement misfit ``operator.loss(operator(mean), y_obs)`` of the posterior mean, and
  ``coverage_2std``, the fraction of pixels whose truth lies within the posterior mean +- 2 std (nominal 95.45 %
  for a calibrated posterior; NaN with a single draw; ``diffinv.calibration``).

``evaluate(names, samples, x_true, y_obs, operator)`` computes named metrics for one measurement;
``default_metrics(operator)`` picks the family's set. A metric whose network or weights are missing is
reported, never dropped: ``unavailable(names)`` gives the reason per name, ``check_metric_names`` warns
with it before any sampling, and ``evaluate`` records its value as ``None``. Everything here is plain
torch (no Lightning).
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
from torch import Tensor

from . import image_quality
from .calibration import coverage_2std
from .image_quality import MetricUnavailable
from .operators.base import Operator
from .operators.blackhole import BlackHoleImaging, blurred_psnr, closure_chi2
from .operators.navier_stokes import NavierStokes, relative_l2

__all__ = ["psnr", "ssim", "relative_l2", "closure_chi2", "blurred_psnr", "problem_kind", "default_metrics",
           "evaluate", "unavailable", "METRICS"]


def psnr(x: Tensor, ref: Tensor, data_range: float = 2.0) -> Tensor:
    """Per-sample PSNR ``[B]`` in dB: ``10 log10(data_range^2 / MSE)`` (data range 2 for images in [-1, 1])."""
    if x.shape != ref.shape:
        raise ValueError(f"psnr: x {list(x.shape)} and ref {list(ref.shape)} must have the same shape.")
    mse = ((x - ref) ** 2).reshape(x.shape[0], -1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-20))


def ssim(x: Tensor, ref: Tensor, data_range: float = 2.0) -> Tensor:
    """Per-sample SSIM ``[B]`` (Wang et al. 2004, Eq. 13, averaged over the image; Gaussian window 11 / 1.5)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if x.dim() != 4 or x.shape != ref.shape:
        raise ValueError(f"ssim: x {list(x.shape)} and ref {list(ref.shape)} must be equal [B, C, H, W] shapes.")
    if min(x.shape[-2:]) < 11:
        raise ValueError(f"ssim: images of {x.shape[-2]} x {x.shape[-1]} are smaller than the 11 x 11 SSIM window; "
                         f"drop 'ssim' from the metrics or use images of at least 11 pixels.")
    return structural_similarity_index_measure(x.float(), ref.float(), data_range=data_range, reduction="none")


def problem_kind(operator: Operator) -> str:
    """``"navier_stokes"``, ``"blackhole"``, ``"image"`` (1- or 3-channel 2-D inputs) or ``"generic"``."""
    if isinstance(operator, NavierStokes):
        return "navier_stokes"
    if isinstance(operator, BlackHoleImaging):
        return "blackhole"
    shape = tuple(operator.input_shape)
    if len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) >= 4:
        return "image"
    return "generic"


DEFAULTS = {
    "image": ["psnr", "ssim", "misfit", "coverage_2std"],
    "navier_stokes": ["rel_l2", "rel_l2_samples", "misfit", "coverage_2std"],
    "blackhole": ["chi2_cphase", "chi2_logcamp", "blurred_psnr_10", "blurred_psnr_15", "blurred_psnr_20", "misfit",
                  "coverage_2std"],
    "generic": ["rel_l2", "misfit", "coverage_2std"],
}


def default_metrics(operator: Operator) -> list[str]:
    names = list(DEFAULTS[problem_kind(operator)])
    if "ssim" in names and min(operator.input_shape[-2:]) < 11:
        names.remove("ssim")
    if names[:1] == ["psnr"] and tuple(operator.input_shape)[:1] == (3,):
        names.insert(names.index("misfit"), "lpips")   # RGB images: the perceptual distance papers report
    return names


# ---------------------------------------------------------------------------- the registry
# Each metric maps (samples [S, ...], mean [1, ...], x_true [1, ...], y_obs [1, ...], operator) to a float.
MetricFn = Callable[[Tensor, Tensor, Tensor, Tensor, Operator], float]


def _clip(x: Tensor) -> Tensor:
    return x.clamp(-1.0, 1.0)


def _needs(kind: type, name: str, operator: Operator) -> None:
    if not isinstance(operator, kind):
        raise ValueError(f"metric {name!r} needs a {kind.__name__} operator, got {type(operator).__name__}; "
                         f"drop it from model.init_args.metrics.")


def _chi2(key: str) -> MetricFn:
    def fn(samples, mean, x_true, y_obs, operator):
        _needs(BlackHoleImaging, f"chi2_{key}", operator)
        return float(closure_chi2(operator, mean, y_obs)[key][0])
    return fn


def _blurred(fwhm: float) -> MetricFn:
    def fn(samples, mean, x_true, y_obs, operator):
        _needs(BlackHoleImaging, f"blurred_psnr_{int(fwhm)}", operator)
        # InverseBench aligns the reconstruction to the truth (sub-pixel shift search) before comparing
        return float(blurred_psnr(mean, x_true, fwhm_uas=fwhm, psize_uas=operator.psize_uas, align=True)[0])
    return fn


METRICS: dict[str, MetricFn] = {
    "psnr": lambda s, m, x, y, op: float(psnr(_clip(m), x)[0]),
    "ssim": lambda s, m, x, y, op: float(ssim(_clip(m), x)[0]),
    "psnr_samples": lambda s, m, x, y, op: float(psnr(_clip(s), x.expand_as(s)).mean()),
    "rel_l2": lambda s, m, x, y, op: float(relative_l2(m, x)[0]),
    "rel_l2_samples": lambda s, m, x, y, op: float(relative_l2(s, x).mean()),
    "chi2_cphase": _chi2("cphase"),
    "chi2_logcamp": _chi2("logcamp"),
    "blurred_psnr_10": _blurred(10.0),
    "blurred_psnr_15": _blurred(15.0),
    "blurred_psnr_20": _blurred(20.0),
    "lpips": lambda s, m, x, y, op: float(image_quality.lpips(_clip(m), x)[0]),
    "misfit": lambda s, m, x, y, op: float(op.loss(op(m), y)[0]),
    "coverage_2std": lambda s, m, x, y, op: coverage_2std(s, x),
}

# metrics that need a network or weights that may be missing: name -> () -> None or the reason
AVAILABILITY: dict[str, Callable[[], str | None]] = {"lpips": image_quality.lpips_unavailable}


def unavailable(names: Sequence[str]) -> dict[str, str]:
    """``{name: reason}`` for the metrics among ``names`` that cannot be computed on this machine."""
    reasons = {n: AVAILABILITY[n]() for n in names if n in AVAILABILITY}
    return {n: r for n, r in reasons.items() if r is not None}


def check_metric_names(names: Sequence[str], operator: Operator | None = None) -> None:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; available: {sorted(METRICS)}.")
    if operator is not None:
        for n in names:
            if n.startswith(("chi2_", "blurred_psnr_")) and not isinstance(operator, BlackHoleImaging):
                _needs(BlackHoleImaging, n, operator)
            if n == "ssim" and min(operator.input_shape[-2:]) < 11:
                raise ValueError(f"metric 'ssim' needs images of at least 11 x 11 pixels, the problem has "
                                 f"{list(operator.input_shape)}; drop it from model.init_args.metrics.")
            if n == "lpips" and tuple(operator.input_shape)[:1] != (3,):
                raise ValueError(f"metric 'lpips' needs RGB images [3, H, W], the problem has "
                                 f"{list(operator.input_shape)}; drop it from model.init_args.metrics.")
        for n, reason in unavailable(names).items():
            warnings.warn(f"metric {n!r} is unavailable and is recorded as null: {reason}.", stacklevel=2)


@torch.no_grad()
def evaluate(names: Sequence[str], samples: Tensor, x_true: Tensor, y_obs: Tensor, operator: Operator,
             mean: Tensor | None = None) -> dict[str, float | None]:
    """Named metrics of one measurement: ``samples [S, *x_shape]`` (S posterior draws), ``x_true`` and
    ``y_obs`` with batch 1; ``mean`` defaults to the sample mean."""
    check_metric_names(names)
    if x_true.shape[0] != 1 or y_obs.shape[0] != 1 or samples.shape[1:] != x_true.shape[1:]:
        raise ValueError(f"evaluate: expected samples [S, *x], x_true [1, *x], y_obs [1, ...]; got "
                         f"{list(samples.shape)}, {list(x_true.shape)}, {list(y_obs.shape)}.")
    mean = samples.mean(0, keepdim=True) if mean is None else mean
    out: dict[str, float | None] = {}
    for n in names:
        try:
            out[n] = METRICS[n](samples, mean, x_true, y_obs, operator)
        except MetricUnavailable:      # reported by check_metric_names / unavailable(); the value is null
            out[n] = None
    return out

"""PNG panels of one solved inverse problem: truth | measurement (or its back-projection) | posterior mean |
posterior std, each with a labelled colour bar, and a title with the metrics read against their references.

Matplotlib's object API with the Agg canvas (no pyplot, no global backend switch): safe in worker
processes and on machines without a display.

* images: RGB, the std as a grey-level map in image units ([-1, 1] scale);
* Navier–Stokes: vorticity in the diverging ``RdBu_r`` with limits symmetric about 0, in the prior's units
  (vorticity / 10); the std on its own scale in the same unit;
* black holes: the sky as the EHT shows it: axes in microarcseconds relative to the phase centre, east
  left and north up, brightness in mJy per pixel (``afmhot``; negative brightness, which posterior means
  can have, in blue on the same scale instead of being clipped), truth and mean on one scale, the std on
  its own, the dirty image peak-normalised; the array's beam (the Gaussian fitted to the dirty beam's
  central lobe, as ehtim's ``Obsdata.fit_beam``) drawn on the dirty image and the mean, the field of view,
  pixel size and beam in the caption;
* the title: closure chi-squares are reduced (1 = fits the thermal noise), the misfit is shown with its
  expected value at the truth (``m / 2`` for m values with Gaussian noise, from the solver's checks).

``measurement_view`` turns a measurement into something that can be shown next to the truth;
``panel_info(operator, y_obs)`` gives what the panel needs to know about the problem (JSON-able);
``render_item(item)`` draws the solver's result record.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
from torch import Tensor

from diffinv.metrics import problem_kind
from diffinv.operators.base import Operator
from diffinv.operators.blackhole import BlackHoleImaging, ClosureNoise
from diffinv.operators.navier_stokes import NavierStokes

CMAPS = {"navier_stokes": "RdBu_r", "blackhole": "afmhot", "image": "gray", "generic": "viridis"}
NS_UNIT = "vorticity / 10"
LABELS = {"chi2_cphase": "χ²_CP", "chi2_logcamp": "χ²_logCA"}


# ---------------------------------------------------------------------------------------------- what to show
@torch.no_grad()
def measurement_view(operator: Operator, y: Tensor, x_shape) -> tuple[Tensor | None, str]:
    """A displayable version of one measurement ``y [1, ...]`` on the grid of ``x``, and its caption.

    * ``y`` of ``x``'s shape (inpainting, "same" blurs): ``y`` itself;
    * a subsampled field with the channels of ``x`` (super-resolution, Navier–Stokes): nearest upsampling;
    * other linear operators: ``A^+ y`` (exact with an SVD) or ``A^T y``;
    * black holes: the dirty image, ``A^T`` of the visibilities (the flux entry left out);
    * other image-shaped measurements (phase retrieval): ``y`` itself, on its own grid;
    * anything else: ``None`` (the panel shows a caption only).
    """
    x_shape = tuple(int(s) for s in x_shape)
    ys = tuple(y.shape[1:])
    if ys == x_shape:
        return y[0], "measurement y"
    if len(ys) == 3 and len(x_shape) == 3 and ys[0] == x_shape[0] and x_shape[1] % ys[1] == 0 \
            and x_shape[2] % ys[2] == 0 and x_shape[1] // ys[1] == x_shape[2] // ys[2]:
        r = x_shape[1] // ys[1]
        what = "w(T), physical units" if isinstance(operator, NavierStokes) else "y"
        return y[0].repeat_interleave(r, -2).repeat_interleave(r, -1), f"measurement {what}, 1/{r} grid"
    if isinstance(operator, BlackHoleImaging):
        with torch.enable_grad():
            x0 = torch.zeros((1, *x_shape), dtype=y.dtype, device=y.device, requires_grad=True)
            g = y.clone()
            g[:, -1] = 0.0      # visibilities only: the dirty image sum_k Re(V_k e^{2 pi i (u_k l + v_k m)})
            (dirty,) = torch.autograd.grad(operator(x0), x0, grad_outputs=g)
        return dirty[0], "dirty image A^T y"
    if operator.linear:
        if operator.has_svd:
            return operator.pinv(y)[0], "back-projection A^+ y"
        return operator.adjoint(y)[0], "back-projection A^T y"
    if len(ys) == 3:
        return y[0], f"measurement y {list(ys)}"
    return None, f"measurement: {y[0].numel()} values"


def fit_beam(u: np.ndarray, v: np.ndarray) -> tuple[float, float, float]:
    """``(fwhm_major, fwhm_minor, position angle)`` of the Gaussian whose curvature at the centre equals the
    dirty beam's, for baselines ``u, v`` in wavelengths with uniform weights (ehtim ``Obsdata.fit_beam``).
    FWHMs in radians, the angle in radians east of north in [0, pi).

    The dirty beam ``B(x) = mean_k cos(2 pi b_k . x)`` is ``1 - x^T Q x`` near 0 with
    ``Q = 2 pi^2 mean_k b_k b_k^T``; a Gaussian of FWHMs (a, b) is ``1 - 4 ln 2 x^T R diag(a^-2, b^-2) R^T x``,
    so the FWHMs are ``sqrt(4 ln 2 / eigenvalue)`` and the major axis is the eigenvector of the smaller one."""
    b = np.stack([np.asarray(u, np.float64), np.asarray(v, np.float64)])
    q = 2.0 * math.pi**2 * (b @ b.T) / b.shape[1]
    lam, vec = np.linalg.eigh(q)                       # ascending: lam[0] belongs to the major axis
    fwhm = np.sqrt(4.0 * math.log(2.0) / lam)
    east, north = vec[:, 0]
    return float(fwhm[0]), float(fwhm[1]), float(math.atan2(east, north) % math.pi)


def panel_info(operator: Operator, y_obs: Tensor) -> dict:
    """What the panel of one item needs beyond its tensors. For black holes: ``misfit_reference``, the
    expected misfit of the truth (the sum of the closure weights: each reduced chi-square is 1 at the noise
    level) and what it is (``misfit_reference_is``; Gaussian misfits get theirs, m / 2, from the solver's
    ``checks``), the grid
    (``fov_uas``, ``psize_uas``), ``jy_per_unit`` and the beam ``beam_uas = [major, minor, PA degrees]``."""
    info: dict = {}
    noise = getattr(operator, "noise", None)
    if isinstance(noise, ClosureNoise) and noise.thermal and noise.reduction == "mean":
        # each reduced closure chi-square is 1 at the noise level; the flux is measured exactly
        info["misfit_reference"], info["misfit_reference_is"] = noise.weights[0] + noise.weights[1], "w_CP + w_logCA"
    if isinstance(operator, BlackHoleImaging):
        uas = math.pi / 180.0 / 3600.0 * 1e-6
        maj, mnr, pa = fit_beam(operator.tables.u, operator.tables.v)
        info.update(fov_uas=float(operator.setup.fov_uas), psize_uas=float(operator.psize_uas),
                    jy_per_unit=float(operator.jy_per_unit), beam_uas=[maj / uas, mnr / uas, math.degrees(pa)])
    return info


# ---------------------------------------------------------------------------------------------- drawing
def _to01(x: np.ndarray) -> np.ndarray:
    return np.clip((x + 1.0) / 2.0, 0.0, 1.0)


def _signed(cmap: str, lo: float, hi: float):
    """``(cmap, norm)`` on the linear scale [min(lo, 0), hi]: ``cmap`` above 0 and, where ``lo < 0``, blue
    below 0 (bright at ``lo``, black at 0), so negative values keep their true extent on the colour bar."""
    from matplotlib import colormaps
    from matplotlib.colors import LinearSegmentedColormap, ListedColormap, Normalize

    lo, hi = min(lo, 0.0), hi if hi > 0 else 1.0
    if lo == 0.0:
        return colormaps[cmap], Normalize(0.0, hi)
    n_below = max(1, round(256 * -lo / (hi - lo)))
    below = LinearSegmentedColormap.from_list("negative", ["#4fc3f7", "black"])(np.linspace(0, 1, n_below))
    above = colormaps[cmap](np.linspace(0, 1, 256 - n_below))
    return ListedColormap(np.vstack([below, above]), name=f"signed_{cmap}"), Normalize(lo, hi)


def _show(fig, ax, img: np.ndarray | None, title: str, cmap="viridis", norm=None, vmin=None, vmax=None,
          rgb: bool = False, unit: str | None = None, extent=None) -> None:
    ax.set_title(title, fontsize=9)
    if extent is None:
        ax.set_xticks([])
        ax.set_yticks([])
    if img is None:
        ax.text(0.5, 0.5, title, ha="center", va="center", fontsize=8, wrap=True, transform=ax.transAxes)
        ax.set_facecolor("white")
        return
    if rgb:
        ax.imshow(np.transpose(img, (1, 2, 0)), interpolation="nearest")
        return
    im = ax.imshow(img, cmap=cmap, norm=norm, vmin=None if norm else vmin, vmax=None if norm else vmax,
                   interpolation="nearest", extent=extent)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    if unit:
        bar.set_label(unit, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _sky_axes(ax, fov: float) -> None:
    ax.set_xlabel("relative RA (μas), east left", fontsize=8)
    ax.set_ylabel("relative Dec (μas)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_xlim(fov / 2, -fov / 2)
    ax.set_ylim(-fov / 2, fov / 2)


def _draw_beam(ax, fov: float, beam_uas) -> None:
    """The beam ellipse (FWHM contour) in the lower left corner, in sky coordinates (east = +x)."""
    from matplotlib.patches import Polygon

    maj, mnr, pa = beam_uas[0], beam_uas[1], math.radians(beam_uas[2])
    t = np.linspace(0, 2 * np.pi, 90)
    cx, cy = fov / 2 - 0.6 * maj, -fov / 2 + 0.6 * maj
    x = cx + 0.5 * maj * np.cos(t) * math.sin(pa) + 0.5 * mnr * np.sin(t) * math.cos(pa)
    y = cy + 0.5 * maj * np.cos(t) * math.cos(pa) - 0.5 * mnr * np.sin(t) * math.sin(pa)
    ax.add_patch(Polygon(np.stack([x, y], 1), closed=True, fill=False, edgecolor="white", linewidth=1.0))


def _blackhole(fig, axes, xt, yv, mu, sd, y_label, info) -> str:
    fov = info.get("fov_uas")          # None (no operator information): pixel axes, no caption
    jy = info.get("jy_per_unit")
    scale, unit = (1e3 * jy, "mJy / pixel") if jy else (1.0, "peak-normalised brightness")
    truth, mean, std = scale * (xt[0] + 1.0) / 2.0, scale * (mu[0] + 1.0) / 2.0, scale * sd[0] / 2.0
    extent = None if fov is None else (fov / 2, -fov / 2, -fov / 2, fov / 2)   # column 0 east, row 0 north
    cmap, norm = _signed("afmhot", min(0.0, float(mean.min()), float(truth.min())),
                         max(float(truth.max()), float(mean.max())))
    flux = (lambda img: f", {img.sum() / 1e3:.2f} Jy") if jy else (lambda img: "")
    _show(fig, axes[0], truth, "truth" + flux(truth), cmap, norm, unit=unit, extent=extent)
    if yv is not None:
        dirty = yv.mean(0) / (np.abs(yv).max() or 1.0)
        dcmap, dnorm = _signed("afmhot", float(dirty.min()), 1.0)
        _show(fig, axes[1], dirty, y_label + " (peak 1)", dcmap, dnorm, unit="relative", extent=extent)
    else:
        _show(fig, axes[1], None, y_label)
    _show(fig, axes[2], mean, "posterior mean" + flux(mean) + (" (negative in blue)" if mean.min() < 0 else ""),
          cmap, norm, unit=unit, extent=extent)
    _show(fig, axes[3], std, "posterior std (own scale)", "viridis", vmin=0.0, vmax=float(std.max()) or 1.0,
          unit=unit, extent=extent)
    if fov is None:
        return ""
    for ax in axes:
        _sky_axes(ax, fov)
    caption = f"field of view {fov:g} μas"
    if "psize_uas" in info:
        caption += f" ({xt.shape[-1]} × {info['psize_uas']:g} μas pixels)"
    if "beam_uas" in info:
        maj, mnr, pa = info["beam_uas"]
        caption += f" · beam {maj:.1f} × {mnr:.1f} μas, PA {pa:.0f}° (white ellipse)"
        for ax in (axes[1], axes[2]):
            _draw_beam(ax, fov, info["beam_uas"])
    return caption


def render_panel(x_true: Tensor, mean: Tensor, std: Tensor, y_view: Tensor | None, y_label: str, kind: str,
                 title: str = "", dpi: int = 90, info: dict | None = None) -> bytes:
    """The four-panel PNG (bytes) of :func:`panel_figure`."""
    fig = panel_figure(x_true, mean, std, y_view, y_label, kind, title, dpi, info)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def panel_figure(x_true: Tensor, mean: Tensor, std: Tensor, y_view: Tensor | None, y_label: str, kind: str,
                 title: str = "", dpi: int = 90, info: dict | None = None):
    """The four-panel matplotlib Figure. Tensors are single items ``[C, H, W]``; ``kind`` from
    ``diffinv.metrics.problem_kind`` chooses the colour maps; ``info`` is :func:`panel_info`'s."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    info = info or {}
    xt, mu, sd = (t.detach().float().cpu().numpy() for t in (x_true, mean, std))
    yv = None if y_view is None else y_view.detach().float().cpu().numpy()
    cmap = CMAPS.get(kind, "viridis")
    sky = kind == "blackhole"
    fig = Figure(figsize=(14, 3.7 if sky else 3.5), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    caption = ""
    if kind == "image" and xt.shape[0] == 3:
        _show(fig, axes[0], _to01(xt), "truth", rgb=True)
        if yv is not None and yv.shape[0] == 3 and np.abs(yv).max() <= 1.5:
            _show(fig, axes[1], _to01(yv), y_label, rgb=True)
        else:
            view = None if yv is None else np.log1p(np.abs(yv).mean(0))
            _show(fig, axes[1], view, y_label if yv is None else f"log(1 + |{y_label}|)", "gray")
        _show(fig, axes[2], _to01(mu), "posterior mean", rgb=True)
        _show(fig, axes[3], sd.mean(0), "posterior std (channel mean)", "magma", vmin=0,
              unit="image units ([-1, 1] scale)")
    elif sky:
        caption = _blackhole(fig, axes, xt, yv, mu, sd, y_label, info)
    else:
        ns = kind == "navier_stokes"
        if ns:
            lim = float(np.abs(xt).max()) or 1.0
            lo, hi = -lim, lim
            ylim = None if yv is None else (float(np.abs(yv).max()) or 1.0)
            ylo, yhi = (None, None) if ylim is None else (-ylim, ylim)
        else:
            lo, hi, ylo, yhi = float(xt.min()), float(xt.max()), None, None
        unit = NS_UNIT if ns else None
        suffix = f" ({NS_UNIT})" if ns else ""
        _show(fig, axes[0], xt[0], "truth" + suffix, cmap, vmin=lo, vmax=hi, unit=unit)
        _show(fig, axes[1], None if yv is None else yv.mean(0), y_label, cmap, vmin=ylo, vmax=yhi,
              unit="vorticity" if ns else None)
        _show(fig, axes[2], mu[0], "posterior mean" + suffix, cmap, vmin=lo, vmax=hi, unit=unit)
        _show(fig, axes[3], sd[0], "posterior std" + suffix, "viridis", vmin=0.0, unit=unit)
    text = "\n".join(t for t in (title, caption) if t)
    if text:
        fig.suptitle(text, fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------- titles
def metric_text(metrics: dict, info: dict | None = None, checks: dict | None = None) -> str:
    """The metrics of one item for a title, with the references that make them readable: the misfit's noise
    level from the solver's ``checks["misfit"]["reference"]`` (m / 2) or from :func:`panel_info`."""
    info = dict(info or {})
    reference = ((checks or {}).get("misfit") or {}).get("reference")
    if reference is not None:
        info.update(misfit_reference=reference, misfit_reference_is="m/2")
    parts = []
    for name, value in metrics.items():
        label = LABELS.get(name, name)
        if value is None:
            parts.append(f"{label} n/a")
            continue
        text = f"{label} {value:.4g}"
        if name == "misfit" and "misfit_reference" in info:
            text += f" (noise level {info.get('misfit_reference_is', '')} = {info['misfit_reference']:g})"
        parts.append(text)
    if any(n.startswith("chi2_") for n in metrics):
        parts.append("(χ² reduced: 1 = fits the noise)")
    return ", ".join(parts)


def render_item(item: dict, dpi: int = 90) -> bytes:
    """The panel of one solved item (the solver's result record): title with the id, sampler and metrics."""
    info = item.get("panel") or {}
    metrics = metric_text(item["metrics"], info, item.get("checks"))
    title = f"{item['id']} | {item['sampler']} ({item['num_samples']} samples)\n{metrics}"
    return render_panel(item["x_true"], item["mean"], item["std"], item.get("y_view"),
                        item.get("y_label", "measurement"), item.get("kind", "generic"), title=title, dpi=dpi,
                        info=info)


__all__ = ["measurement_view", "panel_info", "fit_beam", "render_panel", "panel_figure", "render_item",
           "metric_text", "problem_kind"]

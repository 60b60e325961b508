"""PNG panels of one solved inverse problem: truth | measurement (or its back-projection) | posterior mean |
posterior std, each with a colour bar.

Matplotlib's object API with the Agg canvas (no pyplot, no global backend switch): safe in worker
processes and on machines without a display. Colour maps: images as RGB (std as a grey-level map),
Navier–Stokes vorticity in the diverging ``RdBu_r`` with limits symmetric about 0, black holes in
``afmhot``. ``measurement_view`` turns a measurement into something that can be shown next to the truth.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from torch import Tensor

from diffinv.metrics import problem_kind
from diffinv.operators.base import Operator
from diffinv.operators.blackhole import BlackHoleImaging
from diffinv.operators.navier_stokes import NavierStokes

CMAPS = {"navier_stokes": "RdBu_r", "blackhole": "afmhot", "image": "gray", "generic": "viridis"}


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


def _to01(x: np.ndarray) -> np.ndarray:
    return np.clip((x + 1.0) / 2.0, 0.0, 1.0)


def _show(fig, ax, img: np.ndarray | None, title: str, cmap: str, vmin=None, vmax=None, rgb: bool = False) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if img is None:
        ax.text(0.5, 0.5, title, ha="center", va="center", fontsize=8, wrap=True, transform=ax.transAxes)
        ax.set_facecolor("white")
        return
    if rgb:
        ax.imshow(np.transpose(img, (1, 2, 0)), interpolation="nearest")
        return
    im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)


def render_panel(x_true: Tensor, mean: Tensor, std: Tensor, y_view: Tensor | None, y_label: str, kind: str,
                 title: str = "", dpi: int = 90) -> bytes:
    """The four-panel PNG (bytes). Tensors are single items ``[C, H, W]``; ``kind`` from
    ``diffinv.metrics.problem_kind`` chooses the colour maps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xt, mu, sd = (t.detach().float().cpu().numpy() for t in (x_true, mean, std))
    yv = None if y_view is None else y_view.detach().float().cpu().numpy()
    cmap = CMAPS.get(kind, "viridis")
    fig = Figure(figsize=(13, 3.4), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    rgb = kind == "image" and xt.shape[0] == 3
    if rgb:
        _show(fig, axes[0], _to01(xt), "truth", cmap, rgb=True)
        if yv is not None and yv.shape[0] == 3 and np.abs(yv).max() <= 1.5:
            _show(fig, axes[1], _to01(yv), y_label, cmap, rgb=True)
        else:
            view = None if yv is None else np.log1p(np.abs(yv).mean(0))
            _show(fig, axes[1], view, y_label if yv is None else f"log(1 + |{y_label}|)", "gray")
        _show(fig, axes[2], _to01(mu), "posterior mean", cmap, rgb=True)
        _show(fig, axes[3], sd.mean(0), "posterior std (channel mean)", "magma", vmin=0)
    else:
        if kind == "navier_stokes":
            lim = float(np.abs(xt).max()) or 1.0
            lo, hi = -lim, lim
            ylim = None if yv is None else (float(np.abs(yv).max()) or 1.0)
            ylo, yhi = (None, None) if ylim is None else (-ylim, ylim)
        elif kind == "blackhole":
            xt, mu, sd = _to01(xt), _to01(mu), sd / 2.0   # brightness in [0, 1]
            lo, hi, ylo, yhi = 0.0, 1.0, None, None
        else:
            lo, hi = float(xt.min()), float(xt.max())
            ylo, yhi = None, None
        unit = " (vorticity / 10)" if kind == "navier_stokes" else ""
        _show(fig, axes[0], xt[0], "truth" + unit, cmap, lo, hi)
        _show(fig, axes[1], None if yv is None else yv.mean(0), y_label, cmap, ylo, yhi)
        _show(fig, axes[2], mu[0], "posterior mean" + unit, cmap, lo, hi)
        _show(fig, axes[3], sd[0], "posterior std", "afmhot" if kind == "blackhole" else "viridis", 0.0)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


__all__ = ["measurement_view", "render_panel", "problem_kind"]

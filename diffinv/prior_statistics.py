"""Statistics that tell whether a prior's samples look like its data, for the model cards.

* Navier–Stokes: the vorticity energy spectrum ``E(k)``, the energy of the field's Fourier modes summed over
  shells ``|k| in [k - 1/2, k + 1/2)`` (integer wavenumbers of the periodic box), ``E(k) = 1/2 sum |w_hat|^2``
  with the orthonormal DFT, so that ``sum_k E(k) = 1/2 mean(w^2) * N^2``. Samples against training fields on a
  log-log plot, and the ratio per octave band.
* Black holes: per image, on the intensity ``I = (x + 1) / 2`` (peak 1 -> [-1, 1] undone), around the flux
  ring's centre (the flux centroid moved twice to the mean of the ridge, the brightest radius along each
  angle), from a polar resampling (bilinear, 96 angles, half-pixel radii):
  - ``diameter``: twice the radius of the peak of the angle-averaged radial profile (uas);
  - ``width``: the full width at half maximum of that profile around its peak (uas);
  - ``asymmetry``: the m = 1 brightness mode along the ring, ``|sum_theta I e^(i theta)| / sum_theta I`` at the
    peak radius (0: uniform ring, 1: all flux at one angle; the ``A`` of ring-extraction methods);
  - ``background``: the mean intensity beyond the ring (radius above peak + one FWHM), as a fraction of the peak;
  - ``roughness``: the RMS there of ``I`` minus its 3 x 3 box average, the pixel-scale noise that smooth
    emission (floors, jets) does not have.
  A sample has a *noisy background* when its roughness exceeds the 99th percentile of the training images'.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


# ---------------------------------------------------------------------------------------------- Navier–Stokes
def energy_spectrum(w: Tensor) -> Tensor:
    """``[B, 1, N, N]`` or ``[B, N, N]`` periodic fields -> ``[B, N // 2 + 1]`` shell energies E(k), k = 0..N/2."""
    w = w.reshape(-1, *w.shape[-2:]).double()
    n = w.shape[-1]
    power = 0.5 * torch.fft.fft2(w, norm="ortho").abs().pow(2)
    k = torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64)
    shell = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2).round().long().clamp_max(n // 2)
    out = torch.zeros(w.shape[0], n // 2 + 1, dtype=torch.float64)
    return out.index_add_(1, shell.flatten(), power.reshape(w.shape[0], -1))


def spectrum_bands(e_samples: Tensor, e_reference: Tensor, k_max: int | None = None) -> list[tuple[str, float]]:
    """Ratio of mean sample energy to mean reference energy per octave band k in [1, 2), [2, 4), ... up to
    ``k_max`` (``[B, K]`` spectra each; default all of k)."""
    a, b = e_samples.mean(0), e_reference.mean(0)
    out, lo, top = [], 1, a.numel() if k_max is None else k_max + 1
    while lo < top:
        hi = min(2 * lo, top)
        out.append((f"{lo}-{hi - 1}" if hi - 1 > lo else f"{lo}", float(a[lo:hi].sum() / b[lo:hi].sum())))
        lo = hi
    return out


# ---------------------------------------------------------------------------------------------- black holes
RING_KEYS = ("diameter", "width", "asymmetry", "background", "roughness")


def ring_statistics(images: Tensor, fov_uas: float) -> dict[str, Tensor]:
    """``[B, 1, N, N]`` images in [-1, 1] (background -1, peak 1) -> per-image ``RING_KEYS`` (``[B]`` each)."""
    x = images.reshape(-1, 1, *images.shape[-2:]).double()
    b, n = x.shape[0], x.shape[-1]
    intensity = ((x + 1) / 2).clamp_min(0)
    psize = fov_uas / n
    coords = torch.arange(n, dtype=torch.float64)
    flux = intensity.sum((-2, -1)).clamp_min(1e-12)
    cy = (intensity.sum(-1)[:, 0] * coords).sum(-1) / flux[:, 0]
    cx = (intensity.sum(-2)[:, 0] * coords).sum(-1) / flux[:, 0]
    radii = torch.arange(0, n / 2, 0.5, dtype=torch.float64)
    theta = torch.arange(96, dtype=torch.float64) * (2 * math.pi / 96)

    def polar_about(cy: Tensor, cx: Tensor) -> Tensor:                            # [B, R, angles]
        py = cy[:, None, None] + radii[None, :, None] * torch.sin(theta)[None, None, :]
        px = cx[:, None, None] + radii[None, :, None] * torch.cos(theta)[None, None, :]
        grid = torch.stack([px / (n - 1) * 2 - 1, py / (n - 1) * 2 - 1], -1)     # align_corners=True
        return F.grid_sample(intensity, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]

    # the flux centroid leans toward a ring's bright side; re-centre twice on the ridge (the brightest radius
    # along each angle), the centre of the ring itself
    for _ in range(2):
        ridge = radii[polar_about(cy, cx).argmax(1)]                              # [B, angles]
        cy = cy + (ridge * torch.sin(theta)).mean(-1)
        cx = cx + (ridge * torch.cos(theta)).mean(-1)
    polar = polar_about(cy, cx)
    profile = polar.mean(-1)                                                      # [B, R]
    peak = profile.argmax(-1)
    r_peak = radii[peak]
    half = profile.gather(1, peak[:, None]) / 2
    below = profile < half
    idx = torch.arange(radii.numel())[None, :]
    inner = torch.where(below & (idx < peak[:, None]), idx, torch.full_like(idx, -1)).max(-1).values
    outer = torch.where(below & (idx > peak[:, None]), idx, torch.full_like(idx, radii.numel())).min(-1).values
    r_in = torch.where(inner >= 0, radii[inner.clamp_min(0)], torch.zeros_like(r_peak))
    r_out = radii[outer.clamp_max(radii.numel() - 1)]
    fwhm = r_out - r_in
    along = polar.gather(1, peak[:, None, None].expand(b, 1, theta.numel()))[:, 0]
    m1 = (along * torch.exp(1j * theta)).sum(-1).abs() / along.sum(-1).clamp_min(1e-12)

    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    r_pix = torch.sqrt((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2)
    outside = (r_pix > (r_peak + fwhm)[:, None, None]).double()
    count = outside.sum((-2, -1)).clamp_min(1)
    peak_value = intensity.amax((-3, -2, -1)).clamp_min(1e-12)
    level = (intensity[:, 0] * outside).sum((-2, -1)) / count / peak_value
    smooth = F.avg_pool2d(F.pad(intensity, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    rough = (((intensity - smooth)[:, 0] ** 2 * outside).sum((-2, -1)) / count).sqrt() / peak_value
    return {"diameter": 2 * r_peak * psize, "width": fwhm * psize, "asymmetry": m1,
            "background": level, "roughness": rough}


def noisy_background_fraction(samples: dict[str, Tensor], training: dict[str, Tensor],
                              quantile: float = 0.99) -> tuple[float, float]:
    """(fraction of samples, threshold): samples whose roughness exceeds the training images' ``quantile``."""
    threshold = float(torch.quantile(training["roughness"], quantile))
    return float((samples["roughness"] > threshold).double().mean()), threshold


def summarize(stats: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """Median and 10 / 90 % quantiles of each statistic."""
    return {k: {"median": float(v.median()), "q10": float(torch.quantile(v, 0.1)), "q90": float(torch.quantile(v, 0.9))}
            for k, v in stats.items()}


# ---------------------------------------------------------------------------------------------- model cards
CARD_BEGIN, CARD_END = "<!-- prior statistics: begin -->", "<!-- prior statistics: end -->"


def card_section(problem: str, samples: Tensor, training: Tensor, out_dir, truth: Tensor | None = None,
                 fov_uas: float = 160.0) -> tuple[str, dict]:
    """The model card's "samples against data" section for ``problem`` ('navier_stokes' or 'blackhole'): writes
    ``prior_statistics.png`` into ``out_dir`` and returns (markdown between ``CARD_BEGIN`` / ``CARD_END``, figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pathlib import Path

    out_dir = Path(out_dir)
    groups = {"prior samples": samples, "training fields": training, **({"held-out truth": truth} if truth is not None else {})}
    if problem == "navier_stokes":
        spectra = {k: energy_spectrum(v) for k, v in groups.items()}
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        for name, e in spectra.items():
            k = torch.arange(1, e.shape[1])
            ax.loglog(k, e.mean(0)[1:], label=f"{name} ({e.shape[0]})", lw=1.2)
        top = max(float(e.mean(0)[1:].max()) for e in spectra.values())
        ax.set_ylim(top * 1e-6, top * 3)
        ax.set_xlabel("wavenumber k"), ax.set_ylabel("E(k)"), ax.legend(fontsize=7)
        ax.set_title("vorticity energy spectrum (prior units)", fontsize=8)
        fig.tight_layout(), fig.savefig(out_dir / "prior_statistics.png", dpi=120), plt.close(fig)
        # the data are dealiased (2/3 rule: |k_x| or |k_y| > N / 3 removed); shells above N / 3 hold only the
        # corners of the kept square, so a sample's excess energy there is pixel noise the data do not have
        k_cut = samples.shape[-1] // 3
        bands = {name: spectrum_bands(spectra["prior samples"], e, k_cut) for name, e in spectra.items()
                 if name != "prior samples"}
        head = "| k band | " + " | ".join(f"samples / {n}" for n in bands) + " |"
        rows = [f"| {band} | " + " | ".join(f"{bands[n][i][1]:.2f}" for n in bands) + " |"
                for i, (band, _) in enumerate(next(iter(bands.values())))]
        above = {name: float(e[:, k_cut + 1:].sum() / e[:, 1:].sum()) for name, e in spectra.items()}
        rows.append(f"| energy above k = {k_cut} (fraction of total) | "
                    + " | ".join(f"{above['prior samples']:.2g} vs {above[n]:.2g}" for n in bands) + " |")
        figures = {"spectrum_ratio": {n: dict(b) for n, b in bands.items()}, "energy_above_cutoff": above}
        text = ("Vorticity energy spectrum E(k) of unconditional samples against training fields"
                + (" and held-out truth" if truth is not None else "") + " (`diffinv.prior_statistics.energy_spectrum`); "
                "the table is the ratio of mean energies per octave band (1 = the same energy at those scales).\n\n"
                f"![energy spectrum](prior_statistics.png)\n\n{head}\n|---|" + "---|" * len(bands) + "\n" + "\n".join(rows))
    elif problem == "blackhole":
        stats = {k: ring_statistics(v, fov_uas) for k, v in groups.items()}
        noisy, threshold = noisy_background_fraction(stats["prior samples"], stats["training fields"])
        summaries = {k: summarize(v) for k, v in stats.items()}
        fig, axes = plt.subplots(1, len(RING_KEYS), figsize=(2.4 * len(RING_KEYS), 2.4))
        for ax, key in zip(axes, RING_KEYS):
            for name, s in stats.items():
                v = s[key].float()
                if key in ("background", "roughness"):
                    v = v.clamp_min(1e-5).log10()
                ax.hist(v.numpy(), bins=20, histtype="step", density=True, label=name)
            ax.set_title(key + (" (log10)" if key in ("background", "roughness") else ""), fontsize=8)
        axes[0].legend(fontsize=6)
        fig.tight_layout(), fig.savefig(out_dir / "prior_statistics.png", dpi=120), plt.close(fig)
        units = {"diameter": " uas", "width": " uas", "asymmetry": "", "background": " of peak", "roughness": " of peak"}
        head = "| statistic (median [10 %, 90 %]) | " + " | ".join(summaries) + " |"
        fmt = lambda d: f"{d['median']:.3g} [{d['q10']:.3g}, {d['q90']:.3g}]"  # noqa: E731
        rows = [f"| {k}{units[k]} | " + " | ".join(fmt(summaries[n][k]) for n in summaries) + " |" for k in RING_KEYS]
        figures = {"noisy_background_fraction": noisy, "roughness_threshold": threshold, "ring": summaries}
        text = ("Ring statistics of unconditional samples against training images"
                + (" and held-out truth" if truth is not None else "") + " (`diffinv.prior_statistics.ring_statistics`: "
                "diameter and FWHM width of the angle-averaged profile, m = 1 asymmetry along the ring, mean background "
                "beyond the ring and its pixel-scale roughness).\n\n"
                f"**Noisy background: {100 * noisy:.0f} % of {samples.shape[0]} samples** (roughness beyond the ring "
                f"above {threshold:.2g} of the peak, the 99th percentile of the training images').\n\n"
                f"![ring statistics](prior_statistics.png)\n\n{head}\n|---|" + "---|" * len(summaries) + "\n" + "\n".join(rows))
    else:
        raise ValueError(f"card_section: no statistics for problem {problem!r}; use 'navier_stokes' or 'blackhole'.")
    return f"{CARD_BEGIN}\n## Samples against data\n\n{text}\n{CARD_END}\n", figures


def replace_card_section(card: str, section: str) -> str:
    """``card`` with its statistics section replaced by ``section`` (appended before '## Use' when absent)."""
    if CARD_BEGIN in card and CARD_END in card:
        head, rest = card.split(CARD_BEGIN, 1)
        return head + section.rstrip("\n") + rest.split(CARD_END, 1)[1]
    if "\n## Use" in card:
        head, rest = card.split("\n## Use", 1)
        return head + "\n" + section + "\n## Use" + rest
    return card.rstrip("\n") + "\n\n" + section

"""Black-hole interferometric imaging with the EHT 2017 array (the InverseBench black-hole problem,
Zheng et al. 2025; forward model after eht-imaging, Chael et al. 2016, 2018).

Image convention (InverseBench ``BlackHoleImaging.unnormalize``): the prior's image
``x`` in [-1, 1] is a peak-normalised brightness map; ``x01 = (x + 1) / 2`` is in [0, 1] and the sky
brightness is ``I = jy_per_unit * x01`` Jy per pixel. ``jy_per_unit`` is a fixed constant (InverseBench's
``multiplier``, the peak pixel of its reference image), *not* a per-image normalisation: the total flux
``jy_per_unit * sum(x01)`` varies with the image and is itself measured. The default 0.003 Jy makes a
ring whose peak-normalised pixels sum to 200 carry the 0.6 Jy of M87* (EHT 2019 Paper IV). Pixel
``x[..., i, j]`` is ehtim's ``im.imarr()[i, j]``: row 0 is north, column 0 is east.

Measurement ``y = forward(x)``: one real tensor ``[B, 2 n_vis + 1]`` =
``[Re V_1..V_n, Im V_1..V_n, F]`` with the complex visibilities V (Jy) of the ehtim observation and the
total flux F (Jy). Keeping the visibilities (not the closures) as the measurement lets the noise model
draw thermal noise where it physically arises, on each visibility, and recompute the closure quantities
from the noisy visibilities; gradient samplers differentiate ``loss(forward(x), y_obs)`` end to end, and
ensemble methods (EnKG) take gradients of the loss with respect to this real vector.

Misfit (:class:`ClosureNoise`): the weighted closure chi-square of InverseBench (Sun & Bouman 2020,
eqs. for closure phases and log closure amplitudes; EHT 2019 Paper IV, section 6):

    chi2_cp  = mean_k 2 (1 - cos(phi_k(y_hat) - phi_k(y_obs))) / sigma_cp,k^2
    chi2_lca = mean_k (L_k(y_hat) - L_k(y_obs))^2 / sigma_lca,k^2
    chi2_F   = ((F(y_hat) - F(y_obs)) / sigma_F)^2
    loss     = w_cp chi2_cp + w_lca chi2_lca + w_F chi2_F,   (w_cp, w_lca, w_F) = (1, 1, 0.5)

with the closure sigmas propagated from the visibility sigmas at the observed amplitudes as ehtim does
(``make_bispectrum`` / ``make_closure_amplitude`` without debiasing): sigma_cp^2 = sigma_lca^2 =
sum over legs of sigma_k^2 / |V_k|^2 (radians for closure phases).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Operator
from .eht_array import ObservationSetup, ObservationTables, cached_tables, dft_matrix
from .noise import NoiseModel, check_finite

REDUCTIONS = ("mean", "sum", "nll")


class ClosureNoise(NoiseModel):
    """Thermal noise on visibilities, scored by the closure-quantity chi-square.

    ``forward(y, generator)`` adds circular complex Gaussian noise ``sigma_k (n_re + i n_im)`` to each
    visibility (ehtim's ``cerror``: std ``sigma_k`` on the real and on the imaginary part), optionally
    multiplied by random station gains ``g_a conj(g_b)`` per station per time (amplitude
    ``|1 + gain_std n|``, uniform phase when ``phase_errors``), which closure quantities cancel; the
    flux entry is left exact, as in InverseBench's thermal-noise mode (``measure_vis_error``).

    ``loss(y_hat, y_obs) -> [B]`` (``y_obs`` may have batch 1 and is then shared). ``reduction``:
    ``"mean"`` (default) the chi-squares averaged over their data points as above (InverseBench's
    normalised chi-square); ``"sum"`` the chi-squares summed over data points (InverseBench's ``loss`` is
    twice this, because its weights are multiplied by the data counts); ``"nll"`` half the sum, the
    Gaussian negative log-likelihood of the closure data (the NoiseModel contract's scale).

    ``sigma`` is the median visibility sigma in Jy (0 when ``thermal=False``).
    """

    def __init__(self, sigma_vis: Tensor, cp_index: Tensor, cp_sign: Tensor, lca_index: Tensor,
                 t1: Tensor, t2: Tensor, time_index: Tensor, flux_sigma: float,
                 weights: Sequence[float] = (1.0, 1.0, 0.5), reduction: str = "mean", thermal: bool = True,
                 gain_std: float = 0.0, phase_errors: bool = False):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"ClosureNoise: reduction must be one of {REDUCTIONS}, got {reduction!r}.")
        if len(weights) != 3 or any((not math.isfinite(float(w))) or float(w) < 0 for w in weights):
            raise ValueError(f"ClosureNoise: weights must be three numbers >= 0 (closure phase, log closure "
                             f"amplitude, flux), got {weights!r}.")
        if not (math.isfinite(flux_sigma) and flux_sigma > 0):
            raise ValueError(f"ClosureNoise: flux_sigma must be > 0 (Jy), got {flux_sigma!r}.")
        if not (math.isfinite(gain_std) and gain_std >= 0):
            raise ValueError(f"ClosureNoise: gain_std must be >= 0, got {gain_std!r}.")
        if not bool((sigma_vis > 0).all()):
            raise ValueError("ClosureNoise: every visibility sigma must be > 0.")
        self.register_buffer("sigma_vis", sigma_vis.clone(), persistent=False)       # [n]
        self.register_buffer("cp_index", cp_index.clone(), persistent=False)         # [n_cp, 3]
        self.register_buffer("cp_sign", cp_sign.to(sigma_vis.dtype), persistent=False)
        self.register_buffer("lca_index", lca_index.clone(), persistent=False)       # [n_lca, 4]
        self.register_buffer("lca_sign", torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=sigma_vis.dtype),
                             persistent=False)
        self.register_buffer("t1", t1.clone(), persistent=False)
        self.register_buffer("t2", t2.clone(), persistent=False)
        self.register_buffer("time_index", time_index.clone(), persistent=False)
        self.n_vis = int(sigma_vis.numel())
        self.flux_sigma = float(flux_sigma)
        self.weights = tuple(float(w) for w in weights)
        self.reduction = reduction
        self.thermal = bool(thermal)
        self.gain_std = float(gain_std)
        self.phase_errors = bool(phase_errors)
        self.sigma = float(sigma_vis.median()) if thermal else 0.0

    # ------------------------------------------------------------------ layout of y
    def _check_y(self, y: Tensor, name: str = "y") -> Tensor:
        if y.dim() != 2 or y.shape[1] != 2 * self.n_vis + 1:
            raise ValueError(f"ClosureNoise: {name} must have shape [B, {2 * self.n_vis + 1}] "
                             f"([Re V, Im V, flux] for {self.n_vis} visibilities), got {list(y.shape)}.")
        return y

    def split(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(Re V, Im V, flux)`` of a measurement, shapes ``[B, n], [B, n], [B]``."""
        self._check_y(y)
        n = self.n_vis
        return y[:, :n], y[:, n:2 * n], y[:, 2 * n]

    def visibilities(self, y: Tensor) -> Tensor:
        re, im, _ = self.split(y)
        return torch.complex(re, im)

    # ------------------------------------------------------------------ closure quantities
    def closure_phases(self, y: Tensor) -> Tensor:
        """``[B, n_cp]`` closure phases in radians, wrapped to (-pi, pi] (ehtim ``c_phases(count='min')``)."""
        re, im, _ = self.split(y)
        phase = torch.atan2(im, re)
        cp = (phase[:, self.cp_index] * self.cp_sign).sum(-1)
        return torch.atan2(torch.sin(cp), torch.cos(cp))

    def log_closure_amplitudes(self, y: Tensor) -> Tensor:
        """``[B, n_lca]`` log closure amplitudes log(|V12||V34| / (|V14||V23|)) (ehtim ``c_amplitudes(ctype=
        'logcamp', count='min', debias=False)``)."""
        re, im, _ = self.split(y)
        log_amp = 0.5 * torch.log(re * re + im * im)
        return (log_amp[:, self.lca_index] * self.lca_sign).sum(-1)

    def closure_sigmas(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Thermal sigmas ``([B, n_cp], [B, n_lca])`` of the closure phases (radians) and log closure
        amplitudes at the amplitudes of ``y``: sqrt(sum_legs sigma_k^2 / |V_k|^2) (ehtim's propagation)."""
        re, im, _ = self.split(y)
        rel_var = self.sigma_vis**2 / (re * re + im * im)
        return rel_var[:, self.cp_index].sum(-1).sqrt(), rel_var[:, self.lca_index].sum(-1).sqrt()

    # ------------------------------------------------------------------ noise
    def station_gains(self, batch: int, generator: torch.Generator | None, dtype, device) -> Tensor:
        """Random complex gains ``[B, n_stations, n_times]``: amplitude |1 + gain_std n|, phase uniform in
        [0, 2 pi) when ``phase_errors`` (ehtim ``add_noise`` with ampcal / phasecal False)."""
        n_st = int(max(self.t1.max(), self.t2.max())) + 1
        n_t = int(self.time_index.max()) + 1
        amp = (1.0 + self.gain_std * torch.randn((batch, n_st, n_t), generator=generator, dtype=dtype,
                                                 device=device)).abs()
        if self.phase_errors:
            ph = 2 * math.pi * torch.rand((batch, n_st, n_t), generator=generator, dtype=dtype, device=device)
        else:
            ph = torch.zeros_like(amp)
        return torch.polar(amp, ph)

    def apply_gains(self, y: Tensor, gains: Tensor) -> Tensor:
        """``V_ab(t) -> g_a(t) conj(g_b(t)) V_ab(t)`` for gains ``[B or 1, n_stations, n_times]``."""
        vis = self.visibilities(y)
        g1 = gains[:, self.t1, self.time_index]
        g2 = gains[:, self.t2, self.time_index]
        vis = g1 * g2.conj() * vis
        return torch.cat([vis.real, vis.imag, y[:, 2 * self.n_vis:]], dim=1)

    def forward(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        check_finite("ClosureNoise", self._check_y(y))
        out = y.clone()
        if self.thermal:
            sig = torch.cat([self.sigma_vis, self.sigma_vis]).to(y.dtype)
            n = torch.randn((y.shape[0], 2 * self.n_vis), generator=generator, dtype=y.dtype, device=y.device)
            out[:, :2 * self.n_vis] = out[:, :2 * self.n_vis] + sig * n
        if self.gain_std > 0 or self.phase_errors:
            out = self.apply_gains(out, self.station_gains(y.shape[0], generator, y.dtype, y.device))
        return out

    # ------------------------------------------------------------------ misfit
    def chi_squares(self, y_hat: Tensor, y_obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-data-point chi-square terms ``([B, n_cp], [B, n_lca], [B])`` of ``y_hat`` against ``y_obs``."""
        self._check_y(y_hat, "y_hat")
        self._check_y(y_obs, "y_obs")
        if y_obs.shape[0] not in (1, y_hat.shape[0]):
            raise ValueError(f"ClosureNoise: y_obs batch {y_obs.shape[0]} must be 1 or match y_hat's "
                             f"{y_hat.shape[0]}.")
        sig_cp, sig_lca = self.closure_sigmas(y_obs)
        d_cp = self.closure_phases(y_hat) - self.closure_phases(y_obs)
        chi_cp = 2.0 * (1.0 - torch.cos(d_cp)) / sig_cp**2          # 2(1 - cos) ~ delta^2, wrap-safe
        chi_lca = (self.log_closure_amplitudes(y_hat) - self.log_closure_amplitudes(y_obs)) ** 2 / sig_lca**2
        chi_f = ((y_hat[:, -1] - y_obs[:, -1]) / self.flux_sigma) ** 2
        return chi_cp, chi_lca, chi_f

    def loss(self, y_hat: Tensor, y_obs: Tensor) -> Tensor:
        chi_cp, chi_lca, chi_f = self.chi_squares(y_hat, y_obs)
        w_cp, w_lca, w_f = self.weights
        if self.reduction == "mean":
            return w_cp * chi_cp.mean(-1) + w_lca * chi_lca.mean(-1) + w_f * chi_f
        total = w_cp * chi_cp.sum(-1) + w_lca * chi_lca.sum(-1) + w_f * chi_f
        return total if self.reduction == "sum" else 0.5 * total

    def extra_repr(self) -> str:
        return (f"n_vis={self.n_vis}, n_cp={self.cp_index.shape[0]}, n_lca={self.lca_index.shape[0]}, "
                f"weights={self.weights}, reduction={self.reduction!r}, thermal={self.thermal}, "
                f"gain_std={self.gain_std}, phase_errors={self.phase_errors}")


class BlackHoleImaging(Operator):
    """EHT 2017 black-hole imaging: image ``[B, 1, npix, npix]`` in [-1, 1] -> ``[B, 2 n_vis + 1]``
    ``[Re V, Im V, total flux]`` in Jy (see the module docstring for conventions).

    Observation (built once with ehtim, then cached as buffers): ``source`` ("M87" or "SgrA"), image grid
    ``npix`` x ``npix`` over ``fov_uas`` microarcseconds, 230 GHz, EHT 2017 array, 24 h UTC track on
    MJD 57853, ``tint_s`` = 10 s integrations every ``tadv_s`` = 600 s, 4 GHz bandwidth, elevation
    10-85 degrees; see :class:`~diffinv.operators.eht_array.ObservationSetup`. ``uvfits``: use the baselines
    and sigmas of a saved observation instead.

    Noise: ``noise_scale`` multiplies the thermal sigmas from the SEFDs; ``thermal=False`` keeps the data
    noise-free (the chi-square still uses the thermal sigmas); ``gain_std`` / ``phase_errors`` add station
    gain corruptions; ``flux_sigma`` (Jy) defaults to ``2 * jy_per_unit`` (InverseBench's flux term,
    ``((F_hat - F) / 2)^2`` in peak-pixel units); ``weights`` and ``reduction`` as in :class:`ClosureNoise`.
    """

    linear = False          # affine in x ((x + 1) / 2), and scored through nonlinear closures
    differentiable = True
    interferometric = True  # visibilities of an array (what ehtim's imager takes)

    def __init__(self, npix: int = 64, fov_uas: float = 160.0, source: str = "M87",
                 jy_per_unit: float = 0.003, tint_s: float = 10.0, tadv_s: float = 600.0,
                 tstart_hr: float = 0.0, tstop_hr: float = 24.0, bw_hz: float = 4e9, rf_hz: float = 230e9,
                 mjd: int = 57853, elevmin_deg: float = 10.0, elevmax_deg: float = 85.0, sefd_scale: float = 1.0,
                 noise_scale: float = 1.0, thermal: bool = True, gain_std: float = 0.0,
                 phase_errors: bool = False, flux_sigma: float | None = None,
                 weights: Sequence[float] = (1.0, 1.0, 0.5), reduction: str = "mean",
                 uvfits: str | None = None):
        if not (math.isfinite(jy_per_unit) and jy_per_unit > 0):
            raise ValueError(f"BlackHoleImaging: jy_per_unit must be > 0 (Jy per pixel at x01 = 1), got {jy_per_unit!r}.")
        if not (math.isfinite(noise_scale) and noise_scale > 0):
            raise ValueError(f"BlackHoleImaging: noise_scale must be > 0 (use thermal=False for noise-free data), "
                             f"got {noise_scale!r}.")
        setup = ObservationSetup(source=source, npix=npix, fov_uas=fov_uas, rf_hz=rf_hz, bw_hz=bw_hz,
                                 tint_s=tint_s, tadv_s=tadv_s, tstart_hr=tstart_hr, tstop_hr=tstop_hr, mjd=mjd,
                                 elevmin_deg=elevmin_deg, elevmax_deg=elevmax_deg, sefd_scale=sefd_scale)
        tables = cached_tables(setup, uvfits)
        if tables.cp_index.shape[0] == 0 or tables.lca_index.shape[0] == 0:
            raise ValueError("BlackHoleImaging: the observation yields no closure phases or no log closure "
                             "amplitudes; lengthen the track (tstart_hr / tstop_hr) or lower elevmin_deg.")
        f64 = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
        noise = ClosureNoise(
            sigma_vis=(noise_scale * f64(tables.sigma)).float(), cp_index=torch.as_tensor(tables.cp_index),
            cp_sign=torch.as_tensor(tables.cp_sign), lca_index=torch.as_tensor(tables.lca_index),
            t1=torch.as_tensor(tables.t1), t2=torch.as_tensor(tables.t2),
            time_index=torch.as_tensor(tables.time_index),
            flux_sigma=2.0 * jy_per_unit if flux_sigma is None else float(flux_sigma), weights=weights,
            reduction=reduction, thermal=thermal, gain_std=gain_std, phase_errors=phase_errors)
        super().__init__((1, npix, npix), noise)
        self.setup = setup
        self.tables = tables
        self.jy_per_unit = float(jy_per_unit)
        self.psize_uas = setup.psize_uas
        self.n_vis = tables.n_vis
        # [2 n_vis, npix^2] so that  [Re V, Im V] = I_flat @ dft.T  (ehtim ftmatrix with the triangle pulse)
        self.register_buffer("dft", torch.from_numpy(dft_matrix(tables.u, tables.v, npix, setup.psize_rad)).float(),
                             persistent=False)
        self.register_buffer("u", f64(tables.u).float(), persistent=False)
        self.register_buffer("v", f64(tables.v).float(), persistent=False)
        self.register_buffer("time", f64(tables.time).float(), persistent=False)

    # ------------------------------------------------------------------ forward model
    def image_jy(self, x: Tensor) -> Tensor:
        """Sky brightness in Jy per pixel: ``jy_per_unit * (x + 1) / 2``."""
        return self.jy_per_unit * (x + 1.0) / 2.0

    def forward(self, x: Tensor) -> Tensor:
        img = self.image_jy(self.check_input(x)).reshape(x.shape[0], -1)
        vis = img @ self.dft.T                                    # [B, 2 n_vis]: direct Fourier transform
        return torch.cat([vis, img.sum(dim=1, keepdim=True)], dim=1)

    def visibilities(self, x: Tensor) -> Tensor:
        """Complex visibilities ``[B, n_vis]`` in Jy (ehtim ``obs.data['vis']`` order)."""
        return self.noise.visibilities(self(x))

    def closure_phases(self, x: Tensor) -> Tensor:
        return self.noise.closure_phases(self(x))

    def log_closure_amplitudes(self, x: Tensor) -> Tensor:
        return self.noise.log_closure_amplitudes(self(x))

    def flux(self, x: Tensor) -> Tensor:
        return self.image_jy(self.check_input(x)).flatten(1).sum(1)

    @property
    def counts(self) -> dict[str, int]:
        return {"vis": self.n_vis, "cphase": int(self.noise.cp_index.shape[0]),
                "logcamp": int(self.noise.lca_index.shape[0])}

    def extra_repr(self) -> str:
        return (f"source={self.setup.source!r}, npix={self.setup.npix}, fov_uas={self.setup.fov_uas}, "
                f"jy_per_unit={self.jy_per_unit}, counts={self.counts}")


# ---------------------------------------------------------------------- metrics (InverseBench evaluation)
def closure_chi2(operator: BlackHoleImaging, x: Tensor, y_obs: Tensor, normalize: bool = False) -> dict[str, Tensor]:
    """Closure-phase and log-closure-amplitude chi-squares ``[B]`` of images ``x`` against ``y_obs``, after
    rescaling each image's flux to the observed flux (InverseBench ``evaluate_chisq``). Closure quantities
    are flux-invariant, so the rescaling matters only for consistency with the reference. ``normalize``
    reports ``1 / chi2`` where ``chi2 < 1`` (InverseBench's symmetric "distance from 1")."""
    with torch.no_grad():
        y_hat = operator(x)
        f_hat, f_obs = y_hat[:, -1:], y_obs[:, -1:]
        y_hat = torch.cat([y_hat[:, :-1] * (f_obs / f_hat), f_obs.expand(y_hat.shape[0], 1)], dim=1)
        chi_cp, chi_lca, _ = operator.noise.chi_squares(y_hat, y_obs)
        out = {"cphase": chi_cp.mean(-1), "logcamp": chi_lca.mean(-1)}
        if normalize:
            out = {k: torch.where(v < 1, 1.0 / v, v) for k, v in out.items()}
    return out


def _gaussian_kernel1d(sigma_px: float, dtype, device) -> Tensor:
    # scipy.ndimage.gaussian_filter's kernel (truncate = 4): exp(-t^2 / (2 sigma^2)) on |t| <= int(4 sigma + 0.5)
    radius = int(4.0 * sigma_px + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma_px) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def blur_circular(img: Tensor, fwhm_uas: float, psize_uas: float) -> Tensor:
    """Convolve ``[B, C, H, W]`` with a circular Gaussian of FWHM ``fwhm_uas`` (ehtim ``Image.blur_circ``,
    i.e. scipy ``gaussian_filter`` with mode 'reflect' = symmetric edges, truncated at 4 sigma)."""
    if fwhm_uas <= 0:
        return img
    sigma_px = fwhm_uas / psize_uas / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    k = _gaussian_kernel1d(sigma_px, img.dtype, img.device)
    r = (k.numel() - 1) // 2
    b, c, h, w = img.shape
    out = img.reshape(b * c, 1, h, w)
    for dim in (2, 3):   # separable: rows then columns, symmetric padding (edge sample repeated)
        n = out.shape[dim]
        if r >= n:
            raise ValueError(f"blur_circular: kernel radius {r} px exceeds the image size {n}; lower fwhm_uas.")
        pre = out.narrow(dim, 0, r).flip(dim)
        post = out.narrow(dim, n - r, r).flip(dim)
        padded = torch.cat([pre, out, post], dim=dim)
        kern = k.view(1, 1, -1, 1) if dim == 2 else k.view(1, 1, 1, -1)
        out = F.conv2d(padded, kern)
    return out.reshape(b, c, h, w)


def _psnr01(a: Tensor, b: Tensor) -> Tensor:
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-20))


def align_images(x01: Tensor, ref01: Tensor, max_shift_px: float = 16.0, steps: int = 30) -> Tensor:
    """Shift each ``x01`` image by the translation (a ``steps`` x ``steps`` grid over +-``max_shift_px``,
    bilinear) that maximises its PSNR against ``ref01`` (InverseBench ``aligned_images``: +-0.5 in
    normalised coordinates, i.e. +-16 px on a 64 px image). Images in [0, 1], ``[B, C, H, W]``."""
    b, c, h, w = x01.shape
    s = torch.linspace(-max_shift_px, max_shift_px, steps, dtype=x01.dtype, device=x01.device)
    tx, ty = torch.meshgrid(s * 2.0 / (w - 1), s * 2.0 / (h - 1), indexing="ij")
    theta = torch.zeros(tx.numel(), 2, 3, dtype=x01.dtype, device=x01.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = tx.flatten()
    theta[:, 1, 2] = ty.flatten()
    grid = F.affine_grid(theta, (tx.numel(), c, h, w), align_corners=True)
    out = []
    for i in range(b):   # one image at a time: S shifted copies each
        shifted = F.grid_sample(x01[i:i + 1].expand(tx.numel(), c, h, w), grid, align_corners=True).clamp(0, 1)
        best = _psnr01(shifted, ref01[i:i + 1].clamp(0, 1).expand_as(shifted)).argmax()
        out.append(shifted[best])
    return torch.stack(out)


def blurred_psnr(x: Tensor, x_ref: Tensor, fwhm_uas: float = 20.0, psize_uas: float = 2.5,
                 align: bool = False) -> Tensor:
    """PSNR ``[B]`` (data range 1) between images ``x`` and the truth ``x_ref`` (both in [-1, 1], mapped to
    [0, 1] and clipped) after blurring both to the array's resolution with a circular Gaussian of FWHM
    ``fwhm_uas`` (10, 15 or 20 microarcseconds; 0 = no blur). ``align``: first shift ``x`` to its best
    match (InverseBench evaluates this way). ``psize_uas``: the pixel size (``operator.psize_uas``)."""
    if x.shape != x_ref.shape and not (x_ref.shape[0] == 1 and x.shape[1:] == x_ref.shape[1:]):
        raise ValueError(f"blurred_psnr: x {list(x.shape)} and x_ref {list(x_ref.shape)} must match.")
    a = ((x + 1) / 2).clamp(0, 1)
    r = ((x_ref + 1) / 2).clamp(0, 1).expand_as(a)
    if align:
        a = align_images(a, r)
    a = blur_circular(a, fwhm_uas, psize_uas).clamp(0, 1)
    r = blur_circular(r, fwhm_uas, psize_uas).clamp(0, 1)
    return _psnr01(a, r)


__all__ = ["BlackHoleImaging", "ClosureNoise", "ObservationSetup", "ObservationTables", "closure_chi2",
           "blur_circular", "blurred_psnr", "align_images"]

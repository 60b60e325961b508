"""Synthetic black-hole images: the training set of the shipped black-hole prior (no GRMHD library is public).

Each image is a horizon-scale emission ring in the style of the EHT's geometric models of M87* and Sgr A*
(EHT 2019 Paper VI, sections 4-5; Johnson et al. 2020 for m-rings; Kamruddin & Dexter 2013 for crescents),
drawn with ehtim's own model functions (``ehtim.model.sample_1model_xy``, the image-domain evaluator behind
``Model.make_image``), on the operator's grid: ``npix`` x ``npix`` over ``fov_uas`` (64 px, 160 uas, so
2.5 uas per pixel), ehtim's orientation (row 0 north, column 0 east). Components and their ranges
(``U`` uniform, ``LU`` log-uniform, angles uniform on [0, 2 pi)):

====================  =================================================================================
ring (prob. 0.7)      ehtim ``stretched_thick_mring``: diameter d ~ U(35, 50) uas; thickness (FWHM of
                      the Gaussian cross-section) ~ LU(4, 16) uas; Fourier brightness modes
                      beta_1 = a_1 e^{i phi_1}, a_1 ~ U(0.05, 0.45) (Doppler-boosted bright side),
                      beta_2 = a_2 e^{i phi_2}, a_2 ~ U(0, min(0.1, 0.5 - a_1)) (so a_1 + a_2 <= 0.5
                      and the brightness stays >= 0); ellipticity stretch ~ U(1, 1.15) at a random PA
crescent (prob. 0.3)  ehtim ``crescent`` (outer disk minus an offset inner disk): mid-line diameter
                      d ~ U(35, 50) uas (outer disk 2 d / (1 + fr)), inner radius fraction
                      fr ~ U(0.55, 0.85), offset fraction fo ~ U(0.1, 0.7), inner
                      disk brightness fraction ff ~ U(0, 0.2), orientation phi; then Gaussian-blurred
                      with FWHM ~ LU(4, 16) uas (ehtim's hard-edged crescent is not physical)
centre                both offset by U(-3, 3) uas on each axis
floor                 circular Gaussian (ehtim ``circ_gauss``) at the ring centre, flux fraction
                      U(0, 0.3) of the ring's, FWHM ~ U(0.6, 1.2) d (diffuse emission in and around the
                      shadow)
jet (prob. 0.25)      elliptical Gaussian (ehtim ``gauss``), flux fraction U(0.02, 0.1), FWHM major
                      U(30, 70) uas, minor U(8, 20) uas, along a random PA, centred d / 2 + FWHM_maj / 3
                      from the ring centre in that direction
texture               multiplicative log-normal turbulence I <- I exp(s g - s^2 / 2), g a unit-variance
                      periodic Gaussian random field with covariance (|2 pi k / FOV|^2 + tau^2)^(-2),
                      tau = FOV / 8 uas (correlation length about 8 uas), s ~ U(0.1, 0.6)
final blur            circular Gaussian, FWHM ~ U(0, 3) uas
====================  =================================================================================

The map is clipped at 0, divided by its peak and mapped to ``[-1, 1]`` (the prior's range), float32
``[1, npix, npix]``. Image ``i`` of split ``s`` draws every random number from
``SeedSequence([seed, split_code(s), i])`` (train 0, val 1, test 2), so any image can be regenerated
alone and a dataset does not depend on how it was batched. :meth:`SyntheticBlackHoles.cached_split`
writes a split once as one ``.npy`` shard (atomic rename) and memory-maps it afterwards.

ehtim 1.3.2 with numpy 2 cannot build m-rings through ``Model.add_thick_mring`` (it uses the removed
``np.complex_``) nor sum components in ``Model.sample_xy`` (``np.sum`` of a generator); we therefore fill
the parameter dictionaries ourselves and sum the components of ``sample_1model_xy`` in Python.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .common import atomic_save_npy, atomic_write_text

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SyntheticBlackHoleConfig:
    """Generator parameters (ranges are ``(low, high)``; see the module docstring)."""

    npix: int = 64
    fov_uas: float = 160.0
    diameter_uas: tuple[float, float] = (35.0, 50.0)
    width_uas: tuple[float, float] = (4.0, 16.0)          # log-uniform
    crescent_prob: float = 0.3
    asymmetry: tuple[float, float] = (0.05, 0.45)         # |beta_1|
    beta2_max: float = 0.1                                # |beta_2| <= min(beta2_max, 0.5 - |beta_1|)
    stretch: tuple[float, float] = (1.0, 1.15)
    crescent_fr: tuple[float, float] = (0.55, 0.85)
    crescent_fo: tuple[float, float] = (0.1, 0.7)
    crescent_ff: tuple[float, float] = (0.0, 0.2)
    offset_uas: float = 3.0
    floor_frac: tuple[float, float] = (0.0, 0.3)
    floor_fwhm: tuple[float, float] = (0.6, 1.2)          # in units of the diameter
    jet_prob: float = 0.25
    jet_frac: tuple[float, float] = (0.02, 0.1)
    jet_fwhm_major_uas: tuple[float, float] = (30.0, 70.0)
    jet_fwhm_minor_uas: tuple[float, float] = (8.0, 20.0)
    texture_std: tuple[float, float] = (0.1, 0.6)
    texture_corr_uas: float = 8.0
    blur_uas: tuple[float, float] = (0.0, 3.0)

    def __post_init__(self):
        if not (isinstance(self.npix, int) and self.npix >= 8):
            raise ValueError(f"SyntheticBlackHoleConfig: npix must be an int >= 8, got {self.npix!r}.")
        if not (math.isfinite(self.fov_uas) and self.fov_uas > 0):
            raise ValueError(f"SyntheticBlackHoleConfig: fov_uas must be > 0, got {self.fov_uas!r}.")
        if self.diameter_uas[1] + 2 * self.offset_uas >= self.fov_uas:
            raise ValueError(f"SyntheticBlackHoleConfig: rings of {self.diameter_uas[1]} uas do not fit in a "
                             f"{self.fov_uas} uas field of view; widen fov_uas.")
        if not 0.0 <= self.crescent_prob <= 1.0 or not 0.0 <= self.jet_prob <= 1.0:
            raise ValueError("SyntheticBlackHoleConfig: crescent_prob and jet_prob must lie in [0, 1].")

    def digest(self, seed: int) -> str:
        blob = json.dumps({"config": asdict(self), "seed": int(seed), "version": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


def _uas():
    from diffinv.operators.eht_array import import_ehtim

    import_ehtim()
    from ehtim.const_def import RADPERUAS

    return RADPERUAS


class SyntheticBlackHoles:
    """Seeded generator of synthetic black-hole images (see the module docstring).

    ``image(split, i)`` -> float32 ``[1, npix, npix]`` in [-1, 1]; ``images(split, indices)`` stacks them;
    ``cached_split(cache_dir, split, count)`` -> ``[count, 1, npix, npix]`` (memory-mapped ``.npy``)."""

    def __init__(self, config: SyntheticBlackHoleConfig | None = None, seed: int = 0):
        self.config = config or SyntheticBlackHoleConfig()
        self.seed = int(seed)
        n = self.config.npix
        self._uas = _uas()
        ps = self.config.fov_uas * self._uas / n
        # ehtim's image grid (Model.image_same): x decreases along columns (east left), y along rows
        coords = np.arange(0, -n, -1) * ps + ps * n / 2.0 - ps / 2.0
        self._x, self._y = np.meshgrid(coords, coords)
        self._psize = ps
        from diffinv.operators.random_fields import GaussianRandomField

        # correlation length ~ 1 / tau of the field of view: tau = FOV / corr (length = 1 is the FOV)
        grf = GaussianRandomField(n, alpha=2.0, tau=self.config.fov_uas / self.config.texture_corr_uas,
                                  sigma=1.0, length=1.0)
        # the sampler's filter c_k (random_fields.py, eq. (2)), applied with numpy FFTs per image (cheaper
        # than torch's threaded FFT for one 64 x 64 field), scaled to unit point variance
        self._grf_coef = (n * grf.eigenvalues().sqrt().numpy() / grf.length) / math.sqrt(grf.pointwise_variance())

    # ------------------------------------------------------------------ parameters
    def parameters(self, split: str, index: int) -> dict:
        """The random parameters of image ``index`` of ``split`` (angles in radians, sizes in uas)."""
        if split not in SPLIT_CODES:
            raise ValueError(f"SyntheticBlackHoles: split must be one of {tuple(SPLIT_CODES)}, got {split!r}.")
        c = self.config
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, SPLIT_CODES[split], int(index)]))
        u = lambda lo_hi: float(rng.uniform(*lo_hi))  # noqa: E731
        lu = lambda lo_hi: float(math.exp(rng.uniform(math.log(lo_hi[0]), math.log(lo_hi[1]))))  # noqa: E731
        p = {"kind": "crescent" if rng.uniform() < c.crescent_prob else "mring",
             "d": u(c.diameter_uas), "width": lu(c.width_uas),
             "x0": u((-c.offset_uas, c.offset_uas)), "y0": u((-c.offset_uas, c.offset_uas))}
        if p["kind"] == "mring":
            a1 = u(c.asymmetry)
            a2 = float(rng.uniform(0.0, max(0.0, min(c.beta2_max, 0.5 - a1))))
            p.update(beta1=a1 * complex(np.exp(1j * rng.uniform(0, 2 * np.pi))),
                     beta2=a2 * complex(np.exp(1j * rng.uniform(0, 2 * np.pi))),
                     stretch=u(c.stretch), stretch_pa=float(rng.uniform(0, np.pi)))
        else:
            p.update(fr=u(c.crescent_fr), fo=u(c.crescent_fo), ff=u(c.crescent_ff),
                     phi=float(rng.uniform(0, 2 * np.pi)))
        p.update(floor_frac=u(c.floor_frac), floor_fwhm=u(c.floor_fwhm) * p["d"])
        p["jet"] = bool(rng.uniform() < c.jet_prob)
        if p["jet"]:
            p.update(jet_frac=u(c.jet_frac), jet_major=u(c.jet_fwhm_major_uas), jet_minor=u(c.jet_fwhm_minor_uas),
                     jet_pa=float(rng.uniform(0, 2 * np.pi)))
        p.update(texture_std=u(c.texture_std), blur=u(c.blur_uas))
        p["texture_seed"] = int(rng.integers(0, 2**62))
        return p

    # ------------------------------------------------------------------ rendering
    def _sample(self, model_type: str, params: dict) -> np.ndarray:
        from ehtim.model import sample_1model_xy

        base = {"x0": 0.0, "y0": 0.0, "pol_frac": 0.0, "pol_evpa": 0.0, "cpol_frac": 0.0}
        return np.asarray(sample_1model_xy(self._x, self._y, model_type, {**base, **params}, psize=self._psize),
                          dtype=np.float64)

    def render(self, p: dict) -> np.ndarray:
        """The brightness map (arbitrary units, >= 0) of one parameter set, ``[npix, npix]`` float64."""
        from scipy.ndimage import gaussian_filter

        uas = self._uas
        x0, y0, d = p["x0"] * uas, p["y0"] * uas, p["d"] * uas
        fwhm_to_px = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0))) / (self.config.fov_uas / self.config.npix)
        if p["kind"] == "mring":
            empty = np.zeros(0, dtype=np.complex128)
            img = self._sample("stretched_thick_mring", {
                "F0": 1.0, "d": d, "alpha": p["width"] * uas, "x0": x0, "y0": y0,
                "beta_list": np.array([p["beta1"], p["beta2"]], dtype=np.complex128),
                "beta_list_pol": empty, "beta_list_cpol": empty,
                "stretch": p["stretch"], "stretch_PA": p["stretch_pa"]})
        else:
            # d is the diameter of the crescent's mid-line: outer disk 2 d / (1 + fr)
            img = self._sample("crescent", {"F0": 1.0, "d": 2 * d / (1 + p["fr"]), "fr": p["fr"], "fo": p["fo"],
                                            "ff": p["ff"], "phi": p["phi"], "x0": x0, "y0": y0})
            img = gaussian_filter(img, p["width"] * fwhm_to_px, mode="constant")
        img = img + self._sample("circ_gauss", {"F0": p["floor_frac"], "FWHM": p["floor_fwhm"] * uas,
                                                "x0": x0, "y0": y0})
        if p["jet"]:
            r = (p["d"] / 2 + p["jet_major"] / 3) * uas
            img = img + self._sample("gauss", {
                "F0": p["jet_frac"], "FWHM_maj": p["jet_major"] * uas, "FWHM_min": p["jet_minor"] * uas,
                "PA": p["jet_pa"], "x0": x0 + r * math.sin(p["jet_pa"]), "y0": y0 + r * math.cos(p["jet_pa"])})
        n = self.config.npix
        white = np.random.default_rng(p["texture_seed"]).standard_normal((n, n))
        field = np.fft.irfft2(self._grf_coef * np.fft.rfft2(white), s=(n, n))   # unit-variance GRF
        s = p["texture_std"]
        img = np.clip(img, 0.0, None) * np.exp(s * field - 0.5 * s * s)   # log-normal, mean factor 1
        if p["blur"] > 0:
            img = gaussian_filter(img, p["blur"] * fwhm_to_px, mode="constant")
        return img

    def image(self, split: str, index: int) -> torch.Tensor:
        """Image ``index`` of ``split``: float32 ``[1, npix, npix]``, peak 1, in ``[-1, 1]``."""
        img = np.clip(self.render(self.parameters(split, index)), 0.0, None)
        img = img / img.max()
        return torch.from_numpy(2.0 * img - 1.0).float()[None]

    def images(self, split: str, indices, progress: bool = False) -> np.ndarray:
        indices = list(indices)
        out = np.empty((len(indices), 1, self.config.npix, self.config.npix), dtype=np.float32)
        it = indices
        if progress:
            from tqdm import tqdm

            it = tqdm(indices, unit="img", desc=f"synthetic black holes ({split})")
        for k, i in enumerate(it):
            out[k] = self.image(split, i).numpy()
        return out

    # ------------------------------------------------------------------ disk cache
    def cache_path(self, cache_dir: str | os.PathLike, split: str, count: int) -> Path:
        return Path(cache_dir) / f"{split}-{count:06d}-{self.config.digest(self.seed)}.npy"

    def find_cached(self, cache_dir: str | os.PathLike, split: str, count: int) -> Path | None:
        """A cached shard of this configuration and seed holding at least ``count`` images, if any."""
        digest = self.config.digest(self.seed)
        best = None
        for path in Path(cache_dir).glob(f"{split}-*-{digest}.npy") if Path(cache_dir).is_dir() else []:
            try:
                n = int(path.name.split("-")[1])
            except (IndexError, ValueError):
                continue
            if n >= count and (best is None or n < best[0]):
                best = (n, path)
        return None if best is None else best[1]

    def cached_split(self, cache_dir: str | os.PathLike, split: str, count: int, progress: bool = True,
                     generate: bool = True) -> np.ndarray:
        """``[count, 1, npix, npix]`` float32 images of ``split`` from the cache, generated and written first
        when missing (``generate=False`` raises instead)."""
        if not (isinstance(count, int) and count >= 0):
            raise ValueError(f"SyntheticBlackHoles: count must be an int >= 0, got {count!r}.")
        path = self.find_cached(cache_dir, split, count)
        if path is None:
            if not generate:
                raise ValueError(f"no cached synthetic black-hole images for split {split!r} ({count}) in "
                                 f"{str(cache_dir)!r}; call prepare_data() first.")
            path = self.cache_path(cache_dir, split, count)
            arr = self.images(split, range(count), progress=progress)
            atomic_save_npy(path, arr)
            meta = {"format_version": FORMAT_VERSION, "split": split, "count": count, "seed": self.seed,
                    "config": asdict(self.config), "layout": "float32 [count, 1, npix, npix] in [-1, 1], peak 1",
                    "generator": "diffinv.datasets.blackhole_synthetic.SyntheticBlackHoles"}
            atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
        arr = np.load(path, mmap_mode="r")
        return arr[:count]

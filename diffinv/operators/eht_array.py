"""The EHT 2017 array and the ehtim observation behind the black-hole operator (construction time only).

Everything here runs once, when a :class:`~diffinv.operators.blackhole.BlackHoleImaging` is built:
ehtim (Chael et al. 2016, 2018; https://github.com/achael/eht-imaging) simulates which baselines see
the source when, their (u, v) coordinates and thermal noise, and chooses the minimal sets of closure
triangles and quadrangles. The result is a plain-numpy :class:`ObservationTables` that the operator
turns into torch buffers, so that the operator itself is pure torch at run time.

Station table: geocentric positions (metres) and SEFDs (Jy) of the eight EHT 2017 stations, as
tabulated in eht-imaging's ``arrays/EHT2017.txt`` (positions as in EHT Collaboration 2019, Paper II,
ApJL 875 L2, Table 1; the SEFDs are eht-imaging's nominal per-station values for simulation,
the same for both polarisations; EHT 2019 Paper III, ApJL 875 L3, reports the measured, time-variable
ones). The installed ehtim 1.3.2 wheel ships no array files, so the table lives here.
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass

import numpy as np

# name, X [m], Y [m], Z [m], SEFD [Jy]   (eht-imaging arrays/EHT2017.txt; EHT 2019 Paper II Table 1)
EHT2017_STATIONS: tuple[tuple[str, float, float, float, float], ...] = (
    ("ALMA", 2225061.164, -5440057.37, -2481681.15, 90.0),      # Atacama Large Millimeter Array (phased), Chile
    ("APEX", 2225039.53, -5441197.63, -2479303.36, 3500.0),     # Atacama Pathfinder Experiment, Chile
    ("JCMT", -5464584.68, -2493001.17, 2150653.98, 6000.0),     # James Clerk Maxwell Telescope, Maunakea
    ("LMT", -768713.9637, -5988541.7982, 2063275.9472, 600.0),  # Large Millimeter Telescope, Mexico
    ("PV", 5088967.9, -301681.6, 3825015.8, 1400.0),            # IRAM 30 m, Pico Veleta, Spain
    ("SMA", -5464523.4, -2493147.08, 2150611.75, 4900.0),       # Submillimeter Array (phased), Maunakea
    ("SMT", -1828796.2, -5054406.8, 3427865.2, 5000.0),         # Submillimeter Telescope, Arizona
    ("SPT", 0.01, 0.01, -6359609.7, 5000.0),                    # South Pole Telescope
)

# J2000 coordinates: RA in fractional hours, Dec in fractional degrees.
SOURCES: dict[str, tuple[float, float]] = {
    # M87*: RA 12h30m49.42s, Dec +12d23m28.04s (EHT 2019 Paper I)
    "M87": (12.0 + 30.0 / 60.0 + 49.42 / 3600.0, 12.0 + 23.0 / 60.0 + 28.04 / 3600.0),
    # Sgr A*: RA 17h45m40.04s, Dec -29d00m28.17s (Reid & Brunthaler 2004)
    "SgrA": (17.0 + 45.0 / 60.0 + 40.04 / 3600.0, -(29.0 + 0.0 / 60.0 + 28.17 / 3600.0)),
}

RADPERUAS = math.pi / 180.0 / 3600.0 * 1e-6   # radians per microarcsecond


EHTIM_MISSING = ("the black-hole problem needs ehtim (eht-imaging), the optional extra 'blackhole' of diffinv: "
                 "pip install 'diffinv[blackhole]' (from a clone: pip install -e '.[blackhole]')")


def import_ehtim():
    """Import ehtim without side effects on the caller: its banner and the missing-NFFT warning (we use
    ttype='direct') are swallowed, and the matplotlib settings its import changes (serif fonts, size 12, for
    every later figure) are restored. Raises an ImportError naming the extra to install when it is missing."""
    import matplotlib

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), matplotlib.rc_context():
        warnings.simplefilter("ignore")
        try:
            import ehtim as eh
        except ImportError as err:
            raise ImportError(f"{EHTIM_MISSING} ({type(err).__name__}: {err}).") from err
    return eh


def eht2017_array(sefd_scale: float = 1.0):
    """The EHT 2017 array as an ``ehtim.array.Array`` (SEFDs optionally scaled by ``sefd_scale``)."""
    if not (math.isfinite(sefd_scale) and sefd_scale > 0):
        raise ValueError(f"eht2017_array: sefd_scale must be > 0, got {sefd_scale!r}.")
    eh = import_ehtim()
    import ehtim.const_def as ehc

    rows = [(n, x, y, z, s * sefd_scale, s * sefd_scale, 0j, 0j, 0.0, 0.0, 0.0) for n, x, y, z, s in EHT2017_STATIONS]
    return eh.array.Array(np.array(rows, dtype=ehc.DTARR))


@dataclass
class ObservationSetup:
    """What ehtim observes. Defaults: a full 24 h UTC track of M87* on 2017 April 10 (MJD 57853) at 230 GHz
    with the EHT 2017 array; 10 s integrations every 600 s; 4 GHz bandwidth; stations observe between 10
    and 85 degrees elevation (ehtim's defaults); calibrated gains and phases; no thermal noise added by
    ehtim (diffinv draws it itself). These follow ehtim's example scripts and the DPI/alpha-DPI scripts
    (Sun & Bouman 2020) that the InverseBench black-hole data descend from.

    ``fov_uas`` / ``npix``: the image grid (pixel size ``fov_uas / npix`` microarcseconds).
    """

    source: str = "M87"
    npix: int = 64
    fov_uas: float = 160.0
    rf_hz: float = 230e9
    bw_hz: float = 4e9
    tint_s: float = 10.0
    tadv_s: float = 600.0
    tstart_hr: float = 0.0
    tstop_hr: float = 24.0
    mjd: int = 57853
    elevmin_deg: float = 10.0
    elevmax_deg: float = 85.0
    sefd_scale: float = 1.0
    ra_hr: float | None = None       # overrides the source's coordinates when given
    dec_deg: float | None = None

    def __post_init__(self) -> None:
        if self.ra_hr is None or self.dec_deg is None:
            if self.source not in SOURCES:
                raise ValueError(f"ObservationSetup: unknown source {self.source!r}; use one of {sorted(SOURCES)} "
                                 "or give ra_hr and dec_deg.")
            ra, dec = SOURCES[self.source]
            self.ra_hr = ra if self.ra_hr is None else self.ra_hr
            self.dec_deg = dec if self.dec_deg is None else self.dec_deg
        for name in ("fov_uas", "rf_hz", "bw_hz", "tint_s", "tadv_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"ObservationSetup: {name} must be a positive number, got {v!r}.")
        if not (isinstance(self.npix, int) and self.npix >= 2):
            raise ValueError(f"ObservationSetup: npix must be an integer >= 2, got {self.npix!r}.")
        if self.tstop_hr == self.tstart_hr:
            raise ValueError("ObservationSetup: tstart_hr == tstop_hr gives an empty observation.")

    @property
    def psize_rad(self) -> float:
        return self.fov_uas * RADPERUAS / self.npix

    @property
    def psize_uas(self) -> float:
        return self.fov_uas / self.npix


@dataclass
class ObservationTables:
    """The observation as arrays (index ``k`` runs over visibilities in ehtim's ``obs.data`` order).

    * ``u, v`` [n_vis]: baseline coordinates in wavelengths (baseline t1 -> t2 as ehtim stores it);
    * ``sigma`` [n_vis]: thermal noise std of the real and of the imaginary part (Jy);
    * ``time`` [n_vis] (hours), ``t1, t2`` [n_vis]: station indices into ``stations``; ``time_index`` [n_vis];
    * ``cp_index`` [n_cp, 3], ``cp_sign`` [n_cp, 3]: closure phase ``sum_k sign_k * arg V[index_k]``
      (sign -1 where ehtim uses the conjugate baseline), ehtim's triangles (t1 t2)(t2 t3)(t3 t1);
    * ``lca_index`` [n_lca, 4]: log closure amplitude ``log|V0| + log|V1| - log|V2| - log|V3|``, ehtim's
      convention (12)(34)/(14)(23);
    * ``cp_stations``, ``lca_stations``, ``cp_time``, ``lca_time``: the closures' stations and times.
    """

    u: np.ndarray
    v: np.ndarray
    sigma: np.ndarray
    time: np.ndarray
    t1: np.ndarray
    t2: np.ndarray
    time_index: np.ndarray
    stations: list[str]
    cp_index: np.ndarray
    cp_sign: np.ndarray
    cp_stations: np.ndarray
    cp_time: np.ndarray
    lca_index: np.ndarray
    lca_stations: np.ndarray
    lca_time: np.ndarray

    @property
    def n_vis(self) -> int:
        return int(self.u.shape[0])


def template_image(setup: ObservationSetup, flux: float = 0.6):
    """A smooth ehtim image on the setup's grid (an elliptical Gaussian) used to run the observation;
    the tables do not depend on it (closure sets depend only on which stations see the source)."""
    eh = import_ehtim()
    im = eh.image.make_empty(setup.npix, setup.fov_uas * RADPERUAS, setup.ra_hr, setup.dec_deg,
                             rf=setup.rf_hz, mjd=setup.mjd, source=setup.source)
    return im.add_gauss(flux, (40 * RADPERUAS, 30 * RADPERUAS, 0.3, 0.0, 0.0))


def simulate_observation(setup: ObservationSetup, image=None):
    """``image.observe`` with the EHT 2017 array: noise-free, calibrated, direct Fourier transform."""
    im = template_image(setup) if image is None else image
    array = eht2017_array(setup.sefd_scale)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        obs = im.observe(array, setup.tint_s, setup.tadv_s, setup.tstart_hr, setup.tstop_hr, setup.bw_hz,
                         mjd=setup.mjd, elevmin=setup.elevmin_deg, elevmax=setup.elevmax_deg,
                         ttype="direct", add_th_noise=False, ampcal=True, phasecal=True, opacitycal=True,
                         sgrscat=False, verbose=False)
    return obs


def observation_tables(obs) -> ObservationTables:
    """Index tables for the visibilities and ehtim's minimal closure sets of ``obs``."""
    data = obs.data
    if len(data) == 0:
        raise ValueError("observation_tables: the observation has no visibilities; widen tstart/tstop or the "
                         "elevation limits.")
    stations = [str(s) for s in obs.tarr["site"]]
    station_id = {s: i for i, s in enumerate(stations)}
    times = np.asarray(data["time"], dtype=np.float64)
    uniq_t = np.unique(times)
    # (time, a, b) -> (row, sign): sign -1 where the closure uses the conjugate of the stored baseline
    where: dict[tuple[float, str, str], tuple[int, int]] = {}
    for k, (t, a, b) in enumerate(zip(times, data["t1"], data["t2"])):
        where[(float(t), str(a), str(b))] = (k, 1)
        where[(float(t), str(b), str(a))] = (k, -1)

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        cps = obs.c_phases(count="min", ang_unit="rad")
        lcas = obs.c_amplitudes(ctype="logcamp", count="min", debias=False)

    cp_index, cp_sign, cp_st = [], [], []
    for row in cps:
        t, s1, s2, s3 = float(row["time"]), str(row["t1"]), str(row["t2"]), str(row["t3"])
        legs = [where[(t, s1, s2)], where[(t, s2, s3)], where[(t, s3, s1)]]
        cp_index.append([k for k, _ in legs])
        cp_sign.append([s for _, s in legs])
        cp_st.append([station_id[s1], station_id[s2], station_id[s3]])
    lca_index, lca_st = [], []
    for row in lcas:
        t, s = float(row["time"]), [str(row[f"t{i}"]) for i in range(1, 5)]
        # (12)(34) / (14)(23)
        pairs = [(s[0], s[1]), (s[2], s[3]), (s[0], s[3]), (s[1], s[2])]
        lca_index.append([where[(t, a, b)][0] for a, b in pairs])
        lca_st.append([station_id[x] for x in s])

    return ObservationTables(
        u=np.asarray(data["u"], dtype=np.float64),
        v=np.asarray(data["v"], dtype=np.float64),
        sigma=np.asarray(data["sigma"], dtype=np.float64),
        time=times,
        t1=np.array([station_id[str(s)] for s in data["t1"]], dtype=np.int64),
        t2=np.array([station_id[str(s)] for s in data["t2"]], dtype=np.int64),
        time_index=np.searchsorted(uniq_t, times).astype(np.int64),
        stations=stations,
        cp_index=np.asarray(cp_index, dtype=np.int64).reshape(-1, 3),
        cp_sign=np.asarray(cp_sign, dtype=np.int64).reshape(-1, 3),
        cp_stations=np.asarray(cp_st, dtype=np.int64).reshape(-1, 3),
        cp_time=np.asarray([float(r["time"]) for r in cps], dtype=np.float64),
        lca_index=np.asarray(lca_index, dtype=np.int64).reshape(-1, 4),
        lca_stations=np.asarray(lca_st, dtype=np.int64).reshape(-1, 4),
        lca_time=np.asarray([float(r["time"]) for r in lcas], dtype=np.float64),
    )


def dft_matrix(u: np.ndarray, v: np.ndarray, npix: int, psize_rad: float) -> np.ndarray:
    """The [2 n_vis, npix^2] real matrix mapping a flattened image (Jy per pixel, ehtim's ``imarr`` layout:
    row 0 north, column 0 east) to [Re V; Im V], ehtim's ``ftmatrix`` convention:

        V(u, v) = P(u, v) * sum_{i,j} I[i, j] exp(+2 pi i (u x_j + v y_i)),
        x_j = psize (npix/2 - 1/2 - j),  y_i = psize (npix/2 - 1/2 - i),

    with the triangle pixel pulse (ehtim's default ``trianglePulse2D``), whose transform is
    P(u, v) = sinc^2(psize u) sinc^2(psize v), sinc(t) = sin(pi t) / (pi t). Computed in float64.
    """
    coords = psize_rad * (npix / 2.0 - 0.5 - np.arange(npix, dtype=np.float64))   # x_j (= y_i)
    phase = 2.0 * np.pi * (u[:, None, None] * coords[None, None, :] + v[:, None, None] * coords[None, :, None])
    pulse = (np.sinc(psize_rad * u) ** 2 * np.sinc(psize_rad * v) ** 2)[:, None, None]
    re = (pulse * np.cos(phase)).reshape(len(u), npix * npix)
    im = (pulse * np.sin(phase)).reshape(len(u), npix * npix)
    return np.concatenate([re, im], axis=0)


def load_uvfits(path: str):
    """An observation saved as UVFITS (e.g. a real or published synthetic EHT data set): its baselines,
    times and sigmas replace the simulated ones."""
    eh = import_ehtim()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return eh.obsdata.load_uvfits(str(path))


_TABLE_CACHE: dict[tuple, ObservationTables] = {}


def cached_tables(setup: ObservationSetup, uvfits: str | None = None) -> ObservationTables:
    """``observation_tables(simulate_observation(setup))`` (or of the UVFITS file), memoised per setup:
    building several operators for the same observation runs ehtim once. Treat the result as read-only."""
    key = (tuple(getattr(setup, f) for f in setup.__dataclass_fields__), None if uvfits is None else str(uvfits))
    if key not in _TABLE_CACHE:
        obs = simulate_observation(setup) if uvfits is None else load_uvfits(uvfits)
        if len(_TABLE_CACHE) >= 8:
            _TABLE_CACHE.pop(next(iter(_TABLE_CACHE)))
        _TABLE_CACHE[key] = observation_tables(obs)
    return _TABLE_CACHE[key]

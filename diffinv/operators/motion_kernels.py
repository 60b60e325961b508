"""Seeded blur kernels: the random-trajectory motion-blur kernel of DPS / ReSample and the Gaussian kernel.

``motion_blur_kernel`` is this project's implementation of the generator DPS and ReSample take from
LeviBorodenko/motionblur (``docs/references.md#motion-blur-kernels``). On a canvas twice the
kernel size, with diagonal ``D``:

1. path length ``L = 0.75 D (U(0, 1) + U(0, intensity^2))``; step lengths ``Beta(1, 30) (1 - intensity + 0.1) D``,
   steps longer than ``L`` rejected, drawn until their sum reaches ``L``;
2. maximum turning angle ``a_max ~ U(0, intensity pi)``, sign-flip probability ``p ~ Beta(2, 20)``; the
   first angle is ``U(-a_max, a_max)``, every further one has magnitude
   ``Triangular(0, intensity a_max, a_max + 0.1)`` and the previous angle's sign, flipped with probability ``p``;
3. the path is the cumulative sum of ``step e^{i angle}``, centred on its centre of mass, rotated by
   ``U(0, pi)`` and moved to the canvas centre;
4. it is drawn as a polyline of width ``D / 150``, Gaussian-blurred with standard deviation ``0.01 D``
   (both truncated to integers as in the reference), resized to the kernel size with a Lanczos filter and
   normalised to sum 1.

Known differences from the reference: we keep the kernel in floating point (the reference rounds it to
8-bit grey levels before normalising), clip the small negative Lanczos lobes to 0, and draw from a
``numpy.random.Generator`` seeded by ``(seed, sample_id)`` rather than numpy's global state, so kernels
are reproducible (for a fixed numpy version) and independent across samples.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter


def sample_rng(seed: int, sample_id: int = 0) -> np.random.Generator:
    """The random generator of one sample: a deterministic, hash-free function of ``(seed, sample_id)``
    (numpy's ``SeedSequence`` entropy mixing), identical on every rank and every re-run."""
    for name, v in (("seed", seed), ("sample_id", sample_id)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}.")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(sample_id)]))


def gaussian_taps(size: int = 61, std: float = 3.0, truncate: float = 4.0) -> np.ndarray:
    """1-D Gaussian filter of length ``size``, sum 1, taps out to ``int(truncate std + 0.5)`` like
    ``scipy.ndimage.gaussian_filter1d`` (taps beyond ``size // 2`` are dropped and the rest renormalised)."""
    _check_size("gaussian_kernel", size)
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"gaussian_kernel: std must be > 0, got {std!r}.")
    radius = min(int(truncate * std + 0.5), size // 2)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / std) ** 2)
    taps = np.zeros(size)
    taps[size // 2 - radius: size // 2 + radius + 1] = g / g.sum()
    return taps


def gaussian_kernel(size: int = 61, std: float = 3.0, truncate: float = 4.0) -> np.ndarray:
    """``[size, size]`` Gaussian kernel, sum 1: the response of ``scipy.ndimage.gaussian_filter(sigma=std)``
    to a centred impulse, which is what DPS's ``Blurkernel`` uses; the outer product of ``gaussian_taps``."""
    g = gaussian_taps(size, std, truncate)
    return np.outer(g, g)


def _check_size(name: str, size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"{name}: kernel size must be an odd integer >= 1 (e.g. 61), got {size!r}.")


def _trajectory(rng: np.random.Generator, canvas: int, intensity: float) -> np.ndarray:
    """Complex vertices of the camera path on the canvas (steps 1-3 of the module docstring)."""
    diag = math.sqrt(2.0) * canvas
    path_len = 0.75 * diag * (rng.uniform() + rng.uniform(0.0, intensity**2))
    path_len = max(path_len, 1e-3 * diag)  # guard: a near-zero length would make the rejection loop endless
    step_scale = (1.0 - intensity + 0.1) * diag
    steps = np.empty(0)
    while steps.sum() < path_len:  # draw in chunks; keep steps shorter than the path, stop once it is covered
        draw = rng.beta(1.0, 30.0, size=256) * step_scale
        steps = np.concatenate([steps, draw[draw < path_len]])
    steps = steps[: int(np.searchsorted(np.cumsum(steps), path_len)) + 1]
    n = steps.size

    max_angle = rng.uniform(0.0, intensity * math.pi)
    flip_prob = rng.beta(2.0, 20.0)
    first = rng.uniform(-max_angle, max_angle)
    mags = rng.triangular(0.0, intensity * max_angle, max_angle + 0.1, size=n - 1)
    flips = np.where(rng.uniform(size=n - 1) < flip_prob, -1.0, 1.0)
    sign0 = 1.0 if first >= 0 else -1.0
    angles = np.concatenate([[first], mags * sign0 * np.cumprod(flips)])

    path = np.cumsum(steps * np.exp(1j * angles))
    path = (path - path.mean()) * np.exp(1j * rng.uniform(0.0, math.pi))
    return path + (canvas + 1j * canvas) / 2.0


def motion_blur_kernel(size: int = 61, intensity: float = 0.5, seed: int = 0, sample_id: int = 0) -> np.ndarray:
    """``[size, size]`` random-trajectory motion-blur kernel (float64, non-negative, sum 1), reproducible
    from ``(seed, sample_id)``. DPS / ReSample use ``size = 61, intensity = 0.5``."""
    _check_size("motion_blur_kernel", size)
    if not (0.0 <= intensity <= 1.0):
        raise ValueError(f"motion_blur_kernel: intensity must lie in [0, 1], got {intensity!r}.")
    rng = sample_rng(seed, sample_id)
    canvas = 2 * size                                   # super-sampled canvas, downscaled at the end
    diag = math.sqrt(2.0) * canvas
    path = _trajectory(rng, canvas, intensity)

    img = Image.new("F", (canvas, canvas), 0.0)
    draw = ImageDraw.Draw(img)
    xy = [(float(p.real), float(p.imag)) for p in path]   # PIL wants a vertex list (O(steps), not pixels)
    if len(xy) == 1:
        draw.point(xy, fill=1.0)
    else:
        draw.line(xy, fill=1.0, width=max(1, int(diag / 150.0)))
    arr = np.asarray(img, dtype=np.float64)
    blur = int(diag * 0.01)
    if blur > 0:
        arr = gaussian_filter(arr, sigma=blur)
    small = Image.fromarray(arr.astype(np.float32)).resize((size, size), Image.Resampling.LANCZOS)
    k = np.clip(np.asarray(small, dtype=np.float64), 0.0, None)
    total = k.sum()
    if not total > 0:  # the path left the canvas entirely (practically impossible): fall back to identity
        k = np.zeros((size, size))
        k[size // 2, size // 2] = 1.0
        return k
    return k / total

"""Generate the Navier–Stokes prior's data: Gaussian-random-field vorticity evolved 5 time units.

Recipe (the training fields of the Navier–Stokes prior of EnKG, Zheng et al. 2024, arXiv:2409.20175, and
InverseBench, Zheng et al. 2025: 128 x 128, 20,480 train / 10 val / 100 test; their generator is not
public here, so the field parameters below follow the Navier–Stokes data generator of FNO, Li et al. 2021):

1. Initial vorticity w(0) ~ N(0, sigma^2 (-Lap + tau^2 I)^(-alpha)), alpha = 2.5, tau = 7,
   sigma = tau^(alpha - 1) = 7^1.5, the Laplacian read on the unit torus (``grf_length = 1``): the law of
   FNO's ``GaussianRF(2, N, alpha=2.5, tau=7)`` (Li et al. 2021, section 5.3); see
   ``diffinv/operators/random_fields.py``. Its point standard deviation is about 0.19.
2. Evolve ``burn_in`` = 5 time units with ``NavierStokes2DSolver`` (Re = 200, forcing -4 cos(4 y),
   de-aliased pseudo-spectral, Crank–Nicolson / Heun, adaptive CFL step; the same solver as the
   operator). The evolved fields are the samples x0 of the prior: turbulent fields with values roughly in
   (-20, 20), standard deviation about 5 (at 128 x 128).
3. Store them in physical units, float32; the prior sees them divided by ``scale`` = 10
   (``docs/conventions.md#data-conventions``).

Layout of ``OUT``::

    manifest.json                 parameters, counts, seeds, per-shard statistics, "complete"
    train/shard_00000.npy         float32 [k, 1, N, N], physical vorticity; k = shard_size (last: rest)
    val/shard_00000.npy
    test/shard_00000.npy

Every shard is written to a temporary file and renamed (atomic); a re-run with the same parameters
skips the shards already on disk, so an interrupted run resumes. Shard ``i`` of split ``s`` draws its
initial fields from the seed ``SeedSequence([seed, split_index, i])`` (train 0, val 1, test 2), so a
shard's content depends only on the parameters and its index, not on which run wrote it.

Command line (``scripts/generate_navier_stokes.py``)::

    python scripts/generate_navier_stokes.py --resolution 128 --num-train 20480 --num-val 10 \\
        --num-test 100 --out data/navier_stokes_128 [--seed 0] [--shard-size 256] [--burn-in 5.0]

or ``from diffinv.datasets.navier_stokes import generate_dataset`` (the DataModule's hook);
``load_split(root, split)`` reads a split back.

Measured on this project's 2-core CPU (one thread, float32): 1000 fields at 64 x 64 take about
3 minutes (see the report of issue 4); 128 x 128 costs about 2.5x more steps and 4x more work per
step, so the full 20,480-field set is a GPU job.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..operators.navier_stokes import NavierStokes2DSolver
from ..operators.random_fields import GaussianRandomField

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
# parameters that define the data: a re-run into the same folder must match them
_DEFINING = ("format_version", "resolution", "seed", "shard_size", "burn_in", "scale", "dtype", "counts",
             "grf", "solver")


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)       # mkstemp makes 0600 files; shared data should follow the umask
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(path: Path, obj: dict) -> None:
    _atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def _shard_seed(seed: int, split: str, index: int) -> int:
    return int(np.random.SeedSequence([seed, SPLITS.index(split), index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _shard_counts(total: int, shard_size: int) -> list[int]:
    return [min(shard_size, total - start) for start in range(0, total, shard_size)]


def _stats(arr: np.ndarray) -> dict:
    a = arr.astype(np.float64)
    return {"count": int(arr.shape[0]), "mean": float(a.mean()), "std": float(a.std()),
            "min": float(a.min()), "max": float(a.max())}


def _shard_ok(path: Path, count: int, resolution: int) -> bool:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return arr.shape == (count, 1, resolution, resolution) and arr.dtype == np.float32


def generate_dataset(out_dir: str | os.PathLike, resolution: int = 128, num_train: int = 20480, num_val: int = 10,
                     num_test: int = 100, seed: int = 0, shard_size: int = 256, burn_in: float = 5.0,
                     scale: float = 10.0, device: str | torch.device = "cpu", dtype: str = "float32",
                     grf_alpha: float = 2.5, grf_tau: float = 7.0, grf_sigma: float | None = None,
                     grf_length: float = 1.0, reynolds: float = 200.0, dealias: str = "two_thirds",
                     batch_size: int | None = None, progress: bool = True) -> dict:
    """Write (or complete) the dataset under ``out_dir`` and return its manifest (see the module docstring).

    ``batch_size`` fields are evolved per solver call (default: a whole shard on GPU, 16 on CPU); it
    changes neither the fields nor their seeds, only the progress bar's granularity and memory."""
    if not (isinstance(resolution, int) and resolution >= 4 and resolution % 2 == 0):
        raise ValueError(f"generate_dataset: resolution must be an even int >= 4 (64 or 128), got {resolution!r}.")
    for name, v in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if not (isinstance(v, int) and v >= 0):
            raise ValueError(f"generate_dataset: {name} must be an int >= 0, got {v!r}.")
    if not (isinstance(shard_size, int) and shard_size > 0):
        raise ValueError(f"generate_dataset: shard_size must be a positive int, got {shard_size!r}.")
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"generate_dataset: batch_size must be a positive int or None, got {batch_size!r}.")
    if not (math.isfinite(burn_in) and burn_in >= 0):
        raise ValueError(f"generate_dataset: burn_in must be a time >= 0, got {burn_in!r}.")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"generate_dataset: dtype (the solver's precision) must be 'float32' or 'float64', got {dtype!r}.")
    root = Path(out_dir)
    device = torch.device(device)
    torch_dtype = torch.float32 if dtype == "float32" else torch.float64
    grf = GaussianRandomField(resolution, alpha=grf_alpha, tau=grf_tau, sigma=grf_sigma, length=grf_length)
    solver = NavierStokes2DSolver(resolution, reynolds=reynolds, dealias=dealias)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    manifest = {
        "format_version": FORMAT_VERSION,
        "description": "Navier-Stokes vorticity at t = burn_in from Gaussian-random-field initial vorticity "
                       "(EnKG / InverseBench recipe); physical units, divide by `scale` for the prior.",
        "layout": "<split>/shard_XXXXX.npy: float32 [k, 1, N, N]",
        "resolution": resolution, "seed": seed, "shard_size": shard_size, "burn_in": float(burn_in),
        "scale": float(scale), "dtype": dtype, "counts": counts,
        "grf": {"alpha": grf.alpha, "tau": grf.tau, "sigma": grf.sigma, "length": grf.length,
                "covariance": "sigma^2 (-Lap + tau^2 I)^(-alpha), mean 0, on the torus of side `length`",
                "pointwise_std": math.sqrt(grf.pointwise_variance())},
        "solver": {"domain": "[0, 2 pi]^2 periodic", "reynolds": solver.reynolds,
                   "forcing": "-4 cos(4 y), y along the last axis", "forcing_amplitude": solver.forcing_amplitude,
                   "forcing_wavenumber": solver.forcing_wavenumber, "dealias": solver.dealias,
                   "time_step": "adaptive CFL, per sample", "cfl": solver.cfl},
        "shard_seeds": "numpy SeedSequence([seed, split_index, shard_index]), split_index train 0 / val 1 / test 2",
    }
    manifest_path = root / MANIFEST
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        diff = [k for k in _DEFINING if old.get(k) != manifest.get(k)]
        if diff:
            raise ValueError(f"generate_dataset: {root} holds a dataset with different {', '.join(diff)}; "
                             f"use another --out folder or delete it.")
    manifest["complete"] = False
    _write_json(manifest_path, manifest)

    total = sum(counts.values())
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="field", desc=f"NS {resolution}x{resolution}")
    splits_info = {}
    t_start = time.perf_counter()
    for split in SPLITS:
        shards = []
        for index, count in enumerate(_shard_counts(counts[split], shard_size)):
            path = root / split / f"shard_{index:05d}.npy"
            if not _shard_ok(path, count, resolution):
                gen = torch.Generator(device="cpu").manual_seed(_shard_seed(seed, split, index))
                w0 = grf.sample(count, generator=gen, dtype=torch_dtype, device=device)
                step = batch_size or (count if device.type != "cpu" else 16)
                parts = []
                for start in range(0, count, step):
                    with torch.no_grad():
                        parts.append(solver.solve(w0[start:start + step], float(burn_in)).to(torch.float32).cpu())
                    if bar is not None:
                        bar.update(parts[-1].shape[0])
                arr = torch.cat(parts).numpy()[:, None]
                _atomic_write_bytes(path, lambda f, a=arr: np.save(f, a))
            else:
                arr = np.load(path)
                if bar is not None:
                    bar.update(count)
            shards.append({"file": f"{split}/{path.name}", **_stats(arr)})
        splits_info[split] = {"count": counts[split], "shards": shards}
    if bar is not None:
        bar.close()
    manifest["splits"] = splits_info
    manifest["complete"] = True
    manifest["seconds_last_run"] = round(time.perf_counter() - t_start, 2)
    _write_json(manifest_path, manifest)
    return manifest


def read_manifest(root: str | os.PathLike) -> dict:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise ValueError(f"read_manifest: no {MANIFEST} in {root}; generate the data with "
                         f"scripts/generate_navier_stokes.py first.")
    return json.loads(path.read_text())


def load_split(root: str | os.PathLike, split: str, mmap: bool = False) -> np.ndarray:
    """All fields of one split, ``[n, 1, N, N]`` float32, physical units (divide by the manifest's
    ``scale`` for the prior). With ``mmap=True`` and a single shard, the array is memory-mapped."""
    if split not in SPLITS:
        raise ValueError(f"load_split: split must be one of {SPLITS}, got {split!r}.")
    manifest = read_manifest(root)
    if not manifest.get("complete"):
        raise ValueError(f"load_split: the dataset in {root} is incomplete; re-run the generator to finish it.")
    files = [Path(root) / s["file"] for s in manifest["splits"][split]["shards"]]
    n = manifest["resolution"]
    if not files:
        return np.zeros((0, 1, n, n), dtype=np.float32)
    arrays = [np.load(f, mmap_mode="r" if mmap else None) for f in files]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

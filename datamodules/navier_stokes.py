"""Navier–Stokes vorticity fields for the EnKG / InverseBench fluid problem: prior training (``fit``) and
inverse problems (``predict``).

Units: every tensor this module yields is in the **prior's units, physical vorticity / 10** (the scale the
priors are trained on), ``[1, N, N]`` per field; the operator (``diffinv.operators.navier_stokes.NavierStokes``)
takes that and returns physical vorticity.

Two sources:

* **Generated** (default): ``root`` holds the layout of the project's generator (``manifest.json`` +
  ``<split>/shard_XXXXX.npy``, physical units; the loader divides by the manifest's ``scale`` = 10).
  When ``root`` holds no dataset and ``generate`` is true, ``prepare_data`` generates ``num_train`` /
  ``num_val`` / ``num_test`` fields with the project's solver (Gaussian-random-field vorticity evolved
  ``burn_in`` = 5 time units, Re 200, Kolmogorov forcing) and caches them there; Lightning runs
  ``prepare_data`` on local rank 0 only and holds the other ranks at a barrier until it returns, then
  every rank's ``setup`` reads the cache. A re-run finds the cache and generates nothing. Large sets
  (128 x 128, 20,480 fields) are a GPU job: run ``scripts/generate_navier_stokes.py`` beforehand rather
  than inside a DDP barrier.
* **InverseBench LMDB** (``lmdb_path``, or ``root`` pointing at an LMDB): key ``str(i)``, raw float32
  bytes ``(1, 128, 128)``, **already divided by 10** (so returned as stored). One LMDB holds one split:
  ``predict`` reads its first ``num_<split>`` entries (all when None); ``fit`` trains on the first
  ``num_train`` of the entries before the last ``num_val`` and validates on those last ``num_val``.

Fields stored at a finer grid than ``resolution`` (e.g. InverseBench's 128 for a 64 x 64 prior) are
resampled by Fourier truncation (exact for band-limited periodic fields). Ids: ``ns-{split}-{index:05d}``.
"""
from __future__ import annotations

import bisect

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.base import InverseProblemDataModule, TensorItems
from diffinv.datasets.array_files import LMDBArrays, is_lmdb, spectral_resample
from diffinv.datasets import navier_stokes as _gen
from diffinv.datasets.common import MapDataset
from diffinv.operators import Operator

SPLITS = ("train", "val", "test")

class _Shards:
    """The fields of one split of a generated dataset, memory-mapped shard by shard (physical units)."""

    def __init__(self, root: Path, shards: list[dict]):
        self.files = [root / s["file"] for s in shards]
        self.offsets = [0]
        for s in shards:
            self.offsets.append(self.offsets[-1] + int(s["count"]))
        self._arrays: list | None = None

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> np.ndarray:
        if self._arrays is None:
            self._arrays = [np.load(f, mmap_mode="r") for f in self.files]
        k = bisect.bisect_right(self.offsets, index) - 1
        return np.array(self._arrays[k][index - self.offsets[k]], dtype=np.float32)

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}

def periodic_shift(x: Tensor) -> Tensor:
    """A random symmetry of the Navier–Stokes data: the flow is periodic, the initial field's law is
    translation invariant and the forcing -4 cos(4 y) depends on y (dim -1) only, with period N / 4 pixels;
    so shifts along x (dim -2) by any amount and along y by multiples of N / 4 map fields to equally likely
    fields."""
    n = x.shape[-1]
    sx = int(torch.randint(x.shape[-2], ()))
    sy = int(torch.randint(4, ())) * (n // 4)
    return torch.roll(x, shifts=(sx, sy), dims=(-2, -1))

class _FieldLoader:
    """``load(i) -> [1, N, N]`` float32 in prior units: stored field / ``scale``, resampled to ``resolution``
    (a class, not a closure, so that datasets pickle into spawned DataLoader workers)."""

    def __init__(self, reader, scale: float, resolution: int):
        self.reader, self.scale, self.resolution = reader, scale, resolution

    def __call__(self, index: int) -> Tensor:
        a = np.asarray(self.reader[index], dtype=np.float32)
        x = torch.from_numpy(a.reshape(1, *a.shape[-2:])) / self.scale
        if x.shape[-1] != self.resolution:
            x = spectral_resample(x, self.resolution)
        return x.float()

class _ByIdLoader:
    def __init__(self, load, index_of: dict):
        self.load, self.index_of = load, index_of

    def __call__(self, sample_id: str) -> Tensor:
        return self.load(self.index_of[sample_id])

class NavierStokesDataModule(InverseProblemDataModule):
    """Navier–Stokes vorticity (prior units: physical / 10), generated and cached, or from an InverseBench LMDB.

    Args:
        root: dataset folder of the project's generator (created when ``generate``), or an LMDB folder.
        resolution: grid size N of the yielded fields (64 or 128).
        num_train, num_val, num_test: fields per split to generate / use (None: all on disk).
        split: the split ``predict`` solves ("test", "val" or "train").
        generate: generate the dataset into ``root`` when it holds none.
        lmdb_path: an InverseBench LMDB to read instead of ``root`` (see the module docstring).
        data_seed: seed of the generated fields (the measurements use ``seed``).
        burn_in, shard_size, generate_device: generator settings (evolution time, fields per shard, device).
        augment: ``fit`` only: random periodic shifts that leave the data's law invariant (any shift along
            x, dim -2; shifts along y, dim -1, by multiples of N / 4, the period of the forcing -4 cos(4 y)).
        operator, batch_size, num_workers, seed, max_items: see ``InverseProblemDataModule``.
    """

    def __init__(self, root: str = "data/navier_stokes", resolution: int = 128, num_train: int | None = 1000,
                 num_val: int | None = 10, num_test: int | None = 100, split: str = "test", generate: bool = True,
                 lmdb_path: str | None = None, data_seed: int = 0, burn_in: float = 5.0, shard_size: int = 256,
                 generate_device: str = "cpu", augment: bool = False, operator: Operator | None = None,
                 batch_size: int = 1, num_workers: int = 0, seed: int = 0, max_items: int | None = None):
        super().__init__(operator=operator, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         max_items=max_items)
        if not (isinstance(resolution, int) and resolution >= 4 and resolution % 2 == 0):
            raise ValueError(f"NavierStokesDataModule: resolution must be an even int (64 or 128), got {resolution!r}.")
        if split not in SPLITS:
            raise ValueError(f"NavierStokesDataModule: split must be one of {SPLITS}, got {split!r}.")
        for name, v in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if v is not None and not (isinstance(v, int) and v >= 0):
                raise ValueError(f"NavierStokesDataModule: {name} must be an int >= 0 or None (all), got {v!r}.")
        self.root = Path(root)
        self.resolution = resolution
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.split = split
        self.generate = generate
        self.lmdb_path = lmdb_path if lmdb_path is not None else (str(root) if is_lmdb(root) else None)
        self.data_seed, self.burn_in, self.shard_size = data_seed, burn_in, shard_size
        self.generate_device = generate_device
        self.augment = augment
        self._source = None      # ("lmdb", LMDBArrays) or ("shards", manifest)

    # ------------------------------------------------------------------ locating / generating the data
    def _manifest(self) -> dict | None:
        """The complete generated dataset in ``root``, None when there is none; raises when its resolution
        cannot serve. (A split with fewer fields than requested raises when that split is read, so a
        predict run needs only enough test fields.)"""
        if not (self.root / "manifest.json").is_file():
            return None
        manifest = _gen.read_manifest(self.root)
        if not manifest.get("complete"):
            return None
        have = int(manifest["resolution"])
        if have != self.resolution and (have < self.resolution or have % self.resolution):
            raise ValueError(f"NavierStokesDataModule: {self.root} holds {have} x {have} fields, which cannot give "
                             f"resolution {self.resolution}; set resolution: {have} or use another root.")
        differ = [f"{k} {manifest.get(k)!r} (requested {v!r})" for k, v in
                  (("seed", self.data_seed), ("burn_in", float(self.burn_in))) if manifest.get(k) != v]
        if differ:
            warnings.warn(f"NavierStokesDataModule: using the dataset in {self.root} as generated, with "
                          f"{', '.join(differ)}; use another root to generate with the requested settings.")
        return manifest

    def prepare_data(self) -> None:
        """Generate the dataset into ``root`` when needed (Lightning: local rank 0 only)."""
        if self.lmdb_path is not None:
            LMDBArrays(self.lmdb_path)     # validates the path and the layout
            return
        if self._manifest() is not None:
            return
        if not self.generate:
            raise ValueError(f"NavierStokesDataModule: no dataset in {self.root}; set data.init_args.generate: true, "
                             f"or run scripts/generate_navier_stokes.py --out {self.root}, or set lmdb_path.")
        missing = [f"num_{s}" for s, n in self.counts.items() if n is None]
        if missing:
            raise ValueError(f"NavierStokesDataModule: cannot generate 'all' fields; set {', '.join(missing)} to a count.")
        _gen.generate_dataset(
            self.root, resolution=self.resolution, num_train=self.counts["train"], num_val=self.counts["val"],
            num_test=self.counts["test"], seed=self.data_seed, shard_size=self.shard_size, burn_in=self.burn_in,
            device=self.generate_device, progress=True)

    def setup(self, stage: str | None = None) -> None:
        if self._source is not None:
            return
        if self.lmdb_path is not None:
            store = LMDBArrays(self.lmdb_path)
            have = store.shape[-1]
            if have != self.resolution and (have < self.resolution or have % self.resolution):
                raise ValueError(f"NavierStokesDataModule: the LMDB {self.lmdb_path} holds {have} x {have} fields, "
                                 f"which cannot give resolution {self.resolution}; set resolution: {have}.")
            self._source = ("lmdb", store)
            return
        manifest = self._manifest()
        if manifest is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            if self.generate and not distributed:      # used without a Trainer: prepare here
                self.prepare_data()
                manifest = self._manifest()
            if manifest is None:
                raise ValueError(f"NavierStokesDataModule: no complete dataset in {self.root} after prepare_data; "
                                 f"on several nodes put root on a shared disk or generate it beforehand with "
                                 f"scripts/generate_navier_stokes.py.")
        self._source = ("shards", manifest)

    # ------------------------------------------------------------------ reading
    def _split_reader(self, split: str, role: str):
        """``(indices, load)`` of one split for ``role`` "fit" or "predict": the dataset indices it uses and
        ``load(i) -> [1, N, N]`` float32 in prior units."""
        self.setup()
        kind, src = self._source
        want = self.counts[split]
        if kind == "lmdb":                         # one LMDB = one split (module docstring)
            n, reader, scale = len(src), src, 1.0  # stored already divided by 10
            num_val = min(self.counts["val"] or 0, n)
            if role == "predict":
                indices = range(n if want is None else min(n, want))
            elif split == "val":
                indices = range(n - num_val, n)
            else:
                indices = range(n - num_val if want is None else min(n - num_val, want))
        else:
            reader = _Shards(self.root, src["splits"][split]["shards"])
            if want is not None and len(reader) < want:
                raise ValueError(f"NavierStokesDataModule: {self.root} holds {len(reader)} {split} fields, fewer than "
                                 f"num_{split}={want}; lower num_{split} (None: all), or use another root (or delete "
                                 f"this one to regenerate).")
            indices = range(len(reader) if want is None else want)
            scale = float(src["scale"])            # stored in physical units
        return list(indices), _FieldLoader(reader, scale, self.resolution)

    def _fields(self, split: str, augment: bool) -> Dataset:
        indices, load = self._split_reader(split, "fit")
        return MapDataset(indices, load, periodic_shift if augment else None)

    # ------------------------------------------------------------------ fit
    def train_dataset(self) -> Dataset:
        return self._fields("train", self.augment)

    def val_dataset(self) -> Dataset:
        return self._fields("val", False)

    # ------------------------------------------------------------------ predict
    def predict_truth(self) -> Dataset:
        indices, load = self._split_reader(self.split, "predict")
        ids = [f"ns-{self.split}-{i:05d}" for i in indices]
        return TensorItems(ids, _ByIdLoader(load, dict(zip(ids, indices))))

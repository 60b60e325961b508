"""Black-hole images for the InverseBench / EnKG interferometric imaging problem: prior training (``fit``)
and inverse problems (``predict``).

Every image is yielded as float32 ``[1, R, R]`` (R = ``resolution``, 64) normalised to peak 1 and mapped to
``[-1, 1]`` (the range of every diffinv prior; ``BlackHoleImaging`` maps it back to [0, 1] and handles the
flux), in ehtim's orientation (row 0 north, column 0 east). Sources, the first that applies:

1. an LMDB (``lmdb_path``, or ``root`` pointing at one): key ``str(i)``, raw float32 ``(1, H, W)`` or
   ``(H, W)``; ``lmdb_values`` says whether entries are brightness maps ("brightness", peak-normalised
   here) or already prior images in [-1, 1] ("prior");
2. a folder ``root`` of ``.npy`` / ``.h5`` (dataset ``h5_dataset``) / FITS files, each one image ``[H, W]``
   or a stack ``[N, H, W]``; FITS files are read with ``ehtim.image.load_fits`` and, when ``fov_uas`` is
   set, regridded to that field of view (the other formats carry no pixel size: they must already span
   the operator's field of view). Images are resized to ``resolution`` (area averaging / antialiased
   bilinear) before the normalisation. With subfolders ``train/``, ``val/``, ``test/`` those are the splits;
   otherwise the folder is one pool (see "splits" below);
3. ``synthetic: true`` and ``root`` missing or empty: the seeded synthetic generator
   (``diffinv.datasets.blackhole_synthetic``, ehtim's crescents and m-rings with texture), rendered at
   ``synthetic_fov_uas`` (160 uas, the operator's) and cached under ``synthetic_dir`` as one ``.npy`` per
   split (rank 0 in ``prepare_data``); ``num_train`` / ``num_val`` / ``num_test`` images per split. Only the
   splits the stage reads are made: ``predict`` the ``split`` it solves (10 test images by default, not
   the 5,000 training images), ``fit`` train and val.

Splits of a single pool (LMDB or flat folder, sorted by file name): ``predict`` solves ``predict_ids``,
else the first ``eval_first`` items, else every item; ``fit`` uses the other items (all of them when no
evaluation set is named), the last ``num_val`` of them for validation and the first ``num_train`` (None:
all) of the rest for training. Ids: file stems (``{stem}-{i:05d}`` inside stacks), ``bh-{split}-{i:05d}``
for LMDB and synthetic items.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.base import InverseProblemDataModule, TensorItems
from diffinv.datasets.array_files import (ARRAY_EXTENSIONS, ArrayItem, LMDBArrays, index_array_files, is_lmdb,
                                          peak_normalize, read_array_image, resize_image)
from diffinv.datasets.blackhole_synthetic import SyntheticBlackHoleConfig, SyntheticBlackHoles
from diffinv.datasets.common import MapDataset, random_flips
from diffinv.datasets.image_files import list_images, select_eval
from diffinv.operators import Operator

SPLITS = ("train", "val", "test")
LMDB_VALUES = ("brightness", "prior")


class _FileLoader:
    """``load(item) -> [1, R, R]`` in [-1, 1] for one :class:`ArrayItem` of a folder."""

    def __init__(self, resolution: int, h5_dataset: str | None, fov_uas: float | None):
        self.resolution, self.h5_dataset, self.fov_uas = resolution, h5_dataset, fov_uas

    def __call__(self, item: ArrayItem) -> Tensor:
        arr = read_array_image(item, self.h5_dataset, self.fov_uas, self.resolution)
        name = f"{item.path}" + ("" if item.index is None else f"[{item.index}]")
        return peak_normalize(arr, self.resolution, name=name)


class _LMDBLoader:
    def __init__(self, store: LMDBArrays, resolution: int, values: str):
        self.store, self.resolution, self.values = store, resolution, values

    def __call__(self, index: int) -> Tensor:
        arr = self.store[index]
        name = f"{self.store.path}[{index}]"
        if self.values == "brightness":
            return peak_normalize(arr, self.resolution, name=name)
        x = torch.from_numpy(arr).float().reshape(1, *arr.shape[-2:])
        if not torch.isfinite(x).all() or x.min() < -1.001 or x.max() > 1.001:
            raise ValueError(f"{name}: values outside [-1, 1] with lmdb_values='prior'; set lmdb_values: brightness.")
        if x.shape[-1] != self.resolution:          # resize in [0, 1], back to [-1, 1]
            x = 2.0 * resize_image((x + 1.0) / 2.0, self.resolution) - 1.0
        return x.clamp(-1.0, 1.0)


class _ArrayLoader:
    def __init__(self, array):
        self.array = array

    def __call__(self, index: int) -> Tensor:
        return torch.from_numpy(np.array(self.array[index], dtype=np.float32))


class _ByIdLoader:
    def __init__(self, load, key_of: dict):
        self.load, self.key_of = load, key_of

    def __call__(self, sample_id: str) -> Tensor:
        return self.load(self.key_of[sample_id])


def _dihedral(x: Tensor) -> Tensor:
    return random_flips(x, horizontal=True, vertical=True, rot90=True)


class BlackHoleDataModule(InverseProblemDataModule):
    """Black-hole images (peak 1, in [-1, 1]) from an LMDB, a folder, or the synthetic generator.

    Args:
        root: folder of ``.npy`` / ``.h5`` / FITS images (or an LMDB); None or missing with ``synthetic``:
            synthetic data.
        resolution: image size R (64 for the InverseBench problem).
        split: the split ``predict`` solves ("test", "val", "train") where the source has splits.
        h5_dataset: dataset name inside HDF5 files (None: the file's only dataset).
        fov_uas: regrid FITS images to this field of view (uas) with ehtim; None: keep their grid.
        lmdb_path, lmdb_values: an LMDB source and what its entries hold ("brightness" or "prior").
        eval_first, predict_ids: the evaluation set of a single pool (excluded from ``fit``).
        synthetic: use the synthetic generator when ``root`` holds no images.
        synthetic_dir, synthetic_fov_uas, data_seed: cache folder, field of view and seed of synthetic data.
        num_train, num_val, num_test: synthetic: images per split (None: 5000 / 100 / 10); files / LMDB:
            training-set limit (None: all) and validation hold-out of a single pool (None: 0); num_test is
            unused there (``max_items`` limits predict).
        augment: ``fit`` only: random flips and quarter turns (the dihedral group of the pixel grid).
        operator, batch_size, num_workers, seed, max_items: see ``InverseProblemDataModule``.
    """

    def __init__(self, root: str | None = "data/blackhole", resolution: int = 64, split: str = "test",
                 h5_dataset: str | None = None, fov_uas: float | None = None, lmdb_path: str | None = None,
                 lmdb_values: str = "brightness", eval_first: int | None = None,
                 predict_ids: list[str] | None = None, synthetic: bool = True,
                 synthetic_dir: str = "data/blackhole_synthetic", synthetic_fov_uas: float = 160.0,
                 data_seed: int = 0, num_train: int | None = None, num_val: int | None = None,
                 num_test: int | None = None, augment: bool = False, operator: Operator | None = None,
                 batch_size: int = 1, num_workers: int = 0, seed: int = 0, max_items: int | None = None):
        super().__init__(operator=operator, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         max_items=max_items)
        if not (isinstance(resolution, int) and resolution >= 8):
            raise ValueError(f"BlackHoleDataModule: resolution must be an int >= 8 (64), got {resolution!r}.")
        if split not in SPLITS:
            raise ValueError(f"BlackHoleDataModule: split must be one of {SPLITS}, got {split!r}.")
        if lmdb_values not in LMDB_VALUES:
            raise ValueError(f"BlackHoleDataModule: lmdb_values must be one of {LMDB_VALUES}, got {lmdb_values!r}.")
        for name, v in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if v is not None and not (isinstance(v, int) and v >= 0):
                raise ValueError(f"BlackHoleDataModule: {name} must be an int >= 0 or None, got {v!r}.")
        self.root = None if root is None else Path(root)
        self.resolution, self.split = resolution, split
        self.h5_dataset, self.fov_uas = h5_dataset, fov_uas
        self.lmdb_path = lmdb_path if lmdb_path is not None else (str(root) if is_lmdb(root) else None)
        self.lmdb_values = lmdb_values
        self.eval_first, self.predict_ids = eval_first, predict_ids
        self.synthetic, self.synthetic_dir = synthetic, Path(synthetic_dir)
        self.synthetic_fov_uas, self.data_seed = synthetic_fov_uas, data_seed
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.augment = augment
        self._splits: dict | None = None     # "pool" and split -> (keys, ids, load)
        self._gen: SyntheticBlackHoles | None = None
        self.source_kind: str | None = None  # "lmdb", "folder" or "synthetic", set by setup

    # ------------------------------------------------------------------ source
    def _kind(self) -> str:
        if self.lmdb_path is not None:
            return "lmdb"
        if self.root is not None and self.root.is_dir() and self._root_files():
            return "folder"
        if self.synthetic:
            return "synthetic"
        if self.root is None or not self.root.is_dir():
            raise ValueError(f"BlackHoleDataModule: image folder {str(self.root)!r} does not exist; check "
                             f"data.init_args.root, or set synthetic: true to train on synthetic images.")
        raise ValueError(f"BlackHoleDataModule: no black-hole images ({', '.join(ARRAY_EXTENSIONS)}) in "
                         f"{str(self.root)!r}; add them, check data.init_args.root, or set synthetic: true.")

    def _files(self, folder: Path) -> list[Path]:
        """Image files under ``folder``, leaving out the synthetic cache if it lies inside."""
        files = list_images(folder, ARRAY_EXTENSIONS, recursive=True)
        cache = self.synthetic_dir.resolve()
        if folder.resolve() not in (cache, *cache.parents):
            return files
        return [p for p in files if cache not in p.resolve().parents]

    def _root_files(self) -> list[Path]:
        return self._files(self.root)

    def _generator(self) -> SyntheticBlackHoles:
        config = SyntheticBlackHoleConfig(npix=self.resolution, fov_uas=self.synthetic_fov_uas)
        return SyntheticBlackHoles(config, seed=self.data_seed)

    def _synthetic_counts(self) -> dict:
        defaults = {"train": 5000, "val": 100, "test": 10}
        return {s: defaults[s] if n is None else n for s, n in self.counts.items()}

    def _stage_splits(self, stage: str | None) -> tuple[str, ...]:
        """The splits a Lightning stage reads: ``fit`` train + val, ``validate`` val, ``predict`` / ``test``
        the predict split; no stage (a direct call): all of them."""
        if stage == "fit":
            return ("train", "val")
        if stage == "validate":
            return ("val",)
        if stage in ("predict", "test"):
            return (self.split,)
        return SPLITS

    def prepare_data(self) -> None:
        """Generate and cache the synthetic images of the splits the running stage reads, when they are the
        source (Lightning: local rank 0 only); called outside a Trainer, every split."""
        if self._kind() != "synthetic":
            return
        fn = getattr(getattr(self.trainer, "state", None), "fn", None)
        counts = self._synthetic_counts()
        for split in self._stage_splits(None if fn is None else str(fn.value)):
            self._get_generator().cached_split(self.synthetic_dir, split, counts[split])

    def _get_generator(self) -> SyntheticBlackHoles:
        if self._gen is None:
            self._gen = self._generator()
        return self._gen

    def setup(self, stage: str | None = None) -> None:
        """Index the source; synthetic splits are loaded from the cache only when a stage reads them."""
        if self._splits is None:
            self._index()
        if self.source_kind == "synthetic":
            for split in self._stage_splits(stage):
                self._split(split)

    def _index(self) -> None:
        kind = self.source_kind = self._kind()
        if kind == "synthetic":
            self._splits = {"pool": None}
            return
        if kind == "lmdb":
            store = LMDBArrays(self.lmdb_path, shape=None)
            keys = list(range(len(store)))
            self._splits = {"pool": (keys, None, _LMDBLoader(store, self.resolution, self.lmdb_values))}
            return
        loader = _FileLoader(self.resolution, self.h5_dataset, self.fov_uas)
        subdirs = {s: self.root / s for s in SPLITS if (self.root / s).is_dir() and self._files(self.root / s)}
        if subdirs:
            splits = {}
            for split, folder in subdirs.items():
                items = index_array_files(self._files(folder), self.h5_dataset)
                splits[split] = (items, [it.id for it in items], loader)
            self._splits = {"pool": None, **splits}
        else:
            items = index_array_files(self._root_files(), self.h5_dataset)
            self._splits = {"pool": (items, [it.id for it in items], loader)}

    def _split(self, split: str):
        """``(keys, ids, load)`` of one split (None where the source has no such split); a synthetic split is
        read from the cache (generated first, outside DDP, when ``prepare_data`` did not run)."""
        if self._splits is None:
            self._index()
        if self.source_kind == "synthetic" and split not in self._splits:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            count = self._synthetic_counts()[split]
            arr = self._get_generator().cached_split(self.synthetic_dir, split, count, generate=not distributed)
            keys = list(range(count))
            self._splits[split] = (keys, [f"bh-{split}-{i:05d}" for i in keys], _ArrayLoader(arr))
        return self._splits.get(split)

    # ------------------------------------------------------------------ selections
    def _pool(self):
        if self._splits is None:
            self._index()
        return self._splits["pool"]

    def _pool_ids(self, keys: list, ids: list | None, split: str) -> list[str]:
        return ids if ids is not None else [f"bh-{split}-{k:05d}" for k in keys]

    def _predict_selection(self):
        """``(keys, ids, load)`` of the predict items."""
        pool = self._pool()
        if pool is not None:
            keys, ids, load = pool
            ids = self._pool_ids(keys, ids, self.split)
        else:
            if self._split(self.split) is None:
                raise ValueError(f"BlackHoleDataModule: no {self.split!r} split in {self.root}; set split to one "
                                 f"of {[s for s in SPLITS if s in self._splits]}.")
            keys, ids, load = self._split(self.split)
        chosen = select_eval(ids, self.eval_first, self.predict_ids)
        return [keys[i] for i in chosen], [ids[i] for i in chosen], load

    def _fit_selection(self, split: str):
        """``(keys, load)`` of the training or validation images."""
        pool = self._pool()
        if pool is None:
            if self._split(split) is None:
                return [], None
            keys, ids, load = self._split(split)
            if self.source_kind != "synthetic" and split == "train" and self.counts["train"] is not None:
                keys = keys[: self.counts["train"]]
            return list(keys), load
        keys, ids, load = pool
        ids = self._pool_ids(keys, ids, self.split)      # the ids predict uses, so predict_ids match
        held = set(select_eval(ids, self.eval_first, self.predict_ids)) \
            if (self.eval_first is not None or self.predict_ids is not None) else set()
        rest = [k for i, k in enumerate(keys) if i not in held]
        num_val = min(self.counts["val"] or 0, max(len(rest) - 1, 0))
        if split == "val":
            return rest[len(rest) - num_val:], load
        train = rest[: len(rest) - num_val]
        if self.counts["train"] is not None:
            train = train[: self.counts["train"]]
        return train, load

    # ------------------------------------------------------------------ fit
    def train_dataset(self) -> Dataset:
        keys, load = self._fit_selection("train")
        return MapDataset(keys, load, _dihedral if self.augment else None)

    def val_dataset(self) -> Dataset:
        keys, load = self._fit_selection("val")
        return MapDataset(keys, load)

    # ------------------------------------------------------------------ predict
    def predict_truth(self) -> Dataset:
        keys, ids, load = self._predict_selection()
        # fail fast, naming the file: read every item that will be solved before any sampling starts
        limit = len(keys) if self.max_items is None else min(self.max_items, len(keys))
        for key in keys[:limit]:
            load(key)
        return TensorItems(ids, _ByIdLoader(load, dict(zip(ids, keys))))

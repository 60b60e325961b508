"""Natural images (FFHQ and image folders, super-resolution manifests): prior training (``fit``) and inverse
problems (``predict``).

Images are yielded as float32 ``[C, R, R]`` in ``[-1, 1]`` (the public FFHQ / LDM checkpoints' convention), centre-cropped and resized
to ``resolution`` when needed (``diffinv.datasets.image_files``); single-channel files are replicated to 3
channels when ``channels=3``; ids are the file stems (``00000`` ... for FFHQ).

* :class:`ImageFolderDataModule`: every PNG/JPG/... under ``root`` (recursive, natural order of the
  relative paths). The evaluation set is ``predict_ids``, else the first ``eval_first`` images (the DPS
  FFHQ convention: ``eval_first: 1000`` = ``00000`` ... ``00999``), else every image; ``fit`` trains on the
  others (every image when no evaluation set is named) and validates on the last ``num_val`` of them.
* :class:`ImageManifestDataModule`: the train / test manifests written by
  ``scripts/prepare_super_resolution_dataset.py`` (text files of paths relative to ``root``, one per line,
  ``#`` comments); ``predict`` solves the test list, ``fit`` trains on the train list (validation: the
  ``val_manifest`` list, or the last ``num_val`` of the train list).

Both raise ``ValueError`` before any sampling when the folder or a list has no images, no image to predict
can be read, or a colour image meets ``channels=1`` (predict items are checked up front, naming the file). A
single unreadable image among readable ones is that item's recorded failure (``<id>.failed.json``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from torch import Tensor
from torch.utils.data import Dataset

from datamodules.base import InverseProblemDataModule, TensorItems
from diffinv.datasets.common import MapDataset, random_flips
from diffinv.datasets.image_files import (IMAGE_EXTENSIONS, check_channels, list_images, load_image, read_path_list,
                                          select_eval, unique_ids)
from diffinv.operators import Operator

log = logging.getLogger(__name__)

class _ImageLoader:
    """``load(path) -> [C, R, R]`` in [-1, 1] (a class so that datasets pickle into spawned workers)."""

    def __init__(self, resolution: int, channels: int):
        self.resolution, self.channels = resolution, channels

    def __call__(self, path: Path) -> Tensor:
        return load_image(path, self.resolution, self.channels)


class _ByIdLoader:
    def __init__(self, load, path_of: dict):
        self.load, self.path_of = load, path_of

    def __call__(self, sample_id: str) -> Tensor:
        return self.load(self.path_of[sample_id])


def _hflip(x: Tensor) -> Tensor:
    return random_flips(x, horizontal=True)


class _ImageDataModule(InverseProblemDataModule):
    """Shared logic: subclasses set ``self._predict`` and ``self._fit`` / ``self._val`` path lists in
    :meth:`_collect` (called by ``setup``); ids are unique file stems."""

    def __init__(self, root: str, resolution: int, channels: int, num_val: int, hflip: bool,
                 operator: Operator | None, batch_size: int, num_workers: int, seed: int, max_items: int | None):
        super().__init__(operator=operator, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         max_items=max_items)
        if not (isinstance(resolution, int) and resolution >= 1):
            raise ValueError(f"{type(self).__name__}: resolution must be a positive int, got {resolution!r}.")
        if channels not in (1, 3):
            raise ValueError(f"{type(self).__name__}: channels must be 1 or 3, got {channels!r}.")
        if not (isinstance(num_val, int) and num_val >= 0):
            raise ValueError(f"{type(self).__name__}: num_val must be an int >= 0, got {num_val!r}.")
        self.root = Path(root)
        self.resolution, self.channels, self.num_val, self.hflip = resolution, channels, num_val, hflip
        self._ready = False
        self._predict: list[Path] = []
        self._train: list[Path] = []
        self._val: list[Path] = []
        self._ids: dict[Path, str] = {}

    def _collect(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        self._collect()
        for path in self._predict or self._train:     # the first readable image tells the channels
            try:
                check_channels(path, self.channels)
                break
            except ValueError as err:
                if "cannot read image" not in str(err):
                    raise
        self._ready = True

    def _load(self) -> _ImageLoader:
        return _ImageLoader(self.resolution, self.channels)

    # ------------------------------------------------------------------ fit
    def train_dataset(self) -> Dataset:
        self.setup()
        return MapDataset(self._train, self._load(), _hflip if self.hflip else None)

    def val_dataset(self) -> Dataset:
        self.setup()
        return MapDataset(self._val, self._load())



    # ------------------------------------------------------------------ predict
    def predict_truth(self) -> Dataset:
        self.setup()
        paths = self._predict
        if not paths:
            raise ValueError(self._no_predict_message())
        # fail fast, naming the file, when the settings cannot work (a colour image asked for as grayscale, or
        # no readable image at all); a single unreadable file is that item's recorded failure (the run goes on)
        limit = len(paths) if self.max_items is None else min(self.max_items, len(paths))
        unreadable = []
        for p in paths[:limit]:
            try:
                check_channels(p, self.channels)
            except ValueError as err:
                if "cannot read image" not in str(err):
                    raise
                unreadable.append(str(err))
        if unreadable and len(unreadable) == limit:
            raise ValueError(f"{type(self).__name__}: none of the {limit} images to predict can be read, e.g. "
                             f"{unreadable[0]}")
        for msg in unreadable:
            log.warning("%s: %s (recorded as a failed item)", type(self).__name__, msg)
        ids = [self._ids[p] for p in paths]
        return TensorItems(ids, _ByIdLoader(self._load(), dict(zip(ids, paths))))

    def _no_predict_message(self) -> str:
        return (f"{type(self).__name__}: no images to predict under {str(self.root)!r}; check data.init_args.root "
                f"and the evaluation settings.")

    def _split_fit(self, pool: Sequence[Path]) -> None:
        n_val = min(self.num_val, max(len(pool) - 1, 0))
        self._train, self._val = list(pool[: len(pool) - n_val]), list(pool[len(pool) - n_val:])


class ImageFolderDataModule(_ImageDataModule):
    """Images of a folder (FFHQ: ``eval_first: 1000``), see the module docstring.

    Args:
        root: image folder (searched recursively unless ``recursive`` is false).
        resolution, channels: output size R and channels C (1 or 3).
        eval_first: number of leading images that form the evaluation (predict) set; None: see predict_ids.
        predict_ids: explicit evaluation ids (file stems), overriding ``eval_first``.
        num_val: validation images taken from the end of the training pool.
        hflip: random horizontal flips during ``fit``.
        extensions, recursive: which files count as images.
        operator, batch_size, num_workers, seed, max_items: see ``InverseProblemDataModule``.
    """

    def __init__(self, root: str = "data/ffhq", resolution: int = 256, channels: int = 3,
                 eval_first: int | None = None, predict_ids: list[str] | None = None, num_val: int = 0,
                 hflip: bool = True, extensions: list[str] | None = None, recursive: bool = True,
                 operator: Operator | None = None, batch_size: int = 1, num_workers: int = 0, seed: int = 0,
                 max_items: int | None = None):
        super().__init__(root, resolution, channels, num_val, hflip, operator, batch_size, num_workers, seed,
                         max_items)
        self.eval_first, self.predict_ids = eval_first, predict_ids
        self.extensions = tuple(extensions) if extensions else IMAGE_EXTENSIONS
        self.recursive = recursive

    def _collect(self) -> None:
        files = list_images(self.root, self.extensions, self.recursive)
        if not files:
            raise ValueError(f"ImageFolderDataModule: no images ({', '.join(self.extensions)}) in {str(self.root)!r}; "
                             f"check data.init_args.root (for super-resolution data run "
                             f"scripts/prepare_super_resolution_dataset.py).")
        ids = unique_ids(files, self.root)
        self._ids = dict(zip(files, ids))
        chosen = select_eval(ids, self.eval_first, self.predict_ids)
        self._predict = [files[i] for i in chosen]
        named = self.eval_first is not None or self.predict_ids is not None
        held = set(chosen) if named else set()
        self._split_fit([f for i, f in enumerate(files) if i not in held])


class ImageManifestDataModule(_ImageDataModule):
    """Images listed in manifests under ``root`` (``scripts/prepare_super_resolution_dataset.py``).

    Args:
        root: data root; manifest entries are relative to it.
        train_manifest, test_manifest, val_manifest: manifest files (relative to ``root`` unless absolute);
            ``val_manifest`` None: the last ``num_val`` training images validate.
        resolution, channels, num_val, hflip, operator, batch_size, num_workers, seed, max_items: as in
            :class:`ImageFolderDataModule`.
    """

    def __init__(self, root: str = "data/super_resolution", train_manifest: str = "train_images.txt",
                 test_manifest: str = "test_images.txt", val_manifest: str | None = None, resolution: int = 256,
                 channels: int = 3, num_val: int = 0, hflip: bool = True, operator: Operator | None = None,
                 batch_size: int = 1, num_workers: int = 0, seed: int = 0, max_items: int | None = None):
        super().__init__(root, resolution, channels, num_val, hflip, operator, batch_size, num_workers, seed,
                         max_items)
        self.train_manifest, self.test_manifest, self.val_manifest = train_manifest, test_manifest, val_manifest

    def _manifest(self, name: str | None, needed: bool) -> list[Path]:
        if name is None:
            return []
        path = Path(name) if Path(name).is_absolute() else self.root / name
        if not path.is_file() and not needed:
            return []
        paths = read_path_list(path, self.root)
        if not paths:
            raise ValueError(f"ImageManifestDataModule: manifest {str(path)!r} lists no images; re-run "
                             f"scripts/prepare_super_resolution_dataset.py or check data.init_args.root.")
        return paths

    def _no_predict_message(self) -> str:
        return (f"ImageManifestDataModule: no test manifest {self.test_manifest!r} in {str(self.root)!r}; run "
                f"scripts/prepare_super_resolution_dataset.py or set data.init_args.test_manifest.")

    def train_dataset(self) -> Dataset:
        self.setup()
        if not self._train:
            raise ValueError(f"ImageManifestDataModule: no training images: {self.train_manifest!r} is missing or "
                             f"holds only validation images in {str(self.root)!r}; run "
                             f"scripts/prepare_super_resolution_dataset.py or set data.init_args.train_manifest.")
        return super().train_dataset()

    def _collect(self) -> None:
        if not self.root.is_dir():
            raise ValueError(f"ImageManifestDataModule: data folder {str(self.root)!r} does not exist; run "
                             f"scripts/prepare_super_resolution_dataset.py or check data.init_args.root.")
        has_train = (self.root / self.train_manifest).is_file() or Path(self.train_manifest).is_file()
        has_test = (self.root / self.test_manifest).is_file() or Path(self.test_manifest).is_file()
        if not (has_train or has_test):
            raise ValueError(f"ImageManifestDataModule: neither {self.train_manifest!r} nor {self.test_manifest!r} "
                             f"exists in {str(self.root)!r}; run scripts/prepare_super_resolution_dataset.py or "
                             f"check data.init_args.root.")
        self._predict = self._manifest(self.test_manifest, needed=False)
        train = self._manifest(self.train_manifest, needed=False)
        if self.val_manifest is not None:
            self._train, self._val = train, self._manifest(self.val_manifest, needed=True)
        else:
            self._split_fit(train)
        every = list(dict.fromkeys(self._predict + self._train + self._val))
        self._ids = dict(zip(every, unique_ids(every, self.root)))

"""Small pieces shared by the datasets: training-set wrappers, the DataLoader settings used for ``fit``,
and atomic writes of cached arrays."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


class MapDataset(Dataset):
    """``x = load(key)`` for a list of keys, then an optional random ``augment(x)`` (training only)."""

    def __init__(self, keys: Sequence, load: Callable[[object], Tensor],
                 augment: Callable[[Tensor], Tensor] | None = None):
        self.keys, self.load, self.augment = list(keys), load, augment

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Tensor:
        x = self.load(self.keys[index])
        return self.augment(x) if self.augment is not None else x


def fit_loader(dataset: Dataset, batch_size: int, num_workers: int, train: bool) -> DataLoader | list:
    """The DataLoader of a training (shuffled, last incomplete batch dropped when there is more than one
    batch) or validation (in order, everything) set of image tensors ``[C, H, W]`` -> ``[B, C, H, W]``.
    An empty validation set gives ``[]`` (Lightning then skips validation); an empty training set raises."""
    if len(dataset) == 0:
        if not train:
            return []
        raise ValueError("the training set is empty; check the data folder and the num_train / num_val / "
                         "eval_first / predict_ids settings of data.init_args.")
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=num_workers,
                      drop_last=train and len(dataset) > batch_size, persistent_workers=num_workers > 0)


def random_flips(x: Tensor, horizontal: bool = True, vertical: bool = False, rot90: bool = False) -> Tensor:
    """Random mirror images / quarter turns of ``[C, H, W]`` (torch's global RNG, which DataLoader
    workers seed per worker)."""
    if horizontal and torch.rand(()) < 0.5:
        x = x.flip(-1)
    if vertical and torch.rand(()) < 0.5:
        x = x.flip(-2)
    if rot90:
        x = torch.rot90(x, int(torch.randint(4, ())), dims=(-2, -1))
    return x


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

"""Shared plumbing of the inverse-problem DataModules.

A problem DataModule owns the ground truth and the forward model (operator + noise). For ``predict``
it yields items ``{"id": str, "x_true": [C, H, W], "y_obs": [...]}`` where the measurement is made from
the truth by ``operator.for_sample(id).measure(x_true, generator)`` with a generator seeded by
``(seed, id)``: every rank, worker and re-run sees the same measurement for the same id.
The solving LightningModule takes the operator from ``trainer.datamodule.operator``.
"""
from __future__ import annotations

import zlib
from typing import Callable, Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.resumable import training_loader
from diffinv.datasets.common import fit_loader
from diffinv.operators import Operator


def sample_seed(seed: int, sample_id: str) -> int:
    """A stable 63-bit seed for one sample id (independent of Python's hash randomisation)."""
    return (int(seed) * 1_000_003 + zlib.crc32(str(sample_id).encode())) % (2**63 - 1)


def operator_for(operator: Operator, sample_id: str) -> Operator:
    """The operator of one sample (random masks / kernels drawn from the id)."""
    return operator.for_sample(zlib.crc32(str(sample_id).encode()))


class MeasuredDataset(Dataset):
    """Wraps a dataset of ``(id, x_true)`` pairs and adds the seeded measurement."""

    def __init__(self, truth: Dataset, operator: Operator, seed: int = 0):
        self.truth, self.operator, self.seed = truth, operator, seed

    def __len__(self) -> int:
        return len(self.truth)

    def __getitem__(self, index: int) -> dict:
        sample_id = str(self.item_id(index))
        try:
            _, x = self.truth[index]
            g = torch.Generator().manual_seed(sample_seed(self.seed, sample_id))
            y = operator_for(self.operator, sample_id).measure(x[None].float(), g)[0]
        except Exception as err:     # noqa: BLE001 - one unreadable item is that item's failure, not the run's
            return {"id": sample_id, "error": f"{type(err).__name__}: {err}"}
        return {"id": sample_id, "x_true": x.float(), "y_obs": y}

    def item_id(self, index: int) -> str:
        """The id of item ``index`` without loading it (``TensorItems`` and subsets of it know their ids)."""
        truth, i = self.truth, index
        while isinstance(truth, torch.utils.data.Subset):
            truth, i = truth.dataset, truth.indices[i]
        if isinstance(truth, TensorItems):
            return truth.ids[i]
        return self.truth[index][0]


class TensorItems(Dataset):
    """``(id, x)`` pairs from a list of ids and a loader function (lazy: nothing is read up front)."""

    def __init__(self, ids: Sequence[str], load: Callable[[str], Tensor]):
        self.ids, self.load = list(ids), load

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.ids[index], self.load(self.ids[index])


def collate_items(items: list[dict]) -> dict:
    """A batch ``{"id": [...], "x_true": [B, ...], "y_obs": [B, ...]}``; when some item could not be loaded,
    ``x_true`` / ``y_obs`` are lists (None for that item) and ``error`` lists each item's error or None."""
    batch = {"id": [it["id"] for it in items]}
    if any("error" in it for it in items):
        batch.update(error=[it.get("error") for it in items], x_true=[it.get("x_true") for it in items],
                     y_obs=[it.get("y_obs") for it in items])
        return batch
    return {**batch, "x_true": torch.stack([it["x_true"] for it in items]),
            "y_obs": torch.stack([it["y_obs"] for it in items])}


class InverseProblemDataModule(LightningDataModule):
    """Base class. Subclasses implement ``predict_truth() -> Dataset of (id, x_true)`` (and, for ``fit``,
    ``train_dataset()`` / ``val_dataset()`` of ``x`` tensors). ``operator`` is None for pure training use."""

    def __init__(self, operator: Operator | None = None, batch_size: int = 1, num_workers: int = 0, seed: int = 0,
                 max_items: int | None = None):
        super().__init__()
        self.operator = operator
        self.batch_size, self.num_workers, self.seed, self.max_items = batch_size, num_workers, seed, max_items

    # ---- fit
    def train_dataset(self) -> Dataset:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} provides no training data")

    def val_dataset(self) -> Dataset:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} provides no validation data")

    def train_dataloader(self) -> DataLoader:
        # order and augmentation resume exactly from a checkpoint (datamodules.resumable)
        return training_loader(self.train_dataset(), self.batch_size, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return fit_loader(self.val_dataset(), self.batch_size, self.num_workers, train=False)

    # ---- predict
    def predict_truth(self) -> Dataset:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_dataset(self) -> MeasuredDataset:
        if self.operator is None:
            raise ValueError(f"{type(self).__name__}: predict needs a forward model; set data.init_args.operator "
                             f"(see configs/problem/*.yaml).")
        truth = self.predict_truth()
        if self.max_items is not None:
            truth = torch.utils.data.Subset(truth, range(min(self.max_items, len(truth))))
        if len(truth) == 0:
            raise ValueError(f"{type(self).__name__}: no items to predict; check the data folder / split settings.")
        return MeasuredDataset(truth, self.operator, self.seed)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.predict_dataset(), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=collate_items)

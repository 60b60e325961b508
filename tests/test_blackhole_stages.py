"""Synthetic black holes: each Lightning stage generates only the splits it reads (predict never makes the
training set), run through a real Trainer."""
from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

from datamodules.blackhole import BlackHoleDataModule
from diffinv.datasets.blackhole_synthetic import SyntheticBlackHoles

N = 16
COUNTS = dict(num_train=40, num_val=3, num_test=2)


class _Probe(LightningModule):
    """Reads its batches and does nothing else."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return (self.w * batch.mean()) ** 2 + self.w ** 2

    def validation_step(self, batch, batch_idx):
        pass

    def predict_step(self, batch, batch_idx):
        return batch["id"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture
def generated(monkeypatch):
    """Counts the synthetic images generated, per split."""
    counts: dict[str, int] = {}
    original = SyntheticBlackHoles.image

    def image(self, split, index):
        counts[split] = counts.get(split, 0) + 1
        return original(self, split, index)

    monkeypatch.setattr(SyntheticBlackHoles, "image", image)
    return counts


def _trainer(tmp_path, **kw):
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=str(tmp_path), **kw)


def _datamodule(tmp_path, **kw):
    from diffinv.operators.blackhole import BlackHoleImaging

    return BlackHoleDataModule(root=None, resolution=N, synthetic_dir=str(tmp_path / "cache"), batch_size=2,
                               operator=BlackHoleImaging(npix=N, tadv_s=3600.0), **COUNTS, **kw)


def _cached_splits(tmp_path) -> list[str]:
    return sorted(p.name.split("-")[0] for p in (tmp_path / "cache").glob("*.npy"))


def test_predict_generates_only_the_predicted_split(tmp_path, generated):
    ids = _trainer(tmp_path).predict(_Probe(), datamodule=_datamodule(tmp_path))
    assert [i for batch in ids for i in batch] == ["bh-test-00000", "bh-test-00001"]
    assert generated == {"test": 2}
    assert _cached_splits(tmp_path) == ["test"]


def test_predict_of_another_split_and_without_a_trainer(tmp_path, generated):
    dm = _datamodule(tmp_path, split="val", max_items=1)
    assert len(dm.predict_dataset()) == 1
    assert generated == {"val": 3} and _cached_splits(tmp_path) == ["val"]


def test_fit_generates_train_and_val_only(tmp_path, generated):
    _trainer(tmp_path, max_steps=2, limit_val_batches=1, num_sanity_val_steps=0).fit(_Probe(), datamodule=_datamodule(tmp_path))
    assert generated == {"train": 40, "val": 3}
    assert _cached_splits(tmp_path) == ["train", "val"]


def test_prepare_data_outside_a_trainer_makes_every_split(tmp_path, generated):
    _datamodule(tmp_path).prepare_data()
    assert generated == {"train": 40, "val": 3, "test": 2}

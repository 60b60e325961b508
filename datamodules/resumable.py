"""Training data whose order and augmentation resume exactly after an interruption.

``diffinv fit --ckpt_path last`` continues a run from its last checkpoint. For the continued run to equal an
uninterrupted one, everything random must be a function of where training is, not of what ran before:

* :class:`ResumableSampler` (a ``DistributedSampler``, so Lightning leaves it in place under DDP and calls
  ``set_epoch``): epoch ``e`` visits ``randperm(n, seed + e)``, each rank its own stride of it, and yields
  ``(index, sample seed)`` pairs, the seed being a function of ``(seed, e, position)``;
* :class:`SeededItems` draws item ``index`` with the global RNG seeded by that sample seed (and restored
  after), so random augmentations (flips, periodic shifts) are the same whenever the item comes up;
* :class:`ResumableLoader` counts the batches it has handed out in the current epoch; Lightning stores
  ``state_dict()`` in the checkpoint and calls ``load_state_dict`` on resume, and the sampler then skips what
  the interrupted epoch already consumed (batches are complete: the loader drops the last partial one).

The per-step randomness of the training modules (noise levels and noise of the loss, dropout) is seeded the
same way, from the global step (``lightning_modules.prior_training.step_rng``).
"""
from __future__ import annotations

import os
import zlib

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def run_seed() -> int:
    """The run's seed (``seed_everything``; Lightning keeps it in ``PL_GLOBAL_SEED``), 0 when unset."""
    value = os.environ.get("PL_GLOBAL_SEED", "")
    return int(value) if value.lstrip("-").isdigit() else 0


def sample_seed(seed: int, epoch: int, position: int) -> int:
    return zlib.crc32(f"{seed},{epoch},{position}".encode())


class ResumableSampler(DistributedSampler):
    """See the module docstring; ``skip`` samples of this rank's share are left out of the next iteration."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        super().__init__(dataset, num_replicas=torch.distributed.get_world_size() if dist else 1,
                         rank=torch.distributed.get_rank() if dist else 0, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self):
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        mine = range(self.rank, self.total_size, self.num_replicas)[self.skip:]
        self.skip = 0
        for pos in mine:
            yield int(order[pos]), sample_seed(self.seed, self.epoch, pos)


class SeededItems(Dataset):
    """``dataset[index]`` drawn with the global RNG seeded by the sample seed (see the module docstring)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class ResumableLoader(DataLoader):
    """A shuffling training DataLoader over ``dataset`` (``[C, H, W]`` tensors or anything the default collate
    takes) whose position is saved in checkpoints (see the module docstring). The last partial batch is
    dropped when there is more than one batch, so that every step sees ``batch_size`` items."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, num_workers: int = 0, **kwargs):
        self.resumable_sampler = ResumableSampler(dataset, seed=seed)
        super().__init__(SeededItems(dataset), batch_size=batch_size, sampler=self.resumable_sampler,
                         drop_last=len(self.resumable_sampler) > batch_size, num_workers=num_workers,
                         persistent_workers=num_workers > 0, **kwargs)
        self._batches = 0
        self._resume: tuple[int, int] | None = None     # (epoch, batches done) from a checkpoint

    def __iter__(self):
        sampler, self._batches = self.resumable_sampler, 0
        if self._resume is not None and self._resume[0] == sampler.epoch and self._resume[1] < len(self):
            self._batches = self._resume[1]
            sampler.skip = self._batches * self.batch_size
        self._resume = None
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict:
        s = self.resumable_sampler
        return {"epoch": int(s.epoch), "batches": int(self._batches), "seed": int(s.seed), "size": len(s.dataset)}

    def load_state_dict(self, state: dict) -> None:
        s = self.resumable_sampler
        if (int(state.get("seed", s.seed)), int(state.get("size", len(s.dataset)))) != (s.seed, len(s.dataset)):
            raise ValueError(f"the checkpoint's training data were {state.get('size')} items shuffled with seed "
                             f"{state.get('seed')}, this run's are {len(s.dataset)} with seed {s.seed}: resuming would "
                             f"not continue the same order. Resume with the same data settings and seed.")
        s.set_epoch(int(state["epoch"]))
        self._resume = (int(state["epoch"]), int(state["batches"]))


def training_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, seed: int | None = None) -> ResumableLoader:
    """The training DataLoader of the diffinv DataModules (``seed`` None: the run's seed); an empty set raises."""
    if len(dataset) == 0:
        raise ValueError("the training set is empty; check the data folder and the num_train / num_val / "
                         "eval_first / predict_ids settings of data.init_args.")
    return ResumableLoader(dataset, batch_size, seed=run_seed() if seed is None else seed, num_workers=num_workers)

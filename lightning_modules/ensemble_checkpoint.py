"""``<id>.ensemble.pt``: the ensemble of an item being solved, saved every ``checkpoint_every`` sampler steps
(``model.init_args.checkpoint_every``), so that a pre-empted ``diffinv predict`` (SIGTERM, SIGKILL, a lost node)
resumes the item where it was instead of from its first step.

The state is the sampler's (``diffinv.samplers.resume``: next step, the whole ensemble, the generator's state, the
cost so far) plus a fingerprint of the run's settings and the id; it is written atomically
(``output_folder.atomic_write``) by the rank that solves the item, or under ``sample_parallel`` (``shared``) by
rank 0 only and read by every rank when the item starts (all ranks must read the same step, else the run stops). A state with another fingerprint (other settings) is ignored, and so is
every state under ``overwrite``. The PredictionWriter removes the file once the item is complete or recorded as
failed.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from .output_folder import atomic_write
from .sample_parallel import all_ranks

log = logging.getLogger(__name__)

SUFFIX = ".ensemble.pt"


def fingerprint(signature: dict[str, Any], sample_id: str) -> str:
    text = json.dumps({"run": signature, "id": sample_id}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class EnsembleCheckpoint:
    """The checkpoint store of one item (the protocol of ``diffinv.samplers.resume``)."""

    def __init__(self, path: Path, every: int, fingerprint: str, write: bool = True, ignore_saved: bool = False,
                 event: Callable[[str, str], None] | None = None, shared: bool = False):
        self.path, self.every, self.fingerprint = Path(path), int(every), fingerprint
        self.write, self.ignore_saved, self.event, self.shared = write, ignore_saved, event, shared
        self.saves = 0

    def load(self) -> dict | None:
        state = None if self.ignore_saved else self._read()
        steps = all_ranks(None if state is None else int(state["step"])) if self.shared else []
        if len(set(steps)) > 1:
            raise RuntimeError(f"the ranks read different ensemble checkpoints from {self.path} (steps {steps}): the "
                               f"output folder must be the same shared folder on every node")
        if state is not None:
            log.info("resuming %s from its ensemble checkpoint at step %d", self.path.name, state["step"])
            if self.event is not None:
                self.event("resumed", f"{self.path.name[: -len(SUFFIX)]} at step {state['step']}")
        return state

    def _read(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:      # noqa: BLE001 - an unreadable checkpoint means starting the item again
            log.warning("ignoring the unreadable ensemble checkpoint %s (%s: %s)", self.path, type(err).__name__, err)
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            log.warning("ignoring %s: it was saved by a run with other settings", self.path)
            return None
        return state

    def save(self, state: dict) -> None:
        self.saves += 1
        if self.write:
            atomic_write(self.path, lambda f: torch.save({**state, "fingerprint": self.fingerprint}, f))

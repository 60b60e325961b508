"""Lightning's ``TensorBoardLogger`` with ``save_dir`` optional in configs, so that logs follow the run.

The ``diffinv`` CLI fills a missing ``save_dir`` in before building the logger: ``trainer.default_root_dir`` for
``fit``, the prediction folder for ``predict`` (``lightning_modules.cli``). Defaults: ``name="tensorboard"``,
no placeholder ``hp_metric``.
"""
from __future__ import annotations

from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger


class TensorBoardLogger(_LightningTensorBoardLogger):
    def __init__(self, save_dir: str | None = None, name: str | None = "tensorboard", default_hp_metric: bool = False,
                 **kwargs):
        if save_dir is None:
            raise ValueError("TensorBoardLogger: no save_dir. The diffinv command line sets it from "
                             "trainer.default_root_dir; from Python, pass save_dir.")
        super().__init__(save_dir, name=name, default_hp_metric=default_hp_metric, **kwargs)

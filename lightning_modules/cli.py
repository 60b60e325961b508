"""The ``diffinv`` command: LightningCLI with ``fit``, ``validate``, ``test`` and ``predict``.

Configs compose in the order given (DESIGN.md section 6)::

    diffinv fit --config configs/prior/ns_64.yaml
    diffinv predict --config configs/prior/X.yaml --config configs/problem/Y.yaml --config configs/sampler/Z.yaml
"""
from __future__ import annotations

import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class DiffinvCLI(LightningCLI):
    pass


def main(args: list[str] | None = None) -> None:
    DiffinvCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf"},
        args=args,
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main(sys.argv[1:])

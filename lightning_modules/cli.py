"""The ``diffinv`` command: LightningCLI with ``fit``, ``validate``, ``test`` and ``predict``.

Configs compose in the order given (DESIGN.md section 6)::

    diffinv fit --config configs/prior/ns_64.yaml
    diffinv predict --config configs/prior/X.yaml --config configs/problem/Y.yaml --config configs/sampler/Z.yaml
"""
from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class DiffinvCLI(LightningCLI):
    def _parse_ckpt_path(self) -> None:
        # LightningCLI merges a checkpoint's saved hyper-parameters (including their ``_class_path``) over the
        # config on ``--ckpt_path``. For ``predict`` that would turn the InverseProblemSolver back into the
        # training module of a prior checkpoint and override sampler / problem settings (REFERENCES.md,
        # "Lightning 2.6 facts"), so predict only loads the weights; fit / validate / test keep the merge.
        if self.config.get("subcommand") == "predict":
            return
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        # jsonargparse wraps an error raised while building a class (a missing checkpoint, a bad operator
        # setting) in "Does not validate against any of the Union subtypes" errors, one per Optional level:
        # raise the original error, whose message names the problem and its fix.
        try:
            super().instantiate_classes()
            return
        except ValueError as err:
            root = err
            while root.__cause__ is not None:
                root = root.__cause__
            if root is err:
                raise
        raise root      # outside the except block: no cycle through __context__


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
    main()

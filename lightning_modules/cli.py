"""The ``diffinv`` command: LightningCLI with two subcommands, ``fit`` (train a prior) and ``predict`` (solve).

Configs compose in the order given (any order for predict: every file names the same model class)::

    diffinv fit --config configs/fit/ns64.yaml
    diffinv predict --config configs/prior/ns64.yaml --config configs/problem/ns_sub4.yaml \\
        --config configs/sampler/enkg.yaml

What the CLI adds to LightningCLI:

* ``--threads N``: torch's intra-op threads (default: ``threads.default_threads``, measured, see there);
* configs are checked for their role: a ``configs/fit`` file (a training module) given to ``predict``, or a
  predict file given to ``fit``, is refused with the file named, instead of silently changing the model class
  or leaking training settings into the run;
* ``predict --ckpt_path`` is refused: a prior's weights go in the prior config's ``checkpoint``;
* outputs follow ``trainer.default_root_dir``: a TensorBoard logger without ``save_dir`` logs under it for
  ``fit`` and in the prediction folder itself for ``predict`` (``tensorboard/version_N`` next to the
  results); a ``ModelCheckpoint`` without ``dirpath`` saves to ``<default_root_dir>/checkpoints`` (one fixed
  folder, so that ``--ckpt_path last`` finds ``last.ckpt``). A run that fails before logging anything leaves
  no empty ``version_N`` folder behind;
* an error raised while building a class (a missing or unreadable checkpoint, a bad operator setting) is
  shown with diffinv's own message, not jsonargparse's wrappers nor the library error underneath;
* ``predict`` with ``--model.init_args.sample_parallel true`` (every rank works on every item) sets
  ``trainer.use_distributed_sampler`` to false, so that every rank sees every item.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from .output_folder import default_output_dir
from .threads import apply_threads

PROJECT = Path(__file__).resolve().parents[1]
TRAINING_MODULES = ("lightning_modules.prior_training.PriorTraining",
                    "lightning_modules.latent_training.LatentPriorTraining")
SOLVER = "lightning_modules.solver.InverseProblemSolver"


def _get(ns: Any, key: str, default=None):
    if ns is None:
        return default
    return ns.get(key, default) if hasattr(ns, "get") else getattr(ns, key, default)


def _config_files(args: list[str]) -> list[str]:
    """The files of ``--config X`` / ``--config=X`` / ``-c X`` in a command line."""
    out = []
    for i, a in enumerate(args):
        if a in ("--config", "-c") and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith("--config="):
            out.append(a.split("=", 1)[1])
    return out


def _own_error(err: BaseException) -> BaseException:
    """The deepest exception of the ``__cause__`` chain raised by this project's code (its message names the
    problem and the fix), else the root cause."""
    chain = [err]
    while chain[-1].__cause__ is not None and len(chain) < 50:
        chain.append(chain[-1].__cause__)
    for exc in reversed(chain):
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PROJECT) \
                and ".venv" not in tb.tb_frame.f_code.co_filename:
            return exc
    return chain[-1]


class DiffinvCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # validate / test are not offered: priors are judged by their validation loss during fit, inverse
        # problems by the metrics of predict; neither module has test / validation steps for them
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
                "predict": {"model", "dataloaders", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--threads", type=int | None, default=None,
                            help="torch intra-op threads (default: measured choice, see lightning_modules/threads.py; "
                                 "OMP_NUM_THREADS also sets it)")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI merges a checkpoint's saved hyper-parameters (including their class path) over the config
        # on --ckpt_path: for predict that would turn the solver back into a prior's training module. Predict
        # never restores a LightningModule checkpoint (the solver has no trained state of its own): refused.
        sub = self.config.get("subcommand")
        if sub == "predict":
            if self.config["predict"].get("ckpt_path"):
                self._fail("predict", f"--ckpt_path {self.config['predict']['ckpt_path']} restores a LightningModule, "
                           "but predict builds its prior from the prior config. Give the prior's weights as "
                           "--model.init_args.checkpoint <file> (pixel priors: configs/prior/ns64.yaml, ...) or "
                           "--model.init_args.prior.init_args.checkpoint <file> (latent priors: "
                           "configs/prior/ffhq_ldm_vq4.yaml); a `diffinv fit` last.ckpt works there too.")
            return
        super()._parse_ckpt_path()

    def _fail(self, sub: str, message: str) -> None:
        parsers = getattr(self, "_subcommand_parsers", None) or {}
        (parsers.get(sub) or self.parser).error(message)

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        raw = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        sub = next((a for a in raw if a in self.subcommands()), None)
        if sub is not None:
            self._check_config_roles(sub, _config_files(raw))     # before parsing: the mix may not even parse
        super().parse_arguments(parser, args)

    def _check_config_roles(self, sub: str, paths: list[str]) -> None:
        """Refuse configs of the other subcommand (see the module docstring)."""
        for path in paths:
            try:
                cfg = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError):
                continue        # the parser reports it
            cls = ((cfg.get("model") or {}) if isinstance(cfg, dict) else {}).get("class_path")
            if sub == "predict" and cls in TRAINING_MODULES:
                self._fail(sub, f"{path} is a training config (model {cls.rsplit('.', 1)[1]}, for `diffinv fit`); "
                           f"predict takes a prior config instead, which holds only the network, its checkpoint and "
                           f"its parameterisation: configs/prior/<name>.yaml (training configs are in configs/fit/).")
            if sub == "fit" and cls == SOLVER:
                self._fail(sub, f"{path} is a predict config (model InverseProblemSolver); `diffinv fit` trains a "
                           f"prior from a training config: configs/fit/<name>.yaml.")

    @staticmethod
    def _place_outputs(cfg, sub: str) -> None:
        """Logs and checkpoints without a folder go where the run writes (module docstring)."""
        trainer = _get(cfg, "trainer")
        for cb in _get(trainer, "callbacks") or []:
            args = _get(cb, "init_args")
            if str(_get(cb, "class_path", "")).endswith("ModelCheckpoint") and args is not None \
                    and _get(args, "dirpath") is None:
                args["dirpath"] = str(Path(_get(trainer, "default_root_dir") or ".") / "checkpoints")
        loggers = _get(trainer, "logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            path = str(_get(logger, "class_path", "") or "")
            args = _get(logger, "init_args")
            if not path.endswith("TensorBoardLogger") or args is None or _get(args, "save_dir") is not None:
                continue
            root = _get(trainer, "default_root_dir") or "."
            if sub == "predict":
                sampler = str(_get(_get(_get(_get(cfg, "model"), "init_args"), "sampler"), "class_path", "") or "")
                requested = None
                for cb in _get(trainer, "callbacks") or []:
                    if str(_get(cb, "class_path", "")).endswith("PredictionWriter"):
                        requested = _get(_get(cb, "init_args"), "output_dir")
                root = str(default_output_dir(root, sampler.rsplit(".", 1)[-1] or None, requested))
            args["save_dir"] = root

    @staticmethod
    def _share_items(cfg) -> None:
        """sample_parallel: every rank sees every item (module docstring)."""
        if _get(_get(_get(cfg, "model"), "init_args"), "sample_parallel") and _get(cfg, "trainer") is not None:
            cfg["trainer"]["use_distributed_sampler"] = False

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        cfg = self.config if sub is None else self.config[sub]      # no subcommand: run=False, a fit config
        self._place_outputs(cfg, sub or "fit")
        if sub == "predict":
            self._share_items(cfg)
        apply_threads(cfg.get("threads"))

    def instantiate_classes(self) -> None:
        # jsonargparse wraps an error raised while building a class in "Does not validate against any of the
        # Union subtypes" errors (one per Optional level), around the library error that started it: raise the
        # project's own message.
        try:
            super().instantiate_classes()
            return
        except ValueError as err:
            own = _own_error(err)
            if own is err:
                raise
        raise own       # outside the except block: no cycle through __context__

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            for logger in self.trainer.loggers:
                _remove_if_empty(logger)
            raise


def _remove_if_empty(logger) -> None:
    """Remove a TensorBoard version folder in which nothing was logged (a run that failed before its first
    value: Lightning creates the event file, config.yaml and hparams.yaml while setting up)."""
    if not isinstance(logger, TensorBoardLogger):
        return
    folder = Path(logger.log_dir)
    if not folder.is_dir():
        return
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for events in folder.rglob("events.out.tfevents*"):
        try:
            if any(e.HasField("summary") and len(e.summary.value) for e in EventFileLoader(str(events)).Load()):
                return
        except Exception:       # noqa: BLE001 - unreadable: keep the folder
            return
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()        # the logger's folder, when this was its only version
    except OSError:
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
    sys.exit(main())

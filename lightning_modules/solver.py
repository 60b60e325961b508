"""``InverseProblemSolver``: the LightningModule behind ``diffinv predict``.

It holds a prior and a sampler (``diffinv.samplers``); the forward model comes from the DataModule
(``trainer.datamodule.operator``) unless ``operator`` overrides it. Before any sampling (``setup``) it
checks that the prior makes inputs of the operator's shape, that the sampler can run on this operator and
prior (``Sampler.check``) and that the metric names exist. ``predict_step`` then solves each item of the
batch on its own: the item's operator (``operator_for(operator, id)``: random masks / kernels drawn from
the id), one sampler call for ``num_samples`` posterior draws with a generator seeded from ``(seed, id)``,
the posterior mean and std (``posterior_stats``), the metrics (``diffinv.metrics``), the sampler's cost and
the wall time. Items whose results are already complete on disk (asked of the ``PredictionWriter``) are
skipped before sampling, so a re-run redoes nothing. Data-parallel (the default under DDP: each rank its own
items), ``predict_step`` calls no collectives (Lightning's predict sampler may give ranks unequal numbers of
batches). With ``sample_parallel`` every rank works on every item instead and shares its draws
(``sample_parallel.py``): an independent sampler's draws are split over the ranks in blocks, an ensemble sampler's
particles (EnKG, EKI) are split over them, and rank 0 gathers the draws and returns the item (the others return a
``shared`` marker, so the writer writes it once). ``checkpoint_every`` saves a resumable sampler's ensemble every
that many steps (``ensemble_checkpoint.py``).

The run's settings (``run_signature``: sampler and its arguments, samples, seeds, prior, checkpoint, operator)
become its hyper-parameters in ``setup``, for the loggers only (hparams.yaml, TensorBoard's HPARAMS view):
predict saves no checkpoint, and the CLI refuses ``--ckpt_path``, so nothing is ever merged from a prior
checkpoint's hyper-parameters.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import signal
import threading
import time
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from datamodules.base import operator_for
from diffinv.calibration import calibration
from diffinv.metrics import check_metric_names, default_metrics, problem_kind
from diffinv.metrics import evaluate as evaluate_metrics
from diffinv.operators.base import Operator
from diffinv.priors.base import Prior
from diffinv.priors.description import check_problem
from diffinv.priors.pixel import PixelPrior
from diffinv.samplers.base import Sampler, posterior_stats, real_dtype
from diffinv.samplers.particles import ShardedParticles
from diffinv.samplers.smc import ess_summary

from . import sample_parallel as sp
from .diagnosis import Trajectory, failure_record, misfit_check
from .ensemble_checkpoint import SUFFIX, EnsembleCheckpoint, fingerprint
from .panels import measurement_view, panel_info

log = logging.getLogger(__name__)


def prior_data_shape(prior: Prior) -> tuple[int, ...]:
    """The shape of what the prior generates in data space (the operator's input): ``event_shape`` for pixel
    priors; for latent priors their decoded shape (``image_shape`` / ``data_shape``, else one decode)."""
    for attr in ("image_shape", "data_shape"):
        if getattr(prior, attr, None) is not None:
            return tuple(int(s) for s in getattr(prior, attr))
    if hasattr(prior, "encode") and hasattr(prior, "decode"):
        with torch.no_grad():
            ref = next(iter(prior.parameters()), None)
            z = torch.zeros((1, *prior.event_shape), device=None if ref is None else ref.device)
            return tuple(int(s) for s in prior.decode(z).shape[1:])
    return tuple(prior.event_shape)


def check_shapes(prior: Prior, operator: Operator) -> None:
    """Fail before sampling when the prior's samples are not valid operator inputs."""
    got, want = prior_data_shape(prior), tuple(operator.input_shape)
    if got == want:
        return
    pname, oname = type(prior).__name__, type(operator).__name__
    detail = ""
    if len(got) == 3 and len(want) == 3:
        detail = (f" (channels {got[0]} vs {want[0]}, resolution {got[1]}x{got[2]} vs {want[1]}x{want[2]})")
    ckpt = getattr(prior, "checkpoint", None)
    raise ValueError(
        f"the prior {pname}{f' ({ckpt})' if ckpt else ''} generates {list(got)} but the problem's operator {oname} "
        f"takes {list(want)}{detail}. Use a prior trained for this problem (another configs/prior/*.yaml or "
        f"checkpoint), or set the problem to the prior's shape (the operator's input_shape / resolution / npix "
        f"and the DataModule's image size = {list(got)}).")


class InverseProblemSolver(LightningModule):
    """Posterior sampling over a DataModule of inverse problems.

    Args:
        prior: the diffusion prior (``diffinv.priors``; e.g. ``PixelPrior`` with its checkpoint).
        sampler: the algorithm with its hyperparameters (``diffinv.samplers.*``).
        num_samples: posterior draws per measurement, made in one sampler call (for EnKG: the ensemble).
        seed: seeds each item's generator with ``sample_seed(seed, id + "/sampler")`` (independent of the
            measurement noise, which the DataModule seeds with ``sample_seed(data seed, id)``).
        metrics: metric names (``diffinv.metrics.METRICS``); ``None`` picks the problem family's defaults.
        operator: a forward model overriding the DataModule's ``operator``.
        progress_bar: show an inner progress bar over the sampler's steps (rank 0 only).
        on_failure: an item whose solve fails (sampler divergence, forward-model blow-up, unreadable data):
            ``"continue"`` records it (``<id>.failed.json``, counted in the summary) and goes on with the next;
            ``"stop"`` records it and ends the run with its message.
        network, checkpoint, parameterization: instead of ``prior``, what a ``configs/prior/*.yaml`` prior config
            gives: the network and the weights to load into it; the prior is then
            ``PixelPrior(network, checkpoint, parameterization)``.
        sample_parallel: every rank works on every item, each making its share of the ``num_samples`` draws (an
            ensemble sampler: its share of the particles); rank 0 writes the item (``sample_parallel.py``). Needs
            every rank to see every item (``--trainer.use_distributed_sampler false``; the CLI sets it).
        samples_per_call: draws per sampler call (blocks with their own generator streams); ``None``:
            ``num_samples`` (one call), or 1 under ``sample_parallel``. The draws depend on it, never on the number
            of ranks. Ensemble samplers take all their particles in one call.
        checkpoint_every: save the ensemble of a resumable sampler (EnKG) every this many steps, per item, in
            ``<id>.ensemble.pt`` next to the results; a re-run resumes the item from it with the same result as an
            uninterrupted run. ``None``: no checkpoints.
    """

    def __init__(self, prior: Prior | None = None, sampler: Sampler | None = None, num_samples: int = 4,
                 seed: int = 0, metrics: list[str] | None = None, operator: Operator | None = None,
                 progress_bar: bool = True, on_failure: str = "continue", network: torch.nn.Module | None = None, checkpoint: str | None = None,
                 parameterization: str = "auto", sample_parallel: bool = False, samples_per_call: int | None = None,
                 checkpoint_every: int | None = None):
        super().__init__()
        if sampler is None:
            raise ValueError("InverseProblemSolver: no sampler; add a sampler config "
                             "(--config configs/sampler/<algorithm>.yaml) or set model.init_args.sampler.")
        if not isinstance(sampler, Sampler):
            raise ValueError(f"InverseProblemSolver: sampler must be a diffinv.samplers Sampler, got "
                             f"{type(sampler).__name__}.")
        if prior is None:
            if network is None:
                raise ValueError("InverseProblemSolver: no prior; put a prior config first (--config "
                                 "configs/prior/<prior>.yaml) or set model.init_args.prior.")
            if checkpoint is None:
                raise ValueError(f"InverseProblemSolver: the prior network {type(network).__name__} has no weights; set "
                                 f"model.init_args.checkpoint to its checkpoint (e.g. the last.ckpt of `diffinv fit`).")
            prior = PixelPrior(network, checkpoint=checkpoint, parameterization=parameterization)
        elif network is not None:
            raise ValueError("InverseProblemSolver: give either prior or network (+ checkpoint), not both.")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"InverseProblemSolver: num_samples must be an int >= 1, got {num_samples!r}.")
        if metrics is not None:
            check_metric_names(metrics)
        self.prior = prior
        self.sampler = sampler
        self.num_samples = num_samples
        self.seed = int(seed)
        self.metric_names = None if metrics is None else list(metrics)
        self.progress_bar = progress_bar
        if on_failure not in ("continue", "stop"):
            raise ValueError(f"InverseProblemSolver: on_failure must be 'continue' or 'stop', got {on_failure!r}.")
        self.on_failure = on_failure
        for name, value in (("samples_per_call", samples_per_call), ("checkpoint_every", checkpoint_every)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"InverseProblemSolver: {name} must be an int >= 1 or None, got {value!r}.")
        if sampler.interacting and samples_per_call is not None and samples_per_call < num_samples:
            raise ValueError(f"InverseProblemSolver: the {num_samples} draws of {type(sampler).__name__} are one "
                             f"ensemble and cannot be made {samples_per_call} at a time (samples_per_call); to spread "
                             f"them over processes use sample_parallel: true.")
        if sample_parallel and sampler.interacting and not sampler.shardable:
            raise ValueError(f"InverseProblemSolver: {type(sampler).__name__}'s particles interact and it cannot split "
                             f"them over ranks, so it cannot run sample_parallel.")
        if checkpoint_every is not None and not sampler.resumable:
            raise ValueError(f"InverseProblemSolver: {type(sampler).__name__} does not save its state "
                             f"(checkpoint_every); samplers that do: EnKG.")
        self.sample_parallel = bool(sample_parallel)
        self.samples_per_call = samples_per_call
        self.checkpoint_every = checkpoint_every
        # kept out of the module tree: the operator is not part of the solver's state_dict
        self._ops: dict[str, Operator | None] = {"override": operator, "active": None}

    # ------------------------------------------------------------------ setup and checks
    @property
    def operator(self) -> Operator:
        """The forward model in use: on the module's device once predict has started."""
        active = self._ops["active"]
        return active if active is not None else self._source_operator()

    def _source_operator(self) -> Operator:
        op = self._ops["override"]
        if op is None:
            dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            op = getattr(dm, "operator", None)
        if op is None:
            raise ValueError("InverseProblemSolver: no forward model. Give the problem's DataModule an operator "
                             "(data.init_args.operator, see configs/problem/*.yaml) or set model.init_args.operator.")
        return op

    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise ValueError(f"InverseProblemSolver only runs `diffinv predict` (got stage {stage!r}); train priors "
                             f"with `diffinv fit --config configs/fit/<prior>.yaml` (lightning_modules.prior_training."
                             f"PriorTraining).")
        op = self._source_operator()
        check_problem(getattr(self.prior, "description", None), getattr(self.prior, "checkpoint", None),
                      problem_kind(op), type(op).__name__)
        check_shapes(self.prior, op)
        self.sampler.check(op, self.prior)
        names = self.metric_names if self.metric_names is not None else default_metrics(op)
        check_metric_names(names, op)
        self.metric_names = names
        self.prior.eval().requires_grad_(False)
        # the run's settings as hyper-parameters (hparams.yaml, TensorBoard's HPARAMS view); only the logger
        # uses them: predict saves no checkpoint and refuses --ckpt_path (lightning_modules.cli)
        self.save_hyperparameters(json.loads(json.dumps(self.run_signature(), default=str)), logger=True)

    def on_predict_start(self) -> None:
        # a copy: the DataModule keeps measuring with its own operator on the CPU (also in loader workers);
        # made outside inference mode (this hook runs inside it) so that samplers can differentiate through it
        with torch.inference_mode(False):
            self._ops["active"] = copy.deepcopy(self._source_operator()).to(self.device)

    def on_predict_end(self) -> None:
        self._ops["active"] = None

    def run_signature(self) -> dict[str, Any]:
        """What determines the results (the PredictionWriter refuses to mix results of different runs)."""
        def simple(obj) -> dict[str, Any]:
            return {k: v for k, v in sorted(vars(obj).items()) if not k.startswith("_")
                    and isinstance(v, (int, float, str, bool, type(None), tuple, list))}
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        sig = {"sampler": type(self.sampler).__name__, "sampler_args": simple(self.sampler),
               "num_samples": self.num_samples, "seed": self.seed, "prior": type(self.prior).__name__,
               "checkpoint": str(getattr(self.prior, "checkpoint", None)), "operator": repr(self.operator),
               "data_seed": getattr(dm, "seed", None)}
        if self.per_call < self.num_samples:          # the draws' streams (one-call runs keep their old run.json)
            sig["samples_per_call"] = self.per_call
        return sig

    # ------------------------------------------------------------------ how the draws are shared
    @property
    def per_call(self) -> int:
        """Draws per sampler call (``sample_parallel.py``)."""
        if self.sampler.interacting:
            return self.num_samples
        if self.samples_per_call is not None:
            return min(self.samples_per_call, self.num_samples)
        return 1 if self.sample_parallel else self.num_samples

    @property
    def shares_items(self) -> bool:
        """Every rank works on every item (sample_parallel on more than one process)."""
        return self.sample_parallel and self._trainer is not None and self.trainer.world_size > 1 and sp.distributed()

    # ------------------------------------------------------------------ solving
    def _writer(self):
        from .prediction_writer import PredictionWriter

        for cb in self.trainer.callbacks:
            if isinstance(cb, PredictionWriter):
                return cb
        return None

    def _check_sigterm(self) -> None:
        if self._trainer is not None and self.trainer.received_sigterm:
            raise SIGTERMException(128 + int(signal.SIGTERM))

    @contextlib.contextmanager
    def _stop_on_sigterm(self):
        """While an item is solved, SIGTERM stops the run at once, wherever it is (inside a sampler step or a
        long forward-model call): Lightning's handler records the signal, then this one raises. Finished items
        are complete on disk; the current one is redone by the next run. (Between items Lightning's handler
        alone runs and ``_check_sigterm`` stops before the next item.)"""
        if threading.current_thread() is not threading.main_thread() or self._trainer is None:
            yield
            return
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum, frame):
            if callable(previous):
                previous(signum, frame)
            raise SIGTERMException(128 + int(signal.SIGTERM))

        signal.signal(signal.SIGTERM, handler)
        try:
            self._check_sigterm()     # a signal that arrived just before
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _callback(self, sample_id: str, trajectory: Trajectory):
        show = (self.progress_bar and self.global_rank == 0 and self._trainer is not None
                and self.trainer.progress_bar_callback is not None)
        state: dict[str, Any] = {"bar": None}

        def callback(step: int, num_steps: int, x: Tensor) -> None:
            trajectory.record(step, num_steps, x)
            self._check_sigterm()
            if not show:
                return
            if state["bar"] is None:
                from tqdm.auto import tqdm

                state["bar"] = tqdm(total=num_steps, desc=f"  {sample_id}", leave=False, dynamic_ncols=True)
            bar = state["bar"]
            bar.update(max(0, min(step + 1, num_steps) - bar.n))

        def close() -> None:
            if state["bar"] is not None:
                state["bar"].close()

        return callback, close

    def solve(self, sample_id: str, x_true: Tensor, y_obs: Tensor) -> dict[str, Any]:
        """Solve one item: ``x_true [1, *x]``, ``y_obs [1, ...]`` on the module's device. A failure (an
        exception from the sampler, the forward model or the metrics, or non-finite samples) comes back as a
        failure record (``diagnosis.failure_record``: id, sampler, step, likely cause), or is raised with that
        message when ``on_failure="stop"``."""
        sampler_name = type(self.sampler).__name__
        trajectory = Trajectory(reference=float(x_true.detach().abs().max()))
        t0 = time.perf_counter()
        try:
            return self._solve(sample_id, x_true, y_obs, trajectory)
        except Exception as err:     # noqa: BLE001 - reported per item (SIGTERM / Ctrl-C are not Exceptions)
            return self._failed(failure_record(sample_id, sampler_name, err, trajectory, time.perf_counter() - t0),
                                err)

    def _failed(self, failure: dict[str, Any], err: BaseException | None = None) -> dict[str, Any]:
        failure["rank"] = self.global_rank
        log.error("%s", failure["message"])
        if self.on_failure == "stop":
            writer = self._writer() if self._trainer is not None else None
            if writer is not None and (self.global_rank == 0 or not self.shares_items):
                writer.write_failure(failure)
            raise RuntimeError(failure["message"] + " (model.init_args.on_failure: stop; 'continue' records "
                               "failures and goes on with the next item)") from err
        if self.shares_items and self.global_rank != 0:
            return {"id": failure["id"], "shared": True, "rank": self.global_rank}
        return failure

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def _cost(self) -> dict[str, int]:
        cost = self.sampler.cost
        return {k: int(v) for k, v in (dataclasses.asdict(cost) if dataclasses.is_dataclass(cost)
                                       else vars(cost)).items()}

    def _checkpoint(self, sample_id: str) -> EnsembleCheckpoint | None:
        writer = self._writer() if self._trainer is not None else None
        if self.checkpoint_every is None or writer is None or writer.output_dir is None:
            return None
        return EnsembleCheckpoint(writer.path(sample_id, SUFFIX), self.checkpoint_every,
                                  fingerprint(json.loads(json.dumps(self.run_signature(), default=str)), sample_id),
                                  write=self.global_rank == 0 or not self.shares_items, ignore_saved=writer.overwrite,
                                  event=writer.record_event, shared=self.shares_items)

    def _draw(self, sample_id: str, y_obs: Tensor, op: Operator, callback) -> tuple[Tensor, dict[str, int], list]:
        """All ``num_samples`` draws of the item, sample-major, the cost of making them (summed over ranks) and,
        the ESS summary of each of this rank's calls (``smc.ess_summary``: None but for an SMC sampler)."""
        checkpoint = self._checkpoint(sample_id)
        if self.shares_items and self.sampler.shardable:          # one ensemble split over the ranks
            particles = ShardedParticles(self.num_samples)
            error = None
            try:
                local = self.sampler.sample(y_obs, op, self.prior, num_samples=self.num_samples,
                                            generator=self._generator(sp.block_seed(self.seed, sample_id, 0)),
                                            callback=callback, particles=particles, checkpoint=checkpoint)
            except Exception as err:      # noqa: BLE001 - every rank learns of it below
                error = err
            sp.raise_if_any_failed(error)
            weights = [ess_summary(self.sampler)]                    # global statistics: the same on every rank
            return particles.collect(local, y_obs.shape[0]), sp.summed(sp.all_ranks(self._cost())), weights
        plan = sp.blocks(self.num_samples, self.per_call)
        world = self.trainer.world_size if self.shares_items else 1
        mine = sp.rank_blocks(len(plan), world)[self.global_rank if self.shares_items else 0]
        draws, costs, weights, error = [], [], [], None
        try:
            for k in mine:
                kwargs = {"checkpoint": checkpoint} if checkpoint is not None and len(plan) == 1 else {}
                draws.append(self.sampler.sample(y_obs, op, self.prior, num_samples=plan[k][1],
                                                 generator=self._generator(sp.block_seed(self.seed, sample_id, k)),
                                                 callback=callback, **kwargs))
                costs.append(self._cost())
                weights.append(ess_summary(self.sampler))
        except Exception as err:          # noqa: BLE001
            if not self.shares_items:
                raise
            error = err
        if not self.shares_items:
            return torch.cat(draws), sp.summed(costs), weights
        sp.raise_if_any_failed(error)
        counts = [sum(plan[k][1] for k in r) for r in sp.rank_blocks(len(plan), world)]
        layout = ShardedParticles(self.num_samples, pieces=[(sum(counts[:i]), c) for i, c in enumerate(counts)])
        local = torch.cat(draws) if draws else y_obs.new_empty((0, *op.input_shape), dtype=real_dtype(y_obs))
        return layout.collect(local, y_obs.shape[0]), sp.summed(sp.all_ranks(sp.summed(costs))), weights

    def _solve(self, sample_id: str, x_true: Tensor, y_obs: Tensor, trajectory: Trajectory) -> dict[str, Any]:
        op = operator_for(self.operator, sample_id)
        device = self.device
        callback, close = self._callback(sample_id, trajectory)
        t0 = time.perf_counter()
        try:
            with torch.no_grad(), self._stop_on_sigterm():
                samples, cost, weights = self._draw(sample_id, y_obs, op, callback)
        finally:
            close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        if self.shares_items and self.global_rank != 0:        # rank 0 evaluates and returns the item
            return {"id": sample_id, "shared": True, "rank": self.global_rank}
        if not torch.isfinite(samples).all():
            bad = int((~torch.isfinite(samples.reshape(samples.shape[0], -1))).any(1).sum())
            trajectory.last = float("nan")
            raise FloatingPointError(f"{bad} of {samples.shape[0]} returned samples are not finite")
        mean, std = posterior_stats(samples, self.num_samples)
        with self._stop_on_sigterm():
            metrics = evaluate_metrics(self.metric_names, samples, x_true, y_obs, op, mean=mean)
        checks = {}
        weights = [w for w in weights if w is not None]
        if weights:                     # an SMC sampler: its effective sample size, per call (block of draws)
            checks["ess"] = weights if len(weights) > 1 else weights[0]
            low = [w for w in weights if w["final"] < 2]
            if low:
                log.warning("%s: %s's final weights rest on %.3g particle(s) of %d (effective sample size): the "
                            "draws are copies of one or two particles; use more particles, more steps or "
                            "particles_per_draw", sample_id, type(self.sampler).__name__, low[0]["final"],
                            low[0]["particles"])
        misfit = misfit_check(op, y_obs, metrics.get("misfit"))
        if misfit is not None:
            checks["misfit"] = misfit
            if misfit["flagged"]:
                log.warning("%s: the posterior mean's misfit %.4g is %.3g x the noise level m / 2 = %.4g; %s did not "
                            "fit the data (step size / guidance?)", sample_id, misfit["value"],
                            misfit["value"] / misfit["reference"], misfit["reference"], type(self.sampler).__name__)
        y_view, y_label = measurement_view(op, y_obs, x_true.shape[1:])
        cpu = lambda t: None if t is None else t.detach().float().cpu()  # noqa: E731
        return {"id": sample_id, "samples": cpu(samples), "mean": cpu(mean[0]), "std": cpu(std[0]),
                "x_true": cpu(x_true[0]), "y_obs": cpu(y_obs[0]), "y_view": cpu(y_view), "y_label": y_label,
                "metrics": metrics, "cost": cost, "seconds": seconds,
                "num_samples": self.num_samples, "sampler": type(self.sampler).__name__,
                "kind": problem_kind(self.operator), "panel": panel_info(op, y_obs), "rank": self.global_rank, "checks": checks,
                "calibration": calibration(samples, x_true)}

    def predict_step(self, batch: dict, batch_idx: int = 0, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        writer = self._writer()
        results = []
        errors = batch.get("error") or [None] * len(batch["id"])
        for i, sample_id in enumerate(batch["id"]):
            self._check_sigterm()
            status = None
            if writer is not None and (self.global_rank == 0 or not self.shares_items):
                status = writer.status(sample_id)
            if self.shares_items:
                status = sp.same_item(sample_id, status)      # every rank at this item, rank 0's verdict
            if status is not None:
                log.info("skipping %s: it is %s", sample_id, status)
                results.append({"id": sample_id, "skipped": True})
                continue
            if errors[i] is not None:        # the DataModule could not load or measure this item
                results.append(self._item_failed(sample_id, errors[i]))
                continue
            # Lightning runs predict under inference mode; samplers need autograd, so leave it for the solve
            # (cloning turns the batch's inference tensors into normal ones).
            with torch.inference_mode(False):
                x_true = batch["x_true"][i][None].clone()
                y_obs = batch["y_obs"][i][None].clone()
                results.append(self.solve(sample_id, x_true, y_obs))
        return results

    def _item_failed(self, sample_id: str, message: str) -> dict[str, Any]:
        return self._failed({"id": sample_id, "failed": True, "sampler": type(self.sampler).__name__,
                             "error": "DataError", "message": f"{sample_id}: could not be loaded: {message}",
                             "step": None, "num_steps": None, "iterate_max_abs": None, "seconds": 0.0})

    def forward(self, batch: dict) -> list[dict[str, Any]]:
        return self.predict_step(batch)

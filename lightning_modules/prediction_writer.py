"""``PredictionWriter``: per-sample results of ``diffinv predict``, written atomically.

For each solved id, in ``output_dir``:

* ``{id}.npz``: ``samples`` (``[S, *x]``, at most ``max_saved_samples``), ``mean``, ``std``, ``x_true``,
  ``y_obs`` (and ``y_view``, the displayed back-projection, when there is one);
* ``{id}.png``: the panel truth | measurement | posterior mean | posterior std (``panels.render_panel``);
* ``{id}.json``: metrics, sampler cost, wall seconds, and the size and SHA-256 of the npz and png. Written
  **last**: an id is complete when its JSON parses and its artefacts match it (``output_folder``); a re-run
  (or another rank) skips complete ids and redoes any other, saying why (``redone`` in the rank log).
* ``{id}.failed.json``: instead, for an item whose solve raised (the solver's message: id, sampler, step,
  likely cause). A re-run skips it too (delete the file, or ``overwrite``, to retry).
* ``{id}.ensemble.pt``: while an item is being solved with ``checkpoint_every``, its ensemble checkpoint
  (``ensemble_checkpoint.py``); removed once the item is complete or failed.

Under ``sample_parallel`` every rank solves every item and only rank 0 returns it; the others return a
``shared`` marker, logged as ``shared`` in their rank log, so each item is written once.

Every file goes through ``output_folder.atomic_write``; stale temporary files are removed at the next start.
``run.lock`` holds the folder for one run (a second run into it is refused while the first lives).
``_logs/rank{r}.log`` records what each rank wrote, skipped, redid or failed. ``run.json`` records what
determined the results (sampler and its settings, number of samples, seeds, prior, operator); a re-run with
other settings into the same folder is refused instead of mixing results (``overwrite=True`` recomputes
everything).

At the end (all ranks, after a barrier; never inside ``predict_step``) rank 0 reads the results of every
id of the run back from disk and writes ``metrics.csv`` (one row per id), ``summary.csv`` and
``summary.json`` (mean, std and count per metric; failed, missing and flagged ids; the calibration curve:
nominal vs observed coverage of the truth, also drawn in ``calibration.png``), prints the table and
logs it (and a few panels) to the loggers; TensorBoard gets scalars, a text table, the panels as images
and the run's settings as hyper-parameters (with the metric means, for TensorBoard's HPARAMS view).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import TensorBoardLogger

from diffinv.calibration import calibration_curve, plot_calibration
from diffinv.metrics import unavailable

from .output_folder import (FolderLock, atomic_write, default_output_dir, file_digest, json_bytes, read_json,
                            verify_record)
from .panels import render_item

log = logging.getLogger(__name__)

TMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")
HEAVY_KEYS = ("samples", "mean", "std", "x_true", "y_obs", "y_view")
OWN_FILES = ("run.json", "summary.json")


def safe_name(sample_id: str) -> str:
    """A file-name-safe version of a sample id (path separators and other specials become ``_``)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(sample_id))
    return name if name and not name.startswith(".") else f"_{name}"


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    finite = v[np.isfinite(v)]
    return {"mean": float(finite.mean()) if finite.size else float("nan"),
            "std": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),     # one value has no spread
            "count": int(v.size), "nonfinite": int(v.size - finite.size)}


class PredictionWriter(BasePredictionWriter):
    """Args:
        output_dir: where results go; default ``<trainer.default_root_dir>/predictions/<sampler name>`` (a
            stable folder, so that re-running the same command resumes it).
        max_saved_samples: keep at most this many posterior draws per id in the npz (``None``: all).
        panels: write the PNG panels.
        log_images: how many panels rank 0 logs to TensorBoard at the end.
        overwrite: recompute every id, complete or failed (and accept a different ``run.json``).
    """

    def __init__(self, output_dir: str | None = None, max_saved_samples: int | None = None, panels: bool = True,
                 log_images: int = 4, overwrite: bool = False):
        super().__init__(write_interval="batch")
        if max_saved_samples is not None and max_saved_samples < 0:
            raise ValueError(f"PredictionWriter: max_saved_samples must be >= 0 or None, got {max_saved_samples}.")
        self.requested_dir = output_dir
        self.output_dir: Path | None = None
        self.max_saved_samples = max_saved_samples
        self.panels = panels
        self.log_images = log_images
        self.overwrite = overwrite
        self._seen: list[str] = []
        self._written: list[str] = []
        self._started = False
        self._rank = 0
        self._lock: FolderLock | None = None

    # ------------------------------------------------------------------ setup
    def resolve_output_dir(self, trainer: Trainer, pl_module: LightningModule) -> Path:
        sampler = getattr(pl_module, "sampler", None)
        return default_output_dir(trainer.default_root_dir, type(sampler).__name__ if sampler is not None else None,
                                  self.requested_dir)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        self._rank = trainer.global_rank
        self._seen, self._written, self._started = [], [], False
        out = self.resolve_output_dir(trainer, pl_module)
        self.output_dir = out
        error = None
        if trainer.is_global_zero:
            try:
                out.mkdir(parents=True, exist_ok=True)
                self._lock = FolderLock(out)
                self._lock.acquire()            # first: nothing below may touch a folder another run is using
                (out / "_logs").mkdir(exist_ok=True)
                for p in out.iterdir():         # leftovers of an interrupted run: never results (hidden, .tmp)
                    if TMP_RE.match(p.name):
                        p.unlink(missing_ok=True)
                self._check_signature(pl_module)
            except Exception as err:     # noqa: BLE001 - re-raised on every rank below
                self._release()
                error = err
        # every rank learns rank 0's verdict (a rank that raised alone would leave the others at a barrier)
        verdict = trainer.strategy.broadcast(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if verdict is not None:
            raise RuntimeError(f"PredictionWriter setup failed on rank 0: {verdict}")

    def _check_signature(self, pl_module: LightningModule) -> None:
        sig_fn = getattr(pl_module, "run_signature", None)
        if sig_fn is None:
            return
        sig = json.loads(json.dumps(sig_fn(), default=str))
        path = self.output_dir / "run.json"
        if path.exists() and not self.overwrite:
            old, _ = read_json(path)
            old = old or {}
            diff = {k: (old.get(k), sig.get(k)) for k in sorted(set(old) | set(sig)) if old.get(k) != sig.get(k)}
            if diff and self._has_results():
                lines = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                raise ValueError(
                    f"PredictionWriter: {self.output_dir} holds results made with other settings ({lines}). "
                    f"Nothing was computed. Write into another folder (--trainer.default_root_dir <folder>), or "
                    f"recompute every item here with these settings (--trainer.callbacks.init_args.overwrite true, "
                    f"which sets the PredictionWriter's overwrite when it is the last callback, as in "
                    f"configs/problem/*.yaml).")
        atomic_write(path, lambda f: f.write(json_bytes(sig)))

    def _has_results(self) -> bool:
        return any(p.suffix == ".json" and p.name not in OWN_FILES for p in self.output_dir.iterdir())

    # ------------------------------------------------------------------ per id
    def path(self, sample_id: str, suffix: str) -> Path:
        assert self.output_dir is not None, "PredictionWriter.setup has not run"
        return self.output_dir / f"{safe_name(sample_id)}{suffix}"

    def load_record(self, sample_id: str) -> tuple[dict | None, str | None]:
        """``(record, None)`` for a complete id (its JSON parses and its artefacts match it), else
        ``(None, why)``."""
        record, why = read_json(self.path(sample_id, ".json"))
        if record is None:
            return None, why
        why = verify_record(self.output_dir, record)
        return (record, None) if why is None else (None, why)

    def status(self, sample_id: str) -> str | None:
        """``"complete"`` or ``"failed"`` (a recorded failure) when a re-run must not redo the id, else None
        (to solve; an id with damaged results is reported and logged as ``redone``). Always None with
        ``overwrite``."""
        if self.overwrite or self.output_dir is None:
            return None
        record, why = self.load_record(sample_id)
        if record is not None:
            return "complete"
        if read_json(self.path(sample_id, ".failed.json"))[0] is not None:
            return "failed"
        if why != "no record":
            log.warning("redoing %s: %s", sample_id, why)
            self._event("redone", f"{sample_id} {why}")
        return None

    def is_complete(self, sample_id: str) -> bool:
        return self.status(sample_id) is not None

    def _event(self, what: str, detail: str) -> None:
        with open(self.output_dir / "_logs" / f"rank{self._rank}.log", "a") as f:
            f.write(f"{what} {detail}\n")

    def record_event(self, what: str, detail: str) -> None:
        """A line ``what detail`` in this rank's log (e.g. ``resumed <id> at step k``)."""
        if self.output_dir is not None:
            self._event(what, detail)

    def _drop_checkpoint(self, sample_id: str) -> None:
        self.path(sample_id, ".ensemble.pt").unlink(missing_ok=True)

    def write_item(self, item: dict[str, Any]) -> None:
        sid = item["id"]
        arrays = {k: item[k].numpy() for k in ("mean", "std", "x_true", "y_obs") if item.get(k) is not None}
        samples = item["samples"]
        if self.max_saved_samples is not None:
            samples = samples[: self.max_saved_samples]
        arrays["samples"] = samples.numpy()
        if item.get("y_view") is not None:
            arrays["y_view"] = item["y_view"].numpy()
        atomic_write(self.path(sid, ".npz"), lambda f: np.savez(f, **arrays))
        files = {"npz": file_digest(self.path(sid, ".npz")), "png": None}
        if self.panels:
            png = render_item(item)
            atomic_write(self.path(sid, ".png"), lambda f: f.write(png))
            files["png"] = file_digest(self.path(sid, ".png"))
        record = {"id": sid, "metrics": item["metrics"], "cost": item["cost"], "seconds": item["seconds"],
                  "num_samples": item["num_samples"], "sampler": item["sampler"], "rank": item.get("rank", self._rank),
                  "checks": item.get("checks", {}), "calibration": item.get("calibration"), "files": files}
        atomic_write(self.path(sid, ".json"), lambda f: f.write(json_bytes(record)))   # last: marks completion
        self.path(sid, ".failed.json").unlink(missing_ok=True)
        self._drop_checkpoint(sid)

    def write_failure(self, item: dict[str, Any]) -> None:
        record = {k: v for k, v in item.items() if k not in HEAVY_KEYS and k != "failed"}
        atomic_write(self.path(item["id"], ".failed.json"), lambda f: f.write(json_bytes(record)))
        self._drop_checkpoint(item["id"])

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        for item in prediction or []:
            sid = item["id"]
            self._seen.append(sid)
            if item.get("skipped"):
                self._event("skipped", sid)
                continue
            if item.get("shared"):          # sample_parallel: rank 0 writes the item
                self._event("shared", sid)
                continue
            if item.get("failed"):
                self.write_failure(item)
                self._event("failed", sid)
                continue
            self.write_item(item)
            self._written.append(sid)
            self._event("written", sid)
            # Lightning keeps what predict_step returned (trainer.predict's return value): drop the tensors
            for k in HEAVY_KEYS:
                item.pop(k, None)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = True

    # ------------------------------------------------------------------ end of the run
    def _all_ids(self, trainer: Trainer) -> list[str]:
        ids = list(self._seen)
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[list[str] | None] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, ids)
            ids = [i for part in gathered for i in (part or [])]
        return sorted(set(ids))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.strategy.barrier("prediction_writer_end")
        ids = self._all_ids(trainer)
        if trainer.is_global_zero:
            try:
                self.summarize(ids, trainer, pl_module)
            finally:
                self._release()

    def summarize(self, ids: Sequence[str], trainer: Trainer | None = None,
                  pl_module: LightningModule | None = None) -> dict[str, Any]:
        """Read the results of ``ids`` back from disk; write ``metrics.csv``, ``summary.csv`` and
        ``summary.json``; print the table; log to the trainer's loggers."""
        records, failures, problems = [], {}, {}
        for sid in ids:
            record, why = self.load_record(sid)
            if record is not None:
                records.append(record)
                continue
            failure, _ = read_json(self.path(sid, ".failed.json"))
            if failure is not None:
                failures[sid] = failure.get("message", "")
            elif why != "no record":
                problems[sid] = why
        done = {r["id"] for r in records} | set(failures)
        missing = [sid for sid in ids if sid not in done]
        flagged = {r["id"]: r["checks"]["misfit"] for r in records
                   if (r.get("checks") or {}).get("misfit", {}).get("flagged")}
        metric_names = list(dict.fromkeys(k for r in records for k in r["metrics"]))
        cost_names = list(dict.fromkeys(k for r in records for k in r.get("cost", {})))
        table = {m: _stats([r["metrics"].get(m) for r in records]) for m in metric_names}
        extra = {"seconds": _stats([r.get("seconds") for r in records])}
        extra.update({c: _stats([r["cost"].get(c) for r in records]) for c in cost_names})
        summary = {"count": len(records), "failed": len(failures), "missing": missing,
                   "sampler": records[0]["sampler"] if records else None, "metrics": table, "cost": extra,
                   "ids": [r["id"] for r in records], "failures": failures, "flagged": flagged,
                   "problems": problems}
        summary["unavailable"] = unavailable(metric_names)     # metrics recorded as null, and why
        calibrated = [r["calibration"] for r in records if r.get("calibration")]
        summary["calibration"] = calibration_curve(calibrated) if calibrated else None
        out = self.output_dir
        atomic_write(out / "summary.json", lambda f: f.write(json_bytes(summary)))
        if calibrated:      # nominal vs observed coverage of the truth, next to the summary
            png = plot_calibration(summary["calibration"], f"{summary['sampler']}, {len(calibrated)} item(s)")
            atomic_write(out / "calibration.png", lambda f: f.write(png))

        def per_id(f):
            text = io.StringIO()
            w = csv.writer(text)
            w.writerow(["id", *metric_names, "seconds", *cost_names])
            for r in records:
                w.writerow([r["id"], *[r["metrics"].get(m) for m in metric_names], r.get("seconds"),
                            *[r.get("cost", {}).get(c) for c in cost_names]])
            f.write(text.getvalue().encode())

        def aggregate(f):
            text = io.StringIO()
            w = csv.writer(text)
            w.writerow(["metric", "mean", "std", "count"])
            for name, s in {**table, **extra}.items():
                w.writerow([name, s["mean"], s["std"], s["count"]])
            f.write(text.getvalue().encode())

        atomic_write(out / "metrics.csv", per_id)
        atomic_write(out / "summary.csv", aggregate)
        text = format_table(summary)
        print(f"\nResults of {len(records)} item(s) in {out}:\n{text}{format_notes(summary)}", flush=True)
        if trainer is not None:
            self._log(trainer, pl_module, summary, records, text)
        return summary

    def _log(self, trainer: Trainer, pl_module: LightningModule | None, summary: dict[str, Any],
             records: list[dict], text: str) -> None:
        scalars = {f"predict/{k}_mean": v["mean"] for k, v in summary["metrics"].items() if math.isfinite(v["mean"])}
        scalars.update({"predict/count": summary["count"], "predict/failed": summary["failed"]})
        sig_fn = getattr(pl_module, "run_signature", None)
        hparams = json.loads(json.dumps(sig_fn(), default=str)) if sig_fn is not None else {}
        for logger in trainer.loggers:
            # the run's settings, with the metric means for TensorBoard's HPARAMS view (compare samplers)
            logger.log_hyperparams(hparams, scalars) if isinstance(logger, TensorBoardLogger) \
                else logger.log_hyperparams(hparams)
            logger.log_metrics(scalars, step=0)
            if isinstance(logger, TensorBoardLogger):
                exp = logger.experiment
                for step, r in enumerate(records):
                    for k, v in r["metrics"].items():
                        if v is not None and math.isfinite(v):
                            exp.add_scalar(f"predict_per_id/{k}", v, step)
                exp.add_text("predict/summary", "    " + (text + format_notes(summary)).replace("\n", "\n    "), 0)
                if self.panels and self.log_images:
                    from PIL import Image

                    for r in records[: self.log_images]:
                        p = self.path(r["id"], ".png")
                        if p.exists():
                            with Image.open(p) as im:
                                exp.add_image(f"predict/panel/{r['id']}", np.asarray(im.convert("RGB")), 0,
                                              dataformats="HWC")
                exp.flush()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._release()
        if self.output_dir is not None and self._started:
            log.warning("predict stopped (%s) on rank %d after writing %d item(s) in this run; complete items are "
                        "kept in %s and re-running the same command solves only the others", type(exception).__name__,
                        self._rank, len(self._written), self.output_dir)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release()


def format_notes(summary: dict[str, Any]) -> str:
    """Failed, damaged and flagged ids of a ``summary.json``, one line each (empty when there are none)."""
    lines = [f"FAILED {sid}: {msg}" for sid, msg in summary.get("failures", {}).items()]
    lines += [f"MISSING {sid}: {why}" for sid, why in summary.get("problems", {}).items()]
    lines += [f"FLAGGED {sid}: misfit {c['value']:.4g} is {c['value'] / c['reference']:.3g} x the noise level "
              f"(m / 2 = {c['reference']:.4g}); the sampler did not fit the data (step size / guidance?)"
              for sid, c in summary.get("flagged", {}).items()]
    curve = summary.get("calibration")
    if curve and curve.get("items"):
        levels, cov = curve["levels"], curve["coverage"]
        pairs = ", ".join(f"{100 * a:.0f} % -> {100 * c:.1f} %" for a, c in zip(levels, cov) if math.isfinite(c))
        if pairs:
            lines.append(f"coverage of the truth by the posterior intervals (nominal -> observed, fraction of "
                         f"pixels): {pairs}; calibration.png")
    return "".join(f"\n{line}" for line in lines)


def _cell(v: dict[str, Any]) -> str:
    if not (math.isfinite(v["mean"]) and math.isfinite(v["std"])):
        return f"{v['mean']:.5g}"
    return f"{v['mean']:.5g} ± {v['std']:.3g}"


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table ``metric | mean ± std | count`` of a ``summary.json`` (no ± for a single value)."""
    rows = [(k, _cell(v), str(v["count"])) for k, v in summary["metrics"].items()]
    rows += [(k, _cell(v), str(v["count"])) for k, v in summary.get("cost", {}).items()]
    if not rows:
        return "(no results)"
    w0 = max(len("metric"), *(len(r[0]) for r in rows))
    w1 = max(len("mean ± std"), *(len(r[1]) for r in rows))
    lines = [f"{'metric':<{w0}}  {'mean ± std':<{w1}}  count", f"{'-' * w0}  {'-' * w1}  -----"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)

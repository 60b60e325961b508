"""``PredictionWriter``: per-sample results of ``diffinv predict``, written atomically (DESIGN.md section 6).

For each solved id, in ``output_dir``:

* ``{id}.npz``: ``samples`` (``[S, *x]``, at most ``max_saved_samples``), ``mean``, ``std``, ``x_true``,
  ``y_obs`` (and ``y_view``, the displayed back-projection, when there is one);
* ``{id}.png``: the panel truth | measurement | posterior mean | posterior std (``panels.render_panel``);
* ``{id}.json``: metrics, sampler cost, wall seconds. Written **last**: ``{id}.json`` exists exactly when
  the id is complete, so a re-run (or another rank) skips it.

Every file goes to a hidden temporary file in the same folder (``.{name}.<random>.tmp``), is flushed and
fsynced, then renamed over the target with ``os.replace`` (atomic on POSIX), so an interrupted run never
leaves a truncated result; stale temporary files are removed at the next start. ``_logs/rank{r}.log``
records what each rank wrote or skipped. ``run.json`` records what determined the results (sampler and
its settings, number of samples, seeds, prior, operator); a re-run with other settings into the same
folder is refused instead of mixing results (``overwrite=True`` recomputes everything).

At the end (all ranks, after a barrier; never inside ``predict_step``) rank 0 reads the results of every
id of the run back from disk and writes ``metrics.csv`` (one row per id), ``summary.csv`` and
``summary.json`` (mean, std and count per metric), prints the table and logs it (and a few panels) to
the loggers; TensorBoard gets scalars, a text table and the panels as images.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import TensorBoardLogger

from diffinv.metrics import unavailable

from .panels import render_item

log = logging.getLogger(__name__)

def _file_mode() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return 0o666 & ~old


FILE_MODE = _file_mode()     # mkstemp creates 0600 files; results get the usual umask-based mode
TMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")
HEAVY_KEYS = ("samples", "mean", "std", "x_true", "y_obs", "y_view")


def safe_name(sample_id: str) -> str:
    """A file-name-safe version of a sample id (path separators and other specials become ``_``)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(sample_id))
    return name if name and not name.startswith(".") else f"_{name}"


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` through a temporary file in the same folder: write, flush, fsync, ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n").encode()


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    finite = v[np.isfinite(v)]
    return {"mean": float(finite.mean()) if finite.size else float("nan"),
            "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            "count": int(v.size), "nonfinite": int(v.size - finite.size)}


class PredictionWriter(BasePredictionWriter):
    """Args:
        output_dir: where results go; default ``<trainer.default_root_dir>/predictions/<sampler name>`` (a
            stable folder, so that re-running the same command resumes it).
        max_saved_samples: keep at most this many posterior draws per id in the npz (``None``: all).
        panels: write the PNG panels.
        log_images: how many panels rank 0 logs to TensorBoard at the end.
        overwrite: recompute ids that are already complete (and accept a different ``run.json``).
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
        self._skipped: list[str] = []
        self._rank = 0

    # ------------------------------------------------------------------ setup
    def resolve_output_dir(self, trainer: Trainer, pl_module: LightningModule) -> Path:
        if self.requested_dir is not None:
            return Path(self.requested_dir)
        sampler = getattr(pl_module, "sampler", None)
        name = type(sampler).__name__.lower() if sampler is not None else "results"
        return Path(trainer.default_root_dir) / "predictions" / name

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        self._rank = trainer.global_rank
        self._seen, self._written, self._skipped = [], [], []
        out = self.resolve_output_dir(trainer, pl_module)
        out.mkdir(parents=True, exist_ok=True)
        (out / "_logs").mkdir(exist_ok=True)
        self.output_dir = out
        if trainer.is_global_zero:
            for p in out.iterdir():     # leftovers of an interrupted run: never results (hidden, .tmp)
                if TMP_RE.match(p.name):
                    p.unlink(missing_ok=True)
            self._check_signature(pl_module)
        trainer.strategy.barrier("prediction_writer_setup")

    def _check_signature(self, pl_module: LightningModule) -> None:
        sig_fn = getattr(pl_module, "run_signature", None)
        if sig_fn is None:
            return
        sig = json.loads(json.dumps(sig_fn(), default=str))
        path = self.output_dir / "run.json"
        if path.exists() and not self.overwrite:
            old = json.loads(path.read_text())
            diff = {k: (old.get(k), sig.get(k)) for k in sorted(set(old) | set(sig)) if old.get(k) != sig.get(k)}
            if diff and self._has_results():
                lines = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                raise ValueError(
                    f"PredictionWriter: {self.output_dir} holds results made with other settings ({lines}). Use "
                    f"another folder (--trainer.default_root_dir, or the writer's output_dir) or pass "
                    f"overwrite=true to the PredictionWriter to recompute.")
        atomic_write(path, lambda f: f.write(_json_bytes(sig)))

    def _has_results(self) -> bool:
        return any(p.suffix == ".json" and p.name not in ("run.json", "summary.json") for p in self.output_dir.iterdir())

    # ------------------------------------------------------------------ per id
    def path(self, sample_id: str, suffix: str) -> Path:
        assert self.output_dir is not None, "PredictionWriter.setup has not run"
        return self.output_dir / f"{safe_name(sample_id)}{suffix}"

    def is_complete(self, sample_id: str) -> bool:
        """True when the id's results are on disk (its JSON, written last, exists) and not ``overwrite``."""
        return not self.overwrite and self.output_dir is not None and self.path(sample_id, ".json").exists()

    def _event(self, what: str, sample_id: str) -> None:
        with open(self.output_dir / "_logs" / f"rank{self._rank}.log", "a") as f:
            f.write(f"{what} {sample_id}\n")

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
        if self.panels:
            png = render_item(item)
            atomic_write(self.path(sid, ".png"), lambda f: f.write(png))
        record = {"id": sid, "metrics": item["metrics"], "cost": item["cost"], "seconds": item["seconds"],
                  "num_samples": item["num_samples"], "sampler": item["sampler"], "rank": item.get("rank", self._rank),
                  "files": {"npz": self.path(sid, ".npz").name,
                            "png": self.path(sid, ".png").name if self.panels else None}}
        atomic_write(self.path(sid, ".json"), lambda f: f.write(_json_bytes(record)))   # last: marks completion

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        for item in prediction or []:
            sid = item["id"]
            self._seen.append(sid)
            if item.get("skipped"):
                self._skipped.append(sid)
                self._event("skipped", sid)
                continue
            self.write_item(item)
            self._written.append(sid)
            self._event("written", sid)
            # Lightning keeps what predict_step returned (trainer.predict's return value): drop the tensors
            for k in HEAVY_KEYS:
                item.pop(k, None)

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
            self.summarize(ids, trainer)

    def summarize(self, ids: Sequence[str], trainer: Trainer | None = None) -> dict[str, Any]:
        """Read the results of ``ids`` back from disk; write ``metrics.csv``, ``summary.csv`` and
        ``summary.json``; print the table; log to the trainer's loggers."""
        records = []
        for sid in ids:
            p = self.path(sid, ".json")
            if p.exists():
                records.append(json.loads(p.read_text()))
        missing = [sid for sid in ids if not self.path(sid, ".json").exists()]
        metric_names = list(dict.fromkeys(k for r in records for k in r["metrics"]))
        cost_names = list(dict.fromkeys(k for r in records for k in r.get("cost", {})))
        table = {m: _stats([r["metrics"].get(m) for r in records]) for m in metric_names}
        extra = {"seconds": _stats([r.get("seconds") for r in records])}
        extra.update({c: _stats([r["cost"].get(c) for r in records]) for c in cost_names})
        summary = {"count": len(records), "missing": missing, "sampler": records[0]["sampler"] if records else None,
                   "metrics": table, "cost": extra, "ids": [r["id"] for r in records]}
        summary["unavailable"] = unavailable(metric_names)     # metrics recorded as null, and why
        out = self.output_dir
        atomic_write(out / "summary.json", lambda f: f.write(_json_bytes(summary)))

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
        print(f"\nResults of {len(records)} item(s) in {out}:\n{text}", flush=True)
        if trainer is not None:
            self._log(trainer, summary, records, text)
        return summary

    def _log(self, trainer: Trainer, summary: dict[str, Any], records: list[dict], text: str) -> None:
        scalars = {f"predict/{k}_mean": v["mean"] for k, v in summary["metrics"].items() if math.isfinite(v["mean"])}
        for logger in trainer.loggers:
            if scalars:
                logger.log_metrics(scalars, step=0)
            if isinstance(logger, TensorBoardLogger):
                exp = logger.experiment
                for step, r in enumerate(records):
                    for k, v in r["metrics"].items():
                        if v is not None and math.isfinite(v):
                            exp.add_scalar(f"predict_per_id/{k}", v, step)
                exp.add_text("predict/summary", "    " + text.replace("\n", "\n    "), 0)
                if self.panels and self.log_images:
                    from PIL import Image

                    for r in records[: self.log_images]:
                        p = self.path(r["id"], ".png")
                        if p.exists():
                            with Image.open(p) as im:
                                exp.add_image(f"predict/panel/{r['id']}", np.asarray(im.convert("RGB")), 0,
                                              dataformats="HWC")
                exp.flush()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self.output_dir is not None:
            log.warning("predict stopped (%s) on rank %d after writing %d item(s); completed items are kept in %s and "
                        "re-running the same command resumes", type(exception).__name__, self._rank,
                        len(self._written), self.output_dir)


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table ``metric | mean ± std | count`` of a ``summary.json``."""
    rows = [(k, f"{v['mean']:.5g} ± {v['std']:.3g}", str(v["count"])) for k, v in summary["metrics"].items()]
    rows += [(k, f"{v['mean']:.5g} ± {v['std']:.3g}", str(v["count"])) for k, v in summary.get("cost", {}).items()]
    if not rows:
        return "(no results)"
    w0 = max(len("metric"), *(len(r[0]) for r in rows))
    w1 = max(len("mean ± std"), *(len(r[1]) for r in rows))
    lines = [f"{'metric':<{w0}}  {'mean ± std':<{w1}}  count", f"{'-' * w0}  {'-' * w1}  -----"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)

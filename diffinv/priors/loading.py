"""``load_prior(config, checkpoint)``: a prior from its YAML config, for Python use without the command line.

    from diffinv.priors import load_prior
    prior = load_prior("configs/prior/ns64.yaml")                          # the shipped weights
    prior = load_prior("configs/fit/ns64.yaml", "outputs/fit/ns64/checkpoints/last.ckpt")   # a fit run's EMA weights

The config is one of the project's: a prior config (``model.init_args.network`` + ``checkpoint`` +
``parameterization``, or ``model.init_args.prior``), or a fit config (``PriorTraining``'s ``network``,
``LatentPriorTraining``'s ``prior``), with ``checkpoint`` then required. Classes are built from their
``class_path`` / ``init_args`` / ``dict_kwargs`` exactly as the command line builds them; only ``diffinv.*``
classes are accepted. A relative checkpoint path is taken from the working directory, else from the folder that
holds the config's ``configs/`` (the repository), so the snippets of the model cards run from anywhere.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from .base import Prior
from .description import check_spec, read_description
from .pixel import PixelPrior


def _import(class_path: str):
    if not isinstance(class_path, str) or not class_path.startswith("diffinv."):
        raise ValueError(f"load_prior: class_path {class_path!r} is not a diffinv class; a prior config builds its "
                         f"network from diffinv.networks / diffinv.priors.")
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"load_prior: cannot import {class_path} ({err}).") from None


def build(spec: Any, overrides: dict[str, Any] | None = None) -> Any:
    """Build ``{"class_path", "init_args", "dict_kwargs"}`` specs (nested ones included); other values as given."""
    if isinstance(spec, dict) and "class_path" in spec:
        cls = _import(spec["class_path"])
        kwargs = {k: build(v) for k, v in (spec.get("init_args") or {}).items()}
        kwargs.update(spec.get("dict_kwargs") or {})
        kwargs.update(overrides or {})
        return cls(**kwargs)
    if isinstance(spec, dict):
        return {k: build(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [build(v) for v in spec]
    return spec


def _resolve(path: str | os.PathLike | None, config: Path) -> str | None:
    if path is None:
        return None
    p = Path(path)
    if p.is_absolute() or p.exists():
        return str(p)
    for root in config.resolve().parents:
        if (root / "configs").is_dir() and (root / p).exists():
            return str(root / p)
    return str(p)         # missing: the loader's error names it and where to get it


def load_prior(config: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
               device: str | torch.device | None = None) -> Prior:
    """The prior of ``config`` with the weights of ``checkpoint`` (default: the config's own ``checkpoint``),
    loaded strictly and checked against the weights' description when there is one; in eval mode, no grad."""
    config = Path(config)
    cfg = yaml.safe_load(config.read_text()) or {}
    model = cfg.get("model") or {}
    init = dict(model.get("init_args") or {})
    training = str(model.get("class_path", "")).endswith(("PriorTraining", "LatentPriorTraining"))
    if "prior" in init:
        spec = dict(init["prior"])
        args = dict(spec.get("init_args") or {})
        ckpt = _resolve(checkpoint if checkpoint is not None else args.get("checkpoint"), config)
        if ckpt is None:
            raise ValueError(f"load_prior: {config} names no checkpoint; pass load_prior({str(config)!r}, <weights>).")
        args["checkpoint"] = ckpt
        prior = build({**spec, "init_args": args})
    elif "network" in init:
        ckpt = _resolve(checkpoint if checkpoint is not None else init.get("checkpoint"), config)
        if ckpt is None:
            raise ValueError(f"load_prior: {config} names no checkpoint (a training config); pass the weights: "
                             f"load_prior({str(config)!r}, 'outputs/.../checkpoints/last.ckpt').")
        param = init.get("parameterization") or ("vp_epsilon" if training and init.get("loss") == "vp_epsilon"
                                                  else "auto")
        check_spec(read_description(ckpt), init["network"], ckpt)      # architecture, before the key check
        prior = PixelPrior(build(init["network"]), checkpoint=ckpt, parameterization=param)
    else:
        raise ValueError(f"load_prior: {config} describes no prior (no model.init_args.network or "
                         f"model.init_args.prior); use a configs/prior/*.yaml or configs/fit/*.yaml file.")
    if device is not None:
        prior = prior.to(device)
    return prior.eval().requires_grad_(False)

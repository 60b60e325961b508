"""What a trained prior is, stored next to its weights and checked when they are loaded.

A shipped or exported prior ``<name>.pt`` comes with ``<name>.prior.json`` (written by
``scripts/export_prior.py``)::

    {"format": "diffinv-prior/1",
     "weights": {"file": "ns64.pt", "size": 1790000, "sha256": "..."},
     "network": {"class_path": "diffinv.networks.EDMPrecond", "init_args": {...}, "dict_kwargs": {...}},
     "parameterization": "edm",
     "problem": "navier_stokes",                 # diffinv.metrics.problem_kind of the operators it is for
     "data": {"description": "...", "shape": [1, 64, 64], "mean": ..., "std": ...},
     "training": {"config": "configs/fit/ns64.yaml", "global_step": 3000, ...}}

Loading the weights (``PixelPrior``, ``LatentPrior``) reads it when it is there and checks, before any
tensor is read: the file's size and SHA-256, the network class and the constructor arguments the network
keeps as attributes (resolution, channels, preconditioner constants), and the parameterisation. The solver
then checks the problem family against its operator. A mismatch raises :class:`PriorMismatchError` with both
descriptions. Checkpoints without a description (public ones, ``diffinv fit`` checkpoints) keep the strict
key / shape check only.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoints import sha256_of, verify_file

FORMAT = "diffinv-prior/1"
SUFFIX = ".prior.json"


class PriorMismatchError(ValueError):
    """The prior's description does not match how it is being used."""


def description_path(checkpoint: str | os.PathLike) -> Path:
    """``checkpoints/ns64/ns64.pt`` -> ``checkpoints/ns64/ns64.prior.json``."""
    p = Path(checkpoint)
    return p.with_name(p.stem + SUFFIX)


def read_description(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The description of ``checkpoint`` (None when it has none), after checking the weights file against it."""
    path = description_path(checkpoint)
    if not path.is_file():
        return None
    try:
        desc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: the description of {checkpoint} is unreadable ({err}); restore it with the "
                         f"weights (git checkout, or re-run scripts/export_prior.py).") from None
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} description (format {desc.get('format') if isinstance(desc, dict) else None!r}).")
    weights = desc.get("weights") or {}
    if weights.get("file") and weights["file"] != Path(checkpoint).name:
        raise PriorMismatchError(f"{path} describes {weights['file']}, not {Path(checkpoint).name}; keep each weights "
                                 f"file with its own description.")
    verify_file(checkpoint, weights.get("size"), weights.get("sha256"),
                source=f"the repository (git checkout -- {Path(checkpoint)}) or the run it was exported from")
    return desc


def summary(desc: dict[str, Any]) -> str:
    """One line: network, parameterisation, problem, data."""
    net = desc.get("network") or {}
    args = {**(net.get("init_args") or {}), **(net.get("dict_kwargs") or {})}
    shown = ", ".join(f"{k}={v}" for k, v in args.items())
    data = (desc.get("data") or {}).get("description", "")
    return (f"{net.get('class_path', '?').rsplit('.', 1)[-1]}({shown}), parameterization {desc.get('parameterization')}, "
            f"for {desc.get('problem')} problems" + (f", trained on {data}" if data else ""))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b


def network_mismatches(desc: dict[str, Any], network: nn.Module) -> list[str]:
    """Where ``network`` differs from the described one: class name, and each described constructor argument
    that the network keeps as an attribute."""
    net = desc.get("network") or {}
    want_cls = str(net.get("class_path", "")).rsplit(".", 1)[-1]
    out = []
    if want_cls and type(network).__name__ != want_cls:
        out.append(f"network class {type(network).__name__} (described: {want_cls})")
    for key, want in (net.get("init_args") or {}).items():
        if isinstance(want, (int, float, str, bool)) and hasattr(network, key):
            have = getattr(network, key)
            if isinstance(have, (int, float, str, bool)) and not _same(have, want):
                out.append(f"{key} = {have!r} (described: {want!r})")
    return out


def spec_mismatches(desc: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """Where a config's network spec (``class_path``, ``init_args``, ``dict_kwargs``) differs from the described
    one: every architecture argument, also those the built module does not keep as attributes."""
    net = desc.get("network") or {}
    out = []
    if net.get("class_path") and spec.get("class_path") and net["class_path"] != spec["class_path"]:
        out.append(f"network class {spec['class_path']} (described: {net['class_path']})")
    for part in ("init_args", "dict_kwargs"):
        want, have = net.get(part) or {}, spec.get(part) or {}
        for key in sorted(set(want) & set(have)):
            if not _same(have[key], want[key]):
                out.append(f"{key} = {have[key]!r} (described: {want[key]!r})")
    return out


def check_spec(desc: dict[str, Any] | None, spec: dict[str, Any], checkpoint: str | os.PathLike) -> None:
    """Raise :class:`PriorMismatchError` when a config's network spec is not the described one."""
    problems = spec_mismatches(desc or {}, spec)
    if problems:
        raise PriorMismatchError(
            f"{checkpoint} is {summary(desc)} ({description_path(checkpoint).name}); the config builds another network: "
            f"{'; '.join(problems)}. Use the prior config made for these weights or the weights made for this config.")


def check_network(desc: dict[str, Any], network: nn.Module, parameterization: str,
                  checkpoint: str | os.PathLike) -> None:
    """Raise :class:`PriorMismatchError` when ``network`` / ``parameterization`` are not the described ones."""
    problems = network_mismatches(desc, network)
    if desc.get("parameterization") and desc["parameterization"] != parameterization:
        problems.append(f"parameterization {parameterization!r} (described: {desc['parameterization']!r})")
    if problems:
        raise PriorMismatchError(
            f"{checkpoint} is {summary(desc)} ({description_path(checkpoint).name}); the config builds another prior: "
            f"{'; '.join(problems)}. Use the prior config made for these weights (its network, parameterization) "
            f"or the weights made for this config.")


def check_problem(desc: dict[str, Any] | None, checkpoint: str | os.PathLike, problem: str, operator: str) -> None:
    """Raise :class:`PriorMismatchError` when the described problem family is not ``problem``."""
    if not desc or not desc.get("problem") or desc["problem"] == problem:
        return
    raise PriorMismatchError(
        f"{checkpoint} is {summary(desc)}; this run uses it for a {problem} problem ({operator}). A prior trained on "
        f"other data gives confident nonsense here: use a prior for {problem} problems (configs/prior/*.yaml), or a "
        f"problem of the prior's family.")


def make_description(weights: str | os.PathLike, network: dict[str, Any], parameterization: str, problem: str,
                     data: dict[str, Any], training: dict[str, Any] | None = None) -> dict[str, Any]:
    """The description of the weights file ``weights`` (its size and SHA-256 are read from it)."""
    weights = Path(weights)
    return {"format": FORMAT,
            "weights": {"file": weights.name, "size": weights.stat().st_size, "sha256": sha256_of(weights)},
            "network": {k: network[k] for k in ("class_path", "init_args", "dict_kwargs") if k in network},
            "parameterization": parameterization, "problem": problem, "data": data, "training": training or {}}

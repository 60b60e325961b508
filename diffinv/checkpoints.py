"""Load network weights from the checkpoint formats diffinv meets, strictly and safely.

One entry point, :func:`load_state_dict_into`, on top of :func:`read_checkpoint`:

1. **Read** (``read_checkpoint``): ``.safetensors`` through the ``safetensors`` package; anything
   else with ``torch.load(path, map_location="cpu", weights_only=True)``. Training metadata that
   is not tensors (Lightning callback classes used as dict keys, numpy scalars, OmegaConf
   configs, ...) is read as inert placeholder objects, so no code from the file is ever run.
2. **Select** the weights inside the file, EMA first:

   * a flat ``{name: tensor}`` mapping is the state dict itself (raw ``torch.save(sd)``, DPS);
   * ``{"ema", "net", ...}`` (InverseBench): ``ema``, falling back to ``net``;
   * ``{"state_dict", ...}`` (Lightning): ``state_dict``. With Lightning's
     ``EMAWeightAveraging`` it already holds the EMA weights (the raw ones are under
     ``current_model_state``, never used here). latent-diffusion's LitEma copies
     (``model_ema.<name without dots>``) replace the matching ``model.<name>`` tensors;
   * otherwise ``model``.

3. **Match** the names to the module (one mechanism): the keys must equal the module's
   ``state_dict`` keys after removing a prefix ``p`` from every checkpoint key that starts with
   ``p``. ``prefix=`` fixes ``p``; otherwise ``p`` is searched among the prefixes that turn some
   checkpoint key into a module key (``""``, ``model.diffusion_model.``, ``first_stage_model.``,
   ``net.``, ``module.``, ``prior.net.``, ...). If several prefixes match, one naming an EMA copy is
   preferred, else the call is ambiguous and asks for ``prefix=``. Shapes must agree too.

Any mismatch raises :class:`CheckpointMismatchError` (a ``ValueError``) listing missing,
unexpected and wrongly shaped keys, the file, the prefix tried and the configuration that was
expected. Nothing ever falls back to random weights. A file torch cannot read (truncated, not a
checkpoint) raises a ``ValueError`` naming the path, what was expected and the safe fix; no message ever
suggests an unsafe load.

Files of known identity are checked before they are read: :data:`PUBLIC_CHECKPOINTS` lists the public
checkpoints diffinv's configs use, where each is published and, where the publisher gives them, its size and
SHA-256 (:func:`verify_file`); a shipped prior's description (``diffinv.priors.description``) records the
same for its weights. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

PUBLIC_CHECKPOINTS_HELP = "checkpoints/README.md"   # where the project documents public checkpoint downloads
_MAX_LISTED = 10


@dataclass(frozen=True)
class PublicCheckpoint:
    """A public checkpoint: its file name under ``checkpoints/public/``, what it is, where its authors publish
    it, the diffinv config that uses it, and its size / SHA-256 when the publisher states them (None: not
    published; the strict key and shape check is then the only guard)."""

    name: str
    what: str
    source: str
    config: str
    size: int | None = None
    sha256: str | None = None


PUBLIC_CHECKPOINTS = {c.name: c for c in (
    PublicCheckpoint(
        "ffhq_10m.pt", "DPS FFHQ-256 ADM UNet (Chung et al. 2023), a raw state dict, 93,563,910 parameters",
        "the Google Drive folder https://drive.google.com/drive/folders/1jElnRoFv7b31fG0v6pTSQkelbSX3xGZh linked "
        "from https://github.com/DPS2022/diffusion-posterior-sampling (README, 'Download pretrained checkpoint')",
        "configs/prior/dps_ffhq.yaml"),
    PublicCheckpoint(
        "ldm_ffhq_vq4.ckpt", "CompVis latent diffusion FFHQ-256 (LDM-VQ-4): UNet 274,056,163 + VQ-f4 first stage "
        "55,322,782 parameters, a Lightning checkpoint (its model.ckpt)",
        "https://ommer-lab.com/files/latent-diffusion/ffhq.zip (the 'FFHQ' row of the model zoo of "
        "https://github.com/CompVis/latent-diffusion); unzip it and rename model.ckpt",
        "configs/prior/ffhq_ldm_vq4.yaml"),
    PublicCheckpoint(
        "ns-5m.pt", "InverseBench / EnKG 2-D Navier-Stokes prior (EDMPrecond + DhariwalUNet, 128 x 128), "
        "{ema, net, ...}, 26,790,785 parameters",
        "the release 'diffusion-prior' of https://github.com/devzhk/InverseBench "
        "(https://github.com/devzhk/InverseBench/releases/tag/diffusion-prior), file ns-5m.pt",
        "configs/prior/inversebench_ns.yaml"),
    PublicCheckpoint(
        "blackhole.pt", "InverseBench black-hole prior (VPPrecond + SongUNet, 64 x 64), {ema, net, ...}, "
        "20,041,217 parameters",
        "the release 'diffusion-prior' of https://github.com/devzhk/InverseBench "
        "(https://github.com/devzhk/InverseBench/releases/tag/diffusion-prior), file blackhole.pt",
        "configs/prior/blackhole.yaml"),
)}


class ChecksumError(ValueError):
    """A checkpoint file's size or SHA-256 is not the one recorded for it."""


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: str | os.PathLike, size: int | None, sha256: str | None, source: str) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the expected size and SHA-256 (None: not checked);
    ``source`` says where a good copy comes from."""
    path = Path(path)
    have = path.stat().st_size
    if size is not None and have != size:
        raise ChecksumError(f"{path} has {have:,} bytes, but {size:,} are expected: the file is truncated or another "
                            f"file. Get it again from {source}.")
    if sha256 is not None and sha256_of(path) != sha256.lower():
        raise ChecksumError(f"{path} does not have the expected SHA-256 {sha256}: the file is damaged or another "
                            f"file. Get it again from {source}.")


def _not_found(path: Path) -> str:
    known = PUBLIC_CHECKPOINTS.get(path.name)
    msg = f"checkpoint not found: {path} (absolute: {path.absolute()})."
    if known is not None:
        return (f"{msg} {known.name} is the {known.what}; diffinv never downloads it: get it from {known.source}, "
                f"and put it at {path} (see {PUBLIC_CHECKPOINTS_HELP}).")
    return (f"{msg} Public checkpoints are not shipped with diffinv: see {PUBLIC_CHECKPOINTS_HELP} for where each "
            f"is published and where to put it.")


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the module (names or shapes)."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What :func:`load_state_dict_into` loaded: file, entry inside it, prefix removed, tensor count."""

    path: str
    entry: str
    prefix: str
    num_tensors: int


class _Placeholder:
    """Inert stand-in for a non-tensor object pickled in a checkpoint (never executes anything)."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<placeholder for {type(self).pickled_name}>"


def _placeholder_for(name: str) -> type:
    return type(f"Placeholder[{name}]", (_Placeholder,), {"pickled_name": name})


def _unreadable(path: Path, what: str) -> ValueError:
    # torch's own messages are not repeated: some advise weights_only=False, an unsafe load
    return ValueError(
        f"cannot read the checkpoint {path} ({path.stat().st_size:,} bytes): {what}. diffinv expects a file written by "
        f"torch.save (a state dict, a Lightning .ckpt or an InverseBench {{ema, net}} dict) or a .safetensors file, "
        f"and reads it with torch.load(weights_only=True), which never runs code from the file. Copy or download the "
        f"file again (a public checkpoint: from the source listed in {PUBLIC_CHECKPOINTS_HELP}), or export the "
        f"weights again from their training run.")


def _torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)``; unknown globals come back as inert placeholders."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"       # torch.save's format: a zip archive
        raise _unreadable(path, "the file is truncated or damaged (a zip archive that cannot be read to its end)"
                          if zipped or isinstance(err, EOFError) else f"torch.load failed ({type(err).__name__})") \
            from None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:       # noqa: BLE001 - not a zip checkpoint: legacy pickle or not a checkpoint at all
        raise _unreadable(path, "it is not a PyTorch checkpoint (its pickle data cannot be read safely)") from None
    stand_ins = [(_placeholder_for(name), name) for name in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:       # noqa: BLE001 - see _unreadable
        raise _unreadable(path, "its pickle data cannot be read safely") from None


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _apply_litema(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Replace ``model.<name>`` by latent-diffusion's EMA buffer ``model_ema.<name without dots>``."""
    ema = {k[len("model_ema."):]: v for k, v in sd.items() if k.startswith("model_ema.")}
    out, replaced = {}, 0
    for key, value in sd.items():
        if key.startswith("model_ema."):
            continue
        if key.startswith("model.") and key[len("model."):].replace(".", "") in ema:
            value, replaced = ema[key[len("model."):].replace(".", "")], replaced + 1
        out[key] = value
    return out, replaced


def _select(obj: object, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Pick the weights inside a loaded checkpoint object (EMA first); returns (state dict, description)."""
    if _is_tensor_dict(obj):
        sd, entry = dict(obj), "<top level>"
    elif isinstance(obj, Mapping):
        for key in ("ema", "net", "state_dict", "model"):   # InverseBench ema > net; Lightning; plain {"model": sd}
            if obj.get(key) is None:
                continue
            if not _is_tensor_dict(obj[key]):
                kind = getattr(type(obj[key]), "pickled_name", type(obj[key]).__name__)
                raise ValueError(
                    f"{path}: entry {key!r} is a {kind}, not a mapping of tensor names to tensors. diffinv loads "
                    "weights with torch.load(weights_only=True) only, which cannot rebuild a pickled nn.Module "
                    "(that would run code from the file). Use a file that holds these weights as tensors: "
                    f"{{{key!r}: module.state_dict()}} saved with torch.save, or a .safetensors export, from the "
                    "training run or the publisher.")
            sd, entry = dict(obj[key]), repr(key)
            break
        else:
            raise ValueError(f"{path}: no weights found; expected a state dict or a dict with one of the entries "
                             f"'ema', 'net', 'state_dict', 'model', got entries {sorted(map(str, obj))[:20]}")
    else:
        raise ValueError(f"{path}: expected a state dict (mapping of names to tensors) or a dict holding one, "
                         f"got {type(obj).__name__}")
    if any(k.startswith("model_ema.") for k in sd):
        sd, replaced = _apply_litema(sd)
        entry += f" with LitEma weights for {replaced} tensors"
    return sd, entry


def _read(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a directory; pass the weights file inside it (e.g. "
                                f"{path / 'model.safetensors'} of a Hugging Face snapshot)")
    if not path.is_file():
        raise FileNotFoundError(_not_found(path))
    known = PUBLIC_CHECKPOINTS.get(path.name)
    if known is not None and (known.size is not None or known.sha256 is not None):
        verify_file(path, known.size, known.sha256, known.source)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _select(load_file(str(path), device="cpu"), path)
    return _select(_torch_load(path), path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict selected from a checkpoint file (see the module docstring for the rules)."""
    return _read(path)[0]


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _candidate_prefixes(sd: Mapping[str, torch.Tensor], target: list[str]) -> list[str]:
    """Prefixes ``p`` with ``p + t`` a checkpoint key for some module key ``t`` (``p`` ends with a dot)."""
    found = set()
    for t in target[:1] + target[-1:]:
        for k in sd:
            if k.endswith(t) and (len(k) == len(t) or k[-len(t) - 1] == "."):
                found.add(k[: len(k) - len(t)])
    return sorted(found, key=len)


def _describe_config(module: nn.Module, expected_config: Mapping | None) -> str:
    name = type(module).__name__
    if not expected_config:
        return f"{name} (constructor arguments not given)"
    return name + "(" + ", ".join(f"{k}={v!r}" for k, v in expected_config.items()) + ")"


def _listing(title: str, items: list[str]) -> str:
    shown = "\n".join(f"    {s}" for s in items[:_MAX_LISTED])
    more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"  {title} ({len(items)}):\n{shown}{more}" if items else f"  {title}: none"


def _mismatch(module, sd, prefix, path, entry, candidates, expected_config) -> CheckpointMismatchError:
    own = module.state_dict()
    sub = _strip(sd, prefix)
    missing = [k for k in own if k not in sub]
    unexpected = [prefix + k for k in sub if k not in own]
    shapes = [f"{prefix + k}: checkpoint {tuple(sub[k].shape)} vs module {tuple(v.shape)}"
              for k, v in own.items() if k in sub and tuple(sub[k].shape) != tuple(v.shape)]
    return CheckpointMismatchError(
        f"checkpoint {path} (entry {entry}) does not match the module.\n"
        f"  prefix tried: {prefix!r} (prefixes found: {candidates or ['<none>']})\n"
        f"  expected config: {_describe_config(module, expected_config)}\n"
        + _listing("missing keys (in the module, not in the checkpoint)", missing) + "\n"
        + _listing("unexpected keys (in the checkpoint, not in the module)", unexpected) + "\n"
        + _listing("shape mismatches", shapes) + "\n"
        "  hint: build the network with the configuration the checkpoint was trained with (channel_mult, "
        "attention resolutions, number of blocks, ...) and pass prefix='...' when the weights live under a prefix "
        "(e.g. 'model.diffusion_model.' or 'first_stage_model.' in latent-diffusion checkpoints).")


def load_state_dict_into(module: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor], *,
                         prefix: str | None = None, expected_config: Mapping | None = None) -> LoadedCheckpoint:
    """Load the weights of ``source`` (a checkpoint path, or an in-memory state dict) into ``module``, strictly.

    ``prefix``: remove this prefix from the checkpoint keys (keys without it are ignored); by default
    it is detected. ``expected_config``: the constructor arguments of ``module``, quoted in errors.
    Raises ``FileNotFoundError`` for a missing file, :class:`CheckpointMismatchError` when names or
    shapes differ (after which ``module`` is unchanged), ``ValueError`` for unusable files.
    """
    if isinstance(source, Mapping):
        sd, entry = _select(source, Path("<in-memory state dict>"))
        path = "<in-memory state dict>"
    else:
        sd, entry = _read(source)
        path = str(source)
    own = module.state_dict()
    target = list(own)
    candidates = _candidate_prefixes(sd, target)

    if prefix is None:
        matching = [p for p in candidates if _strip(sd, p).keys() == own.keys()]
        if len(matching) > 1:
            ema = [p for p in matching if "ema" in p.lower()]
            if len(ema) != 1:
                raise CheckpointMismatchError(
                    f"checkpoint {path} (entry {entry}) holds several complete copies of the weights of "
                    f"{type(module).__name__}, under the prefixes {matching}; pass prefix=... to choose one")
            matching = ema
        if matching:
            prefix = matching[0]
        else:       # report against the prefix that covers the most module keys
            prefix = max(candidates or [""], key=lambda p: (len(_strip(sd, p).keys() & own.keys()), -len(p)))
            raise _mismatch(module, sd, prefix, path, entry, candidates, expected_config)

    sub = _strip(sd, prefix)
    if sub.keys() != own.keys() or any(tuple(sub[k].shape) != tuple(v.shape) for k, v in own.items()):
        raise _mismatch(module, sd, prefix, path, entry, candidates, expected_config)
    module.load_state_dict(sub, strict=True)
    return LoadedCheckpoint(path=path, entry=entry, prefix=prefix, num_tensors=len(sub))

"""Image files on disk: folder listing, path manifests, and reading into the prior's units (PIL, no Lightning).

Conventions (``docs/conventions.md#data-conventions``): an image becomes a float32 tensor ``[C, H, W]`` in ``[-1, 1]``
(``2 * value / max_value - 1``, 8- and 16-bit files). A single-channel file is replicated to 3 channels
when the caller asks for ``channels=3`` (grayscale super-resolution data); a colour file asked for as
``channels=1`` is an error (silently dropping colour would change the problem). Images that are not
``resolution x resolution`` are centre-cropped to a square and resized with PIL's bicubic filter, which
antialiases when it shrinks.

Manifests (written by ``scripts/prepare_super_resolution_dataset.py``) are text files of image paths
relative to the data root, one per line; blank lines and lines starting with ``#`` are ignored.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def natural_key(text: str) -> list:
    """Sort key that orders digit runs numerically (``2.png`` before ``10.png``); FFHQ's zero-padded names
    sort the same either way."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def list_images(root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                recursive: bool = True) -> list[Path]:
    """Image files under ``root`` (case-insensitive extensions), in natural order of their relative paths.
    Raises ``ValueError`` when ``root`` is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {str(root)!r} does not exist; check data.init_args.root "
                         f"(for super-resolution data run scripts/prepare_super_resolution_dataset.py).")
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    walker = root.rglob("*") if recursive else root.glob("*")
    files = [p for p in walker if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.relative_to(root).as_posix()))


def read_path_list(manifest: str | os.PathLike, root: str | os.PathLike) -> list[Path]:
    """The image paths of a manifest (relative to ``root`` unless absolute), in file order. Every path must
    exist: a missing one raises ``ValueError`` naming the manifest line."""
    manifest, root = Path(manifest), Path(root)
    if not manifest.is_file():
        raise ValueError(f"manifest {str(manifest)!r} not found; run scripts/prepare_super_resolution_dataset.py "
                         f"or check data.init_args.root / the manifest name.")
    paths = []
    for lineno, line in enumerate(manifest.read_text().splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry) if os.path.isabs(entry) else root / entry
        if not path.is_file():
            raise ValueError(f"{manifest}:{lineno}: image {str(path)!r} does not exist; re-run "
                             f"scripts/prepare_super_resolution_dataset.py or fix the manifest.")
        paths.append(path)
    return paths


def unique_ids(paths: Sequence[Path], root: str | os.PathLike) -> list[str]:
    """Sample ids for image files: the file stems when they are unique (FFHQ: ``00000`` ... ``69999``),
    otherwise the relative path without suffix, with ``/`` replaced by ``__`` (ids name output files)."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(root)
    ids = []
    for p in paths:
        try:
            rel = p.relative_to(root)
        except ValueError:
            rel = Path(*p.parts[1:]) if p.is_absolute() else p
        ids.append(rel.with_suffix("").as_posix().replace("/", "__"))
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"image ids are not unique ({dup}); remove duplicate entries from the manifest.")
    return ids


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ValueError(f"cannot read image {str(path)!r} ({err}); replace or remove the file.") from err
    return img


def image_channels(path: str | os.PathLike) -> int:
    """1 for grayscale files, 3 for colour ones, read from the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mode = img.mode
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ValueError(f"cannot read image {str(path)!r} ({err}); replace or remove the file.") from err
    return 1 if mode in _GRAY_MODES else 3


def check_channels(path: str | os.PathLike, channels: int) -> None:
    """Raise when a file cannot give ``channels`` channels (colour file asked for as grayscale)."""
    have = image_channels(path)
    if channels == 1 and have != 1:
        raise ValueError(f"image {str(path)!r} has colour channels but channels=1 was requested; set "
                         f"data.init_args.channels: 3 or convert the images to grayscale.")


def load_image(path: str | os.PathLike, resolution: int | None = None, channels: int = 3) -> Tensor:
    """Read one image as float32 ``[channels, resolution, resolution]`` in ``[-1, 1]`` (see module docstring)."""
    if channels not in (1, 3):
        raise ValueError(f"load_image: channels must be 1 or 3, got {channels!r}.")
    path = Path(path)
    img = _open(path)
    gray = img.mode in _GRAY_MODES
    if channels == 1 and not gray:
        raise ValueError(f"image {str(path)!r} has colour channels but channels=1 was requested; set "
                         f"data.init_args.channels: 3 or convert the images to grayscale.")
    if img.mode in ("1", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        img = img.convert("L" if gray else "RGB")
    if resolution is not None:
        img = center_crop_resize(img, resolution)
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype in (np.uint16, np.int32) and img.mode.startswith("I"):
        arr = arr.astype(np.float32) / 65535.0   # 16-bit PNGs open as I;16 or I
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    else:
        raise ValueError(f"image {str(path)!r}: unsupported pixel format {img.mode!r} ({arr.dtype}); save it as an "
                         f"8- or 16-bit PNG.")
    x = torch.from_numpy(np.ascontiguousarray(arr))
    x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
    if x.shape[0] == 1 and channels == 3:
        x = x.expand(3, -1, -1)                                 # grayscale -> 3 identical channels
    return (2.0 * x.clamp(0.0, 1.0) - 1.0).float().contiguous()


def center_crop_resize(img, resolution: int):
    """Centre-crop a PIL image to a square and resize it to ``resolution`` (bicubic; antialiased when
    shrinking). Images already ``resolution x resolution`` are returned unchanged."""
    from PIL import Image

    w, h = img.size
    if (w, h) == (resolution, resolution):
        return img
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    if (w, h) != (s, s):
        img = img.crop((left, top, left + s, top + s))
    if img.mode.startswith("I") or img.mode == "F":     # 16-bit: resize in float, keep the 0..65535 range
        arr = np.asarray(img, dtype=np.float32)
        out = Image.fromarray(arr, mode="F").resize((resolution, resolution), Image.BICUBIC)
        return Image.fromarray(np.clip(np.asarray(out), 0, 65535).round().astype(np.int32), mode="I")
    return img.resize((resolution, resolution), Image.BICUBIC)


def select_eval(ids: Sequence[str], eval_first: int | None = None,
                predict_ids: Iterable[str] | None = None) -> list[int]:
    """Indices of the evaluation (predict) items of a sorted pool: the listed ``predict_ids`` (in the
    given order), else the first ``eval_first`` items, else every item. Unknown ids raise ``ValueError``."""
    if predict_ids is not None:
        pos = {sid: i for i, sid in enumerate(ids)}
        wanted = [str(p) for p in predict_ids]
        missing = [p for p in wanted if p not in pos]
        if missing:
            raise ValueError(f"predict_ids not found in the data: {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                             f"ids are file stems (e.g. {list(ids[:3])}).")
        return [pos[p] for p in wanted]
    if eval_first is not None:
        if not (isinstance(eval_first, int) and eval_first >= 0):
            raise ValueError(f"eval_first must be an int >= 0 or None, got {eval_first!r}.")
        return list(range(min(eval_first, len(ids))))
    return list(range(len(ids)))

#!/usr/bin/env python
"""Prepare an image dataset (e.g. grayscale medical images) for latent-prior fine-tuning and super-resolution.

    python scripts/prepare_super_resolution_dataset.py --train-dir D --test-dir D \
        --output-root data/super_resolution [--grayscale] [--write-manifests] [--size 256] [--overwrite]

Every image under ``--train-dir`` / ``--test-dir`` (recursively; png, jpg, jpeg, bmp, tif, tiff, webp) is
centre-cropped to a square and resized to ``size x size`` (bicubic, antialiased when shrinking; the same
function the DataModules use) and written as an 8-bit PNG to ``<output-root>/train/`` or ``/test/``, keeping its
sub-folder path (``a/b/c.jpg`` -> ``train/a/b/c.png``). With ``--grayscale`` images are stored single-channel
(colour inputs are converted to luma, ITU-R 601); ``ImageManifestDataModule(channels=3)`` replicates them to
three channels when it loads them. Without it every image is stored as RGB. 16- and 32-bit inputs are mapped to
8 bits by their own minimum and maximum (``--high-bit-depth minmax``, the default) or by the full range of
their type (``scale``: value / 65535).

``--write-manifests`` writes ``train_images.txt`` / ``test_images.txt`` in the output root: the written images'
paths relative to the output root, one per line, in natural order (what ``ImageManifestDataModule`` reads).

Safety: a file that cannot be read as an image is skipped with a warning and counted in the summary. An
output (image or manifest) that already exists is left alone when its content is the same and is a conflict
when it differs: conflicts are listed and nothing at all is written unless ``--overwrite`` is given. Two inputs
that would write the same output (``x.jpg`` and ``x.png`` in one folder), or train and test folders that overlap,
are errors. Exit status: 0 on success, 1 on conflicts or errors.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from diffinv.datasets.image_files import IMAGE_EXTENSIONS, center_crop_resize, list_images, natural_key  # noqa: E402

_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
MANIFESTS = {"train": "train_images.txt", "test": "test_images.txt"}


@dataclass
class Summary:
    """Counts per split: written, unchanged (identical file already there), corrupt (skipped)."""

    written: dict[str, int] = field(default_factory=lambda: {"train": 0, "test": 0})
    unchanged: dict[str, int] = field(default_factory=lambda: {"train": 0, "test": 0})
    corrupt: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "test": []})
    high_bit_depth: int = 0
    manifests: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        for split in ("train", "test"):
            out.append(f"{split}: {self.written[split]} written, {self.unchanged[split]} unchanged (already present), "
                       f"{len(self.corrupt[split])} skipped as unreadable")
            out += [f"    skipped: {p}" for p in self.corrupt[split]]
        if self.high_bit_depth:
            out.append(f"{self.high_bit_depth} images had more than 8 bits per sample and were mapped to 8 bits")
        out += [f"manifest: {m}" for m in self.manifests]
        return out


class ConflictError(RuntimeError):
    """Outputs exist with different content (and --overwrite was not given)."""


# ----------------------------------------------------------------------------------------------- image conversion
def _to_8bit(img, mode: str):
    """An ``I`` / ``I;16`` / ``F`` image as 8-bit ``L`` (``mode``: ``minmax`` per image, or ``scale`` = / 65535)."""
    from PIL import Image

    arr = np.asarray(img, dtype=np.float64)
    if mode == "minmax":
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    else:
        arr = arr / 65535.0
    return Image.fromarray((np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8), mode="L")


def convert(path: Path, size: int, grayscale: bool, high_bit_depth: str = "minmax") -> tuple[np.ndarray, bool]:
    """Read, convert and resize one image: ``uint8`` array ``[size, size]`` (grayscale) or ``[size, size, 3]``,
    and whether the source had more than 8 bits. Raises ``OSError`` / ``ValueError`` for unreadable files."""
    from PIL import Image, ImageOps

    with Image.open(path) as src:
        src.load()
        img = ImageOps.exif_transpose(src) if src.format == "JPEG" else src.copy()
    high = img.mode in _HIGH_BIT_MODES
    if high:
        img = _to_8bit(img, high_bit_depth)
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if grayscale:
        img = img.convert("L")                       # colour -> luma (ITU-R 601-2), alpha dropped
    elif img.mode != "RGB":
        img = img.convert("RGB")                     # grayscale / RGBA / CMYK -> RGB
    img = center_crop_resize(img, size)
    arr = np.asarray(img, dtype=np.uint8)
    return arr, high


def _read_png(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img)
    except (OSError, ValueError):
        return None


def _write_png(arr: np.ndarray, path: Path) -> None:
    """Atomic write: a temporary file in the same folder, then rename."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png.tmp", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(arr, mode="L" if arr.ndim == 2 else "RGB").save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- planning
def _plan(split: str, src_root: Path, out_root: Path) -> list[tuple[Path, Path]]:
    """``(source, destination)`` pairs of one split; duplicate destinations are an error."""
    files = list_images(src_root, IMAGE_EXTENSIONS, recursive=True)
    plan, seen = [], {}
    for src in files:
        rel = src.relative_to(src_root).with_suffix(".png")
        dst = out_root / split / rel
        if dst in seen:
            raise ValueError(f"{seen[dst]} and {src} would both be written to {dst}; rename one of them.")
        seen[dst] = src
        plan.append((src, dst))
    return plan


def _check_dirs(train_dir: Path, test_dir: Path, out_root: Path) -> None:
    for name, d in (("--train-dir", train_dir), ("--test-dir", test_dir)):
        if not d.is_dir():
            raise ValueError(f"{name} {str(d)!r} is not a folder")
    a, b, o = train_dir.resolve(), test_dir.resolve(), out_root.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise ValueError(f"--train-dir {str(train_dir)!r} and --test-dir {str(test_dir)!r} overlap; the test images "
                         "would leak into training. Give two separate folders.")
    for name, d in (("--train-dir", a), ("--test-dir", b)):
        if o == d or d in o.parents:
            raise ValueError(f"--output-root {str(out_root)!r} lies inside {name} {str(d)!r}; choose another folder.")


def prepare(train_dir: str | os.PathLike, test_dir: str | os.PathLike, output_root: str | os.PathLike,
            grayscale: bool = False, write_manifests: bool = False, size: int = 256, overwrite: bool = False,
            high_bit_depth: str = "minmax") -> Summary:
    """Convert both splits (see the module docstring); returns the :class:`Summary`.

    Raises ``ValueError`` for bad arguments and :class:`ConflictError` when outputs with different content exist
    (nothing is written then)."""
    if size < 8:
        raise ValueError(f"--size must be >= 8, got {size}")
    if high_bit_depth not in ("minmax", "scale"):
        raise ValueError(f"--high-bit-depth must be 'minmax' or 'scale', got {high_bit_depth!r}")
    train_dir, test_dir, out_root = Path(train_dir), Path(test_dir), Path(output_root)
    _check_dirs(train_dir, test_dir, out_root)
    plans = {"train": _plan("train", train_dir, out_root), "test": _plan("test", test_dir, out_root)}
    summary = Summary()

    # Pass 1 (no writes): which sources are readable, and do existing outputs hold the same content?
    conflicts: list[str] = []
    same: set[Path] = set()
    corrupt: dict[Path, str] = {}
    for split, plan in plans.items():
        for src, dst in plan:
            try:
                if dst.exists():
                    arr, _ = convert(src, size, grayscale, high_bit_depth)
                    old = _read_png(dst)
                    if old is not None and old.shape == arr.shape and np.array_equal(old, arr):
                        same.add(dst)
                    else:
                        conflicts.append(f"{dst} exists with different content (from {src})")
                else:
                    convert(src, size, grayscale, high_bit_depth)     # readable and convertible?
            except (OSError, ValueError) as err:
                corrupt[src] = str(err)
    listed = {split: [dst.relative_to(out_root).as_posix() for src, dst in plan if src not in corrupt]
              for split, plan in plans.items()}
    manifest_text = {split: "".join(f"{p}\n" for p in sorted(listed[split], key=natural_key)) for split in plans}
    if write_manifests:
        for split, name in MANIFESTS.items():
            path = out_root / name
            if path.exists() and path.read_text() != manifest_text[split]:
                conflicts.append(f"{path} exists with different content")
    if conflicts and not overwrite:
        raise ConflictError("refusing to overwrite existing outputs with different content (pass --overwrite to "
                            "replace them); nothing was written:\n  " + "\n  ".join(conflicts[:20])
                            + (f"\n  ... and {len(conflicts) - 20} more" if len(conflicts) > 20 else ""))

    # Pass 2: convert and write (atomically, file by file).
    for split, plan in plans.items():
        for src, dst in plan:
            if src in corrupt:
                _warn_corrupt(src, corrupt[src], summary, split)
            elif dst in same:
                summary.unchanged[split] += 1
            else:
                arr, high = convert(src, size, grayscale, high_bit_depth)
                summary.high_bit_depth += int(high)
                _write_png(arr, dst)
                summary.written[split] += 1
    if write_manifests:
        out_root.mkdir(parents=True, exist_ok=True)
        for split, name in MANIFESTS.items():
            path = out_root / name
            if not path.exists() or path.read_text() != manifest_text[split]:
                _write_text(manifest_text[split], path)
            summary.manifests.append(f"{path} ({len(listed[split])} images)")
    return summary


def _warn_corrupt(src: Path, reason: str, summary: Summary, split: str) -> None:
    warnings.warn(f"skipping {src}: cannot read it as an image ({reason})", stacklevel=2)
    summary.corrupt[split].append(str(src))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-dir", required=True, help="folder of training images (searched recursively)")
    parser.add_argument("--test-dir", required=True, help="folder of test images (searched recursively)")
    parser.add_argument("--output-root", default="data/super_resolution", help="where train/ and test/ are written")
    parser.add_argument("--grayscale", action="store_true", help="store single-channel images")
    parser.add_argument("--write-manifests", action="store_true", help="write train_images.txt / test_images.txt")
    parser.add_argument("--size", type=int, default=256, help="output side length (default 256)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs that differ")
    parser.add_argument("--high-bit-depth", choices=("minmax", "scale"), default="minmax",
                        help="how 16/32-bit images become 8-bit (default: per-image min-max)")
    args = parser.parse_args(argv)
    fmt = warnings.formatwarning
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            summary = prepare(args.train_dir, args.test_dir, args.output_root, args.grayscale, args.write_manifests,
                              args.size, args.overwrite, args.high_bit_depth)
        except (ValueError, ConflictError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        finally:
            warnings.formatwarning = fmt
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

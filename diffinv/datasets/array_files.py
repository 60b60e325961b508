"""Scientific arrays on disk: LMDB stores in the InverseBench layout, ``.npy`` / HDF5 / FITS images, and the
conversions into the prior's units (no Lightning).

* :class:`LMDBArrays`: an LMDB whose key ``str(i)`` holds the raw float32 bytes of sample ``i``
  (InverseBench: Navier–Stokes vorticity ``(1, 128, 128)``, already divided by 10). The environment is
  opened lazily in each process, so a dataset holding one can be sent to DataLoader workers.
* :func:`index_array_files` / :func:`read_array_image`: black-hole images from a folder; ``.npy`` and
  HDF5 files may hold one image ``[H, W]`` or a stack ``[N, H, W]`` / ``[N, 1, H, W]``; FITS files are read
  with ``ehtim.image.load_fits`` (Stokes I, ehtim's orientation: row 0 north, column 0 east).
* :func:`peak_normalize`: brightness map -> ``[-1, 1]`` with the peak at 1 (the black-hole prior's units).
* :func:`spectral_resample`: Fourier truncation of periodic fields (Navier–Stokes 128 -> 64).
"""
from __future__ import annotations

import contextlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ARRAY_EXTENSIONS = (".npy", ".h5", ".hdf5", ".fits", ".fit", ".fts")


# ---------------------------------------------------------------------------------------------- LMDB
def is_lmdb(path: str | os.PathLike | None) -> bool:
    """True for an LMDB environment folder (``data.mdb`` inside) or a single-file LMDB."""
    if path is None:
        return False
    p = Path(path)
    return (p.is_dir() and (p / "data.mdb").is_file()) or (p.is_file() and p.suffix in (".lmdb", ".mdb"))


class LMDBArrays:
    """Read-only float32 samples stored under the keys ``"0"``, ``"1"``, ... of an LMDB.

    ``len`` counts the decimal keys; ``self[i]`` is a numpy array of ``shape`` (``(1, N, N)`` when not
    given: the square inferred from the byte length of the first entry)."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...] | None = None):
        if not is_lmdb(path):
            raise ValueError(f"LMDB {str(path)!r} not found (expected a folder with data.mdb); check lmdb_path.")
        self.path = str(path)
        self._env = None
        self._pid = None
        with self._open().begin() as txn:
            self.length = sum(1 for key in txn.cursor().iternext(keys=True, values=False) if key.isdigit())
            first = txn.get(b"0")
        if self.length == 0 or first is None:
            raise ValueError(f"LMDB {self.path!r} holds no samples under the keys '0', '1', ... (InverseBench layout).")
        if shape is None:
            n = math.isqrt(len(first) // 4)
            if 4 * n * n != len(first):
                raise ValueError(f"LMDB {self.path!r}: entry '0' has {len(first)} bytes, not a square float32 image; "
                                 f"pass the sample shape explicitly.")
            shape = (1, n, n)
        self.shape = tuple(int(s) for s in shape)
        if 4 * math.prod(self.shape) != len(first):
            raise ValueError(f"LMDB {self.path!r}: entry '0' has {len(first)} bytes, expected float32 {self.shape}.")

    def _open(self):
        import lmdb

        if self._env is None or self._pid != os.getpid():   # one environment per process (fork-safe)
            self._env = lmdb.open(self.path, readonly=True, lock=False, readahead=False, meminit=False,
                                  subdir=Path(self.path).is_dir(), max_readers=512)
            self._pid = os.getpid()
        return self._env

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.length:
            raise IndexError(f"LMDB {self.path!r}: index {index} out of range [0, {self.length}).")
        with self._open().begin() as txn:
            raw = txn.get(str(index).encode())
        if raw is None or len(raw) != 4 * math.prod(self.shape):
            raise ValueError(f"LMDB {self.path!r}: entry {index!r} is missing or has the wrong size.")
        return np.frombuffer(raw, dtype=np.float32).reshape(self.shape).copy()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_env"], state["_pid"] = None, None
        return state


def write_lmdb(path: str | os.PathLike, arrays: np.ndarray, map_size: int | None = None) -> None:
    """Write ``arrays[i]`` as raw float32 bytes under the key ``str(i)`` (the InverseBench layout)."""
    import lmdb

    arrays = np.ascontiguousarray(arrays, dtype=np.float32)
    env = lmdb.open(str(path), map_size=map_size or max(1 << 20, 2 * arrays.nbytes + (1 << 20)))
    with env.begin(write=True) as txn:
        for i, a in enumerate(arrays):
            txn.put(str(i).encode(), a.tobytes())
    env.close()


# ---------------------------------------------------------------------------------------------- resampling
def spectral_resample(x: Tensor, size: int) -> Tensor:
    """Resample periodic fields ``[..., N, N]`` to ``[..., size, size]`` (``size <= N``) by keeping the
    Fourier modes with ``|k| < size / 2`` on both axes (the Nyquist mode is dropped, so the result is real
    and exactly band-limited); values keep their scale."""
    n = x.shape[-1]
    if x.shape[-2] != n:
        raise ValueError(f"spectral_resample: fields must be square, got {list(x.shape)}.")
    if size == n:
        return x
    if size > n or size % 2:
        raise ValueError(f"spectral_resample: can only downsample to an even size <= {n}, got {size}.")
    xh = torch.fft.rfft2(x.double())
    h = size // 2
    kept = torch.cat([xh[..., :h, :h], xh[..., n - h + 1:, :h]], dim=-2)      # rows 0..h-1 and -(h-1)..-1
    kept = torch.cat([kept[..., :h, :], torch.zeros_like(kept[..., :1, :]), kept[..., h:, :]], dim=-2)
    out = torch.fft.irfft2(kept, s=(size, size)) * (size * size) / (n * n)
    return out.to(x.dtype)


def resize_image(img: Tensor, size: int) -> Tensor:
    """Resize ``[..., H, W]`` images to ``size x size``: area averaging for integer shrink factors,
    antialiased bilinear otherwise."""
    h, w = img.shape[-2:]
    if (h, w) == (size, size):
        return img
    lead = img.shape[:-2]
    x = img.reshape(-1, 1, h, w).double()
    if h == w and h % size == 0:
        out = F.avg_pool2d(x, h // size)
    else:
        out = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < max(h, w))
    return out.reshape(*lead, size, size).to(img.dtype)


def peak_normalize(img: np.ndarray | Tensor, resolution: int | None = None, name: str = "image") -> Tensor:
    """A brightness map ``[H, W]`` (or ``[1, H, W]``) -> float32 ``[1, R, R]`` in ``[-1, 1]``: negative values
    (interpolation ringing) clipped to 0, resized to ``resolution``, divided by its peak, mapped by
    ``2 x - 1`` (InverseBench's max-normalisation)."""
    x = torch.from_numpy(np.array(img, dtype=np.float64)) if not isinstance(img, Tensor) else img.double()
    if x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D brightness map, got shape {list(x.shape)}.")
    if x.shape[0] != x.shape[1]:
        raise ValueError(f"{name}: black-hole images must be square, got {list(x.shape)}; crop them, or give FITS "
                         f"files and set fov_uas to regrid them.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or Inf values; fix or remove the file.")
    x = x.clamp_min(0.0)
    if resolution is not None:
        x = resize_image(x, resolution).clamp_min(0.0)
    peak = float(x.max())
    if not peak > 0:
        raise ValueError(f"{name}: the image is empty (peak brightness {peak} <= 0); remove the file.")
    return (2.0 * x / peak - 1.0).float()[None]


# ---------------------------------------------------------------------------------------------- image files
@dataclass(frozen=True)
class ArrayItem:
    """One image of a folder: ``path`` and, for stacks, the ``index`` inside the file."""

    path: Path
    index: int | None
    id: str


def _h5_dataset(f, name: str | None, path: Path):
    if name is not None:
        if name not in f:
            raise ValueError(f"HDF5 file {str(path)!r} has no dataset {name!r}; available: {list(f.keys())}. "
                             f"Set data.init_args.h5_dataset.")
        return f[name]
    names = []
    f.visititems(lambda n, obj: names.append(n) if hasattr(obj, "shape") else None)
    if len(names) != 1:
        raise ValueError(f"HDF5 file {str(path)!r} holds {len(names)} datasets {names[:8]}; set "
                         f"data.init_args.h5_dataset to the one with the images.")
    return f[names[0]]


def _stack_size(shape: tuple[int, ...], path: Path) -> int | None:
    """None for one image ``[H, W]`` / ``[1, H, W]``, N for ``[N, H, W]`` / ``[N, 1, H, W]``."""
    if len(shape) == 2:
        return None
    if len(shape) == 3:
        return int(shape[0])
    if len(shape) == 4 and shape[1] == 1:
        return int(shape[0])
    raise ValueError(f"{str(path)!r}: array of shape {list(shape)} is not an image [H, W] or a stack [N, H, W] / "
                     f"[N, 1, H, W] of single-channel images.")


def _file_error(path: Path, err: Exception) -> ValueError:
    """Our own messages already name the file; anything else is wrapped in one that does."""
    if isinstance(err, ValueError) and str(path) in str(err):
        return err
    return ValueError(f"cannot read {str(path)!r} ({type(err).__name__}: {err}); replace or remove it.")


def index_array_files(files: list[Path], h5_dataset: str | None = None) -> list[ArrayItem]:
    """One :class:`ArrayItem` per image in ``files`` (headers only). Ids are the file stems, with
    ``-{i:05d}`` appended for images inside a stack."""
    items: list[ArrayItem] = []
    for path in files:
        suffix = path.suffix.lower()
        try:
            if suffix == ".npy":
                count = _stack_size(np.load(path, mmap_mode="r").shape, path)
            elif suffix in (".h5", ".hdf5"):
                import h5py

                with h5py.File(path, "r") as f:
                    count = _stack_size(tuple(_h5_dataset(f, h5_dataset, path).shape), path)
            else:
                count = None        # FITS: one image
        except Exception as err:  # noqa: BLE001 - any reader failure: name the file
            wrapped = _file_error(path, err)
            if wrapped is err:
                raise
            raise wrapped from err
        if count is None:
            items.append(ArrayItem(path, None, path.stem))
        else:
            items.extend(ArrayItem(path, i, f"{path.stem}-{i:05d}") for i in range(count))
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"image ids are not unique ({dup}): two files share a stem; rename them.")
    return items


def read_array_image(item: ArrayItem, h5_dataset: str | None = None, fov_uas: float | None = None,
                     resolution: int | None = None) -> np.ndarray:
    """The 2-D brightness map of one item (float64). FITS files are regridded with ehtim to ``fov_uas``
    microarcseconds and ``resolution`` pixels when ``fov_uas`` is given; other formats carry no pixel size
    and are returned as stored (their field of view is assumed to be the operator's)."""
    path, suffix = item.path, item.path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, mmap_mode="r")
            arr = arr if item.index is None else arr[item.index]
        elif suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                ds = _h5_dataset(f, h5_dataset, path)
                arr = ds[()] if item.index is None else ds[item.index]
        else:
            arr = _read_fits(path, fov_uas, resolution)
        arr = np.asarray(arr, dtype=np.float64)
    except Exception as err:  # noqa: BLE001 - any reader failure: name the file
        wrapped = _file_error(path, err)
        if wrapped is err:
            raise
        raise wrapped from err
    return arr.reshape(arr.shape[-2:]) if arr.ndim == 3 and arr.shape[0] == 1 else arr


def _read_fits(path: Path, fov_uas: float | None, resolution: int | None) -> np.ndarray:
    from diffinv.operators.eht_array import import_ehtim

    eh = import_ehtim()
    with contextlib.redirect_stdout(io.StringIO()):    # ehtim prints while loading
        im = eh.image.load_fits(str(path))
        if fov_uas is not None:
            from ehtim.const_def import RADPERUAS

            im = im.regrid_image(fov_uas * RADPERUAS, int(resolution or im.xdim))
    return np.asarray(im.imarr(), dtype=np.float64)

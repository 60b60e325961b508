"""The on-disk contract of a ``diffinv predict`` output folder: atomic files, verified records, one run at a time.

* :func:`atomic_write`: temporary file in the same folder, flush, fsync, ``os.replace``; readers never see
  half a file.
* :func:`file_digest` / :func:`verify_record`: an item's ``<id>.json`` (written last) records the size and
  SHA-256 of each of its artefacts; an item counts as complete only when that JSON parses and every
  artefact it names is on disk with the recorded size and hash. Anything else (a truncated JSON, a missing
  or corrupt npz) is an incomplete item, redone by the next run, and the reason is reported.
* :class:`FolderLock`: an exclusive ``flock`` on ``<folder>/run.lock`` for the duration of a run, so that two
  runs never write into one folder. The file records pid, host and start time for the refusal message. The
  kernel drops the lock when its process dies (SIGKILL included), so a lock left by a dead process is
  simply taken over; a live one is refused, naming its pid and host.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable


def default_output_dir(root: str | os.PathLike, sampler_name: str | None, requested: str | None = None) -> Path:
    """The prediction folder of a run: ``requested``, else ``<root>/predictions/<sampler name, lower case>``
    (a stable folder, so that re-running the same command resumes it). The CLI puts TensorBoard logs there too."""
    if requested is not None:
        return Path(requested)
    return Path(root) / "predictions" / (sampler_name.lower() if sampler_name else "results")


def _file_mode() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return 0o666 & ~old


FILE_MODE = _file_mode()     # mkstemp creates 0600 files; results get the usual umask-based mode


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


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n").encode()


def file_digest(path: Path) -> dict[str, Any]:
    """``{"name", "size", "sha256"}`` of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"name": Path(path).name, "size": Path(path).stat().st_size, "sha256": h.hexdigest()}


def read_json(path: Path) -> tuple[dict | None, str | None]:
    """``(record, None)``, or ``(None, why)`` when the file is missing or unreadable."""
    try:
        record = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None, "no record"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"{Path(path).name} is unreadable ({type(err).__name__}: {err})"
    if not isinstance(record, dict):
        return None, f"{Path(path).name} is not a JSON object"
    return record, None


def verify_record(folder: Path, record: dict) -> str | None:
    """None when every artefact named in ``record["files"]`` matches its recorded size and SHA-256, else why not."""
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return "its record lists no artefacts with sizes and hashes (written by an older diffinv)"
    for kind, entry in files.items():
        if entry is None:
            continue
        if not isinstance(entry, dict) or not {"name", "size", "sha256"} <= entry.keys():
            return f"its record has no size / hash for the {kind} file (written by an older diffinv)"
        path = folder / entry["name"]
        if not path.is_file():
            return f"{entry['name']} is missing"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{entry['name']} has {size} bytes, its record says {entry['size']}"
        if file_digest(path)["sha256"] != entry["sha256"]:
            return f"{entry['name']} does not match the SHA-256 in its record"
    return None


class FolderLockedError(RuntimeError):
    """Another live run holds the output folder."""


class FolderLock:
    """An exclusive lock on ``folder`` for one run (see the module docstring)."""

    NAME = "run.lock"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self.holder()
                os.close(fd)
                pid, host = holder.get("pid", "?"), holder.get("host", "?")
                raise FolderLockedError(
                    f"{self.path.parent} is in use by another diffinv predict run (pid {pid} on host {host}, started "
                    f"{holder.get('started', '?')}); two runs in one folder would overwrite each other's results. "
                    f"Wait for it to finish, stop it (`kill {pid}` on {host}; a re-run resumes its finished items), "
                    f"or give this run its own folder (--trainer.default_root_dir <folder>).") from None
            # the file may have been removed (released) between open and flock: then lock the new one
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "unix_time": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json_bytes(info), 0)
        os.fsync(fd)
        self._fd = fd

    def holder(self) -> dict:
        record, _ = read_json(self.path)
        return record or {"pid": "unknown"}

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)     # while still holding the lock (see acquire's inode check)
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

"""Atomic file writes, and cleanup of the temporaries a killed writer leaves.

Every writer of a result (checkpoint, report, metrics, cache entry) goes through :func:`atomic_write`:
the bytes go to a hidden sibling ``.<name>.lidar-ssl-<pid>-<n>.tmp``, are fsynced, and the sibling is
renamed over ``<name>`` (``os.replace``), so a reader never sees half a file. A ``kill -9`` in the middle
leaves the temporary behind; the next write into the same folder removes such leftovers
(:func:`remove_stale_temporaries`) when it can prove nobody is still writing them: the process named in
the file is gone *and* the file's advisory lock (held by a live writer for the whole write, released by
the kernel when its process dies) can be taken. Only our own name patterns are touched. A folder is
scanned at most once every ``RESCAN_INTERVAL_S`` per process (its first write always scans): a cache folder
of 30,000 entries costs about 35 ms per scan, which on every write would make filling it quadratic.

The temporary is created with ``os.open(..., 0o666)``, so the kernel applies the umask: the published
file has the mode of any new file, and the process umask is never changed (``os.umask`` is set-and-get:
changing it even for a moment gives files that other threads create in that window the wrong mode).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

_TEMP = re.compile(r"^\.(?P<name>.+)\.lidar-ssl-(?P<pid>\d+)-\d+\.tmp$")
_counter = itertools.count()
_writing: set[str] = set()  # names of the temporaries this process is writing now (any thread)
_writing_lock = threading.Lock()
#: Seconds between two scans of one folder for abandoned temporaries by one process.
RESCAN_INTERVAL_S = 300.0
_last_scan: dict[str, float] = {}  # folder -> time.monotonic() of this process's last scan of it


def _scan_due(folder: Path) -> bool:
    """Whether this process should scan ``folder`` now (first write into it, or the interval passed)."""
    key = str(folder.absolute())
    now = time.monotonic()
    with _writing_lock:
        last = _last_scan.get(key)
        if last is not None and now - last < RESCAN_INTERVAL_S:
            return False
        _last_scan[key] = now
        return True


def _legacy_temp(name: str) -> re.Pattern[str]:
    """Temporaries of ``name`` written before :func:`atomic_write` existed (``.<name>.tmp<pid>``)."""
    return re.compile(rf"^\.{re.escape(name)}\.tmp(?P<pid>\d+)$")


def temp_path(path: Path) -> Path:
    """A fresh temporary sibling of ``path`` in this module's pattern (unique per process and call)."""
    return path.with_name(f".{path.name}.lidar-ssl-{os.getpid()}-{next(_counter)}.tmp")


def _in_use_by_pid(candidate: Path, pid: int) -> bool:
    """Whether the writer named in ``candidate`` may still be at it (judged by its process id)."""
    if pid == os.getpid():  # ours, or a former process that had our pid (a restarted container)
        with _writing_lock:
            return candidate.name in _writing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:  # not a pid at all
        return False
    return True


def _remove_if_abandoned(candidate: Path, pid: int) -> bool:
    """Unlink ``candidate`` when its writer is dead and nobody holds its lock; True when removed."""
    if _in_use_by_pid(candidate, pid):
        return False
    try:
        if not stat.S_ISREG(candidate.lstat().st_mode):
            return False
        fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a writer (on another host or pid namespace) is still at it
            return False
        candidate.unlink(missing_ok=True)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_stale_temporaries(path: Path | str) -> list[Path]:
    """Remove abandoned temporaries in ``path``'s folder (see module docstring); returns what went.

    Our pattern anywhere in the folder, plus the older ``.<name>.tmp<pid>`` pattern of ``path`` itself.
    Never raises: a folder we cannot list or a file we cannot remove is left as it is.
    """
    path = Path(path)
    legacy = _legacy_temp(path.name)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name) or legacy.match(entry.name)
        if match is None:
            continue
        candidate = Path(entry.path)
        if _remove_if_abandoned(candidate, int(match.group("pid"))):
            removed.append(candidate)
    if removed:
        log.info(
            "removed %d abandoned temporary file(s) of interrupted writes in %s", len(removed), path.parent
        )
    return removed


def atomic_write(path: Path | str, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(file)`` atomically: locked temporary sibling, fsync, ``os.replace``.

        The temporary is created with mode 0666 minus the umask (what ``open(path, "w")`` gives), so the
        published file has the usual mode without touching the process umask. Abandoned temporaries of
        earlier, killed writers in the same folder are removed first (at most every ``RESCAN_INTERVAL_S``
    per folder). Any exception removes the temporary
        and propagates unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _scan_due(path.parent):
        remove_stale_temporaries(path)
    tmp = temp_path(path)
    with _writing_lock:
        _writing.add(tmp.name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except BaseException:
        with _writing_lock:
            _writing.discard(tmp.name)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # tells cleaners elsewhere that this temporary is in use
        with os.fdopen(fd, "wb", closefd=False) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)  # releases the lock
        with _writing_lock:
            _writing.discard(tmp.name)
    return path


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """:func:`atomic_write` of a bytes object."""

    def write(fh: BinaryIO) -> None:
        fh.write(data)

    return atomic_write(path, write)


#: file types of per-image masks made offline (superpixels, weak labels): 16-bit PNG or .npy
MASK_SUFFIXES = (".png", ".npy")


def image_keyed_file(folder: Path, camera: str, stamp_ns: int) -> tuple[Path | None, Path]:
    """The mask file ``folder/<camera>/<stamp_ns>.png|.npy`` of one image, or None, and the stem tried.

    Superpixel masks and OLIVINE's weak labels are both keyed this way; each caller raises its own error.
    """
    base = Path(folder) / camera / str(stamp_ns)
    for suffix in MASK_SUFFIXES:
        candidate = base.with_suffix(suffix)
        if candidate.is_file():
            return candidate, base
    return None, base


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

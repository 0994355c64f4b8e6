"""Atomic writers after a kill -9: abandoned temporaries are removed by the next write, safely (only our
patterns, only when their writer is dead and their lock is free); new files get their mode without the
process umask ever being changed (issue 13, items 6 and 7)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lidar_ssl_core import fileio
from lidar_ssl_core.downstream.report import atomic_write_bytes
from lidar_ssl_core.train.checkpoint import load_checkpoint, save_checkpoint

STATE = {
    "format": "lidar_ssl.pretrain/1",
    "backbone": {"w": torch.arange(4.0)},
    "teacher_head": {},
    "optimizer": {},
    "epoch": 0,
    "step_in_epoch": 0,
    "global_step": 1,
}

# A writer that is killed while it holds a temporary: it saves once, then blocks inside the next save.
KILLED_WRITER = """
import sys, time, torch
from pathlib import Path
from lidar_ssl_core.train import checkpoint
path = Path(sys.argv[1])
checkpoint.save_checkpoint({"format": "lidar_ssl.pretrain/1", "x": torch.zeros(3)}, path)
real_save = torch.save
def slow_save(obj, fh):
    real_save(obj, fh)
    fh.flush()
    print("inside", flush=True)
    time.sleep(60)
checkpoint.torch.save = slow_save
checkpoint.save_checkpoint({"format": "lidar_ssl.pretrain/1", "x": torch.ones(3)}, path)
"""


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_checkpoint_write_killed_midway_leaves_a_temporary_that_the_next_write_removes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ckpt_last.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "inside"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = _temporaries(tmp_path)
    assert len(left) == 1 and f"-{proc.pid}-" in left[0]  # the kill leaves it: nothing can prevent that
    assert load_checkpoint(path, required=())["x"].sum() == 0  # the previous checkpoint is intact
    legacy = tmp_path / f".ckpt_last.pt.tmp{proc.pid}"  # the pattern of earlier versions
    legacy.write_bytes(b"half a checkpoint")
    save_checkpoint(STATE, path)
    assert _temporaries(tmp_path) == []
    assert load_checkpoint(path)["global_step"] == 1


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_cleanup_spares_temporaries_in_use_and_files_of_other_patterns(tmp_path: Path) -> None:
    dead = _dead_pid()
    target = tmp_path / "report.md"
    former_self = tmp_path / f".report.md.lidar-ssl-{os.getpid()}-999999.tmp"  # our pid, not being written:
    # left by an earlier process that had our pid (a restarted container): removed
    abandoned = tmp_path / f".other.json.lidar-ssl-{dead}-0.tmp"  # same folder, another target: removed
    locked = tmp_path / f".x.lidar-ssl-{dead}-1.tmp"  # writer elsewhere (other pid namespace) holds the lock
    foreign = [tmp_path / f".report.md.{dead}.tmp", tmp_path / f"report.md.tmp{dead}", tmp_path / "notes.tmp"]
    for p in [former_self, abandoned, locked, *foreign]:
        p.write_bytes(b"x")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
            str(locked),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        alive = tmp_path / f".z.lidar-ssl-{holder.pid}-3.tmp"  # its process runs: maybe still writing
        alive.write_bytes(b"x")
        atomic_write_bytes(target, b"done")
    finally:
        holder.kill()
        holder.wait()
    assert target.read_bytes() == b"done"
    assert not abandoned.exists() and not former_self.exists()
    assert alive.exists() and locked.exists() and all(p.exists() for p in foreign)
    symlink = tmp_path / f".y.lidar-ssl-{dead}-2.tmp"
    symlink.symlink_to(target)
    assert sorted(fileio.remove_stale_temporaries(target)) == sorted([alive, locked])  # writer gone: now
    assert symlink.is_symlink() and target.read_bytes() == b"done"  # links are never followed or removed


def test_a_write_in_progress_in_this_process_is_never_cleaned(tmp_path: Path) -> None:
    """Another thread's cleanup (here: a nested write into the same folder) spares our own temporary."""
    seen: list[list[str]] = []

    def write(fh: object) -> None:
        atomic_write_bytes(tmp_path / "other.json", b"{}")  # cleans the folder while we are writing
        seen.append(_temporaries(tmp_path))

    fileio.atomic_write(tmp_path / "ckpt.pt", write)  # type: ignore[arg-type]
    assert len(seen[0]) == 1 and seen[0][0].startswith(".ckpt.pt.lidar-ssl-")
    assert _temporaries(tmp_path) == []


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    atomic_write_bytes(path, b"old")

    def fail(fh: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        fileio.atomic_write(path, fail)  # type: ignore[arg-type]
    assert path.read_bytes() == b"old" and _temporaries(tmp_path) == []


def test_written_files_get_the_umask_mode_without_the_umask_being_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real_umask = os.umask

    def spy(mask: int) -> int:
        calls.append(mask)
        return real_umask(mask)

    previous = real_umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", spy)
        out = atomic_write_bytes(tmp_path / "r.md", b"x")
        ckpt = save_checkpoint(STATE, tmp_path / "c.pt")
    finally:
        real_umask(previous)
    assert calls == []  # never set, not even for a moment: another thread may be creating files
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o640


def test_a_folder_is_scanned_once_per_interval_not_on_every_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache folder filled entry by entry: scanning it on every write made filling it quadratic."""
    scans: list[str] = []
    real_scandir = os.scandir

    def spy(path: Any) -> Any:
        scans.append(str(path))
        return real_scandir(path)

    clock = [1000.0]
    monkeypatch.setattr(fileio.os, "scandir", spy)
    monkeypatch.setattr(fileio.time, "monotonic", lambda: clock[0])
    for i in range(50):
        atomic_write_bytes(tmp_path / f"{i}.png", b"x")
    assert scans == [str(tmp_path)]
    abandoned = tmp_path / f".9.png.lidar-ssl-{_dead_pid()}-0.tmp"  # a writer killed meanwhile
    abandoned.write_bytes(b"x")
    atomic_write_bytes(tmp_path / "50.png", b"x")
    assert abandoned.exists() and len(scans) == 1
    clock[0] += fileio.RESCAN_INTERVAL_S
    atomic_write_bytes(tmp_path / "51.png", b"x")
    assert not abandoned.exists() and len(scans) == 2

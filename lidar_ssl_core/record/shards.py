"""Rotating mcap shards that survive ``kill -9``, with a disk quota and disk-full handling.

A shard is one rosbag2 bag (``<prefix>_<seq>``) written by :class:`~lidar_ssl_core.bag.BagWriter`: into
the hidden staging folder ``.<name>.partial/`` and renamed into place only once closed and fsynced. So:

- a **closed** shard (any non-hidden bag in the folder) is always whole;
- the **open** shard is an mcap in the staging folder whose chunks are written to the file (``os.writev``,
  no user-space buffering) as each one fills up, so a killed process leaves every completed chunk in the
  file; on the next start :meth:`ShardWriter.recover` rewrites what can be read of it, up to its last
  complete chunk (and whatever of the cut chunk decompresses), into ``<name>_recovered`` with
  ``lidar_ssl.recovered`` in the bag's custom data. At most the open chunk (``chunk_size`` bytes of
  messages) is lost.

Rotation: a shard is closed when it holds ``max_bytes`` of messages or spans ``max_duration_s`` of log
time. Quota: after each close the oldest closed shards are deleted until the folder holds at most
``quota_bytes``. Disk full: when the free space drops below ``min_free_bytes`` (checked at most once per
``free_check_s``) or a write fails, the open shard is closed (or left for recovery when even that fails),
writing stops and every message offered meanwhile is counted in ``dropped_disk_full``; writing resumes by
itself once the space is back.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lidar_ssl_core.bag.reader import BagReader
from lidar_ssl_core.bag.writer import BagWriter
from lidar_ssl_core.errors import BagError, BagWriteError

log = logging.getLogger(__name__)

RECOVERED_SUFFIX = "_recovered"
CUSTOM_RECOVERED = "lidar_ssl.recovered"

State = Literal["ok", "disk_full", "error"]


@dataclass(frozen=True)
class OutMessage:
    """One serialized message to store: CDR bytes as received, log time = its header stamp.

    ``ident`` is what tells this message apart from the others of its topic when ``stamp_ns`` does not:
    a copy written at another log time (a shard's preamble) carries its original's stamp, a ``/tf``
    message its bytes (several broadcasters may publish at one stamp). A shard stores each
    :attr:`key` once.
    """

    topic: str
    msgtype: str
    stamp_ns: int
    raw: bytes | memoryview
    latched: bool = False
    ident: int | bytes | None = None

    @property
    def key(self) -> tuple[str, int | bytes]:
        """The message's identity: (topic, its own stamp, or ``ident`` when set)."""
        return (self.topic, self.stamp_ns if self.ident is None else self.ident)

    def at(self, stamp_ns: int, *, latched: bool | None = None) -> OutMessage:
        """The same message written at another log time (keeps its identity)."""
        return OutMessage(
            self.topic,
            self.msgtype,
            stamp_ns,
            self.raw,
            self.latched if latched is None else latched,
            self.key[1],
        )


def unique_messages(msgs: Iterable[OutMessage]) -> list[OutMessage]:
    """``msgs`` without the repeats of a :attr:`OutMessage.key` (the first one stays)."""
    seen: set[tuple[str, int | bytes]] = set()
    out = []
    for msg in msgs:
        if msg.key not in seen:
            seen.add(msg.key)
            out.append(msg)
    return out


@dataclass
class ShardStats:
    """What the shard writer did since start (diagnostics)."""

    state: State = "ok"
    reason: str = ""
    shards_closed: int = 0
    shards_recovered: int = 0
    shards_evicted: int = 0
    messages_written: int = 0
    duplicates_skipped: int = 0  # offered again to the shard that already held them (not a loss)
    bytes_written: int = 0
    dropped_disk_full: int = 0
    write_errors: int = 0
    open_shard: str = ""
    folder_bytes: int = 0  # closed shards, as of the last quota check
    free_bytes: int = 0
    recovered: list[str] = field(default_factory=list)


def bag_size(path: Path) -> int:
    """Bytes of a bag folder (or file)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def closed_shards(folder: Path | str, prefix: str = "shard") -> list[Path]:
    """Closed shards ``<prefix>_<seq>[_recovered]`` of a recorder folder, oldest first (by sequence)."""
    pattern = re.compile(rf"{re.escape(prefix)}_(\d+)(?:{RECOVERED_SUFFIX})?")
    found = [
        (int(m.group(1)), p)
        for p in Path(folder).iterdir()
        if (m := pattern.fullmatch(p.name)) and (p / "metadata.yaml").is_file()
    ]
    return [p for _, p in sorted(found)]


def _free_bytes(path: Path) -> int:
    return int(shutil.disk_usage(path).free)


class ShardWriter:
    """Writes :class:`OutMessage` s into rotating shards in ``folder`` (single thread: the writer's).

    ``preamble(stamp_ns)`` is called at every shard open with the log time of the shard's first message
    and returns the messages each shard must start with (``/tf_static``, the latest CameraInfo of each
    camera, recent ``/tf``), so every shard is a self-contained bag of the project profile.
    """

    def __init__(
        self,
        folder: Path | str,
        *,
        prefix: str = "shard",
        max_bytes: int = 512 << 20,
        max_duration_s: float = 60.0,
        quota_bytes: int = 0,
        min_free_bytes: int = 256 << 20,
        free_check_s: float = 1.0,
        distro: Literal["humble", "jazzy", "kilted"] = "jazzy",
        compression_level: int = 1,
        chunk_size: int = 1 << 20,
        preamble: Callable[[int], Iterable[OutMessage]] | None = None,
        free_bytes: Callable[[Path], int] = _free_bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", prefix):
            raise BagWriteError(f"shard prefix {prefix!r} must be letters, digits, '_' or '-'")
        if max_bytes < 1 or max_duration_s <= 0:
            raise BagWriteError(f"shard limits must be positive: {max_bytes} bytes, {max_duration_s} s")
        self.folder = Path(folder)
        self.prefix = prefix
        self.max_bytes = int(max_bytes)
        self.max_duration_ns = round(max_duration_s * 1e9)
        self.quota_bytes = int(quota_bytes)
        self.min_free_bytes = int(min_free_bytes)
        self.free_check_s = free_check_s
        self.distro = distro
        self.compression_level = compression_level
        self.chunk_size = chunk_size
        self.preamble = preamble
        self._free = free_bytes
        self._clock = clock
        self.stats = ShardStats()
        self._writer: BagWriter | None = None
        self._shard_bytes = 0
        self._shard_start: int | None = None
        self._shard_keys: set[tuple[str, int | bytes]] = set()  # what the open shard holds
        self._seq = 0
        self._last_free_check = -float("inf")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._seq = self._next_seq()

    # ------------------------------------------------------------------------------------ discovery
    def _pattern(self) -> re.Pattern[str]:
        return re.compile(rf"\.?{re.escape(self.prefix)}_(\d+)(?:{RECOVERED_SUFFIX})?(?:\.partial)?")

    def _next_seq(self) -> int:
        pattern = self._pattern()
        seqs = [int(m.group(1)) for p in self.folder.iterdir() if (m := pattern.fullmatch(p.name))]
        return max(seqs, default=-1) + 1

    def closed_shards(self) -> list[Path]:
        """Closed shards in the folder, oldest first (by sequence number)."""
        return closed_shards(self.folder, self.prefix)

    # ------------------------------------------------------------------------------------- recovery
    def recover(self) -> list[Path]:
        """Turn every shard left open by a killed process into a closed one (``*_recovered`` if damaged).

        Call once at start-up, before writing. Returns the shards produced.
        """
        out: list[Path] = []
        pattern = self._pattern()
        for staging in sorted(self.folder.glob(f".{self.prefix}_*.partial")):
            if not pattern.fullmatch(staging.name):
                continue
            name = staging.name[1 : -len(".partial")]
            if name.endswith(RECOVERED_SUFFIX):  # a recovery that was itself interrupted: redo it
                shutil.rmtree(staging, ignore_errors=True)
                continue
            try:
                produced = self._recover_one(staging, name)
            except BagError as err:
                log.error("shard %s cannot be recovered (%s); left in place", staging, err)
                continue
            if produced is not None:
                out.append(produced)
        self.stats.shards_recovered += len(out)
        self.stats.recovered.extend(p.name for p in out)
        self._seq = max(self._seq, self._next_seq())
        return out

    def _recover_one(self, staging: Path, name: str) -> Path | None:
        inner = staging / name
        storage = sorted(inner.glob("*.mcap")) if inner.is_dir() else []
        if not storage:
            log.info("removing empty staging folder %s", staging)
            shutil.rmtree(staging)
            return None
        with BagReader(inner if (inner / "metadata.yaml").exists() else storage) as reader:
            damage = reader.damaged
            if not damage and (inner / "metadata.yaml").exists():
                target = self.folder / name  # killed while closing: the bag is complete, finish the rename
                inner.rename(target)
                shutil.rmtree(staging)
                log.info("shard %s was complete; moved into place", target)
                return target
            if not damage:  # the mcap was finished, its metadata.yaml not written yet
                damage = [f"{storage[0].name}: complete, but the bag's metadata.yaml was never written"]
            # always another name than ``name``: BagWriter(name) would stage into this very folder
            target = self.folder / (name + RECOVERED_SUFFIX)
            topics = reader.topics
            count = 0
            out = BagWriter(
                target, distro=self.distro, compression_level=self.compression_level, overwrite=True
            )
            out.open()
            try:
                for topic, msgtype in topics.items():
                    out.add_topic(topic, msgtype, latched=topic.endswith("tf_static"))
                for msg in reader.raw_messages(on_error="skip"):
                    out.write_raw(msg.topic, msg.log_time_ns, msg.raw)
                    count += 1
                out.set_custom_data(CUSTOM_RECOVERED, "; ".join(damage)[:2000])
            except BaseException:
                out.abort()
                raise
            if count:
                out.close()
            else:  # killed before its first chunk reached the file: nothing to keep
                out.abort()
        shutil.rmtree(staging)
        if not count:
            log.info("shard left open in %s held no complete chunk; removed", staging)
            return None
        log.warning("recovered %d messages of the shard left open into %s", count, target)
        return target

    # -------------------------------------------------------------------------------------- writing
    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def write(self, msg: OutMessage, *, opens: bool = True) -> bool:
        """Store one message (rotating, checking space first); False when it was dropped.

        ``opens=False`` (ancillary messages: ``/tf``, CameraInfo): written only into an open shard, never
        rotating or opening one, so every shard starts with a sample; the preamble carries them over.
        A message the open shard already holds (same :attr:`OutMessage.key`: an image two sweeps
        matched, a ``/tf`` the preamble carried) is not written again; that counts as stored.
        """
        if not opens and self._writer is None:
            return False
        if not self._space_ok():
            self.stats.dropped_disk_full += 1
            return False
        if opens and self._writer is not None and self._should_rotate(msg.stamp_ns):
            self.close_shard()
        try:
            if self._writer is None:
                self._open_shard(msg.stamp_ns)
                self._shard_start = msg.stamp_ns  # the preamble's older /tf does not count
            self._put(msg)
        except BagWriteError as err:
            self._write_failed(err)
            self.stats.dropped_disk_full += 1
            return False
        return True

    def write_sample(self, msgs: Sequence[OutMessage]) -> int:
        """Store the messages of one sample in one shard (rotation only before the first); returns how
        many were written."""
        return sum(self.write(m, opens=i == 0) for i, m in enumerate(msgs))

    def _put(self, msg: OutMessage) -> None:
        assert self._writer is not None
        if msg.key in self._shard_keys:
            self.stats.duplicates_skipped += 1
            return
        self._shard_keys.add(msg.key)
        self._writer.add_topic(msg.topic, msg.msgtype, latched=msg.latched)
        self._writer.write_raw(msg.topic, msg.stamp_ns, msg.raw)
        n = len(msg.raw)
        self._shard_bytes += n
        self.stats.bytes_written += n
        self.stats.messages_written += 1

    def _should_rotate(self, stamp_ns: int) -> bool:
        if self._shard_bytes >= self.max_bytes:
            return True
        return self._shard_start is not None and stamp_ns - self._shard_start >= self.max_duration_ns

    def _open_shard(self, stamp_ns: int) -> None:
        name = f"{self.prefix}_{self._seq:06d}"
        self._seq += 1
        writer = BagWriter(
            self.folder / name,
            distro=self.distro,
            compression_level=self.compression_level,
            chunk_size=self.chunk_size,
        )
        writer.open()
        self._writer = writer
        self._shard_bytes = 0
        self._shard_start = None
        self._shard_keys = set()
        self.stats.open_shard = name
        log.info("recording into shard %s", name)
        for msg in self.preamble(stamp_ns) if self.preamble is not None else ():
            self._put(msg)

    def close_shard(self) -> Path | None:
        """Close the open shard (it becomes visible, whole) and apply the quota; None when none was open."""
        writer, self._writer = self._writer, None
        self.stats.open_shard = ""
        if writer is None:
            return None
        try:
            path = writer.close()
        except BagWriteError as err:
            self._write_failed(err, closing=True)
            return None
        self.stats.shards_closed += 1
        self.enforce_quota()
        return path

    def close(self) -> Path | None:
        """Close for good (end of recording)."""
        return self.close_shard()

    # --------------------------------------------------------------------------------- space, quota
    def enforce_quota(self) -> None:
        """Delete the oldest closed shards until the closed ones fit in ``quota_bytes`` (0 = no quota)."""
        shards = self.closed_shards()
        sizes = {p: bag_size(p) for p in shards}
        total = sum(sizes.values())
        if self.quota_bytes > 0:
            for path in shards:
                if total <= self.quota_bytes:
                    break
                shutil.rmtree(path, ignore_errors=True)
                total -= sizes[path]
                self.stats.shards_evicted += 1
                log.info("quota %d bytes: evicted the oldest shard %s", self.quota_bytes, path.name)
        self.stats.folder_bytes = total

    def _space_ok(self) -> bool:
        now = self._clock()
        if now - self._last_free_check < self.free_check_s and self.stats.state == "ok":
            return True
        if self.stats.state != "ok" and now - self._last_free_check < self.free_check_s:
            return False
        self._last_free_check = now
        try:
            free = self._free(self.folder)
        except OSError as err:
            self._set_state("error", f"cannot read the free space of {self.folder}: {err}")
            return False
        self.stats.free_bytes = free
        if free < self.min_free_bytes:
            if self.stats.state == "ok":
                self._set_state(
                    "disk_full", f"{free} bytes free < min_free_bytes {self.min_free_bytes}: not writing"
                )
                self.close_shard()
            return False
        if self.stats.state != "ok":
            log.warning("free space is back (%d bytes): writing again", free)
            self.recover()
            self._set_state("ok", "")
        return True

    def _write_failed(self, err: BagWriteError, *, closing: bool = False) -> None:
        """A failed write or close: stop writing; the staging folder stays for recovery."""
        self.stats.write_errors += 1
        cause = err.__cause__
        full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
        self._set_state("disk_full" if full else "error", str(err))
        writer, self._writer = self._writer, None
        self.stats.open_shard = ""
        del writer  # not closed, not aborted: its staging folder is recovered when writing resumes
        self._last_free_check = self._clock()
        if closing:
            log.error("could not close a shard (%s); it will be recovered", err)

    def _set_state(self, state: State, reason: str) -> None:
        if state != self.stats.state:
            (log.error if state != "ok" else log.info)("shard writer: %s %s", state, reason)
        self.stats.state = state
        self.stats.reason = reason

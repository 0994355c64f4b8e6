"""Atomic rosbag2 writer (mcap or sqlite3) for Humble, Jazzy or Kilted.

The bag is written into a hidden sibling folder ``.<name>.partial/<name>`` and moved to ``path`` only
when the ``with`` block ends cleanly, so a crash, an exception or Ctrl-C never leaves something at
``path`` that looks like a complete bag; its files are fsynced before that rename, so neither does a
power loss. With ``overwrite=True`` an existing bag is replaced only after the new one is complete.

mcap is written by ``bag.mcap_writer`` (rosbags' file format and metadata.yaml, fewer copies, a zstd level
of choice); sqlite3 by rosbags.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from rosbags.interfaces import Connection, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability
from rosbags.interfaces import QosTime as _QosTime
from rosbags.rosbag2 import WriterError
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin
from rosbags.typesys.store import Typestore

from lidar_ssl_core.bag.mcap_writer import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_ZSTD_LEVEL,
    ZSTD_LEVELS,
    Buffer,
    Rosbag2Writer,
    serialize_parts,
)
from lidar_ssl_core.bag.typestore import METADATA_VERSION, normalize_msgtype, typestore_for
from lidar_ssl_core.errors import BagWriteError

log = logging.getLogger(__name__)

_ZERO = _QosTime(sec=0, nsec=0)


def make_qos(*, latched: bool) -> Qos:
    """Offered QoS recorded for a topic: reliable; latched topics transient-local with depth 1."""
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=1 if latched else 10,
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
        deadline=_ZERO,
        lifespan=_ZERO,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=_ZERO,
        avoid_ros_namespace_conventions=False,
    )


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (created, renamed files) durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:  # e.g. Windows: directories cannot be opened, NTFS needs no such sync
        log.debug("cannot open %s to fsync it: %s", path, err)
        return
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems refuse fsync on a directory
        log.debug("fsync of folder %s: %s", path, err)
    finally:
        os.close(fd)


def _fsync_bag(folder: Path) -> None:
    """fsync each file of a finished bag (one call per file: the data go to disk once), then the folder."""
    for file in sorted(folder.iterdir()):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


class BagWriter:
    """Context manager writing one rosbag2 directory.

    ``compress`` applies to mcap (zstd-compressed chunks, read natively by every mcap reader); sqlite3
    bags are written uncompressed (the most widely readable form). ``compression_level`` is the zstd level:
    3 (rosbags' level, the same bytes as before) by default; 1 compresses KITTI scans ~2-3.5x faster to
    0.79-0.89 of their size instead of 0.64-0.73. ``chunk_size``: uncompressed bytes after which an mcap
    chunk is closed (default 1 MiB, rosbags' value). ``sync`` (default on): at close, every file of the
    bag and its folder are fsynced before the bag is renamed into place, and the parent folder after, so
    a power loss leaves either no bag or a complete one, never a complete-looking empty or cut-short file.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        distro: Literal["humble", "jazzy", "kilted"] = "jazzy",
        storage: Literal["mcap", "sqlite3"] = "mcap",
        compress: bool = True,
        overwrite: bool = False,
        compression_level: int = DEFAULT_ZSTD_LEVEL,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        sync: bool = True,
    ) -> None:
        self.path = Path(path)
        if distro not in METADATA_VERSION:
            raise BagWriteError(f"unknown distro '{distro}' for {self.path}; use humble, jazzy or kilted")
        if storage not in ("mcap", "sqlite3"):
            raise BagWriteError(f"unknown storage '{storage}' for {self.path}; use mcap or sqlite3")
        if self.path.exists() and not overwrite:
            raise BagWriteError(f"{self.path} exists already; pass --overwrite to replace it")
        if self.path.name in ("", ".", ".."):
            raise BagWriteError(f"bag path '{path}' has no name")
        lo, hi = ZSTD_LEVELS
        if not lo <= compression_level <= hi:
            raise BagWriteError(
                f"zstd compression_level {compression_level} for {self.path} is not in {lo}..{hi}"
            )
        if chunk_size < 1:
            raise BagWriteError(f"chunk_size {chunk_size} for {self.path} must be a positive byte count")
        self.compression_level = compression_level
        self.chunk_size = chunk_size
        self.sync = sync
        self.distro = distro
        self.storage = storage
        self.compress = compress and storage == "mcap"
        self.overwrite = overwrite
        self.typestore: Typestore = typestore_for(distro)
        self.version = METADATA_VERSION[distro]
        self._staging = self.path.parent / f".{self.path.name}.partial"
        self._writer: Rosbag2Writer | None = None
        self._connections: dict[str, Connection] = {}
        self._counts: dict[str, int] = {}

    # ------------------------------------------------------------------------------------ lifecycle
    def open(self) -> BagWriter:
        if self._writer is not None:
            raise BagWriteError(f"bag writer for {self.path} is already open")
        if self.path.exists() and not self.overwrite:
            raise BagWriteError(f"{self.path} exists already; pass --overwrite to replace it")
        try:
            if self._staging.exists():
                log.warning("removing leftover partial bag %s", self._staging)
                shutil.rmtree(self._staging)
            self._staging.mkdir(parents=True)
            plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
            writer = Rosbag2Writer(
                self._staging / self.path.name,
                version=self.version,
                storage_plugin=plugin,
                compression_level=self.compression_level,
                chunk_size=self.chunk_size,
            )
            if self.compress:
                writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
            writer.open()
        except (OSError, WriterError) as err:
            shutil.rmtree(self._staging, ignore_errors=True)
            raise BagWriteError(f"cannot create bag {self.path}: {err}") from err
        self._writer = writer
        return self

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self) -> Path:
        """Finish the bag and move it into place; returns ``path``."""
        writer = self._require_open()
        self._writer = None
        built = self._staging / self.path.name
        try:
            writer.close()
            if self.sync:
                _fsync_bag(built)
            if self.path.exists():  # overwrite=True: swap only now that the new bag is complete
                old = self.path.parent / f".{self.path.name}.old"
                shutil.rmtree(old, ignore_errors=True)
                self.path.rename(old)
                built.rename(self.path)
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            else:
                built.rename(self.path)
            if self.sync:
                _fsync_dir(self.path.parent)  # the rename itself
        except (OSError, WriterError) as err:
            raise BagWriteError(f"could not finish bag {self.path}: {err}") from err
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
        log.info("wrote %s (%d messages)", self.path, sum(self._counts.values()))
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; nothing appears at ``path``."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.abort()
            except Exception as err:  # the partial output is deleted anyway
                log.debug("abort of %s: %s", self.path, err)
        shutil.rmtree(self._staging, ignore_errors=True)

    # --------------------------------------------------------------------------------------- writing
    def msg_class(self, msgtype: str) -> Any:
        """Message class of this writer's typestore, e.g. ``msg_class('sensor_msgs/msg/Image')``."""
        name = normalize_msgtype(msgtype)
        try:
            return self.typestore.types[name]
        except KeyError:
            raise BagWriteError(f"message type '{msgtype}' is not in the {self.distro} typestore") from None

    def add_topic(self, topic: str, msgtype: str, *, latched: bool = False) -> None:
        """Declare a topic; ``latched`` records transient-local QoS so ``ros2 bag play`` latches it."""
        writer = self._require_open()
        name = normalize_msgtype(msgtype)
        if topic in self._connections:
            if self._connections[topic].msgtype != name:
                raise BagWriteError(
                    f"topic {topic} already added as {self._connections[topic].msgtype}, not {name}"
                )
            return
        self.msg_class(name)
        try:
            conn = writer.add_connection(
                topic, name, typestore=self.typestore, offered_qos_profiles=[make_qos(latched=latched)]
            )
        except WriterError as err:
            raise BagWriteError(f"cannot add topic {topic} ({name}) to {self.path}: {err}") from err
        self._connections[topic] = conn
        self._counts[topic] = 0

    def write(self, topic: str, stamp_ns: int, msg: Any) -> None:
        """Serialize ``msg`` (a message of ``self.typestore``) with log time ``stamp_ns``."""
        conn = self._connection(topic)
        try:
            if self.storage == "mcap":  # a large byte array goes to the file without being copied here
                parts = serialize_parts(self.typestore, msg, conn.msgtype)
            else:
                parts = [self.typestore.serialize_cdr(msg, conn.msgtype)]
        except Exception as err:  # rosbags raises several types for a message that does not fit its type
            raise BagWriteError(
                f"cannot serialize message for {topic} ({conn.msgtype}) at t={stamp_ns}: {err}"
            ) from err
        # one part: serialize_cdr's fresh buffer, handed over; several: the message's own array among them
        self._write(topic, stamp_ns, parts, owned=len(parts) == 1)

    def write_raw(self, topic: str, stamp_ns: int, data: bytes | memoryview) -> None:
        """Write already CDR-serialized bytes (copying messages between bags without decoding them)."""
        self._write(topic, stamp_ns, [data], owned=False)

    def _write(self, topic: str, stamp_ns: int, parts: list[Buffer], *, owned: bool) -> None:
        """Write one message given as consecutive buffers; unless ``owned``, the caller may reuse them."""
        writer = self._require_open()
        conn = self._connection(topic)
        if stamp_ns < 0:
            raise BagWriteError(f"negative log time {stamp_ns} for {topic}")
        if stamp_ns >= 2**64:
            raise BagWriteError(f"log time {stamp_ns} for {topic} does not fit in 64 bits")
        try:
            writer.write_parts(conn, int(stamp_ns), parts, owned=owned)
        except OSError as err:
            raise BagWriteError(f"cannot write {topic} at t={stamp_ns} to {self.path}: {err}") from err
        self._counts[topic] += 1

    def set_custom_data(self, key: str, value: str) -> None:
        """A string in the bag's ``metadata.yaml`` ``custom_data`` (e.g. the class map of its labels)."""
        self._require_open().set_custom_data(key, value)

    @property
    def message_counts(self) -> dict[str, int]:
        return dict(self._counts)

    def _connection(self, topic: str) -> Connection:
        try:
            return self._connections[topic]
        except KeyError:
            raise BagWriteError(
                f"topic {topic} was not added; call add_topic(topic, msgtype) first"
            ) from None

    def _require_open(self) -> Rosbag2Writer:
        if self._writer is None:
            raise BagWriteError(f"bag writer for {self.path} is not open (use it as a context manager)")
        return self._writer

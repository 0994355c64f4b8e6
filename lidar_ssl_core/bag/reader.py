"""Read rosbag2 bags (directories, standalone .mcap / .db3 files) into deserialized messages.

Built on ``rosbags.highlevel.AnyReader`` with an explicit default typestore (``ROS2_HUMBLE``, see
``bag.typestore``). Each path is opened on its own and the streams are merged by log time, so healthy
and damaged bags can be read together.

Damage policy (truncated or corrupt storage, e.g. a recording that was killed, a copy cut short):

- Opening never fails because a storage file is cut short. When rosbags cannot open an mcap (no footer /
  index) or a sqlite3 file (malformed database), the file is *recovered*: scanned record by record (mcap)
  or row by row (sqlite3) up to the damage. ``BagReader.damaged`` lists what is wrong; ``topics`` and
  ``message_count`` then describe what can be read.
- ``messages(on_error="raise")`` (default) yields every message that can be read and then raises
  ``BagReadError`` naming the file and where it is damaged; ``on_error="skip"`` logs a warning, records
  the problem in ``stats.storage_errors`` and ends normally, so a long job continues with what it got.
  A storage error met while iterating a bag that opened fine is handled the same way.
- A message that fails to deserialize is logged, counted in ``stats.skipped[topic][reason]`` and
  skipped; it never stops the iteration.
- A missing path, a folder that is no bag, a corrupt ``metadata.yaml`` or a file that is not an
  mcap/sqlite3 bag at all are ``BagReadError`` at open.

Recovered files are read in storage order (per mcap chunk sorted by log time, sqlite3 in row order), which
is time order for recorded bags; intact bags are read in log-time order.
"""

from __future__ import annotations

import heapq
import logging
import sqlite3
import struct
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple

import yaml
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Connection
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from lidar_ssl_core.bag.typestore import default_read_typestore, normalize_msgtype
from lidar_ssl_core.errors import BagReadError, TopicNotFoundError

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
MCAP_MAGIC = b"\x89MCAP0\r\n"
SQLITE_MAGIC = b"SQLite format 3\x00"
_STORAGE_SUFFIXES = (".mcap", ".db3")


class BagMessage(NamedTuple):
    """One deserialized message; ``log_time_ns`` is the bag (receive/log) time."""

    topic: str
    msgtype: str
    log_time_ns: int
    msg: Any


@dataclass
class ReadStats:
    """What happened while reading (accumulates over ``messages()`` calls)."""

    read: Counter[str] = field(default_factory=Counter)
    skipped: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    storage_errors: list[str] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return sum(sum(c.values()) for c in self.skipped.values())


class RawBagMessage(NamedTuple):
    """One message as stored (CDR bytes, not deserialized); ``log_time_ns`` is the bag (log) time."""

    topic: str
    log_time_ns: int
    msgtype: str
    raw: bytes | memoryview


class _RawMessage(NamedTuple):
    log_time_ns: int
    topic: str
    msgtype: str
    raw: bytes | memoryview


class _StorageError(Exception):
    """Raised inside a source when its storage cannot be read further."""


# ------------------------------------------------------------------------------------------- sources


class _Source:
    """One bag path (or one storage file) that yields raw messages."""

    path: Path
    topics: dict[str, str]
    counts: dict[str, int]
    start_ns: int
    end_ns: int
    damage: str | None = None
    cause: str | None = None  # short form of ``damage``: where reading stopped, or why it could not open

    def raw(self, topics: set[str], start: int | None, stop: int | None) -> Iterator[_RawMessage]:
        raise NotImplementedError

    def deserialize(self, raw: bytes | memoryview, msgtype: str) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Release files."""


class _AnySource(_Source):
    """A bag rosbags opens: the normal path."""

    def __init__(self, path: Path, typestore: Typestore) -> None:
        self.path = path
        self.reader = AnyReader([path], default_typestore=typestore)
        self.reader.open()
        try:
            conns = self.reader.connections
            self.topics = {}
            self.counts = defaultdict(int)
            for c in conns:
                self.topics.setdefault(c.topic, c.msgtype)
                self.counts[c.topic] += c.msgcount
            n = sum(self.counts.values())
            self.start_ns = self.reader.start_time if n else 0
            self.end_ns = self.reader.end_time - 1 if n else 0
        except BaseException:
            self.reader.close()
            raise

    def raw(self, topics: set[str], start: int | None, stop: int | None) -> Iterator[_RawMessage]:
        conns: list[Connection] = [c for c in self.reader.connections if c.topic in topics]
        if not conns:
            return
        it = self.reader.messages(connections=conns, start=start, stop=stop)
        while True:
            try:
                conn, t, data = next(it)
            except StopIteration:
                return
            except Exception as err:  # rosbags raises ReaderError, zstd/apsw/struct errors on damage
                raise _StorageError(f"{self.path}: storage cannot be read further: {err}") from err
            yield _RawMessage(t, conn.topic, conn.msgtype, data)

    def deserialize(self, raw: bytes | memoryview, msgtype: str) -> Any:
        return self.reader.deserialize(bytes(raw) if isinstance(raw, memoryview) else raw, msgtype)

    def close(self) -> None:
        self.reader.close()


def _typestore_from_defs(defs: Iterable[tuple[str, str, str]], fallback: Typestore) -> Typestore:
    """Typestore from embedded (msgtype, encoding, definition) triples, else the fallback's types."""
    typs: dict[str, Any] = {}
    for msgtype, encoding, text in defs:
        try:
            if encoding == "ros2msg" and text:
                typs.update(get_types_from_msg(text, msgtype))
            elif encoding in ("ros2idl", "omgidl") and text:
                sep = "=" * 80 + "\n"
                parts = text.split(sep)[1:] if text.startswith(f"{sep}IDL: ") else [f"x\n{text}"]
                for part in parts:
                    typs.update(get_types_from_idl(part.split("\n", 1)[1]))
        except Exception as err:  # an unparsable embedded definition: fall back to the distro's
            log.warning("embedded definition of %s cannot be parsed (%s); using the default", msgtype, err)
    for name, fielddef in fallback.fielddefs.items():
        typs.setdefault(name, fielddef)
    store = get_typestore(Stores.EMPTY)
    store.register(typs)
    return store


class _RecoveredSource(_Source):
    """Common part of the two recovery scanners."""

    def __init__(self, path: Path, reason: str, fallback: Typestore) -> None:
        self.path = path
        self.fallback = fallback
        self.topics = {}
        self.counts = defaultdict(int)
        self.start_ns, self.end_ns = 0, 0
        self.damage = reason
        self._typestore: Typestore | None = None
        self._defs: dict[str, tuple[str, str]] = {}

    def _count(self, topic: str, t: int) -> None:
        first = not any(self.counts.values())
        self.counts[topic] += 1
        self.start_ns = t if first else min(self.start_ns, t)
        self.end_ns = t if first else max(self.end_ns, t)

    def deserialize(self, raw: bytes | memoryview, msgtype: str) -> Any:
        if self._typestore is None:
            defs = [(name, enc, text) for name, (enc, text) in self._defs.items()]
            self._typestore = _typestore_from_defs(defs, self.fallback)
        return self._typestore.deserialize_cdr(raw, msgtype)


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _mcap_str(buf: memoryview, pos: int) -> tuple[str, int]:
    (n,) = _U32.unpack_from(buf, pos)
    return bytes(buf[pos + 4 : pos + 4 + n]).decode(), pos + 4 + n


def _mcap_decompress(compression: str, data: bytes, *, partial: bool = False) -> bytes:
    """Decompress a chunk; ``partial`` returns what a cut-short stream yields instead of failing."""
    if compression == "":
        return data
    if compression == "zstd":
        from backports import zstd

        if partial:
            return bytes(zstd.ZstdDecompressor().decompress(data))
        return bytes(zstd.decompress(data))
    if compression == "lz4":
        import lz4.frame  # type: ignore[import-untyped]

        if partial:
            return bytes(lz4.frame.LZ4FrameDecompressor().decompress(data))
        return bytes(lz4.frame.decompress(data))
    raise ValueError(f"unknown chunk compression '{compression}'")


class _McapRecovered(_RecoveredSource):
    """Record-by-record scan of an mcap file without footer/summary (truncated or never closed)."""

    def __init__(self, path: Path, reason: str, fallback: Typestore) -> None:
        super().__init__(path, reason, fallback)
        self._schemas: dict[int, tuple[str, str, str]] = {}
        self._channels: dict[int, tuple[str, str]] = {}
        with path.open("rb") as f:
            if f.read(8) != MCAP_MAGIC:
                raise BagReadError(f"{path} is not an MCAP file (bad magic bytes); {reason}")
        self.size = path.stat().st_size
        self.stop_reason: str | None = None
        for t, topic, _, _ in self._scan(set(), None, None, count_only=True):
            self._count(topic, t)
        for topic, msgtype in self._channels.values():
            self.topics.setdefault(topic, msgtype)
        self._defs = {name: (enc, text) for name, enc, text in self._schemas.values()}
        self.damage = f"{reason}; recovered {sum(self.counts.values())} messages" + (
            f" ({self.stop_reason})" if self.stop_reason else ""
        )
        self.cause = self.stop_reason or reason

    def _records(
        self, buf: memoryview, base: int, *, partial: bool = False
    ) -> Iterator[tuple[int, int, memoryview]]:
        """(opcode, file offset, content) of the records in ``buf`` (a chunk's uncompressed records)."""
        pos = 0
        while pos + 9 <= len(buf):
            op = buf[pos]
            (length,) = _U64.unpack_from(buf, pos + 1)
            if pos + 9 + length > len(buf):
                if partial:  # the rest of a cut-short chunk
                    return
                raise _StorageError(f"record at offset {base + pos} overruns its chunk")
            yield op, base + pos, buf[pos + 9 : pos + 9 + length]
            pos += 9 + length

    def _handle(self, op: int, rec: memoryview) -> tuple[int, int, memoryview] | None:
        """Register schema/channel records; return (channel, log time, data) for a message record."""
        if op == 0x03:
            (sid,) = _U16.unpack_from(rec, 0)
            name, pos = _mcap_str(rec, 2)
            encoding, pos = _mcap_str(rec, pos)
            (n,) = _U32.unpack_from(rec, pos)
            self._schemas[sid] = (name, encoding, bytes(rec[pos + 4 : pos + 4 + n]).decode())
        elif op == 0x04:
            cid, sid = struct.unpack_from("<HH", rec, 0)
            topic, _ = _mcap_str(rec, 4)
            schema = self._schemas.get(sid)
            self._channels[cid] = (topic, schema[0] if schema else "")
        elif op == 0x05:
            cid, _, log_time, _ = struct.unpack_from("<HIQQ", rec, 0)
            return cid, log_time, rec[22:]
        return None

    def _scan(
        self, topics: set[str], start: int | None, stop: int | None, *, count_only: bool = False
    ) -> Iterator[_RawMessage]:
        def wanted(cid: int, t: int) -> _RawMessage | None:
            topic, msgtype = self._channels.get(cid, ("", ""))
            if not topic or not (count_only or topic in topics):
                return None
            if (start is not None and t < start) or (stop is not None and t >= stop):
                return None
            return _RawMessage(t, topic, msgtype, b"")

        with self.path.open("rb") as f:
            f.seek(8)
            while True:
                pos = f.tell()
                head = f.read(9)
                if not head:
                    self.stop_reason = f"file ends at byte {pos} without the MCAP footer"
                    return
                if len(head) < 9:
                    self.stop_reason = f"record header at byte {pos} is cut short (file size {self.size})"
                    return
                op = head[0]
                (length,) = _U64.unpack_from(head, 1)
                if op == 0x02:  # footer: the file is complete after all
                    self.stop_reason = None
                    return
                cut = pos + 9 + length > self.size
                if cut:
                    self.stop_reason = (
                        f"record (opcode 0x{op:02x}) at byte {pos} needs {length} bytes but the file "
                        f"ends at byte {self.size}: truncated"
                    )
                    if op != 0x06:
                        return
                content = memoryview(f.read(length))
                try:
                    found: list[tuple[int, int, memoryview]] = []
                    if op == 0x06:
                        compression, cpos = _mcap_str(content, 28)
                        (csize,) = _U64.unpack_from(content, cpos)
                        data = bytes(content[cpos + 8 : cpos + 8 + csize])
                        chunk = memoryview(_mcap_decompress(compression, data, partial=cut))
                        for iop, _, irec in self._records(chunk, pos, partial=cut):
                            if (m := self._handle(iop, irec)) is not None:
                                found.append(m)
                    elif (m := self._handle(op, content)) is not None:
                        found.append(m)
                except (struct.error, ValueError, UnicodeDecodeError, _StorageError) as err:
                    if not cut:  # a cut chunk keeps the records parsed before the damage
                        self.stop_reason = f"record (opcode 0x{op:02x}) at byte {pos} is corrupt: {err}"
                        return
                except Exception as err:  # decompressor errors have library-specific types
                    if not cut:
                        self.stop_reason = f"chunk at byte {pos} cannot be decompressed: {err}"
                        return
                found.sort(key=lambda m: m[1])
                for cid, t, payload in found:
                    if (hit := wanted(cid, t)) is not None:
                        yield hit._replace(raw=payload)
                if cut:
                    self.stop_reason = (
                        f"{self.stop_reason}; {len(found)} messages salvaged from the cut chunk"
                    )
                    return

    def raw(self, topics: set[str], start: int | None, stop: int | None) -> Iterator[_RawMessage]:
        yield from self._scan(topics, start, stop)
        raise _StorageError(f"{self.path}: {self.damage}")


class _SqliteRecovered(_RecoveredSource):
    """Row-by-row read of a sqlite3 storage file that rosbags cannot open (cut short or malformed)."""

    def __init__(self, path: Path, reason: str, fallback: Typestore) -> None:
        super().__init__(path, reason, fallback)
        with path.open("rb") as f:
            if f.read(16) != SQLITE_MAGIC:
                raise BagReadError(f"{path} is not a sqlite3 database (bad header); {reason}")
        try:
            con = self._connect()
            try:
                self._topic_rows = {
                    int(i): (str(n), str(t))
                    for i, n, t in con.execute("SELECT id, name, type FROM topics").fetchall()
                }
                try:
                    rows = con.execute(
                        "SELECT topic_type, encoding, encoded_message_definition FROM message_definitions"
                    ).fetchall()
                    self._defs = {str(t): (str(e), str(d)) for t, e, d in rows}
                except sqlite3.DatabaseError:
                    self._defs = {}
            finally:
                con.close()
        except sqlite3.DatabaseError as err:
            raise BagReadError(f"{path}: the topics table cannot be read ({err}); {reason}") from err
        self.topics = {n: t for n, t in self._topic_rows.values()}
        self.stop_reason: str | None = None
        for t, topic, _, _ in self._rows(set(self.topics), None, None, with_data=False):
            self._count(topic, t)
        self.damage = f"{reason}; recovered {sum(self.counts.values())} messages" + (
            f" ({self.stop_reason})" if self.stop_reason else ""
        )
        self.cause = self.stop_reason or reason

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True)
        # A file shorter than its header's page count is "malformed" unless writable_schema is on; then
        # sqlite reads the pages that exist (nothing is written: the connection is read-only).
        con.execute("PRAGMA writable_schema=ON")
        return con

    def _rows(
        self, topics: set[str], start: int | None, stop: int | None, *, with_data: bool = True
    ) -> Iterator[_RawMessage]:
        ids = {i: nt for i, nt in self._topic_rows.items() if nt[0] in topics}
        con = self._connect()
        n = 0
        try:
            cols = "topic_id, timestamp, data" if with_data else "topic_id, timestamp, NULL"
            cur = con.execute(f"SELECT {cols} FROM messages")
            while True:
                try:
                    row = cur.fetchone()
                except sqlite3.DatabaseError as err:
                    self.stop_reason = f"rows after the {n}th cannot be read: {err}"
                    return
                if row is None:
                    return
                n += 1
                topic_id, t, data = row
                if topic_id not in ids:
                    continue
                if (start is not None and t < start) or (stop is not None and t >= stop):
                    continue
                yield _RawMessage(
                    int(t), ids[topic_id][0], ids[topic_id][1], data if data is not None else b""
                )
        finally:
            con.close()

    def raw(self, topics: set[str], start: int | None, stop: int | None) -> Iterator[_RawMessage]:
        yield from self._rows(topics, start, stop)
        raise _StorageError(f"{self.path}: {self.damage}")


# -------------------------------------------------------------------------------------- opening paths


def _check_metadata(path: Path) -> tuple[list[Path], str]:
    """Validate a bag folder's metadata.yaml; return its storage files and storage id."""
    meta = path / "metadata.yaml"
    try:
        doc = yaml.safe_load(meta.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise BagReadError(f"{meta} cannot be parsed: {err}") from err
    info = doc.get("rosbag2_bagfile_information") if isinstance(doc, dict) else None
    if not isinstance(info, dict):
        raise BagReadError(f"{meta} has no 'rosbag2_bagfile_information' mapping: not rosbag2 metadata")
    missing = [k for k in ("version", "storage_identifier", "relative_file_paths") if k not in info]
    if missing:
        raise BagReadError(f"{meta} lacks {missing}: corrupt rosbag2 metadata")
    version = info["version"]
    if not isinstance(version, int) or not 1 <= version <= 9:
        raise BagReadError(f"{meta} has version {version!r}; rosbag2 metadata versions 1..9 are supported")
    files = [path / Path(str(p)).name for p in info["relative_file_paths"]]
    if absent := [str(p) for p in files if not p.exists()]:
        raise BagReadError(f"{meta} lists storage files that do not exist: {absent}")
    return files, str(info["storage_identifier"])


def read_custom_data(path: Path) -> dict[str, str]:
    """The ``custom_data`` strings of a bag's ``metadata.yaml`` (e.g. the class map a converter records);
    empty when the bag has none, has no metadata (a bare .mcap/.db3 file) or it cannot be parsed."""
    path = Path(path)
    meta = path / "metadata.yaml" if path.is_dir() else path.parent / "metadata.yaml"
    try:
        doc = yaml.safe_load(meta.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    info = doc.get("rosbag2_bagfile_information") if isinstance(doc, dict) else None
    custom = info.get("custom_data") if isinstance(info, dict) else None
    if not isinstance(custom, dict):
        return {}
    return {str(k): str(v) for k, v in custom.items()}


def _recover(file: Path, reason: str, fallback: Typestore) -> _Source:
    # reported once per bag by the caller (BagReader.damaged, damage_summary): opened again by every
    # worker, a warning here would repeat
    log.debug("%s cannot be opened normally (%s); recovering what can be read", file, reason)
    if file.suffix == ".mcap":
        return _McapRecovered(file, reason, fallback)
    if file.suffix == ".db3":
        return _SqliteRecovered(file, reason, fallback)
    raise BagReadError(f"{file}: {reason}")


def _open_file(file: Path, typestore: Typestore, recover: bool) -> _Source:
    try:
        return _AnySource(file, typestore)
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
        if not recover or file.suffix not in _STORAGE_SUFFIXES:
            raise BagReadError(f"cannot read bag file {file}: {reason}") from err
    return _recover(file, reason, typestore)


def _open_path(path: Path, typestore: Typestore, recover: bool) -> list[_Source]:
    if not path.exists():
        raise BagReadError(f"bag {path} does not exist")
    if path.is_file():
        if path.suffix not in (*_STORAGE_SUFFIXES, ".bag"):
            raise BagReadError(f"{path} is not a bag: expected a rosbag2 folder or a .mcap/.db3 file")
        return [_open_file(path, typestore, recover)]
    if not (path / "metadata.yaml").exists():
        files = sorted(p for p in path.iterdir() if p.suffix in _STORAGE_SUFFIXES)
        if not files:
            raise BagReadError(f"{path} is not a rosbag2 folder: no metadata.yaml and no .mcap/.db3 file")
        log.warning("%s has no metadata.yaml (recording interrupted?); reading %s directly", path, files)
        return [_open_file(f, typestore, recover) for f in files]
    files, storage_id = _check_metadata(path)
    try:
        return [_AnySource(path, typestore)]
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
        if not recover or storage_id not in ("mcap", "sqlite3"):
            raise BagReadError(f"cannot read bag {path}: {reason}") from err
    return [_open_file(f, typestore, recover) for f in files]


# ------------------------------------------------------------------------------------------- reader


class BagReader:
    """Deserialized messages of one or more bags, merged by log time.

    Use as a context manager (``with BagReader(paths) as r``) or through ``open_bag``.
    """

    def __init__(
        self,
        paths: Path | str | Sequence[Path | str],
        *,
        typestore: Typestore | None = None,
        recover: bool = True,
    ) -> None:
        seq = [paths] if isinstance(paths, str | Path) else list(paths)
        if not seq:
            raise BagReadError("no bag path given")
        self.paths = [Path(p) for p in seq]
        self.typestore = typestore if typestore is not None else default_read_typestore()
        self.recover = recover
        self.stats = ReadStats()
        self._sources: list[_Source] | None = None

    # ------------------------------------------------------------------------------------- lifecycle
    def open(self) -> BagReader:
        if self._sources is not None:
            return self
        sources: list[_Source] = []
        try:
            for path in self.paths:
                sources.extend(_open_path(path, self.typestore, self.recover))
        except BaseException:
            for s in sources:
                s.close()
            raise
        self._sources = sources
        return self

    def close(self) -> None:
        sources, self._sources = self._sources, None
        for s in sources or []:
            s.close()

    def __enter__(self) -> BagReader:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def _open_sources(self) -> list[_Source]:
        if self._sources is None:
            raise BagReadError(f"bag reader for {self.paths} is not open (use it as a context manager)")
        return self._sources

    # -------------------------------------------------------------------------------------- metadata
    @property
    def topics(self) -> dict[str, str]:
        """topic -> message type (e.g. 'sensor_msgs/msg/PointCloud2'), sorted by topic."""
        out: dict[str, str] = {}
        for s in self._open_sources:
            for topic, msgtype in s.topics.items():
                if out.setdefault(topic, msgtype) != msgtype:
                    log.warning(
                        "topic %s has type %s in %s but %s elsewhere", topic, msgtype, s.path, out[topic]
                    )
        return dict(sorted(out.items()))

    @property
    def damaged(self) -> list[str]:
        """One line per storage file that had to be recovered (empty for intact bags)."""
        return [f"{s.path}: {s.damage}" for s in self._open_sources if s.damage]

    @property
    def start_ns(self) -> int:
        """Log time of the first message (0 for an empty bag)."""
        times = [s.start_ns for s in self._open_sources if sum(s.counts.values())]
        return min(times) if times else 0

    @property
    def end_ns(self) -> int:
        """Log time of the last message (0 for an empty bag)."""
        times = [s.end_ns for s in self._open_sources if sum(s.counts.values())]
        return max(times) if times else 0

    @property
    def duration(self) -> int:
        """Nanoseconds between the first and the last message."""
        return self.end_ns - self.start_ns

    def message_count(self, topic: str | None = None) -> int:
        """Messages of ``topic`` (all topics when None) that the bag holds."""
        return sum(n for s in self._open_sources for t, n in s.counts.items() if topic is None or t == topic)

    def require_topic(self, name: str, msgtype: str | None = None) -> str:
        """Message type of ``name``; TopicNotFoundError listing the candidates when absent or mistyped."""
        topics = self.topics
        want = normalize_msgtype(msgtype) if msgtype else None
        if name in topics and (want is None or topics[name] == want):
            return topics[name]
        candidates = sorted(t for t, mt in topics.items() if want is None or mt == want)
        what = f"of type {want} " if want else ""
        found = f" (it has type {topics[name]})" if name in topics else ""
        paths = ", ".join(str(p) for p in self.paths)
        raise TopicNotFoundError(
            f"topic {name} {what}not found in {paths}{found}; topics {what}in the bag: "
            f"{candidates or 'none'} (set the topic name in the profile config)"
        )

    # -------------------------------------------------------------------------------------- messages
    def messages(
        self,
        topics: Iterable[str] | None = None,
        *,
        start_ns: int | None = None,
        stop_ns: int | None = None,
        on_error: OnError = "raise",
    ) -> Iterator[BagMessage]:
        """Deserialized messages of ``topics`` (all when None) with start_ns <= log time < stop_ns."""
        for raw, source in self._merged(topics, start_ns, stop_ns, on_error):
            try:
                msg = source.deserialize(raw.raw, raw.msgtype)
            except Exception as err:  # any failure of one message must not stop the stream
                self._skip(raw, err)
                continue
            self.stats.read[raw.topic] += 1
            yield BagMessage(raw.topic, raw.msgtype, raw.log_time_ns, msg)

    def raw_messages(
        self,
        topics: Iterable[str] | None = None,
        *,
        start_ns: int | None = None,
        stop_ns: int | None = None,
        on_error: OnError = "raise",
    ) -> Iterator[RawBagMessage]:
        """Serialized (CDR) messages, not deserialized: for indexing a bag without decoding every cloud.

        Same selection, order, damage handling and ``on_error`` as ``messages``. ``raw`` is the message
        as stored (4-byte CDR encapsulation header first), ``bytes`` or a read-only ``memoryview``; it
        stays valid after the iteration moves on (it keeps its buffer alive), so it may be kept.
        """
        for raw, _ in self._merged(topics, start_ns, stop_ns, on_error):
            self.stats.read[raw.topic] += 1
            yield RawBagMessage(raw.topic, raw.log_time_ns, raw.msgtype, raw.raw)

    def _merged(
        self,
        topics: Iterable[str] | None,
        start_ns: int | None,
        stop_ns: int | None,
        on_error: OnError,
    ) -> Iterator[tuple[_RawMessage, _Source]]:
        """Raw messages of every source merged by log time; storage errors handled per ``on_error``."""
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        sources = self._open_sources
        available = self.topics
        if topics is None:
            wanted = set(available)
        else:
            wanted = {topics} if isinstance(topics, str) else set(topics)
            if missing := sorted(wanted - set(available)):
                raise TopicNotFoundError(
                    f"topics {missing} not found in {', '.join(map(str, self.paths))}; "
                    f"available: {sorted(available)}"
                )
        errors: list[str] = []
        known = {f"{s.path}: {s.damage}" for s in sources if s.damage}  # reported when opened
        streams = [
            self._guarded(s, s.raw(wanted & set(s.topics), start_ns, stop_ns), errors) for s in sources
        ]
        yield from (
            streams[0] if len(streams) == 1 else heapq.merge(*streams, key=lambda x: x[0].log_time_ns)
        )
        if errors:
            self.stats.storage_errors.extend(errors)
            if on_error == "raise":
                raise BagReadError(
                    "; ".join(errors) + " (pass on_error='skip' to keep what was read and continue)"
                )
            for e in errors:
                log.log(logging.DEBUG if e in known else logging.WARNING, "stopped reading early: %s", e)

    @staticmethod
    def _guarded(
        source: _Source, it: Iterator[_RawMessage], errors: list[str]
    ) -> Iterator[tuple[_RawMessage, _Source]]:
        try:
            for raw in it:
                yield raw, source
        except _StorageError as err:
            errors.append(str(err))

    def _skip(self, raw: _RawMessage, err: Exception) -> None:
        reason = f"{type(err).__name__}: {str(err)[:120]}"
        counter = self.stats.skipped[raw.topic]
        level = logging.WARNING if reason not in counter else logging.DEBUG
        counter[reason] += 1
        log.log(
            level,
            "skipping message on %s at t=%d: cannot deserialize (%s)",
            raw.topic,
            raw.log_time_ns,
            reason,
        )


@dataclass(frozen=True)
class DamageSummary:
    """What a damaged bag gave and what it lost, for one line of output."""

    bag: Path
    recovered: dict[str, int]  # topic -> messages that can be read
    expected: dict[str, int] | None  # topic -> messages metadata.yaml lists; None when it lists none
    causes: tuple[str, ...]  # one per damaged storage file

    def lost(self, topic: str | None = None) -> int | None:
        """Messages (of ``topic``; all when None) listed in metadata.yaml but unreadable; None: unknown."""
        if self.expected is None:
            return None
        topics = [topic] if topic is not None else list(self.expected)
        return sum(max(0, self.expected.get(t, 0) - self.recovered.get(t, 0)) for t in topics)

    def line(self, sweeps_topic: str | None = None) -> str:
        """``<bag>: damaged; recovered N of M messages (n of m sweeps), lost K; <cause>``."""
        got = sum(self.recovered.values())
        if self.expected is None:
            counts = f"recovered {got} messages, lost: unknown (metadata.yaml lists no message counts)"
        else:
            counts = f"recovered {got} of {sum(self.expected.values())} messages, lost {self.lost()}"
            if sweeps_topic is not None and sweeps_topic in self.expected:
                counts += (
                    f" ({self.recovered.get(sweeps_topic, 0)} of {self.expected[sweeps_topic]} "
                    f"{sweeps_topic} messages readable)"
                )
        return f"{self.bag}: damaged; {counts}; {'; '.join(self.causes)}"


def _listed_counts(bag: Path) -> dict[str, int] | None:
    """topic -> message_count of a bag folder's metadata.yaml; None when absent or all zero."""
    meta = bag / "metadata.yaml" if bag.is_dir() else bag.parent / "metadata.yaml"
    try:
        info = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]
        counts = {
            str(t["topic_metadata"]["name"]): int(t["message_count"])
            for t in info["topics_with_message_count"]
        }
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None
    return counts if any(counts.values()) else None


def damage_summary(bag: Path | str, *, typestore: Typestore | None = None) -> DamageSummary | None:
    """None for an intact bag; else what can be read of it against what its metadata.yaml lists.

    Opening a damaged bag recovers what it can (the module's damage policy); this is the one place that
    says so, so commands print one line per damaged bag and ``--strict`` can refuse it.
    """
    path = Path(bag)
    with BagReader(path, typestore=typestore) as reader:
        sources = reader._open_sources
        causes = tuple(f"{s.path.name}: {s.cause or s.damage}" for s in sources if s.damage)
        if not causes:
            return None
        recovered = {t: reader.message_count(t) for t in reader.topics}
    return DamageSummary(path, recovered, _listed_counts(path), causes)


def open_bag(
    paths: Path | str | Sequence[Path | str], *, typestore: Typestore | None = None, recover: bool = True
) -> BagReader:
    """An opened BagReader (close it, or use it in a ``with`` block)."""
    return BagReader(paths, typestore=typestore, recover=recover).open()


__all__ = [
    "BagMessage",
    "BagReader",
    "DamageSummary",
    "OnError",
    "RawBagMessage",
    "ReadStats",
    "damage_summary",
    "open_bag",
    "read_custom_data",
]

"""What every dataset converter shares: options, units of work, the per-unit runner and its summary.

A converter turns a dataset into a list of :class:`ConversionUnit` (one scene, drive, sequence or
calibration group each) that only hold paths, stamps and small matrices, so they are cheap to build in
the parent process and to send to worker processes. Each unit writes one bag through ``BagWriter``'s
atomic staging: a unit that fails (missing file, truncated scan, table that does not match) leaves
nothing at its output path, its error is recorded with the file it names, and the other units go on.

Messages are written in stamp order (log time = header stamp), ``/tf_static`` first, as a recorder would.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.bag.writer import BagWriter
from lidar_ssl_core.bag_formats import Distro, Storage
from lidar_ssl_core.errors import DatasetError, LidarSslError
from lidar_ssl_core.geometry.transforms import Matrix4, matrix_to_quat_xyzw, quat_xyzw_to_matrix
from lidar_ssl_core.msg.camera_info import make_camera_info
from lidar_ssl_core.msg.image import compressed_from_bytes, compressed_image_size
from lidar_ssl_core.msg.stamps import make_header
from lidar_ssl_core.msg.tf import make_tf_message
from lidar_ssl_core.types import CameraIntrinsics, StampedTransform

if TYPE_CHECKING:
    from lidar_ssl_core.config import ProfileConfig

log = logging.getLogger(__name__)


POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"

#: frame id of the LiDAR in every converted bag (the profile's default)
LIDAR_FRAME = "lidar_top"

#: Order of messages sharing one stamp: poses before the data they serve, the cloud before images.
_TOPIC_RANK = {"tf": 0, "lidar": 1, "info": 2, "image": 3}


@dataclass(frozen=True)
class Topics:
    """Topic names and frame ids of the profile, as plain data for worker processes.

    Built from a ``ProfileConfig`` in the parent process: importing ``lidar_ssl_core.config`` costs a
    second (it pulls in torch), which spawned workers should not pay.
    """

    lidar_topic: str
    camera_image_topic: str
    camera_info_topic: str
    tf_topic: str
    tf_static_topic: str
    base_frame: str
    world_frame: str
    label_field: str

    @classmethod
    def from_profile(cls, profile: ProfileConfig | None = None) -> Topics:
        if profile is None:
            from lidar_ssl_core.config import ProfileConfig

            profile = ProfileConfig()
        return cls(**{f: getattr(profile, f) for f in cls.__dataclass_fields__})

    def image_topic(self, camera: str) -> str:
        return self.camera_image_topic.format(camera=camera)

    def info_topic(self, camera: str) -> str:
        return self.camera_info_topic.format(camera=camera)


@dataclass(frozen=True)
class ConvertOptions:
    """How bags are written (shared by every converter).

    ``compress`` (zstd mcap chunks) is off by default: rosbags compresses at zstd level 3, ~150 MB/s on
    point clouds on one core, which makes conversion CPU-bound, and JPEG/PNG do not compress further.
    ``topics`` defaults to the profile's defaults (``ProfileConfig()``).
    """

    out_dir: Path
    distro: Distro = "jazzy"
    storage: Storage = "mcap"
    compress: bool = False
    overwrite: bool = False
    skip_existing: bool = False
    workers: int = 1
    topics: Topics | None = None

    def bag_path(self, name: str) -> Path:
        return Path(self.out_dir) / name

    def resolved(self) -> ConvertOptions:
        """These options with ``topics`` filled in (done once, in the parent process)."""
        return self if self.topics is not None else replace(self, topics=Topics.from_profile())


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a conversion: ``bytes_read`` more input consumed; ``result`` set when a unit ends."""

    unit: str
    bytes_read: int = 0
    result: UnitResult | None = None


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class UnitResult:
    """Outcome of one unit (one output bag)."""

    name: str
    path: Path
    status: Literal["ok", "failed", "skipped", "dry-run"]
    frames: int = 0
    messages: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


@dataclass
class ConvertSummary:
    """Every unit's result plus totals (what the CLI prints, what the benchmark measures)."""

    results: list[UnitResult]
    seconds: float

    @property
    def failed(self) -> list[UnitResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def bytes_in(self) -> int:
        return sum(r.bytes_in for r in self.results)

    @property
    def bytes_out(self) -> int:
        return sum(r.bytes_out for r in self.results)

    @property
    def mb_per_s_written(self) -> float:
        return self.bytes_out / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        out = []
        for r in self.results:
            line = f"{r.name}: {r.status}"
            if r.status in ("ok", "dry-run"):
                line += f", {r.frames} frames, {r.bytes_in / 1e6:.1f} MB in"
            if r.status == "ok":
                line += f", {r.messages} messages, {r.bytes_out / 1e6:.1f} MB out -> {r.path}"
            if r.error:
                line += f": {r.error}"
            out.append(line)
        if self.results and all(r.status == "dry-run" for r in self.results):
            out.append(
                f"dry run: {len(self.results)} bags would be written "
                f"from {self.bytes_in / 1e6:.1f} MB of input"
            )
            return out
        ok = sum(r.status == "ok" for r in self.results)
        out.append(
            f"{ok} of {len(self.results)} bags written, {len(self.failed)} failed; wrote "
            f"{self.bytes_out / 1e6:.1f} MB in {self.seconds:.1f} s ({self.mb_per_s_written:.1f} MB/s)"
        )
        return out


class ConversionUnit(Protocol):
    """One output bag's worth of work; must be picklable (it is sent to worker processes)."""

    @property
    def name(self) -> str:
        """Output bag name (a folder under the output directory)."""
        ...

    def input_files(self) -> list[Path]:
        """Every file the unit reads (for byte counts and ``--dry-run``)."""
        ...

    @property
    def n_frames(self) -> int: ...

    def write(self, writer: BagWriter, profile: Topics, advance: Callable[[int], None]) -> None:
        """Write every message; call ``advance(n)`` after reading ``n`` input bytes."""
        ...


# ------------------------------------------------------------------------------------------ runner
def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _bag_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_unit(
    unit: ConversionUnit, options: ConvertOptions, progress: ProgressCallback | None = None
) -> UnitResult:
    """Write one unit's bag; any error becomes a failed result (the bag is never left half-written)."""
    path = options.bag_path(unit.name)
    if path.exists() and options.skip_existing:
        return UnitResult(unit.name, path, "skipped", error="output exists (skip-existing)")
    start = time.perf_counter()
    read = 0

    def advance(n: int) -> None:
        nonlocal read
        read += n
        if progress is not None:
            progress(ProgressEvent(unit.name, n))

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with BagWriter(
            path,
            distro=options.distro,
            storage=options.storage,
            compress=options.compress,
            # zstd level 1: ~2x the speed of level 3 for ~10 % more bytes on point clouds (docs/converters.md)
            compression_level=1,
            overwrite=options.overwrite,
        ) as writer:
            unit.write(writer, options.topics or Topics.from_profile(), advance)
            messages = sum(writer.message_counts.values())
    except LidarSslError as err:
        log.debug("%s: %s", unit.name, err)  # reported once, by the summary (ConvertSummary.lines)
        return UnitResult(unit.name, path, "failed", bytes_in=read, error=str(err))
    except Exception as err:  # unexpected (a bug or an odd file): report it, let the other units go on
        log.debug("%s: unexpected error", unit.name, exc_info=True)  # traceback with lidar-ssl -v
        return UnitResult(unit.name, path, "failed", bytes_in=read, error=f"{type(err).__name__}: {err}")
    return UnitResult(
        unit.name,
        path,
        "ok",
        frames=unit.n_frames,
        messages=messages,
        bytes_in=read,
        bytes_out=_bag_size(path),
        seconds=time.perf_counter() - start,
    )


def dry_run(units: Sequence[ConversionUnit], options: ConvertOptions) -> ConvertSummary:
    """What a conversion would do: units, frames, input bytes, and outputs that already exist."""
    results = []
    for unit in units:
        path = options.bag_path(unit.name)
        note = None
        if path.exists():
            if options.skip_existing:
                note = "exists, would be skipped"
            else:
                note = (
                    "exists, would be replaced" if options.overwrite else "exists: would fail (--overwrite)"
                )
        results.append(
            UnitResult(
                unit.name,
                path,
                "dry-run",
                frames=unit.n_frames,
                bytes_in=sum(_size(p) for p in unit.input_files()),
                error=note,
            )
        )
    return ConvertSummary(results, 0.0)


def run_units(
    units: Sequence[ConversionUnit],
    options: ConvertOptions,
    progress: ProgressCallback | None = None,
) -> ConvertSummary:
    """Convert every unit, in ``options.workers`` processes when there are several units.

    With one worker, ``progress`` gets an event per file read; with several, one event per finished unit
    (carrying that unit's input bytes). Results come back in the units' order.
    """
    if not units:
        raise DatasetError("nothing to convert: no scene/sequence/frame matched the selection")
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise DatasetError(
            f"two units would write the same bag: {sorted(n for n in names if names.count(n) > 1)}"
        )
    start = time.perf_counter()
    options = options.resolved()
    workers = max(1, min(options.workers, len(units)))
    results: dict[str, UnitResult] = {}
    if workers == 1:
        for unit in units:
            result = run_unit(unit, options, progress)
            results[unit.name] = result
            if progress is not None:
                progress(ProgressEvent(unit.name, 0, result))
    else:
        for result in _run_parallel(units, options, workers):
            results[result.name] = result
            if progress is not None:
                progress(ProgressEvent(result.name, result.bytes_in, result))
    return ConvertSummary([results[n] for n in names], time.perf_counter() - start)


def _run_parallel(
    units: Sequence[ConversionUnit], options: ConvertOptions, workers: int
) -> Iterator[UnitResult]:
    """Spawned processes (no fork: the parent may hold threads, e.g. a progress bar or the devkit)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: dict[Future[UnitResult], ConversionUnit] = {
            pool.submit(run_unit, unit, options): unit for unit in units
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                unit = pending.pop(future)
                try:
                    yield future.result()
                except Exception as err:  # the worker died (killed, out of memory)
                    yield UnitResult(
                        unit.name, options.bag_path(unit.name), "failed", error=f"worker failed: {err!r}"
                    )


def default_workers() -> int:
    """One process per core, at most 8 (conversion is I/O-bound past a few processes)."""
    return max(1, min(8, os.cpu_count() or 1))


# ------------------------------------------------------------------------------------ file reading
def read_bytes(path: Path, what: str) -> bytes:
    """A dataset file's bytes; a missing or unreadable file is a DatasetError naming it."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{what} file {path} is missing") from None
    except OSError as err:
        raise DatasetError(f"{what} file {path} cannot be read: {err}") from err


def read_float_records(path: Path, width: int, what: str) -> tuple[npt.NDArray[np.float32], int]:
    """(N, width) float32 from a raw little-endian .bin; a size not a multiple of a record is a DatasetError.

    A cut-short scan is refused rather than silently dropping its partial last point: it means the copy
    of the dataset is damaged, and the error names the file to fetch again.
    """
    raw = read_bytes(path, what)
    record = 4 * width
    if len(raw) % record:
        raise DatasetError(
            f"{what} file {path} is truncated or not {width} x float32 per point: {len(raw)} bytes is not "
            f"a multiple of {record}"
        )
    return np.frombuffer(raw, dtype="<f4").reshape(-1, width), len(raw)


def read_labels(path: Path, dtype: str, n_points: int, what: str) -> tuple[np.ndarray, int]:
    """Per-point labels; their count must equal the sweep's point count."""
    raw = read_bytes(path, what)
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize or len(raw) // itemsize != n_points:
        raise DatasetError(
            f"{what} file {path} has {len(raw)} bytes = {len(raw) / itemsize:g} labels of {dtype}, "
            f"but the sweep has {n_points} points"
        )
    return np.frombuffer(raw, dtype=dtype), len(raw)


# ------------------------------------------------------------------------------------ message helpers
def orthonormal(T: Matrix4) -> Matrix4:
    """``T`` with its rotation replaced by the one its tf quaternion encodes (what a reader gets back)."""
    q = matrix_to_quat_xyzw(T[:3, :3])
    out = np.eye(4)
    out[:3, :3] = quat_xyzw_to_matrix(q / np.linalg.norm(q))
    out[:3, 3] = T[:3, 3]
    return out


_POINTFIELD_TYPE = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 8}


def lidar_message(
    writer: BagWriter,
    columns: dict[str, np.ndarray],
    stamp_ns: int,
    frame_id: str = LIDAR_FRAME,
    *,
    packed: np.ndarray | None = None,
) -> Any:
    """PointCloud2 of packed little-endian columns, built in one pass (no zero-fill, no extra copy).

    Same layout as ``msg.make_pointcloud2`` (fields packed in column order). ``packed``, a C-contiguous
    (N, k) float32 block whose k columns are ``columns`` in order (a KITTI scan's x y z reflectance
    rows), is used as the message buffer as it is.
    """
    names = list(columns)
    dtype = np.dtype([(n, columns[n].dtype.newbyteorder("<")) for n in names])
    n = int(columns[names[0]].shape[0])
    if packed is not None:
        if (
            packed.dtype != np.dtype("<f4")
            or packed.shape != (n, len(names))
            or dtype.itemsize != 4 * len(names)
        ):
            raise ValueError(f"packed block {packed.shape} {packed.dtype} does not match columns {names}")
        data = np.ascontiguousarray(packed).reshape(-1).view(np.uint8)
    else:
        points = np.empty(n, dtype=dtype)
        for name in names:
            points[name] = columns[name]
        data = points.view(np.uint8)
    offsets = {name: int(dtype.fields[name][1]) for name in names} if dtype.fields else {}
    xyz_ok = all(bool(np.isfinite(columns[c]).all()) for c in ("x", "y", "z") if c in columns)
    types = writer.typestore.types
    field_cls = types["sensor_msgs/msg/PointField"]
    fields = [
        field_cls(
            name=name,
            offset=offsets[name],
            datatype=_POINTFIELD_TYPE[f"{dtype[name].kind}{dtype[name].itemsize}"],
            count=1,
        )
        for name in names
    ]
    return types["sensor_msgs/msg/PointCloud2"](
        header=make_header(writer.typestore, stamp_ns, frame_id),
        height=1,
        width=n,
        fields=fields,
        is_bigendian=False,
        point_step=dtype.itemsize,
        row_step=dtype.itemsize * n,
        data=data,
        is_dense=xyz_ok,
    )


def image_message(
    writer: BagWriter, data: bytes, stamp_ns: int, frame_id: str, path: Path, size: tuple[int, int] | None
) -> Any:
    """CompressedImage with the file's bytes unchanged; ``size`` (w, h), when known, must match the file."""
    try:
        msg = compressed_from_bytes(writer.typestore, np.frombuffer(data, dtype=np.uint8), stamp_ns, frame_id)
        actual = compressed_image_size(msg)
    except LidarSslError as err:
        raise DatasetError(f"image file {path} is not a readable JPEG/PNG: {err}") from err
    if size is not None and tuple(actual) != tuple(size):
        raise DatasetError(
            f"image file {path} is {actual[0]}x{actual[1]} but the dataset's tables/calibration say "
            f"{size[0]}x{size[1]}"
        )
    return msg


def info_message(writer: BagWriter, intrinsics: CameraIntrinsics, stamp_ns: int) -> Any:
    return make_camera_info(writer.typestore, intrinsics, stamp_ns)


def tf_message(writer: BagWriter, transforms: Sequence[StampedTransform]) -> Any:
    return make_tf_message(writer.typestore, transforms)


@dataclass(frozen=True, order=True)
class Event:
    """One message to write: sorted by stamp, then by kind (poses, cloud, info, image), then sequence."""

    stamp_ns: int
    rank: int
    seq: int
    kind: str = field(compare=False)
    key: Any = field(compare=False, default=None)


class EventList:
    """Collects events of a unit in any order and hands them back in write order."""

    def __init__(self) -> None:
        self._events: list[Event] = []

    def add(self, stamp_ns: int, kind: str, key: Any = None) -> None:
        if stamp_ns < 0:
            raise DatasetError(f"negative stamp {stamp_ns} for {kind} {key}")
        self._events.append(Event(int(stamp_ns), _TOPIC_RANK[kind], len(self._events), kind, key))

    def sorted(self) -> list[Event]:
        return sorted(self._events)

    @property
    def first_stamp(self) -> int:
        return min(e.stamp_ns for e in self._events) if self._events else 0


def add_profile_topics(
    writer: BagWriter, profile: Topics, cameras: Sequence[str], *, poses: bool, images: bool = True
) -> None:
    writer.add_topic(profile.tf_static_topic, TF_MESSAGE, latched=True)
    if poses:
        writer.add_topic(profile.tf_topic, TF_MESSAGE)
    writer.add_topic(profile.lidar_topic, POINTCLOUD2)
    for name in cameras:
        if images:
            writer.add_topic(profile.image_topic(name), COMPRESSED_IMAGE)
        writer.add_topic(profile.info_topic(name), CAMERA_INFO)


def check_consistent_stamps(stamps: Sequence[int], what: str) -> None:
    """Stamps of one sensor, in frame order, must strictly increase (unique per topic).

    Messages are written sorted by stamp, so a repeated or backwards stamp would silently reorder or
    pair the wrong frames; it means the dataset's timestamps are broken, and only that unit fails.
    ``what`` names the file or sensor; entries are counted from 1 (a line of a timestamps file).
    """
    arr = np.asarray(stamps, dtype=np.int64)
    if arr.size < 2:
        return
    step = np.diff(arr)
    if np.any(step <= 0):
        bad = int(np.nonzero(step <= 0)[0][0])
        how = "repeats" if step[bad] == 0 else "goes back"
        raise DatasetError(
            f"{what}: the stamp of entry {bad + 2} {how} ({arr[bad]} ns at entry {bad + 1}, "
            f"{arr[bad + 1]} ns at entry {bad + 2}); stamps of one sensor must strictly increase"
        )


def plan_failure(kind: str, name: str, err: Exception) -> tuple[str, str]:
    """(unit name, error) of a unit that cannot be planned; an unexpected error's traceback is logged
    at debug level (the summary carries the error itself).

    The ``plan_*`` functions catch every exception per unit, as ``run_unit`` does per bag, so one odd
    file (an empty oxts row, a table that does not match) fails only its unit.
    """
    if isinstance(err, LidarSslError):  # reported once, by the summary
        log.debug("%s %s: %s", kind, name, err)
        return name, str(err)
    log.debug("%s %s: unexpected error while planning", kind, name, exc_info=err)  # lidar-ssl -v
    return name, f"{type(err).__name__}: {err}"


__all__ = [
    "CAMERA_INFO",
    "COMPRESSED_IMAGE",
    "LIDAR_FRAME",
    "POINTCLOUD2",
    "TF_MESSAGE",
    "ConversionUnit",
    "ConvertOptions",
    "ConvertSummary",
    "Distro",
    "Event",
    "EventList",
    "ProgressCallback",
    "ProgressEvent",
    "Storage",
    "Topics",
    "UnitResult",
    "add_profile_topics",
    "check_consistent_stamps",
    "default_workers",
    "dry_run",
    "orthonormal",
    "plan_failure",
    "read_bytes",
    "read_float_records",
    "read_labels",
    "run_unit",
    "run_units",
]


def execute(
    units: Sequence[ConversionUnit],
    options: ConvertOptions,
    *,
    plan_failures: Sequence[tuple[str, str]] = (),
    progress: ProgressCallback | None = None,
    dry: bool = False,
) -> ConvertSummary:
    """Run (or dry-run) the units; what could not even be planned is listed as failed, by name."""
    failed = [UnitResult(name, options.bag_path(name), "failed", error=err) for name, err in plan_failures]
    if not units and failed:
        return ConvertSummary(failed, 0.0)
    summary = dry_run(units, options) if dry else run_units(units, options, progress)
    summary.results.extend(failed)
    return summary

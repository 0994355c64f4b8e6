"""LiDAR-pivot camera synchronisation, the same code offline (bags) and online (live callbacks).

Each LiDAR sweep (the pivot, like a nuScenes keyframe) is grouped with the *nearest* message of each camera
within ``slop_ns`` (``|t_cam - t_lidar| <= slop``; ties go to the earlier image). A sweep's choice for a
camera is final once that camera's window has closed, i.e. a message stamped later than
``t_lidar + slop`` has arrived on it: with per-camera messages arriving in stamp order nothing better can
come, so the result is the offline optimum and does not depend on how the streams interleave. A group is
emitted as soon as every camera's choice is final, so latency is bounded by about slop + one camera period.

Why not ``message_filters.ApproximateTimeSynchronizer``: its Python version is greedy and triggered only by
the newest message (a group is the first product of candidates, not the nearest image per sweep), it runs the
user callback while holding its lock (a slow consumer blocks every input), it evicts silently (no count of
what was dropped or why), it has no notion of a pivot sensor, and it needs rclpy, which is not installable
where this library runs. Here the callback ``on_group`` runs outside the internal lock (with several feeding
threads, callbacks of different groups may run concurrently and in any order; each group carries its stamps).

Choices:

* An image may be paired with more than one sweep (each sweep independently takes its nearest image, as
  nuScenes does per keyframe). With 10 Hz LiDAR and slop below half the LiDAR period, windows do not
  overlap, so in practice an image pairs with at most one sweep; allowing reuse keeps the pairing
  independent of arrival order.
* Bounded memory: a camera queue holds at most ``queue_size`` messages (the oldest is evicted, counted as
  ``queue_overflow`` unless it was already matched), and at most ``max_pending`` sweeps wait for windows
  to close; beyond that the oldest sweep is finalised with what is there (``forced``). A camera that never
  publishes therefore costs ``max_pending`` sweeps of latency, not unbounded memory.
* Out of order: camera messages are inserted sorted; one too old to match any sweep that can still come
  (``stamp <= last finalised sweep - slop``) is ``stale_camera``. A sweep older than the last finalised one is
  ``stale_lidar``. Repeated stamps are ``duplicate_*``.
* ``flush()`` ends the stream: every pending sweep is finalised and the camera queues are emptied.

Accounting (exact, see :class:`SyncStats`): every sweep is emitted, dropped for one reason, or pending;
every camera message is matched, unused, stale, duplicate, evicted by overflow, or still queued.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar, cast

from lidar_ssl_core.errors import SyncError

log = logging.getLogger(__name__)

L = TypeVar("L")
C = TypeVar("C")


@dataclass(frozen=True)
class CameraMatch(Generic[C]):
    """The image chosen for one camera of a group."""

    stamp_ns: int
    item: C
    offset_ns: int  # t_camera - t_lidar


@dataclass(frozen=True)
class SyncedGroup(Generic[L, C]):
    """One sweep and the matched images (cameras absent from ``cameras`` are listed in ``missing``)."""

    lidar_stamp_ns: int
    lidar: L
    cameras: dict[str, CameraMatch[C]]
    missing: tuple[str, ...] = ()
    forced: bool = False  # finalised before every camera window closed (pending bound or flush)


@dataclass
class SyncStats:
    """Counters since construction. Every input is counted exactly once, in its final state."""

    lidar_received: int = 0
    camera_received: int = 0
    groups_emitted: int = 0
    groups_partial: int = 0  # emitted with at least one camera missing (require_all=False)
    forced: int = 0  # sweeps finalised before all windows closed (not a drop)
    # sweep drops
    lidar_without_cameras: int = 0  # no camera had an image within slop
    incomplete_group: int = 0  # require_all and at least one camera missing
    stale_lidar: int = 0  # older than a sweep already finalised (out of order)
    duplicate_lidar: int = 0  # same stamp as a pending or the last finalised sweep
    # camera message fates
    camera_used: int = 0  # matched to at least one sweep, then released
    camera_unused: int = 0  # released without ever being the nearest image of a sweep
    stale_camera: int = 0  # arrived too old to match any sweep still to come
    duplicate_camera: int = 0  # same camera, same stamp as a queued message
    queue_overflow: int = 0  # evicted unmatched because the camera queue was full
    # current state
    pending_lidar: int = 0
    queued_camera: int = 0
    missing_per_camera: dict[str, int] = field(default_factory=dict)  # finalised sweeps without it

    @property
    def lidar_dropped(self) -> int:
        return self.lidar_without_cameras + self.incomplete_group + self.stale_lidar + self.duplicate_lidar

    @property
    def camera_dropped(self) -> int:
        return self.camera_unused + self.stale_camera + self.duplicate_camera + self.queue_overflow


class _CamMsg:
    __slots__ = ("item", "stamp", "used")

    def __init__(self, stamp: int, item: object) -> None:
        self.stamp = stamp
        self.item = item
        self.used = False


class _Sweep:
    __slots__ = ("item", "matches", "stamp")

    def __init__(self, stamp: int, item: object) -> None:
        self.stamp = stamp
        self.item = item
        self.matches: dict[str, _CamMsg | None] = {}  # camera -> final choice (None = nothing in window)


class LidarCameraSynchronizer(Generic[L, C]):
    """Groups each LiDAR sweep with the nearest image of every camera within ``slop_ns``.

    Feed it from one loop (offline, messages in log-time order) or from several callback threads
    (online); ``add_*`` and ``flush`` return the groups that became final and also pass each to
    ``on_group`` (outside the lock). Thread-safe.
    """

    def __init__(
        self,
        cameras: Sequence[str],
        slop_ns: int,
        queue_size: int = 8,
        require_all: bool = False,
        *,
        max_pending: int | None = None,
        on_group: Callable[[SyncedGroup[L, C]], None] | None = None,
    ) -> None:
        names = tuple(cameras)
        if not names:
            raise SyncError("LidarCameraSynchronizer needs at least one camera name")
        if len(set(names)) != len(names):
            raise SyncError(f"camera names must be unique, got {list(names)}")
        if slop_ns < 0:
            raise SyncError(f"slop_ns must be >= 0, got {slop_ns}")
        if queue_size < 1:
            raise SyncError(f"queue_size must be >= 1, got {queue_size}")
        pending = queue_size if max_pending is None else max_pending
        if pending < 1:
            raise SyncError(f"max_pending must be >= 1, got {pending}")
        self.cameras = names
        self.slop_ns = int(slop_ns)
        self.queue_size = int(queue_size)
        self.require_all = bool(require_all)
        self.max_pending = int(pending)
        self.on_group = on_group
        self._lock = threading.Lock()
        self._queues: dict[str, list[_CamMsg]] = {c: [] for c in names}
        self._qstamps: dict[str, list[int]] = {c: [] for c in names}
        self._latest: dict[str, int | None] = dict.fromkeys(names)
        self._pending: list[_Sweep] = []
        self._pstamps: list[int] = []
        self._last_final: int | None = None
        self._stats = SyncStats(missing_per_camera=dict.fromkeys(names, 0))

    @classmethod
    def from_config(
        cls,
        cameras: Sequence[str],
        slop_s: float,
        queue_size: int,
        require_all: bool,
        on_group: Callable[[SyncedGroup[L, C]], None] | None = None,
    ) -> LidarCameraSynchronizer[L, C]:
        """Build from ``SyncConfig`` values (``slop_s`` in seconds)."""
        return cls(cameras, round(slop_s * 1e9), queue_size, require_all, on_group=on_group)

    # ------------------------------------------------------------------ inputs
    def add_lidar(self, stamp_ns: int, item: L) -> list[SyncedGroup[L, C]]:
        stamp = int(stamp_ns)
        with self._lock:
            self._stats.lidar_received += 1
            if self._last_final is not None and stamp < self._last_final:
                self._stats.stale_lidar += 1
                log.debug("sweep t=%d older than the last finalised (%d): dropped", stamp, self._last_final)
                return []
            i = bisect.bisect_left(self._pstamps, stamp)
            if stamp == self._last_final or (i < len(self._pstamps) and self._pstamps[i] == stamp):
                self._stats.duplicate_lidar += 1
                return []
            sweep = _Sweep(stamp, item)
            self._pending.insert(i, sweep)
            self._pstamps.insert(i, stamp)
            for cam in self.cameras:
                latest = self._latest[cam]
                if latest is not None and latest > stamp + self.slop_ns:
                    self._resolve(sweep, cam)
            out = self._emit_ready()
            while len(self._pending) > self.max_pending:
                out.extend(self._finalize_oldest(forced=True))
                out.extend(self._emit_ready())
            self._prune_all()
        self._deliver(out)
        return out

    def add_camera(self, name: str, stamp_ns: int, item: C) -> list[SyncedGroup[L, C]]:
        if name not in self._queues:
            raise SyncError(f"unknown camera {name!r}; synchronised cameras: {', '.join(self.cameras)}")
        stamp = int(stamp_ns)
        with self._lock:
            self._stats.camera_received += 1
            if self._last_final is not None and stamp <= self._last_final - self.slop_ns:
                self._stats.stale_camera += 1
                log.debug("camera %s t=%d too old for any sweep still to come: dropped", name, stamp)
                return []
            stamps = self._qstamps[name]
            i = bisect.bisect_left(stamps, stamp)
            if i < len(stamps) and stamps[i] == stamp:
                self._stats.duplicate_camera += 1
                return []
            stamps.insert(i, stamp)
            self._queues[name].insert(i, _CamMsg(stamp, item))
            latest = self._latest[name]
            if latest is None or stamp > latest:
                self._latest[name] = stamp
                for sweep in self._pending:  # sorted: stop at the first window still open
                    if sweep.stamp + self.slop_ns >= stamp:
                        break
                    if name not in sweep.matches:
                        self._resolve(sweep, name)
            out = self._emit_ready()
            self._prune_all()
        self._deliver(out)
        return out

    def flush(self) -> list[SyncedGroup[L, C]]:
        """End of stream: finalise every pending sweep with what is queued, then empty the queues."""
        out: list[SyncedGroup[L, C]] = []
        with self._lock:
            while self._pending:
                complete = len(self._pending[0].matches) == len(self.cameras)
                out.extend(self._finalize_oldest(forced=not complete))
            for cam in self.cameras:
                self._release(cam, len(self._queues[cam]), overflow=False)
        self._deliver(out)
        return out

    @property
    def stats(self) -> SyncStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            snap = replace(self._stats, missing_per_camera=dict(self._stats.missing_per_camera))
            snap.pending_lidar = len(self._pending)
            snap.queued_camera = sum(len(q) for q in self._queues.values())
        return snap

    # ------------------------------------------------------------------ internals (lock held)
    def _resolve(self, sweep: _Sweep, cam: str) -> None:
        """Fix the nearest queued image of ``cam`` within slop as this sweep's choice (or none)."""
        stamps = self._qstamps[cam]
        j = bisect.bisect_left(stamps, sweep.stamp)
        best: _CamMsg | None = None
        best_dt = self.slop_ns + 1
        for k in (j - 1, j):  # the nearest is one of the two neighbours; earlier wins a tie
            if 0 <= k < len(stamps):
                dt = abs(stamps[k] - sweep.stamp)
                if dt < best_dt:
                    best, best_dt = self._queues[cam][k], dt
        if best is not None:
            best.used = True
        sweep.matches[cam] = best

    def _emit_ready(self) -> list[SyncedGroup[L, C]]:
        out: list[SyncedGroup[L, C]] = []
        while self._pending and len(self._pending[0].matches) == len(self.cameras):
            out.extend(self._finalize_oldest(forced=False))
        return out

    def _finalize_oldest(self, forced: bool) -> list[SyncedGroup[L, C]]:
        sweep = self._pending.pop(0)
        self._pstamps.pop(0)
        for cam in self.cameras:
            if cam not in sweep.matches:
                self._resolve(sweep, cam)
        self._last_final = sweep.stamp
        if forced:
            self._stats.forced += 1
        matched = {
            cam: CameraMatch(m.stamp, m.item, m.stamp - sweep.stamp)
            for cam, m in sweep.matches.items()
            if m is not None
        }
        missing = tuple(cam for cam in self.cameras if cam not in matched)
        for cam in missing:
            self._stats.missing_per_camera[cam] += 1
        if not matched:
            self._stats.lidar_without_cameras += 1
            log.debug("sweep t=%d: no camera within slop, dropped", sweep.stamp)
            return []
        if missing and self.require_all:
            self._stats.incomplete_group += 1
            log.debug("sweep t=%d: missing %s, dropped (require_all)", sweep.stamp, ", ".join(missing))
            return []
        self._stats.groups_emitted += 1
        if missing:
            self._stats.groups_partial += 1
        group = SyncedGroup(
            sweep.stamp, cast(L, sweep.item), cast(dict[str, CameraMatch[C]], matched), missing, forced
        )
        return [group]

    def _prune_all(self) -> None:
        for cam in self.cameras:
            self._prune(cam)

    def _prune(self, cam: str) -> None:
        """Release messages no future sweep can match, then enforce the queue bound."""
        if self._last_final is not None:
            k = bisect.bisect_right(self._qstamps[cam], self._last_final - self.slop_ns)
            self._release(cam, k, overflow=False)
        excess = len(self._queues[cam]) - self.queue_size
        if excess > 0:
            self._release(cam, excess, overflow=True)

    def _release(self, cam: str, count: int, overflow: bool) -> None:
        if count <= 0:
            return
        queue = self._queues[cam]
        for msg in queue[:count]:
            if msg.used:
                self._stats.camera_used += 1
            elif overflow:
                self._stats.queue_overflow += 1
            else:
                self._stats.camera_unused += 1
        del queue[:count]
        del self._qstamps[cam][:count]

    def _deliver(self, groups: list[SyncedGroup[L, C]]) -> None:
        if self.on_group is not None:
            for group in groups:
                self.on_group(group)

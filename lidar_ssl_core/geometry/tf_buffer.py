"""A small tf2-like transform buffer: static extrinsics plus time series of ego poses.

Why not tf2: ``lidar_ssl_core`` must run without ROS, offline over bags (where all of ``/tf`` is known up
front) and online (where ``/tf`` arrives from a callback thread while lookups run in another). The buffer
keeps the tf tree semantics (each frame has one parent, edges map child points into the parent) and
answers ``lookup(target, source, t)`` by chaining edges through the common ancestor; dynamic edges are
interpolated (linear translation, slerp rotation) between the two bracketing samples found by bisection.

Extrapolation policy: none, except ``max_extrapolation_ns`` beyond either end of a series, where the end
sample is *held* (for stamp rounding, e.g. microsecond datasets converted to nanoseconds). Anything further
raises :class:`TransformNotFoundError` with the frames, the time asked and the range that is available.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from lidar_ssl_core.errors import TransformNotFoundError
from lidar_ssl_core.geometry.transforms import Matrix4, interpolate, invert
from lidar_ssl_core.types import StampedTransform

log = logging.getLogger(__name__)

DEFAULT_MAX_EXTRAPOLATION_NS = 1_000  # 1 us: absorbs stamp rounding only


def _fmt_t(stamp_ns: int) -> str:
    return f"{stamp_ns / 1e9:.9f}s"


@dataclass
class _Edge:
    """The transform parent <- child: either one static matrix or a sorted time series."""

    parent: str
    static: Matrix4 | None = None
    stamps: list[int] = field(default_factory=list)
    matrices: list[Matrix4] = field(default_factory=list)

    def time_range(self) -> tuple[int, int] | None:
        if self.static is not None or not self.stamps:
            return None
        return self.stamps[0], self.stamps[-1]


class TransformBuffer:
    """Static and dynamic transforms keyed by child frame, looked up with interpolation.

    Thread-safe: ``add`` and ``lookup`` may be called from different threads.

    Args:
        max_extrapolation_ns: how far beyond the first/last sample of a dynamic edge a lookup is still
            answered (with the end sample held). Default 1 us, i.e. no real extrapolation.
        max_history_ns: if set, samples of a dynamic edge older than its newest sample minus this are
            dropped on insert (bounded memory for online use). ``None`` keeps everything (offline).
    """

    def __init__(
        self,
        *,
        max_extrapolation_ns: int = DEFAULT_MAX_EXTRAPOLATION_NS,
        max_history_ns: int | None = None,
    ) -> None:
        if max_extrapolation_ns < 0:
            raise ValueError(f"max_extrapolation_ns must be >= 0, got {max_extrapolation_ns}")
        if max_history_ns is not None and max_history_ns <= 0:
            raise ValueError(f"max_history_ns must be > 0 or None, got {max_history_ns}")
        self.max_extrapolation_ns = int(max_extrapolation_ns)
        self.max_history_ns = max_history_ns
        self._edges: dict[str, _Edge] = {}
        self._lock = threading.RLock()

    def __getstate__(self) -> dict[str, object]:
        # the lock cannot be pickled (DataLoader workers under spawn/forkserver receive a pickled copy)
        with self._lock:
            state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ insertion
    def add(self, transform: StampedTransform, static: bool) -> None:
        """Insert one transform (``matrix`` maps ``child`` points into ``parent``); any order of stamps."""
        parent, child = transform.parent, transform.child
        if not parent or not child or parent == child:
            raise ValueError(f"transform needs two distinct non-empty frames, got {parent!r} <- {child!r}")
        matrix = np.array(transform.matrix, dtype=np.float64)  # own copy: callers may reuse arrays
        if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
            raise ValueError(
                f"transform {parent} <- {child}: matrix must be a finite 4x4, got {matrix.shape}"
            )
        with self._lock:
            edge = self._edges.get(child)
            if edge is not None and edge.parent != parent:
                log.warning("frame %s re-parented from %s to %s", child, edge.parent, parent)
                edge = None
            if edge is not None and (edge.static is not None) != static:
                log.warning(
                    "frame %s <- %s switches from %s to %s; keeping the latest kind only",
                    parent,
                    child,
                    "static" if edge.static is not None else "dynamic",
                    "static" if static else "dynamic",
                )
                edge = None
            if edge is None:
                edge = _Edge(parent=parent)
                self._edges[child] = edge
            if static:
                edge.static = matrix
                return
            self._insert_sample(edge, int(transform.stamp_ns), matrix)

    def add_many(self, transforms: Iterable[StampedTransform], static: bool) -> None:
        for tf in transforms:
            self.add(tf, static)

    def _insert_sample(self, edge: _Edge, stamp: int, matrix: Matrix4) -> None:
        i = bisect.bisect_left(edge.stamps, stamp)
        if i < len(edge.stamps) and edge.stamps[i] == stamp:
            edge.matrices[i] = matrix  # same stamp again: the newest message wins, as in tf2
        else:
            edge.stamps.insert(i, stamp)
            edge.matrices.insert(i, matrix)
        if self.max_history_ns is not None:
            cutoff = edge.stamps[-1] - self.max_history_ns
            k = bisect.bisect_left(edge.stamps, cutoff)
            if k > 0:
                del edge.stamps[:k]
                del edge.matrices[:k]

    # ------------------------------------------------------------------ queries
    def frames(self) -> list[str]:
        """Every frame known to the buffer, sorted."""
        with self._lock:
            names = set(self._edges) | {e.parent for e in self._edges.values()}
        return sorted(names)

    def has_frame(self, frame: str) -> bool:
        with self._lock:
            return frame in self._edges or any(e.parent == frame for e in self._edges.values())

    def has_path(self, frame_a: str, frame_b: str) -> bool:
        """Whether the two frames are connected in the tree (at any time)."""
        with self._lock:
            if not (self.has_frame(frame_a) and self.has_frame(frame_b)):
                return False
            return self._root_chain(frame_a)[-1] == self._root_chain(frame_b)[-1]

    def is_static_path(self, frame_a: str, frame_b: str) -> bool:
        """Whether the two frames are connected through static edges only."""
        with self._lock:
            path = self._path(frame_a, frame_b)
            return path is not None and all(self._edges[c].static is not None for c in path[0] + path[1])

    def time_range(self, parent: str, child: str) -> tuple[int, int] | None:
        """First and last stamp of the dynamic edge parent <- child (None if static or unknown)."""
        with self._lock:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent:
                return None
            return edge.time_range()

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int) -> Matrix4:
        """4x4 mapping points in ``source_frame`` at ``stamp_ns`` into ``target_frame`` (same time)."""
        if target_frame == source_frame:
            return np.eye(4)
        with self._lock:
            path = self._path(target_frame, source_frame)
            if path is None:
                raise TransformNotFoundError(self._no_path_message(target_frame, source_frame))
            up_target, up_source = path
            # T(anc <- source) and T(anc <- target), chaining child -> parent edges upward.
            names = (target_frame, source_frame)
            anc_from_source = np.eye(4)
            for child in reversed(up_source):
                anc_from_source = anc_from_source @ self._edge_matrix(child, stamp_ns, *names)
            anc_from_target = np.eye(4)
            for child in reversed(up_target):
                anc_from_target = anc_from_target @ self._edge_matrix(child, stamp_ns, *names)
        if not up_target:
            return anc_from_source
        return invert(anc_from_target) @ anc_from_source

    def lookup_full(
        self,
        target_frame: str,
        target_stamp_ns: int,
        source_frame: str,
        source_stamp_ns: int,
        fixed_frame: str,
    ) -> Matrix4:
        """tf2's time-travel lookup: source at its time -> fixed frame -> target at its time."""
        fixed_from_source = self.lookup(fixed_frame, source_frame, source_stamp_ns)
        target_from_fixed = self.lookup(target_frame, fixed_frame, target_stamp_ns)
        return target_from_fixed @ fixed_from_source

    # ------------------------------------------------------------------ internals
    def _root_chain(self, frame: str) -> list[str]:
        """frame, parent, grandparent, ..., root (cycle-safe)."""
        chain = [frame]
        seen = {frame}
        while (edge := self._edges.get(chain[-1])) is not None:
            if edge.parent in seen:
                raise TransformNotFoundError(f"the transform tree has a cycle through frame {edge.parent}")
            chain.append(edge.parent)
            seen.add(edge.parent)
        return chain

    def _path(self, target: str, source: str) -> tuple[list[str], list[str]] | None:
        """Child frames of the edges from target up to the common ancestor, and from source up to it."""
        if not (self.has_frame(target) and self.has_frame(source)):
            return None
        chain_t = self._root_chain(target)
        chain_s = self._root_chain(source)
        if chain_t[-1] != chain_s[-1]:
            return None
        in_t = {f: i for i, f in enumerate(chain_t)}
        for j, f in enumerate(chain_s):
            if f in in_t:
                return chain_t[: in_t[f]], chain_s[:j]
        return None  # pragma: no cover - same root implies a common ancestor

    def _edge_matrix(self, child: str, stamp_ns: int, target: str, source: str) -> Matrix4:
        edge = self._edges[child]
        if edge.static is not None:
            return edge.static
        stamps = edge.stamps
        if not stamps:
            raise TransformNotFoundError(
                f"no transform {target} <- {source} at t={_fmt_t(stamp_ns)}: "
                f"edge {edge.parent} <- {child} has no samples"
            )
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return edge.matrices[i]
        if i == 0 or i == len(stamps):
            end = 0 if i == 0 else len(stamps) - 1
            if abs(stamps[end] - stamp_ns) <= self.max_extrapolation_ns:
                return edge.matrices[end]
            raise TransformNotFoundError(
                f"no transform {target} <- {source} at t={_fmt_t(stamp_ns)}: edge {edge.parent} <- {child} "
                f"is known from {_fmt_t(stamps[0])} to {_fmt_t(stamps[-1])} ({len(stamps)} samples), "
                f"{'before' if i == 0 else 'after'} which it would need extrapolation by "
                f"{abs(stamps[end] - stamp_ns) / 1e6:.3f} ms "
                f"(allowed: {self.max_extrapolation_ns / 1e6:.3f} ms)"
            )
        t0, t1 = stamps[i - 1], stamps[i]
        alpha = (stamp_ns - t0) / (t1 - t0)
        return interpolate(edge.matrices[i - 1], edge.matrices[i], alpha)

    def _no_path_message(self, target: str, source: str) -> str:
        known = self.frames()
        missing = [f for f in (target, source) if f not in known]
        why = f"frame(s) {', '.join(missing)} unknown" if missing else "the frames are in separate trees"
        return f"no transform {target} <- {source}: {why}; known frames: {', '.join(known) or '(none)'}"

    def __repr__(self) -> str:
        with self._lock:
            n_static = sum(e.static is not None for e in self._edges.values())
            n_dyn = len(self._edges) - n_static
        return f"TransformBuffer({n_static} static, {n_dyn} dynamic edges)"

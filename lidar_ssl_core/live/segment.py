"""The live segmenter's moving parts: a worker that only ever holds the newest input, latency statistics
and the per-scan confidence. The ROS node wires them to topics; this module never imports rclpy.

Why newest-only: a segmenter that falls behind must not build a queue (latency would grow without bound);
it drops the older pending scan, counts the drop and segments the newest one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

T = TypeVar("T")


class LatestOnlyWorker(Generic[T]):
    """Runs ``handle(item)`` in one thread on the newest submitted item; older pending items are dropped.

    ``handle`` exceptions are counted and logged, never end the thread.
    """

    def __init__(self, handle: Callable[[T], None], name: str = "latest-only-worker") -> None:
        self._handle = handle
        self._cond = threading.Condition()
        self._pending: T | None = None
        self._running = True
        self.submitted = 0
        self.dropped = 0
        self.processed = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> None:
        with self._cond:
            self.submitted += 1
            if self._pending is not None:
                self.dropped += 1
            self._pending = item
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and self._running:
                    self._cond.wait()
                if not self._running:
                    return
                item, self._pending = self._pending, None
            try:
                self._handle(item)  # type: ignore[arg-type]
                self.processed += 1
            except Exception:  # one bad scan must not stop the node
                self.failed += 1
                log.exception("segmenting a scan failed")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the item in progress; a pending one is dropped (and counted)."""
        with self._cond:
            self._running = False
            if self._pending is not None:
                self.dropped += 1
                self._pending = None
            self._cond.notify()
        self._thread.join(timeout_s)

    def idle(self) -> bool:
        with self._cond:
            return self._pending is None


class LatencyStats:
    """Percentiles of the last ``window`` latencies, in milliseconds."""

    def __init__(self, window: int = 500) -> None:
        self._values: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(ms)

    def percentiles(self, *qs: float) -> list[float]:
        with self._lock:
            values = np.asarray(self._values, np.float64)
        if values.size == 0:
            return [float("nan")] * len(qs)
        return [float(np.percentile(values, q)) for q in qs]

    def __len__(self) -> int:
        return len(self._values)


@dataclass(frozen=True)
class ScanConfidence:
    """How sure the network was about one scan."""

    mean_score: float  # mean softmax probability of the predicted class over labelled points
    low_fraction: float  # fraction of labelled points scored below ``low_score``
    points: int


def scan_confidence(
    labels: npt.NDArray[np.integer], scores: npt.NDArray[np.floating], ignore_index: int, low_score: float
) -> ScanConfidence:
    """Per-scan confidence (points without a prediction, ``ignore_index``, do not count)."""
    valid = labels != ignore_index
    n = int(valid.sum())
    if n == 0:
        return ScanConfidence(0.0, 1.0, 0)
    s = scores[valid]
    return ScanConfidence(float(s.mean()), float((s < low_score).mean()), n)


def now_ms() -> float:
    return time.perf_counter() * 1e3

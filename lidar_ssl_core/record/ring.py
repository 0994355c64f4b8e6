"""The last N seconds of everything the recorder received, for ``~/snapshot``.

Bounded twice: by age (messages older than the newest minus ``seconds`` go) and by bytes (the oldest go
first), so a burst of large images cannot take the vehicle's memory. Messages are kept by reference (the
bytes a subscription delivered), never copied.
"""

from __future__ import annotations

import threading
from collections import deque

from lidar_ssl_core.record.shards import OutMessage


class RingBuffer:
    """Thread-safe time- and size-bounded window of :class:`OutMessage`, oldest first."""

    def __init__(self, seconds: float, max_bytes: int) -> None:
        self.window_ns = round(seconds * 1e9)
        self.max_bytes = int(max_bytes)
        self._items: deque[OutMessage] = deque()
        self._bytes = 0
        self._newest: int | None = None
        self._lock = threading.Lock()
        self.evicted_for_size = 0

    def add(self, msg: OutMessage) -> None:
        if self.window_ns <= 0 or self.max_bytes <= 0:
            return
        with self._lock:
            self._items.append(msg)
            self._bytes += len(msg.raw)
            if self._newest is None or msg.stamp_ns > self._newest:
                self._newest = msg.stamp_ns
            horizon = self._newest - self.window_ns
            while self._items and (self._bytes > self.max_bytes or self._items[0].stamp_ns < horizon):
                old = self._items.popleft()
                self._bytes -= len(old.raw)
                if old.stamp_ns >= horizon:
                    self.evicted_for_size += 1

    def snapshot(self) -> list[OutMessage]:
        """A copy of the window (the messages themselves are shared, they are immutable)."""
        with self._lock:
            return list(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

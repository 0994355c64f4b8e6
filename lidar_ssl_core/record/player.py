"""Replay a bag's messages, serialized, through any publish function, at a chosen rate.

The ``bag_player`` node hands in a function that publishes the CDR bytes with rclpy (no deserialization:
what is published is byte for byte what was recorded). Latched topics (``/tf_static``) are published
first, once, before the timed stream starts, as ``ros2 bag play`` does with transient-local topics. The
timing follows the log times: message i goes out ``(t_i - t_0) / rate`` after the start (``rate = 0``: as
fast as possible); a message that is late is published at once, never skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lidar_ssl_core.bag.discover import expand_bags
from lidar_ssl_core.bag.reader import BagReader
from lidar_ssl_core.errors import BagReadError

log = logging.getLogger(__name__)

Publish = Callable[[str, str, bytes], bool]  # (topic, msgtype, CDR bytes) -> published?


def is_latched_topic(topic: str) -> bool:
    """Topics replayed once, first, and offered transient-local (``/tf_static`` under any namespace)."""
    return topic.rstrip("/").endswith("tf_static")


@dataclass
class PlayStats:
    """What one :meth:`BagPlayer.play` call published."""

    published: Counter[str] = field(default_factory=Counter)
    loops: int = 0
    max_late_ms: float = 0.0
    stopped: bool = False


class BagPlayer:
    """Plays one or more bags (merged by log time)."""

    def __init__(
        self,
        bags: Sequence[Path | str],
        *,
        rate: float = 1.0,
        topics: Sequence[str] = (),
        loop: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate < 0:
            raise BagReadError(f"playback rate must be >= 0, got {rate}")
        self.bags = expand_bags([Path(b) for b in bags])
        self.rate = rate
        self.loop = loop
        self._clock = clock
        with BagReader(self.bags) as reader:
            available = reader.topics
        if topics:
            if missing := sorted(set(topics) - set(available)):
                raise BagReadError(f"topics {missing} are not in {self.bags}; available: {sorted(available)}")
            self.topics = {t: available[t] for t in sorted(topics)}
        else:
            self.topics = available

    def play(self, publish: Publish, stop: threading.Event | None = None) -> PlayStats:
        """Publish every message (again and again with ``loop``) until the end or until ``stop`` is set."""
        stop = stop or threading.Event()
        stats = PlayStats()
        with BagReader(self.bags) as reader:
            latched = [t for t in self.topics if is_latched_topic(t)]
            if latched:
                for m in reader.raw_messages(latched, on_error="skip"):
                    if publish(m.topic, m.msgtype, bytes(m.raw)):
                        stats.published[m.topic] += 1
            timed = [t for t in self.topics if not is_latched_topic(t)]
            while not stop.is_set():
                self._play_once(reader, timed, publish, stop, stats)
                if not self.loop or stop.is_set():
                    break
                stats.loops += 1
        stats.stopped = stop.is_set()
        return stats

    def _play_once(
        self, reader: BagReader, topics: list[str], publish: Publish, stop: threading.Event, stats: PlayStats
    ) -> None:
        start_wall: float | None = None
        start_log = 0
        for m in reader.raw_messages(topics, on_error="skip"):
            if start_wall is None:
                start_wall, start_log = self._clock(), m.log_time_ns
            if self.rate > 0:
                due = start_wall + (m.log_time_ns - start_log) / 1e9 / self.rate
                wait = due - self._clock()
                if wait > 0 and stop.wait(wait):
                    return
                stats.max_late_ms = max(stats.max_late_ms, -wait * 1e3)
            elif stop.is_set():
                return
            if publish(m.topic, m.msgtype, bytes(m.raw)):
                stats.published[m.topic] += 1

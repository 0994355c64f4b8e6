"""Which synchronized samples a fleet recorder keeps.

Recording every sweep of a drive mostly stores near-duplicates (a vehicle at a red light, a straight road
at 10 Hz). A sample is kept when it is

- **informative**: the live segmenter was unsure about its scan, i.e. its per-scan confidence is below
  ``confidence_threshold`` or among the lowest ``low_confidence_fraction`` of the last
  ``confidence_window`` scans (what the network gets wrong is what is worth training on); or
- a **keyframe**: at least ``1 / keyframe_hz`` seconds after the last kept sample and, when ego poses
  exist, at least ``min_travel_m`` metres away from it (a standing vehicle records nothing new).

``keyframe_hz = 0`` keeps every sample (the rate limit is off; travel still applies when set).
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass
class KeepStats:
    """Decisions so far, by reason."""

    kept: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


class KeepPolicy:
    """Stateful keep/skip decisions over samples arriving in stamp order (one thread)."""

    def __init__(
        self,
        *,
        keyframe_hz: float = 2.0,
        min_travel_m: float = 0.0,
        confidence_threshold: float = 0.0,
        low_confidence_fraction: float = 0.0,
        confidence_window: int = 200,
    ) -> None:
        if keyframe_hz < 0 or min_travel_m < 0:
            raise ValueError(f"keyframe_hz {keyframe_hz} and min_travel_m {min_travel_m} must be >= 0")
        if not 0.0 <= low_confidence_fraction <= 1.0:
            raise ValueError(f"low_confidence_fraction {low_confidence_fraction} is not in [0, 1]")
        self.period_ns = round(1e9 / keyframe_hz) if keyframe_hz > 0 else 0
        self.min_travel_m = min_travel_m
        self.confidence_threshold = confidence_threshold
        self.low_fraction = low_confidence_fraction
        self._recent: deque[float] = deque(maxlen=max(1, confidence_window))
        self._last_stamp: int | None = None
        self._last_position: npt.NDArray[np.float64] | None = None
        self.stats = KeepStats()

    def decide(
        self,
        stamp_ns: int,
        *,
        position: npt.NDArray[np.float64] | None = None,
        confidence: float | None = None,
    ) -> str | None:
        """The reason to keep this sample, or None to skip it (the skip reason is counted)."""
        reason = self._reason(stamp_ns, position, confidence)
        if confidence is not None:
            self._recent.append(float(confidence))
        if reason is None:
            return None
        self.stats.kept[reason] = self.stats.kept.get(reason, 0) + 1
        self._last_stamp = stamp_ns
        if position is not None:
            self._last_position = np.asarray(position, dtype=np.float64)
        return reason

    def _reason(
        self, stamp_ns: int, position: npt.NDArray[np.float64] | None, confidence: float | None
    ) -> str | None:
        if confidence is not None and self._is_low(confidence):
            return "low_confidence"
        if self.period_ns and self._last_stamp is not None and stamp_ns - self._last_stamp < self.period_ns:
            self._skip("rate")
            return None
        if (
            self.min_travel_m > 0
            and position is not None
            and self._last_position is not None
            and float(np.linalg.norm(np.asarray(position) - self._last_position)) < self.min_travel_m
        ):
            self._skip("stationary")
            return None
        return "keyframe"

    def _is_low(self, confidence: float) -> bool:
        if confidence < self.confidence_threshold:
            return True
        if self.low_fraction <= 0 or len(self._recent) < 10:
            return False
        ranked = sorted(self._recent)
        return bisect.bisect_left(ranked, confidence) < self.low_fraction * len(ranked)

    def _skip(self, reason: str) -> None:
        self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1

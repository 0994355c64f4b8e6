"""ROS-free parts of the live nodes: the segmenter's newest-only worker, latency percentiles, per-scan
confidence; the player's ordering and timing; the recorder waiting for the segmenter's confidence."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lidar_ssl_core.bag import BagReader
from lidar_ssl_core.live.segment import LatencyStats, LatestOnlyWorker, scan_confidence
from lidar_ssl_core.record.config import RecorderConfig
from lidar_ssl_core.record.player import BagPlayer
from lidar_ssl_core.record.recorder import Recorder
from lidar_ssl_core.resources import default_bag


def test_latest_only_worker_processes_the_newest_and_counts_every_drop() -> None:
    gate = threading.Event()
    seen: list[int] = []

    def handle(item: int) -> None:
        if item == 0:
            gate.wait(5)  # busy with the first item while 1..9 arrive
        if item == 5:
            raise RuntimeError("bad scan")
        seen.append(item)

    worker = LatestOnlyWorker(handle)
    worker.submit(0)
    deadline = time.monotonic() + 5
    while worker.idle() is False and time.monotonic() < deadline:  # wait until 0 is taken
        time.sleep(0.01)
    for i in range(1, 10):
        worker.submit(i)
    gate.set()
    while (worker.processed + worker.failed) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [0, 9]  # 1..8 were superseded while 0 ran
    assert worker.dropped == 8 and worker.submitted == 10
    worker.submit(5)  # a failing item is counted, the worker lives on
    while worker.failed == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.submit(12)
    while seen[-1] != 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    assert worker.failed == 1 and seen[-1] == 12
    assert worker.submitted == worker.processed + worker.failed + worker.dropped


def test_latency_percentiles_and_scan_confidence() -> None:
    stats = LatencyStats(window=100)
    assert np.isnan(stats.percentiles(50)[0])
    for ms in range(1, 201):  # the window keeps the last 100: 101..200
        stats.add(float(ms))
    p50, p99 = stats.percentiles(50, 99)
    assert p50 == pytest.approx(150.5) and p99 == pytest.approx(199.01)
    labels = np.array([0, 1, 255, 2], np.uint16)
    scores = np.array([0.9, 0.3, 0.0, 0.6], np.float32)
    conf = scan_confidence(labels, scores, ignore_index=255, low_score=0.5)
    assert (
        conf.points == 3
        and conf.mean_score == pytest.approx(0.6)
        and conf.low_fraction == pytest.approx(1 / 3)
    )
    assert scan_confidence(labels[2:3], scores[2:3], 255, 0.5).points == 0


def test_player_publishes_latched_topics_first_then_in_log_time_at_the_rate() -> None:
    player = BagPlayer([default_bag()], rate=4.0)
    got: list[tuple[str, float]] = []
    start = time.monotonic()
    stats = player.play(lambda topic, msgtype, raw: got.append((topic, time.monotonic() - start)) or True)
    with BagReader(default_bag()) as reader:
        order = [m.topic for m in reader.raw_messages() if m.topic != "/tf_static"]
        duration = reader.duration / 1e9
    assert got[0][0] == "/tf_static" and [t for t, _ in got[1:]] == order
    assert sum(stats.published.values()) == len(got) == len(order) + 1
    assert got[-1][1] >= duration / 4.0 * 0.99  # paced: the last message not before duration / rate
    stop = threading.Event()
    stop.set()
    assert BagPlayer([default_bag()], rate=1.0, topics=["/lidar/points"]).play(lambda *a: True, stop).stopped


def test_recorder_waits_for_the_segmenter_confidence_and_keeps_unsure_scans(tmp_path: Path) -> None:
    clock = {"t": 0.0}
    cfg = RecorderConfig(
        output_dir=str(tmp_path), cameras=["front"], keyframe_hz=0.5, confidence_threshold=0.4,
        confidence_wait_s=1.0, min_free_mb=0,
    )  # fmt: skip
    recorder = Recorder(cfg, clock=lambda: clock["t"])
    decided: list[tuple[int, str | None]] = []
    original = recorder.keep.decide

    def spy(stamp_ns: int, **kw: object) -> str | None:
        reason = original(stamp_ns, **kw)  # type: ignore[arg-type]
        decided.append((stamp_ns, reason))
        return reason

    recorder.keep.decide = spy  # type: ignore[method-assign]

    def conf(stamp_ns: int, value: float) -> SimpleNamespace:
        sec, nsec = divmod(stamp_ns, 10**9)
        return SimpleNamespace(
            header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nsec)),
            vector=SimpleNamespace(x=value),
        )

    group = lambda s: SimpleNamespace(lidar_stamp_ns=s, cameras={}, lidar=None)  # noqa: E731
    recorder.on_confidence(conf(1, 0.9))  # the segmenter is live from now on
    recorder._on_group(group(10**9))  # type: ignore[arg-type]
    assert decided == [] and recorder.status().held_for_confidence == 1  # waits for its confidence
    recorder.on_confidence(conf(10**9, 0.9))
    assert decided == [(10**9, "keyframe")]
    recorder._on_group(group(2 * 10**9))  # type: ignore[arg-type]
    recorder.on_confidence(conf(2 * 10**9, 0.1))  # 1 s after a keyframe (rate 0.5 Hz) but unsure: kept
    recorder._on_group(group(3 * 10**9))  # type: ignore[arg-type]
    clock["t"] = 5.0  # no confidence for this one: decided when its wait is over
    recorder.poll()
    assert decided[1:] == [(2 * 10**9, "low_confidence"), (3 * 10**9, None)]

"""ROS-free parts of the live nodes: the segmenter's newest-only worker, latency percentiles, per-scan
confidence; the player's ordering and timing; the recorder waiting for the segmenter's confidence; the
pretrain node's loop picking up shards that close while it trains."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from lidar_ssl_core.bag import BagReader
from lidar_ssl_core.live.config import PretrainNodeConfig
from lidar_ssl_core.live.pretrain import ContinualPretraining, PretrainProgress, lower_priority
from lidar_ssl_core.live.segment import LatencyStats, LatestOnlyWorker, scan_confidence
from lidar_ssl_core.record.config import RecorderConfig
from lidar_ssl_core.record.player import BagPlayer
from lidar_ssl_core.record.recorder import Recorder
from lidar_ssl_core.record.shards import OutMessage, ShardWriter
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

    def publish(topic: str, msgtype: str, raw: bytes | memoryview) -> bool:
        got.append((topic, time.monotonic() - start))
        return True

    stats = player.play(publish)
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

    def group(stamp_ns: int) -> Any:  # what _on_group reads of a SyncedGroup
        return SimpleNamespace(lidar_stamp_ns=stamp_ns, cameras={}, lidar=None)

    recorder.on_confidence(conf(1, 0.9))  # the segmenter is live from now on
    recorder._on_group(group(10**9))
    assert decided == [] and recorder.status().held_for_confidence == 1  # waits for its confidence
    recorder.on_confidence(conf(10**9, 0.9))
    assert decided == [(10**9, "keyframe")]
    recorder._on_group(group(2 * 10**9))
    recorder.on_confidence(conf(2 * 10**9, 0.1))  # 1 s after a keyframe (rate 0.5 Hz) but unsure: kept
    recorder._on_group(group(3 * 10**9))
    clock["t"] = 5.0  # no confidence for this one: decided when its wait is over
    recorder.poll()
    assert decided[1:] == [(2 * 10**9, "low_confidence"), (3 * 10**9, None)]


def _close_shard(folder: Path) -> Path:
    """A shard as the recorder closes it: the sample bag through the core ShardWriter (staged, renamed)."""
    writer = ShardWriter(folder, max_duration_s=1e9, min_free_bytes=0)
    with BagReader(default_bag()) as reader:
        for m in reader.raw_messages():
            writer.write(OutMessage(m.topic, m.msgtype, m.log_time_ns, bytes(m.raw), m.topic == "/tf_static"))
    path = writer.close()
    assert path is not None
    return path


def _wait_for(condition: Callable[[], bool], job: ContinualPretraining, limit_s: float = 300.0) -> None:
    deadline = time.monotonic() + limit_s  # a guard against hanging, not a speed check
    while not condition():
        assert job.progress.state != "error", job.progress.message
        assert time.monotonic() < deadline, f"gave up waiting; progress: {job.progress}"
        time.sleep(0.05)


def _tiny_pretraining(
    tmp_path: Path, folder: Path, on_progress: Callable[[PretrainProgress], None], *overrides: str
) -> ContinualPretraining:
    """The pretrain node's loop over ``folder`` with a tiny network, 4 frames a step, a round per step."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "data:\n  loader:\n    num_workers: 0\n    batch_size: 4\n"
        "  augment:\n    crop_size: [96, 64]\n    min_pairs: 20\n  superpixels:\n    n_segments: 12\n"
        "pretrain:\n  epochs: 50\n  checkpoint_every: 0\n"
        "  backbone:\n    preset: tiny\n  teacher:\n    arch: filterbank\n"
    )
    node = PretrainNodeConfig(
        shard_dir=str(folder), method="ppkt", config=str(config), output=str(tmp_path / "run"),
        overrides=list(overrides), steps_per_round=1, poll_s=0.1, nice=0, threads=1,
    )  # fmt: skip
    return ContinualPretraining(node, on_progress=on_progress)


def _run_until(job: ContinualPretraining, condition: Callable[[], bool]) -> None:
    """Run ``job`` in a thread (one torch thread, as the node sets it) until ``condition``; stop it (a
    checkpoint is written) and restore the threads."""
    stop = threading.Event()
    threads = torch.get_num_threads()
    lower_priority(job.node.nice, job.node.threads)
    worker = threading.Thread(target=job.run, args=(stop,), daemon=True)
    worker.start()
    try:
        _wait_for(condition, job)
    finally:
        stop.set()
        worker.join(120)
        torch.set_num_threads(threads)
    assert not worker.is_alive() and job.progress.state == "stopped"


def test_continual_pretraining_picks_up_shards_that_close_during_the_run(tmp_path: Path) -> None:
    """The pretrain node's loop over a recorder folder: it trains on the one closed shard; a shard that
    closes meanwhile is in the data set from the next round on and its frames are trained on, with the
    step count carried on through the rebuild; a half-written staging folder (what a recorder killed
    mid-shard leaves) is never read, and once recovered (``*_recovered``) it is a shard like the others."""
    folder = tmp_path / "recordings"
    first = _close_shard(folder)
    history: list[PretrainProgress] = []
    closed: list[Path] = []

    def on_progress(p: PretrainProgress) -> None:  # runs in the training thread: exact moments
        history.append(p)
        if p.global_step == 1 and not closed:  # during step 1's round: the loop rebuilds after it
            partial = folder / ".shard_000005.partial" / "shard_000005"
            partial.mkdir(parents=True)
            mcap = (first / "shard_000000.mcap").read_bytes()
            (partial / "shard_000005.mcap").write_bytes(mcap[: len(mcap) // 2])
            closed.append(_close_shard(folder))

    job = _tiny_pretraining(tmp_path, folder, on_progress)
    _run_until(job, lambda: job.progress.frames_by_bag.get("shard_000006", 0) > 0)
    assert [p.name for p in closed] == ["shard_000006"]  # numbered after the staging folder
    training = [p.bags for p in history if p.state == "training"]
    assert training[0] == 1 and max(training) == 2  # the .partial never counted as a shard
    assert set(job.progress.frames_by_bag) == {"shard_000000", "shard_000006"}
    assert job.progress.rebuilds == 2 and job.progress.newest_bag == "shard_000006"
    steps = [p.global_step for p in history]
    assert steps == sorted(steps) and steps[-1] >= 2  # resumed after the rebuild, not restarted
    recovered = ShardWriter(folder, min_free_bytes=0).recover()
    assert [p.name for p in recovered] == ["shard_000005_recovered"]
    names = [p.name for p in job.current_bags()]
    assert names == ["shard_000000", "shard_000005_recovered", "shard_000006"]


def test_continual_pretraining_goes_on_when_the_quota_evicts_a_shard_under_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The recorder's quota deletes the oldest shard right after the loop indexed it: its frames fail
    to load (the data set replaces a bad frame by the next ones, 8 at most, all in that shard here), the
    loop rebuilds its data set from the shards left instead of dying, and trains on."""
    folder = tmp_path / "recordings"
    _close_shard(folder)
    events: list[str] = []

    def on_progress(p: PretrainProgress) -> None:  # runs in the training thread: exact moments
        if p.global_step == 1 and not events:
            _close_shard(folder)  # closes during step 1's round: the loop rebuilds after it
            events.append("closed")
        if p.state == "training" and p.bags == 2 and len(events) == 1:
            shutil.rmtree(folder / "shard_000000")  # after the rebuild indexed it, before any read
            events.append("evicted")

    # in order (no shuffle): the batch after the rebuild is frames 4-7, in the evicted shard
    job = _tiny_pretraining(tmp_path, folder, on_progress, "pretrain.shuffle=false")
    with caplog.at_level(logging.WARNING, logger="lidar_ssl_core.live.pretrain"):
        _run_until(job, lambda: job.progress.frames_by_bag.get("shard_000001", 0) > 0)
    assert events == ["closed", "evicted"]
    assert "changed under the data set" in caplog.text
    assert job.progress.rebuilds == 3 and job.progress.bags == 1
    assert job.progress.newest_bag == "shard_000001"

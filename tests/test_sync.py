"""LidarCameraSynchronizer: exact grouping against a brute-force reference, latency, drops, threads."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest

from lidar_ssl_core.errors import SyncError
from lidar_ssl_core.sync import LidarCameraSynchronizer, SyncedGroup, SyncStats

MS = 1_000_000
SLOP = 50 * MS

Group = SyncedGroup[str, str]
Sync = LidarCameraSynchronizer[str, str]


@dataclass(frozen=True)
class Msg:
    stamp: int
    source: str  # "lidar" or a camera name

    @property
    def item(self) -> str:
        return f"{self.source}@{self.stamp}"


def timeline(
    seed: int, n_sweeps: int = 100, cameras: tuple[str, ...] = ("front", "left"), p_missing: float = 0.0
) -> list[Msg]:
    """10 Hz LiDAR (+-1 ms jitter) and 12 Hz cameras (+-5 ms jitter, own phase), optional missing frames."""
    rng = np.random.default_rng(seed)
    msgs = [Msg(k * 100 * MS + int(rng.integers(-MS, MS)), "lidar") for k in range(1, n_sweeps + 1)]
    end = (n_sweeps + 1) * 100 * MS
    for c, cam in enumerate(cameras):
        t = 7 * MS * (c + 1)
        while t < end:
            if rng.random() >= p_missing:
                msgs.append(Msg(t + int(rng.integers(-5 * MS, 5 * MS)), cam))
            t += 83_333_333
    return sorted(msgs, key=lambda m: (m.stamp, m.source))


def reference(msgs: list[Msg], cameras: tuple[str, ...], slop: int) -> dict[int, dict[str, int]]:
    """Brute force: each sweep -> for each camera the nearest stamp within slop (earlier on ties)."""
    cams = {c: np.array(sorted(m.stamp for m in msgs if m.source == c), dtype=np.int64) for c in cameras}
    out: dict[int, dict[str, int]] = {}
    for m in msgs:
        if m.source != "lidar":
            continue
        chosen = {}
        for c, stamps in cams.items():
            dt = np.abs(stamps - m.stamp)
            ok = np.nonzero(dt <= slop)[0]
            if ok.size:
                best = ok[np.lexsort((stamps[ok], dt[ok]))[0]]
                chosen[c] = int(stamps[best])
        out[m.stamp] = chosen
    return out


def feed(sync: Sync, msgs: list[Msg]) -> list[tuple[Group, int]]:
    """Feed in list order; return each group with the stamp of the message whose arrival emitted it."""
    out: list[tuple[Group, int]] = []
    for m in msgs:
        if m.source == "lidar":
            groups = sync.add_lidar(m.stamp, m.item)
        else:
            groups = sync.add_camera(m.source, m.stamp, m.item)
        out.extend((g, m.stamp) for g in groups)
    out.extend((g, -1) for g in sync.flush())
    return out


def as_dict(groups: list[Group]) -> dict[int, dict[str, int]]:
    return {g.lidar_stamp_ns: {c: cm.stamp_ns for c, cm in g.cameras.items()} for g in groups}


def check_accounting(stats: SyncStats) -> None:
    assert stats.lidar_received == stats.groups_emitted + stats.lidar_dropped + stats.pending_lidar
    assert stats.camera_received == stats.camera_used + stats.camera_dropped + stats.queued_camera


# ---------------------------------------------------------------------------------------------- grouping
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_in_order_grouping_equals_brute_force_with_bounded_latency(seed: int) -> None:
    cams = ("front", "left", "right")
    msgs = timeline(seed, cameras=cams)
    sync: Sync = LidarCameraSynchronizer(cams, SLOP, queue_size=8)
    emitted = feed(sync, msgs)
    ref = reference(msgs, cams, SLOP)
    assert as_dict([g for g, _ in emitted]) == ref
    assert [g.lidar_stamp_ns for g, _ in emitted] == sorted(ref)  # emitted in LiDAR order
    # Each group is emitted by the first message that closes the last window: latency is bounded.
    by_cam = {c: sorted(m.stamp for m in msgs if m.source == c) for c in cams}
    for g, at in emitted:
        closers = [next((s for s in by_cam[c] if s > g.lidar_stamp_ns + SLOP), None) for c in cams]
        if None in closers:
            assert at == -1 and g.forced  # end of stream: emitted by flush
            continue
        assert at == max(max(s for s in closers if s is not None), g.lidar_stamp_ns)
        assert at - g.lidar_stamp_ns <= SLOP + 84 * MS + 10 * MS
        assert not g.forced
        for c, cm in g.cameras.items():
            assert cm.offset_ns == cm.stamp_ns - g.lidar_stamp_ns and abs(cm.offset_ns) <= SLOP
            assert cm.item == f"{c}@{cm.stamp_ns}"
        assert g.lidar == f"lidar@{g.lidar_stamp_ns}"
    stats = sync.stats
    check_accounting(stats)
    assert stats.groups_emitted == len(ref) and stats.lidar_dropped == 0
    assert stats.queue_overflow == 0 and stats.stale_camera == 0
    used = {(c, s) for chosen in ref.values() for c, s in chosen.items()}
    assert stats.camera_used == len(used)
    assert stats.camera_unused == stats.camera_received - len(used)


def test_missing_frames_partial_and_require_all() -> None:
    cams = ("front", "left")
    msgs = timeline(5, n_sweeps=200, cameras=cams, p_missing=0.3)
    ref = reference(msgs, cams, SLOP)
    n_none = sum(not chosen for chosen in ref.values())
    n_partial = sum(0 < len(chosen) < len(cams) for chosen in ref.values())
    assert n_none > 0 and n_partial > 0

    sync: Sync = LidarCameraSynchronizer(cams, SLOP, queue_size=8)
    groups = [g for g, _ in feed(sync, msgs)]
    assert as_dict(groups) == {t: c for t, c in ref.items() if c}
    for g in groups:
        assert set(g.missing) == set(cams) - set(g.cameras)
    st = sync.stats
    assert st.lidar_without_cameras == n_none and st.groups_partial == n_partial
    assert st.incomplete_group == 0
    assert st.missing_per_camera == {c: sum(c not in ch for ch in ref.values()) for c in cams}
    check_accounting(st)

    strict: Sync = LidarCameraSynchronizer(cams, SLOP, queue_size=8, require_all=True)
    groups = [g for g, _ in feed(strict, msgs)]
    assert as_dict(groups) == {t: c for t, c in ref.items() if len(c) == len(cams)}
    st = strict.stats
    assert st.incomplete_group == n_partial and st.lidar_without_cameras == n_none
    assert st.groups_emitted == len(ref) - n_partial - n_none
    check_accounting(st)


def test_interleaving_does_not_change_the_result() -> None:
    """LiDAR delivered 150 ms late (after the images around it) gives the same groups."""
    cams = ("front", "left")
    msgs = timeline(3, cameras=cams)
    late = sorted(msgs, key=lambda m: m.stamp + (150 * MS if m.source == "lidar" else 0))
    sync: Sync = LidarCameraSynchronizer(cams, SLOP, queue_size=8)
    groups = [g for g, _ in feed(sync, late)]
    assert as_dict(groups) == reference(msgs, cams, SLOP)
    assert sync.stats.stale_camera == 0 and sync.stats.queue_overflow == 0


def test_out_of_order_camera_messages_are_inserted_sorted() -> None:
    sync: Sync = LidarCameraSynchronizer(["cam"], SLOP)
    sync.add_lidar(100 * MS, "L100")
    assert sync.add_camera("cam", 130 * MS, "c130") == []  # window [50, 150] still open
    assert sync.add_camera("cam", 95 * MS, "c95") == []  # older, arrives later: inserted sorted
    (g,) = sync.add_camera("cam", 160 * MS, "c160")  # closes the window
    assert g.cameras["cam"].item == "c95" and g.cameras["cam"].offset_ns == -5 * MS

    # 30 Hz camera with adjacent pairs swapped on arrival: still the nearest image for every sweep.
    cams = ("fast",)
    rng = np.random.default_rng(7)
    lidar = [Msg(k * 100 * MS + int(rng.integers(-MS, MS)), "lidar") for k in range(1, 60)]
    cam = [Msg(k * 33_333_333, "fast") for k in range(184)]
    swapped = [m for pair in zip(cam[1::2], cam[0::2], strict=True) for m in pair]
    order: list[Msg] = []  # camera order kept as swapped; each sweep fed a little before its images
    li = 0
    for m in swapped:
        while li < len(lidar) and lidar[li].stamp < m.stamp - 40 * MS:
            order.append(lidar[li])
            li += 1
        order.append(m)
    order.extend(lidar[li:])
    sync2: Sync = LidarCameraSynchronizer(cams, SLOP, queue_size=8)
    groups = [g for g, _ in feed(sync2, order)]
    assert as_dict(groups) == reference(lidar + cam, cams, SLOP)


def test_tie_goes_to_the_earlier_image_and_images_can_pair_twice() -> None:
    sync: Sync = LidarCameraSynchronizer(["cam"], SLOP)
    sync.add_lidar(100 * MS, "L")
    sync.add_camera("cam", 80 * MS, "early")
    sync.add_camera("cam", 120 * MS, "late")
    (g,) = sync.add_camera("cam", 200 * MS, "closer")
    assert g.cameras["cam"].item == "early"
    # Two sweeps 40 ms apart, one image between them: both take it (documented choice).
    sync2: Sync = LidarCameraSynchronizer(["cam"], SLOP)
    sync2.add_lidar(100 * MS, "a")
    sync2.add_lidar(140 * MS, "b")
    sync2.add_camera("cam", 120 * MS, "shared")
    groups = sync2.add_camera("cam", 300 * MS, "next")
    assert [(g.lidar, g.cameras["cam"].item) for g in groups] == [("a", "shared"), ("b", "shared")]
    sync2.flush()
    assert (sync2.stats.camera_used, sync2.stats.camera_unused) == (1, 1)


# ---------------------------------------------------------------------------------------------- drops
def test_drop_counters_are_exact() -> None:
    sync: Sync = LidarCameraSynchronizer(["a", "b"], SLOP, queue_size=3)
    sync.add_lidar(1000 * MS, "L1")
    sync.add_lidar(1000 * MS, "L1 again")  # duplicate pending
    sync.add_camera("a", 990 * MS, "a990")
    sync.add_camera("a", 990 * MS, "a990 again")  # duplicate camera
    sync.add_camera("a", 1010 * MS, "a1010")  # unused: a990 is nearer
    sync.add_camera("b", 1200 * MS, "b1200")  # closes b with nothing in window
    assert sync.add_camera("a", 1100 * MS, "a1100") != []  # closes a -> group {a: a990}, b missing
    sync.add_lidar(900 * MS, "L0")  # older than the finalised sweep: stale
    sync.add_lidar(1000 * MS, "L1 late copy")  # same as the last finalised: duplicate
    sync.add_camera("a", 940 * MS, "a940")  # <= 1000 - 50: can match no future sweep: stale
    sync.add_lidar(1500 * MS, "L2")  # b1200 and a1100 can only be unused now
    sync.add_camera("b", 2000 * MS, "b2000")
    for s in (1600, 1700, 1800, 1900):  # 4 > queue_size: oldest a messages overflow
        sync.add_camera("a", s * MS, f"a{s}")
    st = sync.stats
    assert (st.duplicate_lidar, st.stale_lidar, st.duplicate_camera, st.stale_camera) == (2, 1, 1, 1)
    assert st.groups_emitted == 1 and st.groups_partial == 1 and st.lidar_without_cameras == 1
    # a990 used; a1010 and b1200 unused; a1100 unused; a1600 overflow (queue a: 1700 1800 1900)
    assert (st.camera_used, st.camera_unused, st.queue_overflow) == (1, 3, 1)
    assert st.queued_camera == 4 and st.pending_lidar == 0
    check_accounting(st)
    sync.flush()
    st = sync.stats
    assert st.queued_camera == 0 and st.camera_unused == 7
    check_accounting(st)


def test_dead_camera_bounded_memory_and_latency() -> None:
    cams = ("front", "dead")
    msgs = [m for m in timeline(11, n_sweeps=500, cameras=("front",))]
    seen: list[int] = []
    sync: Sync = LidarCameraSynchronizer(
        cams, SLOP, queue_size=4, max_pending=5, on_group=lambda g: seen.append(g.lidar_stamp_ns)
    )
    max_pending = max_queued = 0
    for m in msgs:
        if m.source == "lidar":
            sync.add_lidar(m.stamp, m.item)
        else:
            sync.add_camera(m.source, m.stamp, m.item)
        st = sync.stats
        max_pending, max_queued = max(max_pending, st.pending_lidar), max(max_queued, st.queued_camera)
    assert max_pending == 5 and max_queued <= 4
    st = sync.stats
    assert st.forced == 500 - 5 and st.groups_emitted == 495 and st.missing_per_camera["dead"] == 495
    check_accounting(st)
    sync.flush()
    assert len(seen) == 500 and seen == sorted(seen)
    assert sync.stats.missing_per_camera == {"front": 0, "dead": 500}

    strict: Sync = LidarCameraSynchronizer(cams, SLOP, queue_size=4, require_all=True)
    for m in msgs:
        if m.source == "lidar":
            assert strict.add_lidar(m.stamp, m.item) == []
        else:
            assert strict.add_camera(m.source, m.stamp, m.item) == []
    strict.flush()
    assert strict.stats.incomplete_group == 500 and strict.stats.groups_emitted == 0


def test_queue_bound_with_flood_of_one_camera() -> None:
    sync: Sync = LidarCameraSynchronizer(["a", "b"], SLOP, queue_size=8)
    for k in range(10_000):  # 'a' floods without any LiDAR
        sync.add_camera("a", k * MS, "x")
    st = sync.stats
    assert st.queued_camera == 8 and st.queue_overflow == 10_000 - 8
    check_accounting(st)


# ---------------------------------------------------------------------------------------------- API
def test_misuse_raises_sync_error() -> None:
    sync: Sync = LidarCameraSynchronizer(["a"], SLOP)
    with pytest.raises(SyncError, match=r"unknown camera 'z'.*synchronised cameras: a"):
        sync.add_camera("z", 0, "x")
    bad: list[dict[str, object]] = [
        {"cameras": []},
        {"cameras": ["a", "a"]},
        {"slop_ns": -1},
        {"queue_size": 0},
    ]
    for kwargs in bad:
        args: dict[str, object] = {"cameras": ["a"], "slop_ns": SLOP, "queue_size": 4, **kwargs}
        with pytest.raises(SyncError):
            LidarCameraSynchronizer(**args)  # type: ignore[arg-type]
    sync2: Sync = LidarCameraSynchronizer.from_config(["a"], 0.05, 8, True)
    assert sync2.slop_ns == SLOP and sync2.require_all and sync2.max_pending == 8


def test_callback_runs_outside_the_lock() -> None:
    calls: list[bool] = []
    sync: Sync = LidarCameraSynchronizer(["cam"], SLOP)

    def on_group(group: Group) -> None:
        calls.append(sync._lock.locked())
        sync.stats  # noqa: B018 - would deadlock if called under the (non-reentrant) lock

    sync.on_group = on_group
    sync.add_lidar(100 * MS, "L")
    sync.add_camera("cam", 100 * MS, "c")
    sync.add_camera("cam", 200 * MS, "c2")
    assert calls == [False]


def test_threads_feeding_concurrently() -> None:
    cams = ("front", "left", "right")
    msgs = timeline(21, n_sweeps=300, cameras=cams)
    ref = reference(msgs, cams, SLOP)
    received: list[Group] = []
    lock = threading.Lock()

    def on_group(g: Group) -> None:
        with lock:
            received.append(g)

    # Queues large enough that no interleaving of the threads forces an eviction: the result is exact.
    sync: Sync = LidarCameraSynchronizer(cams, SLOP, queue_size=10_000, max_pending=10_000, on_group=on_group)
    barrier = threading.Barrier(4)

    def run(source: str) -> None:
        barrier.wait()
        for m in msgs:
            if m.source != source:
                continue
            if source == "lidar":
                sync.add_lidar(m.stamp, m.item)
            else:
                sync.add_camera(source, m.stamp, m.item)

    threads = [threading.Thread(target=run, args=(s,)) for s in ("lidar", *cams)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    sync.flush()
    assert as_dict(received) == ref
    assert len(received) == len(ref)
    st = sync.stats
    assert st.groups_emitted == 300 and st.lidar_dropped == 0 and st.stale_camera == 0
    assert st.camera_received == sum(m.source != "lidar" for m in msgs)
    check_accounting(st)

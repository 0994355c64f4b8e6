"""Load benchmark of the ROS nodes over real DDS (a benchmark script, not a test).

1. Recorder: one LiDAR at 10 Hz (nuScenes-sized sweeps: 34,720 points x y z intensity ring) and six
   cameras at 12 Hz (1600x900 JPEG) published by a separate process for ``--seconds``; the fleet_recorder
   keeps every synchronized sample (keyframe_hz 0). Reported: sweeps published vs sweeps in the shards,
   sync drops, writer queue drops, the recorder's CPU share (CPU seconds / wall seconds; 1.0 = one core).
2. Segmenter: the same sweeps at 10 Hz into the segmenter with a ``small`` CPU model (random weights: the
   cost does not depend on them); reported: latency p50/p99 (receive -> published) and the drop rate.

    python benchmarks/bench_ros_load.py --seconds 60 [--segmenter-seconds 30] [--reliable]

DDS stays on this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, random ROS_DOMAIN_ID).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ros2_ws" / "src" / "lidar_ssl"))

CAMERAS = ["front", "front_left", "front_right", "back", "back_left", "back_right"]
N_POINTS = 34_720  # a nuScenes sweep


def synchronizable(n_lidar: int, n_camera: int, slop_ms: float = 50.0) -> int:
    """Sweeps (10 Hz from t0) with a camera frame (12 Hz from t0, ``n_camera`` of them) within slop."""
    cams = np.arange(n_camera) * 1000.0 / 12
    return sum(bool(n_camera) and float(np.abs(cams - i * 100.0).min()) <= slop_ms for i in range(n_lidar))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def real_sweep() -> dict[str, np.ndarray] | None:
    """The real nuScenes LIDAR_TOP sweep of the fixtures (x y z intensity ring), if they are there."""
    root = Path(os.environ.get("LIDAR_SSL_FIXTURES", ROOT.parent / "shared" / "fixtures"))
    files = sorted((root / "nuscenes-mini-1" / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    if not files:
        return None
    raw = np.fromfile(files[0], dtype=np.float32).reshape(-1, 5)
    names = ("x", "y", "z", "intensity")
    cols: dict[str, np.ndarray] = {n: np.ascontiguousarray(raw[:, i]) for i, n in enumerate(names)}
    cols["ring"] = raw[:, 4].astype(np.uint16)
    return cols


def sensor_payloads() -> tuple[bytes, bytes, bytes]:
    """CDR bytes of one sweep, one 1600x900 JPEG and one CameraInfo (stamps patched when sent)."""
    import cv2

    from lidar_ssl_core.bag.typestore import typestore_for
    from lidar_ssl_core.msg import make_camera_info, make_compressed_image, make_pointcloud2
    from lidar_ssl_core.types import CameraIntrinsics

    ts = typestore_for("jazzy")
    rng = np.random.default_rng(0)
    cols = real_sweep()
    if cols is None:  # uniform random points: every point its own voxel, several times a real sweep's cost
        print("nuScenes fixture not found: a random cloud (segmenter figures pessimistic)", file=sys.stderr)
        ring = np.repeat(np.arange(32, dtype=np.uint16), N_POINTS // 32)
        az = rng.uniform(-np.pi, np.pi, N_POINTS)
        r = rng.uniform(2, 60, N_POINTS)
        cols = {
            "x": (r * np.cos(az)).astype(np.float32),
            "y": (r * np.sin(az)).astype(np.float32),
            "z": rng.uniform(-2, 4, N_POINTS).astype(np.float32),
            "intensity": rng.uniform(0, 255, N_POINTS).astype(np.float32),
            "ring": ring,
        }
    cloud = ts.serialize_cdr(make_pointcloud2(ts, cols, 0, "lidar_top"), "sensor_msgs/msg/PointCloud2")
    yy, xx = np.mgrid[0:900, 0:1600]
    base = np.stack([(xx / 7) % 255, (yy / 3) % 255, ((xx + yy) / 11) % 255], -1).astype(np.uint8)
    noisy = cv2.add(base, rng.integers(0, 40, base.shape, dtype=np.uint8))
    image = ts.serialize_cdr(make_compressed_image(ts, noisy, 0, "front"), "sensor_msgs/msg/CompressedImage")
    K = np.array([[1266.0, 0, 816.0], [0, 1266.0, 491.0], [0, 0, 1.0]])
    info = ts.serialize_cdr(
        make_camera_info(ts, CameraIntrinsics(K=K, width=1600, height=900, frame_id="front"), 0),
        "sensor_msgs/msg/CameraInfo",
    )
    return bytes(cloud), bytes(image), bytes(info)


def stamped(raw: bytes, stamp_ns: int) -> bytes:
    sec, nsec = divmod(stamp_ns, 1_000_000_000)
    return raw[:4] + int(sec).to_bytes(4, "little", signed=True) + int(nsec).to_bytes(4, "little") + raw[12:]


def publisher(seconds: float, cameras: bool, reliable: bool) -> None:
    """Child process: publish sweeps at 10 Hz and (optionally) six cameras at 12 Hz for ``seconds``."""
    import rclpy
    from lidar_ssl.common import sensor_qos
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, CompressedImage, PointCloud2

    cloud, image, info = sensor_payloads()
    rclpy.init()
    node = Node("bench_sensors")
    qos = sensor_qos(reliable, 10)
    lidar_pub = node.create_publisher(PointCloud2, "/lidar/points", qos)
    cams = [
        (
            node.create_publisher(CompressedImage, f"/cameras/{c}/image/compressed", qos),
            node.create_publisher(CameraInfo, f"/cameras/{c}/camera_info", qos),
        )
        for c in CAMERAS
    ]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and lidar_pub.get_subscription_count() == 0:
        time.sleep(0.05)
    counts = {"lidar": 0, "camera": 0}
    t0 = time.time_ns()
    stop_at = time.monotonic() + seconds

    def on_lidar() -> None:
        lidar_pub.publish(stamped(cloud, t0 + counts["lidar"] * 100_000_000))
        counts["lidar"] += 1

    def on_cameras() -> None:
        stamp = t0 + round(counts["camera"] * 1e9 / 12)
        for img_pub, info_pub in cams:
            img_pub.publish(stamped(image, stamp))
            info_pub.publish(stamped(info, stamp))
        counts["camera"] += 1

    node.create_timer(0.1, on_lidar)
    if cameras:
        node.create_timer(1 / 12, on_cameras)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    while time.monotonic() < stop_at:
        executor.spin_once(timeout_sec=0.01)
    time.sleep(1.0)
    print(f"published lidar={counts['lidar']} camera_frames={counts['camera']}", flush=True)
    node.destroy_node()
    rclpy.shutdown()


def diagnostics_listener(domain: int, seconds: float, names: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Last /diagnostics values of the statuses named ``names`` seen within ``seconds``."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = Node("bench_listener", context=context)
    last: dict[str, dict[str, str]] = {}

    def on_diag(msg: DiagnosticArray) -> None:
        for st in msg.status:
            if any(st.name.endswith(n) for n in names):
                last[st.name] = {kv.key: kv.value for kv in st.values}

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.1)
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown(context=context)
    return last


def bench_recorder(args: argparse.Namespace, env: dict[str, str], tmp: Path) -> None:
    from lidar_ssl.testing import start_node, stop_node

    from lidar_ssl_core.bag import BagReader
    from lidar_ssl_core.record.cdr import read_header
    from lidar_ssl_core.record.shards import closed_shards

    out = tmp / "shards"
    params = {
        "output_dir": str(out),
        "cameras": CAMERAS,
        "keyframe_hz": 0.0,
        "confidence_topic": "",
        "min_free_mb": 0,
        "reliable": args.reliable,
        "shard_max_duration_s": 20.0,
        "sync_queue_size": args.sync_queue,
        "qos_depth": args.qos_depth,
    }
    recorder = start_node("fleet_recorder", params, env, tmp / "recorder.log")
    time.sleep(3.0)
    pub = subprocess.Popen(
        [sys.executable, __file__, "--role", "publisher", "--seconds", str(args.seconds)]
        + (["--reliable"] if args.reliable else []),
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(4.0)  # publisher start-up (payload building, discovery)
    cpu0, wall0 = cpu_seconds(recorder.pid), time.monotonic()
    names = ("inputs", "synchronization", "writer")
    diag = diagnostics_listener(int(env["ROS_DOMAIN_ID"]), args.seconds - 5, names)
    cpu1, wall1 = cpu_seconds(recorder.pid), time.monotonic()
    published = pub.communicate(timeout=120)[0].strip()
    time.sleep(1.0)
    stop_node(recorder, 120)
    sweeps = stored_twice = 0
    for shard in closed_shards(out):
        with BagReader(shard) as reader:
            sweeps += reader.message_count("/lidar/points")
            seen: set[tuple[str, int]] = set()  # (topic, header stamp): every message here has a header
            for m in reader.raw_messages():
                key = (m.topic, read_header(m.raw).stamp_ns)
                stored_twice += key in seen
                seen.add(key)
    inputs = next((v for k, v in diag.items() if k.endswith("inputs")), {})
    sync = next((v for k, v in diag.items() if k.endswith("synchronization")), {})
    writer = next((v for k, v in diag.items() if k.endswith("writer")), {})
    counts = dict(kv.split("=") for kv in published.split()[1:])
    expected = synchronizable(int(counts["lidar"]), int(counts["camera_frames"]))
    print(f"recorder: {published}; synchronizable sweeps: {expected}; sweeps in shards: {sweeps}")
    print(f"  messages stored twice within a shard: {stored_twice}")
    print(f"  recorder CPU share: {(cpu1 - cpu0) / (wall1 - wall0):.2f} cores over {wall1 - wall0:.0f} s")
    print(f"  input rates (last diagnostics): {inputs}")
    print(f"  sync (last diagnostics): {sync}")
    print(f"  writer (last diagnostics): {writer}")


def bench_segmenter(args: argparse.Namespace, env: dict[str, str], tmp: Path) -> None:
    import torch
    from lidar_ssl.testing import start_node, stop_node

    from lidar_ssl_core.config import load_config
    from lidar_ssl_core.downstream.classes import SYNTHETIC
    from lidar_ssl_core.downstream.model import build_segmentation_model, segmentation_state
    from lidar_ssl_core.models.config import BackboneConfig
    from lidar_ssl_core.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_segmentation_model(BackboneConfig(preset="small", normalize=False), SYNTHETIC.num_classes)
    ckpt = save_checkpoint(
        segmentation_state(model.eval(), SYNTHETIC, load_config().data.voxels), tmp / "small.pt"
    )
    params = {"model": str(ckpt), "threads": args.threads, "backend": args.backend}
    seg = start_node("segmenter", params, env, tmp / "segmenter.log")
    time.sleep(5.0)
    pub = subprocess.Popen(
        [sys.executable, __file__, "--role", "lidar-publisher", "--seconds", str(args.segmenter_seconds)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    diag = diagnostics_listener(int(env["ROS_DOMAIN_ID"]), args.segmenter_seconds + 4, ("segmentation",))
    print(f"segmenter: {pub.communicate(timeout=120)[0].strip()}")
    stop_node(seg, 60)
    print(f"  (last diagnostics): {next(iter(diag.values()), {})}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", default="main", choices=["main", "publisher", "lidar-publisher"])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--segmenter-seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2, help="segmenter engine threads")
    parser.add_argument(
        "--backend", default="torch", choices=["torch", "onnxruntime"], help="segmenter engine backend"
    )
    parser.add_argument("--reliable", action="store_true", help="reliable QoS instead of best effort")
    parser.add_argument("--sync-queue", type=int, default=24, help="recorder sync_queue_size")
    parser.add_argument("--qos-depth", type=int, default=10, help="recorder subscription depth")
    parser.add_argument("--skip", choices=["recorder", "segmenter"], default=None)
    args = parser.parse_args()
    if args.role == "publisher":
        publisher(args.seconds, cameras=True, reliable=args.reliable)
        return
    if args.role == "lidar-publisher":
        publisher(args.seconds, cameras=False, reliable=False)
        return
    from lidar_ssl.testing import ros_env

    env = ros_env()
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "PYTHONPATH")})
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip != "recorder":
            bench_recorder(args, env, Path(tmp))
        if args.skip != "segmenter":
            bench_segmenter(args, env, Path(tmp))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

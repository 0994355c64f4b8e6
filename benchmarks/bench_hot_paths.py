"""Per-message and per-sample hot paths on the real nuScenes fixture sweep (a benchmark, not a test).

python benchmarks/bench_hot_paths.py
"""

from __future__ import annotations

import os
import timeit
from pathlib import Path

import numpy as np

from lidar_ssl_core.augment import PairedSample, augment_sample, random_resized_crop
from lidar_ssl_core.bag.typestore import typestore_for
from lidar_ssl_core.config import AugmentConfig, VoxelConfig
from lidar_ssl_core.geometry.projection import project_cloud
from lidar_ssl_core.msg.pointcloud2 import (
    cloud_to_pointcloud,
    make_pointcloud2,
    pointcloud2_header_and_fields,
    read_cloud,
)
from lidar_ssl_core.sync import LidarCameraSynchronizer
from lidar_ssl_core.types import CameraIntrinsics, PointPixelPairs
from lidar_ssl_core.voxels import voxelize

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("LIDAR_SSL_FIXTURES", ROOT.parent / "shared" / "fixtures"))


def best_ms(fn: object, number: int = 20) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e3  # type: ignore[arg-type]


def main() -> None:
    (lidar_file,) = (FIXTURES / "nuscenes-mini-1" / "samples" / "LIDAR_TOP").glob("*.pcd.bin")
    raw = np.fromfile(lidar_file, dtype=np.float32).reshape(-1, 5)
    columns = {
        "x": raw[:, 0],
        "y": raw[:, 1],
        "z": raw[:, 2],
        "intensity": raw[:, 3],
        "ring": raw[:, 4].astype(np.uint16),
    }
    typestore = typestore_for("jazzy")
    msg = make_pointcloud2(typestore, columns, 0, "lidar_top")
    pc2 = "sensor_msgs/msg/PointCloud2"
    raw_cdr = bytes(typestore.serialize_cdr(msg, pc2))
    xyz = np.ascontiguousarray(raw[:, :3])
    big = np.concatenate([xyz] * 4)  # ~139k points, a 64-beam-sized sweep
    K = np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])
    intr = CameraIntrinsics(K=K, width=1600, height=900)
    T = np.eye(4)
    T[:3, :3] = [[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]  # x forward -> optical z
    rng = np.random.default_rng(0)
    images = tuple(rng.integers(0, 255, (900, 1600, 3), dtype=np.uint8) for _ in range(6))
    sps = tuple(rng.integers(0, 150, (900, 1600), dtype=np.int32) for _ in range(6))
    m = 30_000
    pairs = PairedSample(
        xyz=xyz,
        images=images,
        superpixels=sps,
        pairs=PointPixelPairs(
            rng.integers(0, len(xyz), m),
            np.repeat(np.arange(6), m // 6),
            np.column_stack([rng.integers(0, 900, m), rng.integers(0, 1600, m)]),
        ),
        features=raw[:, 3],
    )
    sync: LidarCameraSynchronizer[int, int] = LidarCameraSynchronizer([f"c{i}" for i in range(6)], 50_000_000)
    clock = iter(range(10**9))

    def feed_sync() -> None:
        t = next(clock) * 100_000_000
        sync.add_lidar(t, 0)
        for i in range(6):
            sync.add_camera(f"c{i}", t + i * 8_000_000, 0)

    crop_pairs = PointPixelPairs(
        np.arange(m),
        np.zeros(m, np.int64),
        np.column_stack([rng.integers(0, 900, m), rng.integers(0, 1600, m)]),
    )
    rows = [
        ("read_cloud (zero-copy view), 34,688 points", best_ms(lambda: read_cloud(msg), 200)),
        (
            "pointcloud2_header_and_fields (CDR prefix), 34,688 points",
            best_ms(lambda: pointcloud2_header_and_fields(raw_cdr), 200),
        ),
        (
            "rosbags deserialize_cdr (whole message), 34,688 points",
            best_ms(lambda: typestore.deserialize_cdr(raw_cdr, pc2), 50),
        ),
        ("cloud_to_pointcloud, 34,688 points", best_ms(lambda: cloud_to_pointcloud(msg))),
        (
            "project_cloud into one 1600x900 camera, 34,688 points",
            best_ms(lambda: project_cloud(xyz, T, intr)),
        ),
        ("voxelize cylindrical, 34,688 points", best_ms(lambda: voxelize(xyz, VoxelConfig()))),
        ("voxelize cylindrical, 138,752 points", best_ms(lambda: voxelize(big, VoxelConfig()))),
        (
            "augment_sample, 6 cameras 1600x900 + superpixels, 30k pairs",
            best_ms(lambda: augment_sample(pairs, AugmentConfig(), np.random.default_rng(1)), 3),
        ),
        (
            "random_resized_crop, one 1600x900 image + superpixels, 30k pairs",
            best_ms(lambda: random_resized_crop(images[0], sps[0].astype(np.uint8), crop_pairs, rng), 10),
        ),
        ("synchroniser, one sweep + 6 images (7 messages)", best_ms(feed_sync, 200)),
    ]
    print("| step | ms |\n| --- | --- |")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} |")
    print("\ncommand: python benchmarks/bench_hot_paths.py")


if __name__ == "__main__":
    main()

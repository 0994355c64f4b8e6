"""The synthetic world: deterministic, labelled, and geometrically consistent between LiDAR and cameras."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lidar_ssl_core.bag.reader import BagReader
from lidar_ssl_core.errors import BagWriteError, ConfigError
from lidar_ssl_core.geometry.projection import project_cloud
from lidar_ssl_core.geometry.transforms import invert
from lidar_ssl_core.msg.pointcloud2 import cloud_to_pointcloud
from lidar_ssl_core.synth import CLASS_NAMES, build_rig, generate_world, preset, simulate
from lidar_ssl_core.synth.bagfile import write_synthetic_bag
from lidar_ssl_core.synth.simulate import SynthFrame


def _frames(seed: int = 0, n: int = 2) -> list[SynthFrame]:
    cfg = preset("tiny", n_frames=n, seed=seed, image_width=200, image_height=112)
    return list(simulate(generate_world(cfg), cfg))


def test_same_seed_same_bytes_other_seed_other_world() -> None:
    a, b, c = _frames(0), _frames(0), _frames(1)
    for fa, fb in zip(a, b, strict=True):
        assert np.array_equal(fa.lidar.xyz, fb.lidar.xyz)
        assert np.array_equal(fa.lidar.intensity, fb.lidar.intensity)
        for name in fa.cameras:
            assert np.array_equal(fa.cameras[name].rgb, fb.cameras[name].rgb)
    assert not np.array_equal(a[0].cameras["front"].rgb, c[0].cameras["front"].rgb)


def test_classes_appear_in_both_sensors() -> None:
    frame = _frames()[0]
    lidar_classes = set(np.unique(frame.lidar.label).tolist())
    image_classes = set().union(*(np.unique(c.semantic).tolist() for c in frame.cameras.values()))
    assert lidar_classes <= set(range(len(CLASS_NAMES)))
    # road, sidewalk, building and vegetation at least, in both sensors
    common = lidar_classes & image_classes
    assert len(common) >= 4, common
    intensity, label = frame.lidar.intensity, frame.lidar.label
    assert intensity.min() >= 0 and intensity.max() <= 255
    # materials differ in reflectivity, so intensity carries class information
    means = [float(intensity[label == c].mean()) for c in common if np.count_nonzero(label == c) > 20]
    assert max(means) - min(means) > 10, means


def test_lidar_points_project_onto_pixels_of_their_class() -> None:
    """With the rig's own calibration and poses, >90% of LiDAR points land on a pixel of their class."""
    cfg = preset("tiny", n_frames=2, seed=2, image_width=240, image_height=135)
    rig = build_rig(cfg)
    hits = total = 0
    for frame in simulate(generate_world(cfg), cfg):
        T_map_lidar = frame.ego_pose @ rig.base_to_lidar
        for name, cam in frame.cameras.items():
            T_cam_map = invert(cam.ego_pose @ rig.base_to_camera[name])
            proj = project_cloud(frame.lidar.xyz, T_cam_map @ T_map_lidar, rig.intrinsics[name])
            labels = frame.lidar.label[proj.point_index]
            hits += int(np.count_nonzero(cam.semantic[proj.pixel[:, 0], proj.pixel[:, 1]] == labels))
            total += len(proj)
    assert total > 2000
    assert hits / total > 0.9


def test_ego_moves_and_cameras_fire_off_the_lidar_stamp() -> None:
    a, b = _frames(n=2)
    assert np.linalg.norm(b.ego_pose[:3, 3] - a.ego_pose[:3, 3]) > 0.3
    offsets = {c.stamp_ns - a.stamp_ns for c in a.cameras.values()}
    assert len(offsets) > 1 and any(o != 0 for o in offsets)


def test_bag_holds_the_simulated_frames(tmp_path: Path) -> None:
    cfg = preset("tiny", n_frames=2, seed=4)
    bag = write_synthetic_bag(tmp_path / "w", cfg, distro="humble", storage="sqlite3")
    frames = list(simulate(generate_world(cfg), cfg))
    with BagReader(bag) as reader:
        topics = reader.topics
        assert topics["/lidar/points"] == "sensor_msgs/msg/PointCloud2"
        assert topics["/cameras/front/image/compressed"] == "sensor_msgs/msg/CompressedImage"
        clouds = [m.msg for m in reader.messages(["/lidar/points"])]
    assert len(clouds) == 2
    for msg, frame in zip(clouds, frames, strict=True):
        cloud = cloud_to_pointcloud(msg)
        assert cloud.stamp_ns == frame.stamp_ns
        np.testing.assert_array_equal(cloud.xyz, frame.lidar.xyz)
        np.testing.assert_array_equal(cloud.label, frame.lidar.label)
    assert "version: 8" in (bag / "metadata.yaml").read_text()
    with pytest.raises(BagWriteError, match="exists"):
        write_synthetic_bag(bag, cfg)


def test_bad_synth_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="preset"):
        preset("nonexistent")
    with pytest.raises(ConfigError, match="lidar_fov"):
        preset("tiny", lidar_fov_down_deg=20.0, lidar_fov_up_deg=10.0)


def test_committed_sample_bag_is_readable() -> None:
    from lidar_ssl_core.resources import default_bag

    with BagReader(default_bag()) as reader:
        assert reader.message_count("/lidar/points") == preset("sample").n_frames
        assert not reader.damaged

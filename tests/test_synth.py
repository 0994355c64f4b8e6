"""The synthetic world: deterministic, labelled, and geometrically consistent between LiDAR and cameras."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lidar_ssl_core.bag.reader import BagReader
from lidar_ssl_core.errors import BagWriteError, ConfigError
from lidar_ssl_core.geometry.projection import project_cloud
from lidar_ssl_core.geometry.transforms import apply, invert
from lidar_ssl_core.msg.pointcloud2 import cloud_to_pointcloud
from lidar_ssl_core.synth import CLASS_NAMES, NUM_CLASSES, build_rig, generate_world, preset, simulate
from lidar_ssl_core.synth import classes as C
from lidar_ssl_core.synth.bagfile import write_synthetic_bag
from lidar_ssl_core.synth.config import SynthConfig
from lidar_ssl_core.synth.sensors import SensorRig
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


# ---------------------------------------------------------------- detailed checks on the tiny preset


@pytest.fixture(scope="module")
def tiny() -> SynthConfig:
    return preset("tiny")


@pytest.fixture(scope="module")
def frames(tiny: SynthConfig) -> list[SynthFrame]:
    return list(simulate(generate_world(tiny)))


def _project(
    frame: SynthFrame, rig: SensorRig, camera: str, *, compensate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(point indices, rows, cols, depth) of LiDAR points landing in ``camera``'s image."""
    cam = frame.cameras[camera]
    cam_pose = cam.ego_pose if compensate else frame.ego_pose
    T = invert(rig.base_to_camera[camera]) @ invert(cam_pose) @ frame.ego_pose @ rig.base_to_lidar
    p = apply(T, frame.lidar.xyz)
    K = rig.intrinsics[camera].K
    z = p[:, 2]
    front = z > 1.0
    zz = np.where(front, z, 1.0)
    u = np.rint(K[0, 0] * p[:, 0] / zz + K[0, 2]).astype(np.int64)
    v = np.rint(K[1, 1] * p[:, 1] / zz + K[1, 2]).astype(np.int64)
    h, w = cam.semantic.shape
    ok = front & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    idx = np.flatnonzero(ok)
    return idx, v[idx], u[idx], z[idx]


def test_lidar_fields_and_labels(tiny: SynthConfig, frames: list[SynthFrame]) -> None:
    sweep = frames[0].lidar
    n = len(sweep.xyz)
    n_rays = tiny.lidar_beams * round(360 / tiny.azimuth_resolution_deg)
    assert 0.4 * n_rays < n <= n_rays
    assert sweep.xyz.dtype == np.float32 and sweep.intensity.dtype == np.float32
    assert sweep.ring.dtype == np.uint16 and sweep.label.dtype == np.uint16
    assert set(np.unique(sweep.ring)) == set(range(tiny.lidar_beams))
    rng = np.linalg.norm(sweep.xyz, axis=1)
    assert rng.min() >= tiny.lidar_min_range_m and rng.max() <= tiny.lidar_max_range_m
    assert sweep.intensity.min() >= 0 and sweep.intensity.max() <= 255
    labels = set(np.unique(sweep.label).tolist())
    assert C.UNLABELLED not in labels  # a return always hit something
    assert labels <= set(CLASS_NAMES) and len(labels) >= 6
    assert {C.ROAD, C.SIDEWALK, C.BUILDING, C.CAR} <= labels


def test_classes_differ_in_lidar_intensity(frames: list[SynthFrame]) -> None:
    sweep = frames[0].lidar
    med = {c: float(np.median(sweep.intensity[sweep.label == c])) for c in (C.ROAD, C.LANE_MARKING, C.CAR)}
    assert med[C.LANE_MARKING] > 3 * med[C.ROAD]  # retro-reflective paint vs asphalt
    assert med[C.CAR] > 2 * med[C.ROAD]


def test_images_and_ground_truth(tiny: SynthConfig, frames: list[SynthFrame]) -> None:
    cam = frames[0].cameras["front"]
    assert cam.rgb.shape == (tiny.image_height, tiny.image_width, 3) and cam.rgb.dtype == np.uint8
    assert cam.semantic.shape == cam.rgb.shape[:2] and cam.instance.shape == cam.rgb.shape[:2]
    all_labels: set[int] = set()
    for c in frames[0].cameras.values():
        all_labels |= set(np.unique(c.semantic).tolist())
        assert int(c.semantic.max()) < NUM_CLASSES
        sky = c.semantic == C.UNLABELLED
        assert np.all(np.isinf(c.depth[sky])) and np.all(np.isfinite(c.depth[~sky]))
        assert np.all(c.instance[np.isin(c.semantic, [C.ROAD, C.SIDEWALK, C.TERRAIN, C.UNLABELLED])] == 0)
    assert {C.UNLABELLED, C.ROAD, C.SIDEWALK, C.BUILDING, C.VEGETATION, C.CAR} <= all_labels
    # one class, one look: road pixels are grey and darker than lane markings, sky is blue-ish
    rgb = cam.rgb.astype(np.float64)
    road = rgb[cam.semantic == C.ROAD].mean(0)
    assert abs(road[0] - road[2]) < 20 and road.mean() < rgb[cam.semantic == C.LANE_MARKING].mean()
    sky_rgb = rgb[cam.semantic == C.UNLABELLED].mean(0)
    assert sky_rgb[2] > sky_rgb[0]


def test_visible_points_match_depth_and_need_ego_motion(tiny: SynthConfig, frames: list[SynthFrame]) -> None:
    rig = build_rig(tiny)
    frame = frames[1]
    idx, v, u, z = _project(frame, rig, "back")  # fires 50 ms before the sweep: ego moved ~0.4 m
    depth = frame.cameras["back"].depth[v, u]
    visible = np.abs(depth - z) < 0.3 + 0.03 * z
    assert visible.mean() > 0.8
    match = frame.cameras["back"].semantic[v, u] == frame.lidar.label[idx]
    assert match[visible].mean() > 0.97
    idx2, v2, u2, z2 = _project(frame, rig, "back", compensate=False)
    err_comp = np.percentile(np.abs(depth - z), 75)
    err_raw = np.percentile(np.abs(frame.cameras["back"].depth[v2, u2] - z2), 75)
    match_raw = frame.cameras["back"].semantic[v2, u2] == frame.lidar.label[idx2]
    assert err_raw > 1.5 * err_comp  # skipping ego-motion compensation visibly hurts
    assert match.mean() > match_raw.mean() + 0.01


def test_ego_moves_and_camera_stamps_are_offset(tiny: SynthConfig, frames: list[SynthFrame]) -> None:
    a, b = frames
    step = np.linalg.norm(b.ego_pose[:3, 3] - a.ego_pose[:3, 3])
    dt = (b.stamp_ns - a.stamp_ns) * 1e-9
    assert dt == pytest.approx(1 / tiny.lidar_rate_hz)
    assert 0.7 * tiny.ego_speed_mps * dt < step < 1.3 * tiny.ego_speed_mps * dt
    offsets = {name: c.stamp_ns - a.stamp_ns for name, c in a.cameras.items()}
    assert offsets["front"] == 0
    assert offsets["back"] == -tiny.period_ns // 2
    assert offsets["front_left"] < 0 < offsets["front_right"]
    assert len(set(offsets.values())) == len(offsets)
    for c in a.cameras.values():  # each image carries the ego pose at its own stamp
        moved = np.linalg.norm(c.ego_pose[:3, 3] - a.ego_pose[:3, 3])
        assert moved == pytest.approx(
            abs(c.stamp_ns - a.stamp_ns) * 1e-9 * np.linalg.norm(step / dt), rel=0.3
        )


def test_rig_is_nuscenes_like(tiny: SynthConfig) -> None:
    rig = build_rig(tiny)
    assert rig.camera_names == ("front", "front_right", "back_right", "back", "back_left", "front_left")
    front = rig.base_to_camera["front"][:3, :3]
    np.testing.assert_allclose(front[:, 2], [1, 0, 0], atol=1e-12)  # optical z looks forward
    np.testing.assert_allclose(front[:, 1], [0, 0, -1], atol=1e-12)  # optical y points down
    K = rig.intrinsics["front"].K
    assert K[0, 0] == pytest.approx(tiny.image_width / 2 / np.tan(np.radians(35)))
    assert rig.base_to_lidar[2, 3] == pytest.approx(1.84)


def test_more_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown synthetic preset"):
        preset("nope")
    with pytest.raises(ConfigError, match="image_width"):
        preset("tiny", image_width=0)
    with pytest.raises(ConfigError, match="too short"):
        generate_world(preset("tiny", world_length_m=50.0))


def test_bag_round_trip(tmp_path: Path, tiny: SynthConfig, frames: list[SynthFrame]) -> None:
    from lidar_ssl_core.msg import compressed_to_rgb, tf_message_to_transforms

    path = write_synthetic_bag(tmp_path / "synth", tiny)
    with BagReader(path) as reader:
        topics = reader.topics
        for name in tiny.camera_names:
            assert topics[f"/cameras/{name}/image/compressed"] == "sensor_msgs/msg/CompressedImage"
            assert topics[f"/cameras/{name}/camera_info"] == "sensor_msgs/msg/CameraInfo"
        msgs = list(reader.messages())
    times = [m.log_time_ns for m in msgs]
    assert times == sorted(times)
    assert msgs[0].topic == "/tf_static"
    statics = {t.child: t for t in tf_message_to_transforms(msgs[0].msg)}
    rig = build_rig(tiny)
    np.testing.assert_allclose(statics["front"].matrix, rig.base_to_camera["front"], atol=1e-9)
    np.testing.assert_allclose(statics["lidar_top"].matrix, rig.base_to_lidar, atol=1e-9)
    image = next(m for m in msgs if m.topic == "/cameras/back/image/compressed")
    assert image.log_time_ns == frames[0].cameras["back"].stamp_ns
    diff = np.abs(
        compressed_to_rgb(image.msg).astype(np.int16) - frames[0].cameras["back"].rgb.astype(np.int16)
    )
    assert diff.mean() < 6  # the jpeg of the same image
    poses = {t.stamp_ns: t.matrix for m in msgs if m.topic == "/tf" for t in tf_message_to_transforms(m.msg)}
    stamps = {f.stamp_ns for f in frames} | {c.stamp_ns for f in frames for c in f.cameras.values()}
    assert set(poses) == stamps  # the ego pose at every sensor stamp
    np.testing.assert_allclose(poses[frames[1].stamp_ns], frames[1].ego_pose, atol=1e-6)
    back = frames[1].cameras["back"]
    np.testing.assert_allclose(poses[back.stamp_ns], back.ego_pose, atol=1e-6)


def _bag_content(path: Path) -> dict[str, list[tuple[int, object]]]:
    """Per topic, (log time, decoded content) of every message: the comparison unit for regeneration."""
    from lidar_ssl_core.msg.camera_info import camera_info_to_intrinsics
    from lidar_ssl_core.msg.image import compressed_to_rgb
    from lidar_ssl_core.msg.tf import tf_message_to_transforms

    out: dict[str, list[tuple[int, object]]] = {}
    with BagReader(path) as reader:
        for m in reader.messages():
            if m.msgtype == "sensor_msgs/msg/PointCloud2":
                value: object = cloud_to_pointcloud(m.msg)
            elif m.msgtype == "sensor_msgs/msg/CompressedImage":
                value = compressed_to_rgb(m.msg)
            elif m.msgtype == "sensor_msgs/msg/CameraInfo":
                value = camera_info_to_intrinsics(m.msg)
            elif m.msgtype == "tf2_msgs/msg/TFMessage":
                value = tf_message_to_transforms(m.msg)
            else:  # pragma: no cover - the sample bag has no other types
                raise AssertionError(f"unexpected type {m.msgtype} on {m.topic}")
            out.setdefault(m.topic, []).append((m.log_time_ns, value))
    return out


def test_committed_sample_bag_is_reproducible_from_its_seed(tmp_path: Path) -> None:
    """The embedded default is what the generator makes from seed 0, up to the last bits that numpy /
    OpenCV versions may change: same topics, counts, stamps, frames and labels; float geometry within
    1e-5 (m, rad); decoded JPEG pixels within a mean 1 grey level. Compared as content, never as bytes,
    and never with a bare ``==`` on large arrays (pytest would render the whole difference)."""
    from lidar_ssl_core.resources import default_bag

    hint = "regenerate: lidar-ssl synth --out rosbags/synthetic_sample --preset sample --seed 0 --overwrite"
    committed = _bag_content(default_bag())
    fresh = _bag_content(write_synthetic_bag(tmp_path / "fresh", preset("sample", seed=0)))
    assert sorted(fresh) == sorted(committed), hint
    for topic, want in committed.items():
        got = fresh[topic]
        assert [t for t, _ in got] == [t for t, _ in want], f"{topic}: log times differ; {hint}"
        for (t, a), (_, b) in zip(got, want, strict=True):
            where = f"{topic} @ {t}; {hint}"
            if isinstance(a, list):  # transforms
                assert isinstance(b, list)
                assert [(x.parent, x.child, x.stamp_ns) for x in a] == [
                    (x.parent, x.child, x.stamp_ns) for x in b
                ], where
                for x, y in zip(a, b, strict=True):
                    assert float(np.abs(x.matrix - y.matrix).max()) < 1e-5, where
            elif isinstance(a, np.ndarray):  # decoded image
                assert isinstance(b, np.ndarray)
                assert a.shape == b.shape, where
                diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
                assert float(diff.mean()) < 1.0, f"mean pixel difference {diff.mean():.3f}; {where}"
            elif hasattr(a, "xyz"):  # point cloud
                assert (a.stamp_ns, a.frame_id, len(a)) == (b.stamp_ns, b.frame_id, len(b)), where
                assert float(np.abs(a.xyz - b.xyz).max()) < 1e-4, where
                assert float(np.abs(a.intensity - b.intensity).max()) < 1e-4, where
                assert a.label is not None and b.label is not None
                assert int((a.label != b.label).sum()) == 0, f"labels differ; {where}"
            else:  # camera intrinsics
                assert (a.width, a.height, a.frame_id) == (b.width, b.height, b.frame_id), where
                assert float(np.abs(a.K - b.K).max()) < 1e-9, where

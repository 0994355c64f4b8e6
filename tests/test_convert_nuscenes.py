"""nuScenes -> bag converter: the bag read back gives the dataset's numbers exactly.

The fixture dataroot (one keyframe of scene-0061) is converted and read back with the project's reader
(points, JPEG bytes, K, extrinsics, ego poses, devkit projection counts) and with the independent
``mcap`` + ``mcap-ros2-support`` reader. Lidarseg labels, sweeps, a second scene with a truncated scan
and the missing-devkit error use small dataroots built in a temp dir from the fixture's tables.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("nuscenes", reason="nuscenes-devkit is not installed (project extra 'convert')")

from lidar_ssl_core.bag.reader import BagReader, read_custom_data
from lidar_ssl_core.bag_formats import CLASS_MAP_KEY
from lidar_ssl_core.config import DataConfig
from lidar_ssl_core.convert import ConvertOptions, convert_nuscenes
from lidar_ssl_core.convert.nuscenes import camera_name, nus_transform
from lidar_ssl_core.data.bag_index import index_bag
from lidar_ssl_core.data.frames import FrameLoader
from lidar_ssl_core.errors import ConfigError
from lidar_ssl_core.msg.camera_info import camera_info_to_intrinsics
from lidar_ssl_core.msg.pointcloud2 import read_cloud
from lidar_ssl_core.msg.stamps import header_stamp_ns
from lidar_ssl_core.msg.tf import tf_message_to_transforms

pytestmark = pytest.mark.fixtures

DEVKIT_COUNTS = {  # official devkit map_pointcloud_to_image, min distance 1 m (fixtures README)
    "cam_front": 3053,
    "cam_front_right": 3076,
    "cam_back_right": 3369,
    "cam_back": 4820,
    "cam_back_left": 4089,
    "cam_front_left": 3696,
}


def _tables(root: Path) -> dict[str, list[dict[str, Any]]]:
    return {p.stem: json.loads(p.read_text()) for p in (root / "v1.0-mini").glob("*.json")}


def _by(rows: list[dict[str, Any]], key: str = "token") -> dict[str, dict[str, Any]]:
    return {r[key]: r for r in rows}


def _clone(src: Path, dst: Path) -> dict[str, list[dict[str, Any]]]:
    """A dataroot in ``dst`` sharing the fixture's sensor files (symlinks); tables returned for editing."""
    dst.mkdir(parents=True)
    for name in ("samples", "maps"):
        (dst / name).symlink_to(src / name, target_is_directory=True)
    return _tables(src)


def _write_tables(dst: Path, tables: dict[str, list[dict[str, Any]]]) -> None:
    (dst / "v1.0-mini").mkdir(exist_ok=True)
    for name, rows in tables.items():
        (dst / "v1.0-mini" / f"{name}.json").write_text(json.dumps(rows))


@pytest.fixture(scope="module")
def converted(nuscenes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nus")
    summary = convert_nuscenes(nuscenes_root, "v1.0-mini", ConvertOptions(out_dir=out, workers=1))
    assert [r.status for r in summary.results] == ["ok"]
    assert summary.results[0].frames == 1
    return out / "scene-0061"


def test_round_trip_points_images_calibration(converted: Path, nuscenes_root: Path) -> None:
    tables = _tables(nuscenes_root)
    sensors, calibrated, ego = (
        _by(tables["sensor"]),
        _by(tables["calibrated_sensor"]),
        _by(tables["ego_pose"]),
    )
    by_channel = {}
    for sd in tables["sample_data"]:
        cs = calibrated[sd["calibrated_sensor_token"]]
        by_channel[sensors[cs["sensor_token"]]["channel"]] = (sd, cs, ego[sd["ego_pose_token"]])

    with BagReader(converted) as reader:
        msgs = list(reader.messages(list(reader.topics)))
    by_topic: dict[str, list[Any]] = {}
    for m in msgs:
        by_topic.setdefault(m.topic, []).append(m)
        assert m.topic == "/tf_static" or m.log_time_ns == _stamp_of(m.msg)  # log time = header stamp
    assert [m.log_time_ns for m in msgs] == sorted(m.log_time_ns for m in msgs)

    # LiDAR: every number of the .pcd.bin, ring as uint16, its own stamp
    sd, cs, _ = by_channel["LIDAR_TOP"]
    raw = np.fromfile(nuscenes_root / sd["filename"], dtype=np.float32).reshape(-1, 5)
    (cloud_msg,) = by_topic["/lidar/points"]
    pts = read_cloud(cloud_msg.msg)
    assert cloud_msg.msg.header.frame_id == "lidar_top"
    assert header_stamp_ns(cloud_msg.msg) == sd["timestamp"] * 1000
    for i, name in enumerate(("x", "y", "z", "intensity")):
        np.testing.assert_array_equal(pts[name], raw[:, i])
    assert pts.dtype["ring"] == np.uint16
    np.testing.assert_array_equal(pts["ring"], raw[:, 4].astype(np.uint16))
    assert "label" not in (pts.dtype.names or ())  # the fixture has no lidarseg
    assert CLASS_MAP_KEY not in read_custom_data(converted)  # no labels: no class map recorded

    # /tf_static: extrinsics exactly the calibrated_sensor records; transient-local QoS
    (static_msg,) = by_topic["/tf_static"]
    static = {t.child: t for t in tf_message_to_transforms(static_msg.msg)}
    assert set(static) == {"lidar_top", *DEVKIT_COUNTS}
    np.testing.assert_allclose(static["lidar_top"].matrix, nus_transform(cs), atol=1e-12)
    meta = yaml.safe_load((converted / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    qos = {
        t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"]
        for t in meta["topics_with_message_count"]
    }
    assert "transient_local" in str(qos["/tf_static"]) and "transient_local" not in str(qos["/tf"])
    assert meta["version"] == 9

    poses = {t.stamp_ns: t for m in by_topic["/tf"] for t in tf_message_to_transforms(m.msg)}
    for channel, (sd, cs, pose) in by_channel.items():
        stamp = sd["timestamp"] * 1000
        np.testing.assert_allclose(poses[stamp].matrix, nus_transform(pose), atol=1e-9)
        assert (poses[stamp].parent, poses[stamp].child) == ("map", "base_link")
        if channel == "LIDAR_TOP":
            continue
        cam = camera_name(channel)
        np.testing.assert_allclose(static[cam].matrix, nus_transform(cs), atol=1e-12)
        (img,) = by_topic[f"/cameras/{cam}/image/compressed"]
        assert bytes(img.msg.data) == (nuscenes_root / sd["filename"]).read_bytes()  # not re-encoded
        assert img.msg.format.endswith("jpeg compressed bgr8") and img.msg.header.frame_id == cam
        assert header_stamp_ns(img.msg) == stamp
        (info,) = by_topic[f"/cameras/{cam}/camera_info"]
        intr = camera_info_to_intrinsics(info.msg)
        np.testing.assert_array_equal(intr.K, np.asarray(cs["camera_intrinsic"]))
        assert (intr.width, intr.height) == (1600, 900) and not intr.is_distorted
        assert intr.distortion_model == "plumb_bob"


def _stamp_of(msg: Any) -> int:
    if hasattr(msg, "header"):
        return header_stamp_ns(msg)
    return min(tf_message_to_transforms(msg), key=lambda t: t.stamp_ns).stamp_ns


def test_projection_of_converted_bag_equals_devkit(converted: Path) -> None:
    """Our reader + projection on the bag puts exactly the devkit's point counts into each camera."""
    index = index_bag(converted, DataConfig())
    assert index.rig.has_poses()
    frame = FrameLoader(index).load(0)
    pairs = frame.project(min_depth=1.0)
    counts = {cam: int(np.count_nonzero(pairs.camera_index == i)) for i, cam in enumerate(frame.cameras)}
    assert counts == DEVKIT_COUNTS
    assert frame.images[frame.cameras.index("cam_front")].image.shape == (900, 1600, 3)


def test_independent_mcap_reader(converted: Path, nuscenes_root: Path) -> None:
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    (mcap_file,) = converted.glob("*.mcap")
    seen: dict[str, int] = {}
    with mcap_file.open("rb") as f:
        decoded = list(make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages())
    for _, channel, _, msg in decoded:
        seen[channel.topic] = seen.get(channel.topic, 0) + 1
        if channel.topic == "/lidar/points":
            data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
            assert msg.point_step == 18 and msg.width == 34688
            assert [f.name for f in msg.fields] == ["x", "y", "z", "intensity", "ring"]
            xyz = np.ndarray((34688, 3), dtype="<f4", buffer=data, strides=(18, 4))
            sd = next(p for p in (nuscenes_root / "samples" / "LIDAR_TOP").iterdir())
            np.testing.assert_array_equal(xyz, np.fromfile(sd, dtype=np.float32).reshape(-1, 5)[:, :3])
    assert seen["/lidar/points"] == 1 and seen["/tf_static"] == 1
    assert sum(k.endswith("/image/compressed") for k in seen) == 6


def test_lidarseg_labels_sweeps_and_a_broken_scene(nuscenes_root: Path, tmp_path: Path) -> None:
    """Keyframe gets the raw lidarseg ids, a sweep gets none; a truncated scan fails only its scene."""
    root = tmp_path / "nus"
    tables = _clone(nuscenes_root, root)
    sd_rows = tables["sample_data"]
    key = next(sd for sd in sd_rows if "LIDAR_TOP" in sd["filename"])
    raw = np.fromfile(nuscenes_root / key["filename"], dtype=np.float32).reshape(-1, 5)

    # lidarseg for the keyframe (uint8 ids 0..31 as in nuScenes-lidarseg)
    labels = np.random.default_rng(0).integers(0, 32, size=raw.shape[0], dtype=np.uint8)
    (root / "lidarseg" / "v1.0-mini").mkdir(parents=True)
    labels.tofile(root / "lidarseg" / "v1.0-mini" / f"{key['token']}_lidarseg.bin")
    tables["lidarseg"] = [
        {
            "token": "ls0",
            "sample_data_token": key["token"],
            "filename": f"lidarseg/v1.0-mini/{key['token']}_lidarseg.bin",
        }
    ]
    tables["category"] = [
        {"token": "c0", "name": "noise", "description": "", "index": 0},
        {"token": "c1", "name": "vehicle.car", "description": "", "index": 17},
    ]

    # a sweep 50 ms after the keyframe, with its own ego pose
    (root / "sweeps" / "LIDAR_TOP").mkdir(parents=True)
    sweep_pts = raw.copy()
    sweep_pts[:, 0] += 1.0
    sweep_pts.tofile(root / "sweeps" / "LIDAR_TOP" / "sweep1.pcd.bin")
    pose = dict(next(p for p in tables["ego_pose"] if p["token"] == key["ego_pose_token"]))
    pose.update(token="pose_sweep", timestamp=key["timestamp"] + 50_000)
    pose["translation"] = [pose["translation"][0] + 0.5, *pose["translation"][1:]]
    tables["ego_pose"].append(pose)
    sweep = dict(
        key,
        token="sweep1",
        is_key_frame=False,
        timestamp=key["timestamp"] + 50_000,
        filename="sweeps/LIDAR_TOP/sweep1.pcd.bin",
        prev=key["token"],
        next="",
        ego_pose_token="pose_sweep",
    )
    key["next"] = "sweep1"
    sd_rows.append(sweep)

    # scene-bad: a clone of the sample whose LiDAR file is truncated
    scene = tables["scene"][0]
    bad_scene = dict(
        scene,
        token="scene_bad",
        name="scene-bad",
        first_sample_token="sample_bad",
        last_sample_token="sample_bad",
    )
    tables["scene"].append(bad_scene)
    tables["sample"].append(dict(tables["sample"][0], token="sample_bad", scene_token="scene_bad"))
    (root / "sweeps" / "LIDAR_TOP" / "bad.pcd.bin").write_bytes(raw.tobytes()[:-7])
    for sd in [s for s in sd_rows if s["token"] != "sweep1"]:
        clone = dict(sd, token=sd["token"] + "_bad", sample_token="sample_bad", prev="", next="")
        if "LIDAR_TOP" in sd["filename"]:
            clone["filename"] = "sweeps/LIDAR_TOP/bad.pcd.bin"
        sd_rows.append(clone)
    _write_tables(root, tables)

    out = tmp_path / "out"
    summary = convert_nuscenes(root, "v1.0-mini", ConvertOptions(out_dir=out, workers=2))
    status = {r.name: r for r in summary.results}
    assert status["scene-0061"].status == "ok" and status["scene-0061"].frames == 2
    assert status["scene-bad"].status == "failed"
    assert "bad.pcd.bin" in (status["scene-bad"].error or "") and "truncated" in (
        status["scene-bad"].error or ""
    )
    assert not (out / "scene-bad").exists()
    assert sorted(p.name for p in out.iterdir()) == ["scene-0061"]  # no partial staging folder left

    with BagReader(out / "scene-0061") as reader:
        clouds = [read_cloud(m.msg) for m in reader.messages(["/lidar/points"])]
    assert len(clouds) == 2
    assert clouds[0].dtype["label"] == np.uint16
    np.testing.assert_array_equal(clouds[0]["label"], labels)  # raw 32-class ids, unchanged
    assert read_custom_data(out / "scene-0061") == {CLASS_MAP_KEY: "nuscenes"}  # probe picks the map
    assert "label" not in (clouds[1].dtype.names or ())
    np.testing.assert_array_equal(clouds[1]["x"], sweep_pts[:, 0])


def test_sqlite3_humble_and_dry_run(nuscenes_root: Path, tmp_path: Path) -> None:
    opts = ConvertOptions(out_dir=tmp_path, distro="humble", storage="sqlite3", workers=1)
    dry = convert_nuscenes(nuscenes_root, "v1.0-mini", opts, dry_run=True)
    assert [(r.name, r.status, r.frames) for r in dry.results] == [("scene-0061", "dry-run", 1)]
    assert dry.results[0].bytes_in == sum(
        p.stat().st_size for p in (nuscenes_root / "samples").rglob("*") if p.is_file()
    )
    assert not any(tmp_path.iterdir())
    convert_nuscenes(nuscenes_root, "v1.0-mini", opts)
    meta = yaml.safe_load((tmp_path / "scene-0061" / "metadata.yaml").read_text())[
        "rosbag2_bagfile_information"
    ]
    assert meta["version"] == 8 and meta["storage_identifier"] == "sqlite3"
    with BagReader(tmp_path / "scene-0061") as reader:
        assert reader.message_count("/lidar/points") == 1
    again = convert_nuscenes(nuscenes_root, "v1.0-mini", opts)  # refuses to overwrite
    assert again.failed and "exists" in (again.failed[0].error or "")
    skipped = convert_nuscenes(
        nuscenes_root, "v1.0-mini", ConvertOptions(out_dir=tmp_path, skip_existing=True, workers=1)
    )
    assert skipped.results[0].status == "skipped"


def test_missing_devkit_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, nuscenes_root: Path, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "nuscenes.nuscenes", None)
    with pytest.raises(ConfigError, match="nuscenes-devkit"):
        convert_nuscenes(nuscenes_root, "v1.0-mini", ConvertOptions(out_dir=tmp_path))


def test_unknown_scene_and_missing_tables(nuscenes_root: Path, tmp_path: Path) -> None:
    from lidar_ssl_core.errors import DatasetError

    with pytest.raises(DatasetError, match="scene-9999"):
        convert_nuscenes(nuscenes_root, "v1.0-mini", ConvertOptions(out_dir=tmp_path), scenes=["scene-9999"])
    with pytest.raises(DatasetError, match=r"v1\.0-trainval"):
        convert_nuscenes(nuscenes_root, "v1.0-trainval", ConvertOptions(out_dir=tmp_path))
    # a missing camera file fails the scene and names the file
    root = tmp_path / "broken"
    tables = _clone(nuscenes_root, root)
    cam = next(sd for sd in tables["sample_data"] if "CAM_BACK/" in sd["filename"])
    cam["filename"] = "samples/CAM_BACK/missing.jpg"
    _write_tables(root, tables)
    summary = convert_nuscenes(root, "v1.0-mini", ConvertOptions(out_dir=tmp_path / "o", workers=1))
    assert summary.failed and "missing.jpg" in (summary.failed[0].error or "")
    assert not (tmp_path / "o" / "scene-0061").exists()
    shutil.rmtree(root)


def test_repeated_stamps_and_unexpected_planning_errors_fail_only_the_scene(
    nuscenes_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LiDAR sweep sharing its keyframe's timestamp fails the scene, named; a bug in planning too."""
    import lidar_ssl_core.convert.nuscenes as nus

    root = tmp_path / "nus"
    tables = _clone(nuscenes_root, root)
    key = next(sd for sd in tables["sample_data"] if "LIDAR_TOP" in sd["filename"])
    sweep = dict(key, token="sweep1", is_key_frame=False, prev=key["token"], next="")
    key["next"] = "sweep1"
    tables["sample_data"].append(sweep)  # same timestamp as the keyframe
    _write_tables(root, tables)
    summary = convert_nuscenes(root, "v1.0-mini", ConvertOptions(out_dir=tmp_path / "o"), dry_run=True)
    (result,) = summary.results
    assert result.status == "failed" and result.name == "scene-0061"
    assert "LIDAR_TOP sample_data timestamps" in (result.error or "")
    assert "repeats" in (result.error or "")

    def broken(*args: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(nus, "_plan_scene", broken)
    summary = convert_nuscenes(
        nuscenes_root, "v1.0-mini", ConvertOptions(out_dir=tmp_path / "o"), dry_run=True
    )
    assert [(r.name, r.status, r.error) for r in summary.results] == [
        ("scene-0061", "failed", "ZeroDivisionError: a bug")
    ]

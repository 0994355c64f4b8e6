"""KITTI (object, SemanticKITTI, raw) -> bag converters: numbers read back exactly.

The key check: a velodyne point projected with the project's own reader and projection code, from what
the converted bag holds (``/tf_static`` + CameraInfo), lands on KITTI's pixel ``P2 · R0_rect ·
Tr_velo_to_cam · X`` (same points, same integer pixels, sub-pixel to 1e-9). Real fixtures for object and
SemanticKITTI; a KITTI raw drive, poses/times files and broken inputs are built in a temp dir.
"""

from __future__ import annotations

import calendar
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import yaml

from lidar_ssl_core.bag.reader import BagReader
from lidar_ssl_core.config import DataConfig, ProjectionConfig
from lidar_ssl_core.convert import (
    ConvertOptions,
    convert_kitti_object,
    convert_kitti_raw,
    convert_semantickitti,
)
from lidar_ssl_core.convert.kitti import parse_timestamp_ns, read_calib_file
from lidar_ssl_core.data.bag_index import index_bag
from lidar_ssl_core.data.frames import FrameLoader
from lidar_ssl_core.geometry.calibration import lidar_to_camera
from lidar_ssl_core.geometry.projection import project_cloud
from lidar_ssl_core.geometry.tf_buffer import TransformBuffer
from lidar_ssl_core.geometry.transforms import invert
from lidar_ssl_core.msg.camera_info import camera_info_to_intrinsics
from lidar_ssl_core.msg.pointcloud2 import read_cloud
from lidar_ssl_core.msg.stamps import header_stamp_ns
from lidar_ssl_core.msg.tf import tf_message_to_transforms
from lidar_ssl_core.types import CameraIntrinsics

pytestmark = pytest.mark.fixtures

F64 = npt.NDArray[np.float64]


def _h(T3x4: F64) -> F64:
    T = np.eye(4)
    T[:3, :] = T3x4.reshape(3, 4)
    return T


def _kitti_pixels(xyz: F64, M: F64, depth: F64, W: int, H: int) -> tuple[Any, Any, Any]:
    """KITTI's x = M·X (M = P2 R0 Tr), the devkit's strict in-image test with depth > 1 m."""
    x = M @ np.hstack([xyz, np.ones((xyz.shape[0], 1))]).T
    u, v = x[0] / x[2], x[1] / x[2]
    keep = (depth > 1.0) & (u > 1) & (u < W - 1) & (v > 1) & (v < H - 1)
    idx = np.nonzero(keep)[0]
    uv = np.stack([u[idx], v[idx]], axis=1)
    return idx, uv, np.round(uv[:, ::-1]).astype(np.int64)


def _check_projection(xyz: F64, T: F64, intr: CameraIntrinsics, P2: F64, rect_from_velo: F64) -> int:
    M = P2 @ rect_from_velo
    X = np.hstack([xyz, np.ones((xyz.shape[0], 1))]).T
    ref_idx, ref_uv, ref_px = _kitti_pixels(xyz, M, (rect_from_velo @ X)[2], intr.width, intr.height)
    proj = project_cloud(xyz, T, intr, min_depth=1.0)
    np.testing.assert_array_equal(proj.point_index, ref_idx)
    np.testing.assert_array_equal(proj.pixel, ref_px)
    np.testing.assert_allclose(proj.uv, ref_uv, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(intr.K, P2[:, :3])  # K = P_rect[:, :3] exactly
    # the camera frame is camera 2's optical centre: P2's baseline column is in the extrinsic
    np.testing.assert_allclose(intr.projection[:, 3], 0.0, atol=1e-4)
    return len(ref_idx)


def _messages(bag: Path) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    with BagReader(bag) as reader:
        for m in reader.messages(list(reader.topics)):
            out.setdefault(m.topic, []).append(m)
    return out


def _opts(out: Path, **kw: Any) -> ConvertOptions:
    return ConvertOptions(out_dir=out, workers=kw.pop("workers", 1), **kw)


# ------------------------------------------------------------------------------------------- object
def test_kitti_object_round_trip_and_projection(kitti_object_root: Path, tmp_path: Path) -> None:
    train = kitti_object_root / "training"
    summary = convert_kitti_object(kitti_object_root, _opts(tmp_path))
    assert [(r.name, r.status) for r in summary.results] == [("training_calib0", "ok")]
    bag = tmp_path / "training_calib0"
    raw = np.fromfile(train / "velodyne" / "000000.bin", dtype=np.float32).reshape(-1, 4)
    msgs = _messages(bag)
    assert "/tf" not in msgs  # unrelated snapshots: no ego poses
    (cloud,) = msgs["/lidar/points"]
    pts = read_cloud(cloud.msg)
    assert header_stamp_ns(cloud.msg) == cloud.log_time_ns == 1_000_000_000  # synthetic clock, frame 0
    assert pts.dtype.names == ("x", "y", "z", "intensity")  # no ring in KITTI
    for i, name in enumerate(pts.dtype.names):
        np.testing.assert_array_equal(pts[name], raw[:, i])
    (img,) = msgs["/cameras/image_2/image/compressed"]
    assert bytes(img.msg.data) == (train / "image_2" / "000000.png").read_bytes()
    assert img.msg.format == "rgb8; png compressed bgr8"

    calib = read_calib_file(train / "calib" / "000000.txt")
    P2 = calib["P2"].reshape(3, 4)
    R0 = np.eye(4)
    R0[:3, :3] = calib["R0_rect"].reshape(3, 3)
    rect = R0 @ _h(calib["Tr_velo_to_cam"])
    index = index_bag(bag, DataConfig())
    frame = FrameLoader(index).load(0)
    assert frame.images[0].image.shape == (370, 1224, 3)
    n = _check_projection(
        frame.cloud.xyz.astype(np.float64), frame.T_cam_lidar[0], frame.intrinsics[0], P2, rect
    )
    assert 15_000 < n < 25_000


def test_kitti_object_groups_by_calibration(kitti_object_root: Path, tmp_path: Path) -> None:
    train = kitti_object_root / "training"
    root = tmp_path / "obj"
    for sub in ("velodyne", "image_2", "calib"):
        (root / "training" / sub).mkdir(parents=True)
    text = (train / "calib" / "000000.txt").read_text()
    for idx in range(4):
        (root / "training" / "velodyne" / f"{idx:06d}.bin").symlink_to(train / "velodyne" / "000000.bin")
        (root / "training" / "image_2" / f"{idx:06d}.png").symlink_to(train / "image_2" / "000000.png")
    (root / "training" / "calib" / "000000.txt").write_text(text)
    (root / "training" / "calib" / "000001.txt").write_text(text.replace("P2: 7.070493", "P2: 7.215377"))
    (root / "training" / "calib" / "000002.txt").write_text(text)
    # 000003 has no calib file: reported by name, the other frames still convert
    out = tmp_path / "out"
    summary = convert_kitti_object(root, _opts(out))
    status = {r.name: r for r in summary.results}
    assert status["training_calib0"].frames == 2 and status["training_calib1"].frames == 1
    assert status["training_frame_000003"].status == "failed"
    assert "000003.txt" in (status["training_frame_000003"].error or "")
    with BagReader(out / "training_calib0") as reader:
        stamps = [m.log_time_ns for m in reader.messages(["/lidar/points"])]
    assert stamps == [1_000_000_000, 1_200_000_000]  # stamp = 1 s + index * 0.1 s
    with BagReader(out / "training_calib1") as reader:
        (info,) = [m.msg for m in reader.messages(["/cameras/image_2/camera_info"])]
    assert camera_info_to_intrinsics(info).K[0, 0] == 721.5377


# ------------------------------------------------------------------------------------ SemanticKITTI
def test_semantickitti_labels_and_projection(semantickitti_root: Path, tmp_path: Path) -> None:
    seq = semantickitti_root / "sequences" / "00"
    summary = convert_semantickitti(semantickitti_root, ["00"], _opts(tmp_path), image_size=(1241, 376))
    assert summary.results[0].status == "ok"
    msgs = _messages(tmp_path / "sequence_00")
    (cloud,) = msgs["/lidar/points"]
    pts = read_cloud(cloud.msg)
    raw = np.fromfile(seq / "velodyne" / "000000.bin", dtype=np.float32).reshape(-1, 4)
    labels = np.fromfile(seq / "labels" / "000000.label", dtype=np.uint32)
    assert pts.shape == (124_668,)
    np.testing.assert_array_equal(pts["x"], raw[:, 0])
    np.testing.assert_array_equal(pts["intensity"], raw[:, 3])
    assert pts.dtype["label"] == np.uint16
    np.testing.assert_array_equal(pts["label"], labels & 0xFFFF)
    np.testing.assert_array_equal(pts["instance"], labels >> 16)
    assert {10, 40, 50} <= set(np.unique(pts["label"]).tolist())  # car, road, building ids kept raw

    # calibration without images: /tf_static + one CameraInfo per colour camera; our projection == KITTI
    buf = TransformBuffer()
    buf.add_many(tf_message_to_transforms(msgs["/tf_static"][0].msg), static=True)
    calib = read_calib_file(seq / "calib.txt")
    Tr = _h(calib["Tr"])
    xyz = raw[:, :3].astype(np.float64)
    for cam, key in (("image_2", "P2"), ("image_3", "P3")):
        (info,) = msgs[f"/cameras/{cam}/camera_info"]
        intr = camera_info_to_intrinsics(info.msg)
        assert (intr.width, intr.height) == (1241, 376)
        T = lidar_to_camera(buf, "lidar_top", 1_000_000_000, cam, 1_000_000_000, "base_link", "map")
        assert _check_projection(xyz, T, intr, calib[key].reshape(3, 4), Tr) > 10_000
    # the stereo baseline is in the extrinsics: image_3 sits ~0.54 m right of image_2 (KITTI's rig)
    gap = buf.lookup("image_2", "image_3", 0)[:3, 3]
    assert abs(np.linalg.norm(gap) - 0.54) < 0.02


def _sequence(src: Path, dst: Path, n: int) -> Path:
    base = dst / "sequences" / "05"
    for sub in ("velodyne", "labels"):
        (base / sub).mkdir(parents=True)
    for i in range(n):
        (base / "velodyne" / f"{i:06d}.bin").symlink_to(src / "velodyne" / "000000.bin")
        (base / "labels" / f"{i:06d}.label").symlink_to(src / "labels" / "000000.label")
    shutil.copy(src / "calib.txt", base / "calib.txt")
    return base


def test_semantickitti_times_poses_and_bad_sequences(semantickitti_root: Path, tmp_path: Path) -> None:
    src = semantickitti_root / "sequences" / "00"
    root = tmp_path / "sk"
    base = _sequence(src, root, 2)
    (base / "times.txt").write_text("0.000000e+00\n1.036400e-01\n")
    pose1 = np.eye(4)[:3].copy()
    pose1[:, 3] = [0.1, 0.0, 0.8]  # camera 0 moved 0.8 m forward (z), 0.1 m right
    (base / "poses.txt").write_text(
        "\n".join(" ".join(f"{v:e}" for v in p.ravel()) for p in (np.eye(4)[:3], pose1))
    )
    # sequence 06: truncated scan; sequence 07: label count does not match; 08: Tr missing
    for seq, damage in (("06", "bin"), ("07", "label"), ("08", "calib")):
        bad = root / "sequences" / seq
        shutil.copytree(base, bad, symlinks=True)
        if damage == "bin":
            (bad / "velodyne" / "000001.bin").unlink()
            (bad / "velodyne" / "000001.bin").write_bytes(
                src.joinpath("velodyne", "000000.bin").read_bytes()[:-6]
            )
        elif damage == "label":
            (bad / "labels" / "000001.label").unlink()
            (bad / "labels" / "000001.label").write_bytes(b"\0" * 400)
        else:
            (bad / "calib.txt").write_text(
                "\n".join(
                    ln for ln in src.joinpath("calib.txt").read_text().splitlines() if not ln.startswith("Tr")
                )
            )
    out = tmp_path / "out"
    summary = convert_semantickitti(root, ["05", "06", "07", "08"], _opts(out))
    status = {r.name: r for r in summary.results}
    assert status["sequence_05"].status == "ok"
    assert "000001.bin" in (status["sequence_06"].error or "") and "truncated" in (
        status["sequence_06"].error or ""
    )
    assert "000001.label" in (status["sequence_07"].error or "")
    assert "calib.txt" in (status["sequence_08"].error or "") and "'Tr'" in (
        status["sequence_08"].error or ""
    )
    assert sorted(p.name for p in out.iterdir()) == ["sequence_05"]

    msgs = _messages(out / "sequence_05")
    assert [m.log_time_ns for m in msgs["/lidar/points"]] == [1_000_000_000, 1_103_640_000]
    poses = [t for m in msgs["/tf"] for t in tf_message_to_transforms(m.msg)]
    assert [p.stamp_ns for p in poses] == [1_000_000_000, 1_103_640_000]
    Tr = _h(read_calib_file(src / "calib.txt")["Tr"])
    np.testing.assert_allclose(poses[0].matrix, np.eye(4), atol=1e-6)
    expected = invert(Tr) @ _h(pose1) @ Tr  # base_link = velodyne; map = velodyne frame of scan 0
    np.testing.assert_allclose(poses[1].matrix, expected, atol=1e-6)
    assert poses[1].matrix[0, 3] == pytest.approx(0.8, abs=0.02)  # forward is velodyne +x


# -------------------------------------------------------------------------------------------- raw
def _fmt(values: F64) -> str:
    return " ".join(f"{v:.12e}" for v in np.asarray(values).ravel())


def _raw_drive(obj: Path, root: Path) -> dict[str, Any]:
    """A 2-frame KITTI raw drive in the exact on-disk layout, from the object fixture's files."""
    calib = read_calib_file(obj / "training" / "calib" / "000000.txt")
    day = root / "2011_09_26"
    drive = day / "2011_09_26_drive_0001_sync"
    day.mkdir(parents=True)
    Tr = calib["Tr_velo_to_cam"].reshape(3, 4)
    Ti = calib["Tr_imu_to_velo"].reshape(3, 4)
    (day / "calib_cam_to_cam.txt").write_text(
        "calib_time: 09-Jan-2012 13:57:47\ncorner_dist: 9.950000e-02\n"
        f"R_rect_00: {_fmt(calib['R0_rect'])}\nP_rect_00: {_fmt(calib['P0'])}\n"
        f"S_rect_02: 1.224000e+03 3.700000e+02\nR_rect_02: {_fmt(np.eye(3))}\n"
        f"P_rect_02: {_fmt(calib['P2'])}\n"
    )
    (day / "calib_velo_to_cam.txt").write_text(
        f"calib_time: 15-Mar-2012 11:37:16\nR: {_fmt(Tr[:, :3])}\nT: {_fmt(Tr[:, 3])}\n"
        "delta_f: 0.000000e+00 0.000000e+00\ndelta_c: 0.000000e+00 0.000000e+00\n"
    )
    (day / "calib_imu_to_velo.txt").write_text(
        f"calib_time: 25-May-2012 16:47:16\nR: {_fmt(Ti[:, :3])}\nT: {_fmt(Ti[:, 3])}\n"
    )
    velo = ["2011-09-26 13:02:25.964389445", "2011-09-26 13:02:26.068000001"]
    cams = ["2011-09-26 13:02:25.966000000", "2011-09-26 13:02:26.070500000"]
    oxts_t = ["2011-09-26 13:02:25.960000000", "2011-09-26 13:02:26.063000000"]
    lat, lon0, dlon, yaw0 = 49.011, 8.4226, 2e-5, 0.6
    for sensor, name, stamps in (
        ("velodyne_points", "velodyne/000000.bin", velo),
        ("image_02", "image_2/000000.png", cams),
    ):
        (drive / sensor / "data").mkdir(parents=True)
        (drive / sensor / "timestamps.txt").write_text("\n".join(stamps) + "\n")
        for i in range(2):
            suffix = Path(name).suffix
            (drive / sensor / "data" / f"{i:010d}{suffix}").symlink_to(obj / "training" / name)
    (drive / "oxts" / "data").mkdir(parents=True)
    (drive / "oxts" / "timestamps.txt").write_text("\n".join(oxts_t) + "\n")
    for i, (lo, yaw) in enumerate(((lon0, yaw0), (lon0 + dlon, yaw0 + 0.02))):
        row = [lat, lo, 112.0, 0.0, 0.0, yaw] + [0.0] * 24
        (drive / "oxts" / "data" / f"{i:010d}.txt").write_text(" ".join(f"{v:.10f}" for v in row) + "\n")
    return {
        "calib": calib,
        "velo": velo,
        "cams": cams,
        "oxts": oxts_t,
        "lat": lat,
        "dlon": dlon,
        "yaw0": yaw0,
    }


def test_kitti_raw_stamps_projection_and_poses(kitti_object_root: Path, tmp_path: Path) -> None:
    info = _raw_drive(kitti_object_root, tmp_path / "raw")
    out = tmp_path / "out"
    summary = convert_kitti_raw(tmp_path / "raw", "2011_09_26", ["0001", "0002"], _opts(out))
    status = {r.name: r for r in summary.results}
    assert status["2011_09_26_drive_0001_sync"].status == "ok"
    assert "does not exist" in (status["2011_09_26_drive_0002_sync"].error or "")
    bag = out / "2011_09_26_drive_0001_sync"

    epoch = calendar.timegm((2011, 9, 26, 13, 2, 25)) * 1_000_000_000
    assert parse_timestamp_ns(info["velo"][0]) == epoch + 964_389_445
    msgs = _messages(bag)
    assert [header_stamp_ns(m.msg) for m in msgs["/lidar/points"]] == [
        parse_timestamp_ns(t) for t in info["velo"]
    ]
    assert [m.log_time_ns for m in msgs["/cameras/image_2/image/compressed"]] == [
        parse_timestamp_ns(t) for t in info["cams"]
    ]

    # projection: static chain (no ego motion) is exactly KITTI's P_rect_02 R_rect_00 Tr_velo_to_cam
    calib = info["calib"]
    R0 = np.eye(4)
    R0[:3, :3] = calib["R0_rect"].reshape(3, 3)
    rect = R0 @ _h(calib["Tr_velo_to_cam"])
    cfg = DataConfig(projection=ProjectionConfig(ego_motion_compensation=False))
    frame = FrameLoader(index_bag(bag, cfg)).load(1)
    _check_projection(
        frame.cloud.xyz.astype(np.float64),
        frame.T_cam_lidar[0],
        frame.intrinsics[0],
        calib["P2"].reshape(3, 4),
        rect,
    )

    # poses: oxts Mercator, map = IMU frame of the first oxts sample, base_link = velodyne
    poses = {t.stamp_ns: t.matrix for m in msgs["/tf"] for t in tf_message_to_transforms(m.msg)}
    expected_stamps = {parse_timestamp_ns(t) for t in info["velo"] + info["cams"] + info["oxts"]}
    assert set(poses) == expected_stamps
    T_imu_velo = invert(_h(calib["Tr_imu_to_velo"]))
    t0, t1 = (parse_timestamp_ns(t) for t in info["oxts"])
    np.testing.assert_allclose(poses[t0], T_imu_velo, atol=1e-6)
    rel = poses[t1] @ invert(T_imu_velo)  # T(imu_0 <- imu_1)
    dx = math.cos(math.radians(info["lat"])) * 6378137.0 * math.radians(info["dlon"])  # east, metres
    yaw0 = info["yaw0"]
    np.testing.assert_allclose(rel[:3, 3], [math.cos(yaw0) * dx, -math.sin(yaw0) * dx, 0.0], atol=1e-6)
    np.testing.assert_allclose(
        rel[:2, :2], [[math.cos(0.02), -math.sin(0.02)], [math.sin(0.02), math.cos(0.02)]], atol=1e-9
    )
    # a velodyne stamp between two oxts samples gets the interpolated pose
    tv = parse_timestamp_ns(info["velo"][0])
    alpha = (tv - t0) / (t1 - t0)
    np.testing.assert_allclose(
        poses[tv][:3, 3], (1 - alpha) * poses[t0][:3, 3] + alpha * poses[t1][:3, 3], atol=1e-9
    )


def test_kitti_raw_humble_sqlite_metadata(kitti_object_root: Path, tmp_path: Path) -> None:
    _raw_drive(kitti_object_root, tmp_path / "raw")
    convert_kitti_raw(
        tmp_path / "raw", "2011_09_26", ["1"], _opts(tmp_path / "o", distro="humble", storage="sqlite3")
    )
    meta = yaml.safe_load((tmp_path / "o" / "2011_09_26_drive_0001_sync" / "metadata.yaml").read_text())
    assert meta["rosbag2_bagfile_information"]["version"] == 8
    assert meta["rosbag2_bagfile_information"]["storage_identifier"] == "sqlite3"
    # a missing timestamps.txt names the file
    (tmp_path / "raw" / "2011_09_26" / "2011_09_26_drive_0001_sync" / "oxts" / "timestamps.txt").unlink()
    summary = convert_kitti_raw(tmp_path / "raw", "2011_09_26", ["0001"], _opts(tmp_path / "o2"))
    assert "oxts/timestamps.txt" in (summary.failed[0].error or "")


# -------------------------------------------------------------------------------------------- CLI
def test_cli_dry_run_convert_and_exit_codes(
    kitti_object_root: Path, semantickitti_root: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from lidar_ssl_core.convert.cli import convert_app

    runner = CliRunner()
    args = ["kitti-object", "--root", str(kitti_object_root), "--out", str(tmp_path / "o"), "--workers", "1"]
    dry = runner.invoke(convert_app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "training_calib0: dry-run, 1 frames" in dry.output and not (tmp_path / "o").exists()
    ok = runner.invoke(convert_app, [*args, "--storage", "sqlite3", "--distro", "humble"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "o" / "training_calib0" / "metadata.yaml").is_file()
    again = runner.invoke(convert_app, args)  # refuses to overwrite: non-zero exit, message says why
    assert again.exit_code == 1 and "exists" in again.output
    assert runner.invoke(convert_app, [*args, "--overwrite"]).exit_code == 0
    missing = runner.invoke(
        convert_app,
        [
            "semantickitti",
            "--root",
            str(semantickitti_root),
            "--sequence",
            "00",
            "--sequence",
            "42",
            "--out",
            str(tmp_path / "s"),
        ],
    )
    assert (
        missing.exit_code == 1
        and "sequence_00: ok" in missing.output
        and "sequence_42: failed" in missing.output
    )


def test_kitti_raw_bad_stamps_empty_oxts_and_planning_bugs_fail_one_drive(
    kitti_object_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lidar_ssl_core.convert.kitti_raw as kitti_raw

    raw = tmp_path / "raw"
    info = _raw_drive(kitti_object_root, raw)
    day = raw / "2011_09_26"
    good = day / "2011_09_26_drive_0001_sync"
    for n in ("0002", "0003", "0004", "0005"):
        shutil.copytree(good, day / f"2011_09_26_drive_{n}_sync", symlinks=True)
    empty_oxts = day / "2011_09_26_drive_0002_sync" / "oxts" / "data" / "0000000001.txt"
    empty_oxts.write_text("")
    velo_ts = day / "2011_09_26_drive_0003_sync" / "velodyne_points" / "timestamps.txt"
    velo_ts.write_text(f"{info['velo'][0]}\n{info['velo'][0]}\n")
    cam_ts = day / "2011_09_26_drive_0004_sync" / "image_02" / "timestamps.txt"
    cam_ts.write_text(f"{info['cams'][1]}\n{info['cams'][0]}\n")
    real_oxts_poses = kitti_raw.oxts_poses

    def oxts_poses(rows: F64) -> F64:
        if rows[0, 1] > 1000.0:
            raise ZeroDivisionError("a bug")
        return real_oxts_poses(rows)

    bug = day / "2011_09_26_drive_0005_sync" / "oxts" / "data" / "0000000000.txt"
    bug.write_text(" ".join(["49.0", "1234.5", *["0.0"] * 28]) + "\n")
    monkeypatch.setattr(kitti_raw, "oxts_poses", oxts_poses)

    drives = ["0001", "0002", "0003", "0004", "0005"]
    summary = convert_kitti_raw(raw, "2011_09_26", drives, _opts(tmp_path / "out"), dry_run=True)
    status = {r.name.split("_")[4]: r for r in summary.results}
    assert status["0001"].status == "dry-run"
    assert status["0002"].status == "failed"
    assert f"oxts file {empty_oxts} is empty" in (status["0002"].error or "")
    assert f"timestamps file {velo_ts}" in (status["0003"].error or "")
    assert "entry 2 repeats" in (status["0003"].error or "")
    assert f"timestamps file {cam_ts}" in (status["0004"].error or "")
    assert "entry 2 goes back" in (status["0004"].error or "")
    assert status["0005"].error == "ZeroDivisionError: a bug"
    assert not (tmp_path / "out").exists()


def test_semantickitti_repeated_times_fail_the_sequence(semantickitti_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "sk"
    base = _sequence(semantickitti_root / "sequences" / "00", root, 3)
    (base / "times.txt").write_text("0.0\n0.1\n0.1\n")
    summary = convert_semantickitti(root, ["05"], _opts(tmp_path / "out"), dry_run=True)
    (result,) = summary.results
    assert result.status == "failed"
    assert f"times file {base / 'times.txt'}: the stamp of entry 3 repeats" in (result.error or "")

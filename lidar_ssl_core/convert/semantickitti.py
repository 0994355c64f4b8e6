"""SemanticKITTI / KITTI odometry sequence (``<root>/sequences/<NN>``) -> one bag per sequence.

Per scan: ``velodyne/<i>.bin`` (x y z reflectance float32), ``labels/<i>.label`` when present (uint32 per
point: semantic id in the low 16 bits -> ``label`` uint16, raw SemanticKITTI ids such as 10 car, 40 road,
252 moving-car; instance id in the high 16 bits -> ``instance`` uint16), ``image_2`` / ``image_3`` PNGs
when present. ``calib.txt`` gives P0-P3 and ``Tr`` (velodyne -> rectified camera 0, R0_rect folded in).

Stamps: ``start + times.txt`` (seconds from the sequence start; scan i at 10 Hz when times.txt is
absent). Poses: ``poses.txt`` rows are T(cam0_0 <- cam0_i); with base_link = velodyne,
``T(map <- base_i) = Tr⁻¹ · pose_i · Tr`` so ``map`` is the velodyne frame of scan 0.
Without images, a camera's calibration is still written (``/tf_static`` + one CameraInfo) when its image
size is given (``image_size``), since KITTI calibration does not say it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lidar_ssl_core.convert.common import (
    ConvertOptions,
    ConvertSummary,
    ProgressCallback,
    check_consistent_stamps,
    execute,
    plan_failure,
)
from lidar_ssl_core.convert.kitti import (
    COLOR_CAMERAS,
    ImageItem,
    KittiUnit,
    LidarItem,
    calib_matrix,
    homogeneous,
    numbered_files,
    png_file_size,
    read_calib_file,
    read_matrix_rows,
    rectified_camera,
)
from lidar_ssl_core.errors import DatasetError
from lidar_ssl_core.geometry.transforms import invert

log = logging.getLogger(__name__)

DEFAULT_START_NS = 1_000_000_000  # times.txt starts at 0 s; shift so no stamp is 0 ("unset" in ROS)
SCAN_PERIOD_NS = 100_000_000


def plan_semantickitti(
    root: Path,
    sequences: list[str],
    *,
    image_size: tuple[int, int] | None = None,
    start_ns: int = DEFAULT_START_NS,
) -> tuple[list[KittiUnit], list[tuple[str, str]]]:
    """One unit per sequence, and (name, error) of the sequences whose tables cannot be planned."""
    units, problems = [], []
    for seq in sequences:
        try:
            units.append(plan_sequence(Path(root), seq, image_size=image_size, start_ns=start_ns))
        except Exception as err:  # one odd sequence must not stop the others (as run_unit does per bag)
            problems.append(plan_failure("sequence", sequence_name(seq), err))
    return units, problems


def sequence_name(sequence: str) -> str:
    return f"sequence_{int(sequence):02d}" if sequence.isdigit() else f"sequence_{sequence}"


def plan_sequence(
    root: Path, sequence: str, *, image_size: tuple[int, int] | None = None, start_ns: int = DEFAULT_START_NS
) -> KittiUnit:
    seq = sequence_name(sequence).removeprefix("sequence_")
    base = root / "sequences" / seq
    scans = numbered_files(base / "velodyne", ".bin")
    if not scans:
        raise DatasetError(
            f"{base / 'velodyne'} has no <scan>.bin (is --root the folder holding sequences/?)"
        )
    order = sorted(scans)
    if order != list(range(len(order))):
        missing = sorted(set(range(order[-1] + 1)) - set(order))[:5]
        raise DatasetError(
            f"{base / 'velodyne'}: scans are not numbered 0..{len(order) - 1} (missing {missing})"
        )
    labels = numbered_files(base / "labels", ".label")

    times_path = base / "times.txt"
    if times_path.is_file():
        times = read_matrix_rows(times_path, 1, "times")[:, 0]
        if times.size < len(order):
            raise DatasetError(f"times file {times_path} has {times.size} lines for {len(order)} scans")
        stamps = [start_ns + round(float(t) * 1e9) for t in times[: len(order)]]
    else:
        log.info("%s: no times.txt, stamping scans at 10 Hz", base)
        stamps = [start_ns + i * SCAN_PERIOD_NS for i in order]
    check_consistent_stamps(stamps, f"times file {times_path}" if times_path.is_file() else f"{base} scans")

    calib_path = base / "calib.txt"
    calib = read_calib_file(calib_path)
    Tr = homogeneous(calib_matrix(calib, "Tr", (3, 4), calib_path))
    cameras, images = [], []
    info_stamps: tuple[int, ...] = ()
    for i, name in COLOR_CAMERAS.items():
        files = numbered_files(base / f"image_{i}", ".png")
        P = calib_matrix(calib, f"P{i}", (3, 4), calib_path)
        if files:
            absent = [k for k in order if k not in files]
            if absent:
                raise DatasetError(f"{base / f'image_{i}'} has no image for scans {absent[:5]}")
            width, height = png_file_size(files[order[0]])
            images += [ImageItem(stamps[k], name, files[k]) for k in order]
        elif image_size is not None:
            width, height = image_size
            info_stamps = (stamps[0],)
        else:
            continue
        cameras.append(rectified_camera(name, P, None, Tr, width, height))

    poses: tuple[tuple[int, np.ndarray], ...] = ()
    poses_path = base / "poses.txt"
    if poses_path.is_file():
        rows = read_matrix_rows(poses_path, 12, "poses")
        if rows.shape[0] < len(order):
            raise DatasetError(f"poses file {poses_path} has {rows.shape[0]} poses for {len(order)} scans")
        Tr_inv = invert(Tr)
        poses = tuple((stamps[k], Tr_inv @ homogeneous(rows[k].reshape(3, 4)) @ Tr) for k in order)
    scans_items = tuple(LidarItem(stamps[k], scans[k], labels.get(k)) for k in order)
    if labels and len(labels) != len(order):
        unlabelled = [k for k in order if k not in labels][:5]
        log.warning(
            "%s: %d of %d scans have no label file (e.g. %s)",
            base,
            len(order) - len(labels),
            len(order),
            unlabelled,
        )
    return KittiUnit(
        name=f"sequence_{seq}",
        scans=scans_items,
        images=tuple(images),
        cameras=tuple(cameras),
        poses=poses,
        info_stamps=info_stamps,
    )


def convert_semantickitti(
    root: Path,
    sequences: list[str],
    options: ConvertOptions,
    *,
    image_size: tuple[int, int] | None = None,
    start_ns: int = DEFAULT_START_NS,
    progress: ProgressCallback | None = None,
    dry_run: bool = False,
) -> ConvertSummary:
    """One bag per sequence at ``options.out_dir/sequence_<NN>``."""
    units, problems = plan_semantickitti(root, sequences, image_size=image_size, start_ns=start_ns)
    return execute(units, options, plan_failures=problems, progress=progress, dry=dry_run)

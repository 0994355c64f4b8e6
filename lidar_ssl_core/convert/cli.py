"""``lidar-ssl convert ...``: the dataset converters on the command line (progress bar and summary here only).

Exit code 0 when every unit converted, 1 when any failed (the others are still written) or nothing
could be planned.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from lidar_ssl_core.bag_formats import Distro, Storage
from lidar_ssl_core.cli_common import console, fail
from lidar_ssl_core.errors import ConfigError, LidarSslError

if TYPE_CHECKING:  # the converters import numpy, rosbags and OpenCV: only when a command runs
    from lidar_ssl_core.convert.common import ConvertOptions, ConvertSummary, ProgressCallback, ProgressEvent

convert_app = typer.Typer(
    name="convert",
    help="Convert a dataset (nuScenes, KITTI raw / object, SemanticKITTI) into bags of the project profile.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

OutOption = Annotated[Path, typer.Option("--out", "-o", help="output folder (one bag per scene/drive/...)")]
DistroOption = Annotated[
    Distro, typer.Option(help="write bag metadata this ROS 2 distribution reads (humble: v8, else v9)")
]
StorageOption = Annotated[Storage, typer.Option(help="mcap or sqlite3")]
CompressOption = Annotated[
    bool, typer.Option(help="zstd-compress mcap chunks (~25-40% smaller KITTI clouds, ~3x slower)")
]
OverwriteOption = Annotated[bool, typer.Option(help="replace existing output bags")]
SkipOption = Annotated[bool, typer.Option(help="leave existing output bags alone and skip them")]
WorkersOption = Annotated[Optional[int], typer.Option(help="processes (default: cores, max 8)")]  # noqa: UP045
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="only list what would be converted")]


def _options(
    out: Path,
    distro: Distro,
    storage: Storage,
    compress: bool,
    overwrite: bool,
    skip: bool,
    workers: int | None,
) -> ConvertOptions:
    from lidar_ssl_core.convert.common import ConvertOptions, default_workers

    if overwrite and skip:
        raise fail(ConfigError("--overwrite and --skip-existing contradict each other; pass one of them"))
    return ConvertOptions(
        out_dir=out,
        distro=distro,
        storage=storage,
        compress=compress,
        overwrite=overwrite,
        skip_existing=skip,
        workers=workers if workers is not None else default_workers(),
    )


def _run(job: Callable[[ProgressCallback | None], ConvertSummary], dry_run: bool) -> None:
    """Run a conversion under a byte progress bar, print the summary, exit 1 if anything failed."""
    try:
        if dry_run:
            summary = job(None)
        else:
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            ) as bar:
                task = bar.add_task("converting", total=None)
                done = 0

                def progress(event: ProgressEvent) -> None:
                    nonlocal done
                    bar.advance(task, event.bytes_read)
                    if event.result is not None:
                        done += 1
                        bar.update(task, description=f"{done} bags ({event.unit}: {event.result.status})")

                summary = job(progress)
    except LidarSslError as err:
        raise fail(err) from err
    out = Console(soft_wrap=True)
    for line in summary.lines():
        out.print(line, highlight=False, markup=False)
    if summary.failed:
        raise typer.Exit(1)


@convert_app.command("nuscenes")
def nuscenes_cmd(
    dataroot: Annotated[Path, typer.Option(help="nuScenes dataroot (holds samples/, sweeps/, v1.0-*/)")],
    out: OutOption,
    version: Annotated[str, typer.Option(help="v1.0-mini | v1.0-trainval | v1.0-test")] = "v1.0-mini",
    scenes: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--scenes", help="scene names, e.g. scene-0061 (repeat; default: all)"),
    ] = None,
    sweeps: Annotated[bool, typer.Option(help="include non-keyframe sweeps and images")] = True,
    distro: DistroOption = "jazzy",
    storage: StorageOption = "mcap",
    compress: CompressOption = False,
    overwrite: OverwriteOption = False,
    skip_existing: SkipOption = False,
    workers: WorkersOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """nuScenes -> one bag per scene (LIDAR_TOP, six cameras, tf, lidarseg labels when present)."""
    from lidar_ssl_core.convert.nuscenes import convert_nuscenes

    opts = _options(out, distro, storage, compress, overwrite, skip_existing, workers)
    _run(
        lambda p: convert_nuscenes(
            dataroot, version, opts, scenes=scenes, sweeps=sweeps, progress=p, dry_run=dry_run
        ),
        dry_run,
    )


@convert_app.command("kitti-raw")
def kitti_raw_cmd(
    root: Annotated[Path, typer.Option(help="KITTI raw root (holds <date>/)")],
    date: Annotated[str, typer.Option(help="recording date, e.g. 2011_09_26")],
    drive: Annotated[list[str], typer.Option("--drive", help="drive number, e.g. 0001 (repeat for several)")],
    out: OutOption,
    distro: DistroOption = "jazzy",
    storage: StorageOption = "mcap",
    compress: CompressOption = False,
    overwrite: OverwriteOption = False,
    skip_existing: SkipOption = False,
    workers: WorkersOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """KITTI raw synced drive -> one bag (velodyne, image_02/03, oxts poses, calibration)."""
    from lidar_ssl_core.convert.kitti_raw import convert_kitti_raw

    opts = _options(out, distro, storage, compress, overwrite, skip_existing, workers)
    _run(lambda p: convert_kitti_raw(root, date, drive, opts, progress=p, dry_run=dry_run), dry_run)


def _size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"image size must be WxH, e.g. 1241x376, not {value!r}") from None
    return w, h


@convert_app.command("semantickitti")
def semantickitti_cmd(
    root: Annotated[Path, typer.Option(help="dataset root (holds sequences/)")],
    sequence: Annotated[list[str], typer.Option("--sequence", help="sequence, e.g. 00 (repeat for several)")],
    out: OutOption,
    image_size: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="WxH of the colour cameras, to write their calibration when image_2 is absent"),
    ] = None,
    distro: DistroOption = "jazzy",
    storage: StorageOption = "mcap",
    compress: CompressOption = False,
    overwrite: OverwriteOption = False,
    skip_existing: SkipOption = False,
    workers: WorkersOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """SemanticKITTI sequence -> one bag (velodyne + labels, calib, poses, image_2/3 when present)."""
    from lidar_ssl_core.convert.semantickitti import convert_semantickitti

    opts = _options(out, distro, storage, compress, overwrite, skip_existing, workers)
    size = _size(image_size)
    _run(
        lambda p: convert_semantickitti(root, sequence, opts, image_size=size, progress=p, dry_run=dry_run),
        dry_run,
    )


@convert_app.command("kitti-object")
def kitti_object_cmd(
    root: Annotated[Path, typer.Option(help="KITTI object root (holds training/)")],
    out: OutOption,
    split: Annotated[
        Literal["training", "testing"], typer.Option(help="the split folder under --root")
    ] = "training",
    distro: DistroOption = "jazzy",
    storage: StorageOption = "mcap",
    compress: CompressOption = False,
    overwrite: OverwriteOption = False,
    skip_existing: SkipOption = False,
    workers: WorkersOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """KITTI object frames (index order, 10 Hz synthetic clock) -> one bag per calibration group."""
    from lidar_ssl_core.convert.kitti_object import convert_kitti_object

    opts = _options(out, distro, storage, compress, overwrite, skip_existing, workers)
    _run(lambda p: convert_kitti_object(root, opts, split=split, progress=p, dry_run=dry_run), dry_run)

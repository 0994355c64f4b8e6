"""``lidar-ssl export``: a segmentation checkpoint -> a model package (registered in ``cli.py``).

Like ``cli.py``, only this module prints and turns errors into exit codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lidar_ssl_core.cli_common import console, fail
from lidar_ssl_core.errors import ConfigError, LidarSslError

VoxelSize = Annotated[
    Optional[tuple[float, float, float]],  # noqa: UP045
    typer.Option(help="restate the voxel size; refused if it differs from the model's"),
]


def export(
    model: Annotated[Path, typer.Option(help="segmentation checkpoint (model_last.pt)")],
    out: Annotated[Path, typer.Option(help="package folder to write")],
    formats: Annotated[str, typer.Option(help="compiled forms, comma-separated: onnx, tensorrt")] = "onnx",
    precision: Annotated[str, typer.Option(help="TensorRT engine precision: fp16 | fp32")] = "fp16",
    preset: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="restate the backbone preset; refused if it differs from the model's"),
    ] = None,
    voxel_mode: Annotated[Optional[str], typer.Option(help="restate the voxel mode")] = None,  # noqa: UP045
    voxel_size: VoxelSize = None,
    trt_max_voxels: Annotated[int, typer.Option(help="TensorRT profile: most voxels per scan")] = 300_000,
    trt_opt_voxels: Annotated[int, typer.Option(help="TensorRT profile: typical voxels per scan")] = 40_000,
    overwrite: Annotated[bool, typer.Option(help="replace an existing package")] = False,
) -> None:
    """Write a model package: weights (safetensors), model description, manifest, ONNX / TensorRT forms."""
    from lidar_ssl_core.deploy.package import export_package
    from lidar_ssl_core.deploy.spec import check_overrides, spec_from_checkpoint

    try:
        wanted = tuple(f.strip() for f in formats.split(",") if f.strip())
        if precision not in ("fp16", "fp32"):
            raise ConfigError(f"--precision must be fp16 or fp32, got {precision!r}")
        spec = spec_from_checkpoint(model)
        check_overrides(spec, preset, voxel_mode, voxel_size)
        pkg = export_package(
            spec,
            out,
            formats=wanted,  # type: ignore[arg-type]
            precision=precision,  # type: ignore[arg-type]
            overwrite=overwrite,
            trt_max_voxels=trt_max_voxels,
            trt_opt_voxels=trt_opt_voxels,
        )
        size = sum(int(e["bytes"]) for e in pkg.manifest["files"].values())
        console.print(
            f"wrote {out}: {spec.backbone.preset}, {spec.num_classes} classes, forms "
            f"{', '.join(pkg.manifest['formats'])}; {size / 1e6:.1f} MB"
        )
    except LidarSslError as err:
        raise fail(err) from err


def register(app: typer.Typer) -> None:
    """Add ``export`` to the ``lidar-ssl`` app."""
    app.command()(export)

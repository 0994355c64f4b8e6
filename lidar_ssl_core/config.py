"""Typed configuration shared by the CLI and the ROS nodes.

One pydantic tree, loaded from YAML over documented defaults (docs/config.md is generated from these
models by ``lidar-ssl config --markdown`` and documents every field). Unknown keys are errors, so a typo
in a YAML file fails at start-up with the key's dotted path instead of being silently ignored.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lidar_ssl_core.downstream.config import DownstreamConfig
from lidar_ssl_core.errors import ConfigError
from lidar_ssl_core.train.config import PretrainConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ProfileConfig(_Section):
    """Topic names and frame ids of the project's bag profile (docs/bag-profile.md)."""

    lidar_topic: str = Field("/lidar/points", description="sensor_msgs/PointCloud2 sweeps")
    camera_image_topic: str = Field(
        "/cameras/{camera}/image/compressed",
        description="image topic pattern; sensor_msgs/CompressedImage or sensor_msgs/Image",
    )
    camera_info_topic: str = Field("/cameras/{camera}/camera_info", description="CameraInfo topic pattern")
    cameras: tuple[str, ...] = Field(
        (), description="camera names to use; empty = every camera found in the bag, sorted"
    )
    tf_topic: str = Field("/tf", description="tf2_msgs/TFMessage with ego poses world_frame -> base_frame")
    tf_static_topic: str = Field("/tf_static", description="tf2_msgs/TFMessage with sensor extrinsics")
    base_frame: str = Field("base_link", description="ego vehicle frame")
    world_frame: str = Field("map", description="fixed frame of the ego poses")
    label_field: str = Field("label", description="optional per-point semantic id field of the cloud")

    @field_validator("camera_image_topic", "camera_info_topic")
    @classmethod
    def _has_camera_placeholder(cls, value: str) -> str:
        if "{camera}" not in value:
            raise ValueError("must contain the placeholder '{camera}'")
        return value

    def image_topic(self, camera: str) -> str:
        return self.camera_image_topic.format(camera=camera)

    def info_topic(self, camera: str) -> str:
        return self.camera_info_topic.format(camera=camera)


class SyncConfig(_Section):
    """LiDAR-pivot synchronisation: each sweep takes the nearest image of each camera within ``slop_s``."""

    slop_s: float = Field(0.05, gt=0, description="max |t_camera - t_lidar| in seconds")
    require_all_cameras: bool = Field(
        False, description="drop a sweep unless every camera matched (else keep partial groups)"
    )
    queue_size: int = Field(8, ge=1, description="messages kept per camera (bounds memory when online)")


class ProjectionConfig(_Section):
    min_depth_m: float = Field(1.0, ge=0, description="points closer than this to the camera are dropped")
    ego_motion_compensation: bool = Field(
        True, description="LiDAR -> ego(t_lidar) -> world -> ego(t_cam) -> camera when /tf has poses"
    )


class SuperpixelMethod(str, Enum):
    SLIC = "slic"  # scikit-image, the reference
    FAST = "fast"  # our OpenCV-based SLIC, same settings, far faster
    EXTERNAL = "external"  # masks made elsewhere (e.g. SAM), read from files


class SuperpixelConfig(_Section):
    method: SuperpixelMethod = Field(SuperpixelMethod.FAST, description="slic | fast | external")
    n_segments: int = Field(150, ge=2, le=65535, description="target number of superpixels per image")
    compactness: float = Field(6.0, gt=0, description="SLIC compactness (scikit-image units)")
    sigma: float = Field(3.0, ge=0, description="Gaussian pre-smoothing sigma in pixels")
    cache_dir: Path | None = Field(None, description="where computed superpixels are cached; none = no cache")
    mask_dir: Path | None = Field(None, description="folder of external masks (method=external)")


class VoxelMode(str, Enum):
    CYLINDRICAL = "cylindrical"
    CARTESIAN = "cartesian"


class VoxelConfig(_Section):
    mode: VoxelMode = Field(VoxelMode.CYLINDRICAL, description="cylindrical | cartesian")
    size: tuple[float, float, float] = Field(
        (0.1, 1.0, 0.1),
        description="cylindrical: (rho m, phi degrees, z m); cartesian: (x, y, z) m",
    )

    @field_validator("size")
    @classmethod
    def _positive(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(not math.isfinite(v) or v <= 0 for v in value):
            raise ValueError("all voxel sizes must be finite and > 0")
        return value


class AugmentConfig(_Section):
    """Point and image augmentations of SLidR (methods.md §1.3 and A.1)."""

    enabled: bool = Field(True, description="false = validation transform (plain resize) only")
    rotate_z: bool = Field(True, description="random rotation about z, U[0, 2pi)")
    flip_xy: bool = Field(True, description="flip x and y, each with p = 0.5")
    drop_cuboid: bool = Field(True, description="drop the points of one random cuboid")
    cuboid_max_fraction: float = Field(0.2, ge=0, le=1, description="max cuboid side / coordinate range")
    crop_size: tuple[int, int] = Field((416, 224), description="output image (width, height)")
    crop_scale: tuple[float, float] = Field((0.3, 1.0), description="crop area fraction range")
    crop_ratio: tuple[float, float] = Field((14 / 9, 17 / 9), description="crop aspect (w/h) range")
    hflip_prob: float = Field(0.5, ge=0, le=1, description="horizontal flip probability per image")
    min_pairs: int = Field(1024, ge=0, description="an augmentation keeping fewer pairs is redrawn")
    min_pair_fraction: float = Field(0.75, ge=0, le=1, description="...unless it keeps this fraction")
    max_redraws: int = Field(10, ge=1, description="redraws before the augmentation is skipped")

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError("crop_scale must satisfy 0 < lo <= hi <= 1")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError("crop_ratio must satisfy 0 < lo <= hi")
        if min(self.crop_size) <= 0:
            raise ValueError("crop_size must be positive")
        return self


class LoaderConfig(_Section):
    batch_size: int = Field(4, ge=1, description="samples per batch")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes")
    image_scale: float = Field(
        1.0, gt=0, le=1, description="decode images at this scale (JPEG reduced decoding when possible)"
    )
    max_image_pixels: int = Field(
        50_000_000,
        ge=1,
        description="refuse a compressed image whose header claims more pixels (checked before decoding)",
    )


class DataConfig(_Section):
    bags: tuple[Path, ...] = Field((), description="bags to read; empty = the embedded sample bag")
    profile: ProfileConfig = ProfileConfig()
    sync: SyncConfig = SyncConfig()
    projection: ProjectionConfig = ProjectionConfig()
    superpixels: SuperpixelConfig = SuperpixelConfig()
    voxels: VoxelConfig = VoxelConfig()
    augment: AugmentConfig = AugmentConfig()
    loader: LoaderConfig = LoaderConfig()


class Config(_Section):
    """Root of the configuration tree."""

    seed: int = Field(0, description="seed for every random choice (augmentations, splits, sampling)")
    data: DataConfig = DataConfig()
    pretrain: PretrainConfig = PretrainConfig()
    downstream: DownstreamConfig = DownstreamConfig()


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, overlaid by the YAML file at ``path``, overlaid by dotted ``overrides``."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError as err:
            raise ConfigError(f"config file {path} does not exist") from err
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} cannot be read: {err}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at top level")
        raw = loaded or {}
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for depth, key in enumerate(parents):
            child = node.get(key)
            if child is None:  # absent, or a YAML section whose keys are all commented out
                child = node[key] = {}
            if not isinstance(child, dict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError(f"cannot set {dotted}: {where} is {child!r}, not a section")
            node = child
        node[leaf] = value
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"invalid configuration{where}: {describe_validation_error(err)}") from err


def describe_validation_error(err: ValidationError) -> str:
    """One line per problem, each naming the dotted key: 'data.voxels.size: ...; seed: ...'."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())


def dump_config(config: BaseModel) -> str:
    """YAML text of a resolved config (written into every run folder)."""
    return str(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

"""Configuration of the synthetic world and its sensors, with the named presets.

Every number that shapes the data is here, so a bag is fully described by (config, seed): the same
config always produces byte-identical arrays.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lidar_ssl_core.config import describe_validation_error
from lidar_ssl_core.errors import ConfigError


class CameraSpec(BaseModel):
    """One camera of the rig: mount on base_link and horizontal field of view.

    The camera looks along base_link's +x rotated by ``yaw_deg`` about +z (counter-clockwise, so a
    positive yaw looks left); its frame is optical (z forward, x right, y down).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    yaw_deg: float = Field(ge=-180.0, le=180.0)
    hfov_deg: float = Field(70.0, gt=10.0, lt=170.0)
    x: float = 1.0
    y: float = 0.0
    z: float = Field(1.55, gt=0.2)
    pitch_deg: float = Field(0.0, ge=-30.0, le=30.0, description="positive looks down")


def nuscenes_rig() -> tuple[CameraSpec, ...]:
    """Six cameras around the car, placed and oriented like nuScenes' CAM_* (back camera wider)."""
    return (
        CameraSpec(name="front", yaw_deg=0.0, hfov_deg=70.0, x=1.70, y=0.00, z=1.55),
        CameraSpec(name="front_right", yaw_deg=-55.0, hfov_deg=70.0, x=1.55, y=-0.50, z=1.55),
        CameraSpec(name="back_right", yaw_deg=-110.0, hfov_deg=70.0, x=1.05, y=-0.50, z=1.55),
        CameraSpec(name="back", yaw_deg=180.0, hfov_deg=110.0, x=0.05, y=0.00, z=1.55),
        CameraSpec(name="back_left", yaw_deg=110.0, hfov_deg=70.0, x=1.05, y=0.50, z=1.55),
        CameraSpec(name="front_left", yaw_deg=55.0, hfov_deg=70.0, x=1.55, y=0.50, z=1.55),
    )


class SynthConfig(BaseModel):
    """World, trajectory, LiDAR and camera settings of one synthetic drive."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    seed: int = Field(0, ge=0, description="drives every random choice; same seed -> same bytes")
    n_frames: int = Field(20, ge=1, description="number of LiDAR sweeps")
    lidar_rate_hz: float = Field(10.0, gt=0.0, le=50.0)
    start_stamp_ns: int = Field(1_700_000_000_000_000_000, ge=0, description="stamp of the first sweep")

    # cameras
    image_width: int = Field(480, ge=8, le=4096)
    image_height: int = Field(270, ge=8, le=4096)
    cameras: tuple[CameraSpec, ...] = Field(default_factory=nuscenes_rig)
    camera_max_range_m: float = Field(160.0, gt=1.0, description="objects farther than this are not drawn")
    image_noise_std: float = Field(2.0, ge=0.0, description="Gaussian pixel noise, in 0..255 units")
    jpeg_quality: int = Field(85, ge=1, le=100)

    # LiDAR (HDL-32E like)
    lidar_beams: int = Field(32, ge=1, le=256)
    lidar_fov_up_deg: float = Field(10.67, ge=-90.0, le=90.0)
    lidar_fov_down_deg: float = Field(-30.67, ge=-90.0, le=90.0)
    azimuth_resolution_deg: float = Field(0.4, gt=0.01, le=10.0)
    lidar_x: float = 0.94
    lidar_z: float = Field(1.84, gt=0.2, description="LiDAR height above the ground (base_link z=0)")
    lidar_min_range_m: float = Field(0.5, ge=0.0)
    lidar_max_range_m: float = Field(70.0, gt=1.0)
    lidar_range_noise_m: float = Field(0.02, ge=0.0, description="std of the range noise")
    lidar_dropout: float = Field(0.02, ge=0.0, lt=1.0, description="probability a return is lost")

    # world
    world_length_m: float | None = Field(
        None, gt=0.0, description="length of the street; None = just long enough for the drive"
    )
    ego_speed_mps: float = Field(8.0, gt=0.0, le=30.0, description="mean ego speed")
    parked_cars_per_100m: float = Field(8.0, ge=0.0, le=30.0)
    moving_cars: int = Field(6, ge=0, le=100, description="cars driving in both lanes")
    pedestrians_per_100m: float = Field(10.0, ge=0.0, le=100.0)
    trees_per_100m: float = Field(8.0, ge=0.0, le=50.0)
    bushes_per_100m: float = Field(6.0, ge=0.0, le=50.0)
    intersection: bool = Field(True, description="a cross street ahead of the ego start")

    @field_validator("cameras")
    @classmethod
    def _unique_names(cls, value: tuple[CameraSpec, ...]) -> tuple[CameraSpec, ...]:
        names = [c.name for c in value]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> SynthConfig:
        if self.lidar_fov_down_deg >= self.lidar_fov_up_deg:
            raise ValueError("lidar_fov_down_deg must be below lidar_fov_up_deg")
        if self.lidar_min_range_m >= self.lidar_max_range_m:
            raise ValueError("lidar_min_range_m must be below lidar_max_range_m")
        return self

    @property
    def period_ns(self) -> int:
        return round(1e9 / self.lidar_rate_hz)

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)


#: Named presets: ``sample`` is the committed bag, ``nuscenes_like`` the throughput benchmark, ``tiny`` tests.
PRESETS: dict[str, dict[str, Any]] = {
    "sample": {
        "n_frames": 16,
        "image_width": 400,
        "image_height": 225,
        "azimuth_resolution_deg": 0.5,
        "jpeg_quality": 80,
    },
    "nuscenes_like": {
        "n_frames": 20,
        "image_width": 1600,
        "image_height": 900,
        "azimuth_resolution_deg": 0.29,  # ~34.5k returns per sweep, like nuScenes' 34.7k
    },
    "tiny": {
        "n_frames": 2,
        "image_width": 160,
        "image_height": 90,
        "lidar_beams": 16,
        "azimuth_resolution_deg": 1.0,
    },
}


def preset(name: str, **overrides: Any) -> SynthConfig:
    """A named preset (``sample``, ``nuscenes_like``, ``tiny``) with field overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown synthetic preset {name!r}; choose one of {sorted(PRESETS)}")
    return make_config(**{**PRESETS[name], **overrides})


def make_config(**fields: Any) -> SynthConfig:
    """Validate fields into a SynthConfig, turning pydantic errors into a ConfigError naming the field."""
    try:
        return SynthConfig.model_validate(fields)
    except ValidationError as err:
        raise ConfigError(f"invalid synthetic config: {describe_validation_error(err)}") from err

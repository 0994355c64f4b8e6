"""Settings of the recorder and the bag player: one pydantic model each, which the ROS nodes declare
field by field as parameters (name, default and description come from here, so a node cannot declare a
parameter without a description and the launch/YAML files are checked against these models)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


ImageType = Literal["compressed", "raw"]
IMAGE_MSGTYPES: dict[str, str] = {
    "compressed": "sensor_msgs/msg/CompressedImage",
    "raw": "sensor_msgs/msg/Image",
}


class RecorderConfig(_Params):
    """``fleet_recorder``: what to record, what to keep, where and how to store it."""

    output_dir: str = Field("recordings", description="folder of the shards (created)")
    shard_prefix: str = Field("shard", description="shard names: <prefix>_<6-digit sequence>")
    lidar_topic: str = Field("/lidar/points", description="sensor_msgs/PointCloud2 sweeps (sync pivot)")
    cameras: list[str] = Field(
        default_factory=lambda: ["front"], description="camera names, substituted into the topic patterns"
    )
    camera_image_topic: str = Field(
        "/cameras/{camera}/image/compressed", description="image topic pattern ({camera} = a camera name)"
    )
    image_type: ImageType = Field(
        "compressed", description="compressed: sensor_msgs/CompressedImage; raw: sensor_msgs/Image"
    )
    camera_info_topic: str = Field("/cameras/{camera}/camera_info", description="CameraInfo topic pattern")
    tf_topic: str = Field("/tf", description="ego poses (tf2_msgs/TFMessage)")
    tf_static_topic: str = Field("/tf_static", description="extrinsics, subscribed transient-local")
    base_frame: str = Field("base_link", description="ego frame (for the travel distance)")
    world_frame: str = Field("map", description="fixed frame of the ego poses")
    calibration_file: str = Field(
        "", description="YAML of static transforms written as /tf_static into every shard ('' = none)"
    )
    confidence_topic: str = Field(
        "/segmenter/confidence",
        description="per-scan confidence of the live segmenter (geometry_msgs/Vector3Stamped; '' = none)",
    )
    confidence_wait_s: float = Field(
        0.5, ge=0, description="how long a sample waits for its scan's confidence once the topic is live"
    )
    sync_slop_s: float = Field(0.05, gt=0, description="max |t_camera - t_lidar| of a synchronized sample")
    sync_queue_size: int = Field(
        24, ge=1, description="images kept per camera while waiting for sweeps (24 = 2 s at 12 Hz)"
    )
    require_all_cameras: bool = Field(False, description="drop a sweep unless every camera matched")
    keyframe_hz: float = Field(2.0, ge=0, description="max rate of routine keyframes (0 = keep every sample)")
    min_travel_m: float = Field(0.0, ge=0, description="min ego travel between keyframes when poses exist")
    confidence_threshold: float = Field(
        0.0, ge=0, le=1, description="always keep a scan whose confidence is below this"
    )
    low_confidence_fraction: float = Field(
        0.1, ge=0, le=1, description="always keep scans among this lowest fraction of recent confidences"
    )
    confidence_window: int = Field(200, ge=1, description="recent scans the fraction is taken over")
    shard_max_mb: int = Field(512, ge=1, description="close a shard after this many MiB of messages")
    shard_max_duration_s: float = Field(60.0, gt=0, description="close a shard spanning this much log time")
    quota_mb: int = Field(
        0, ge=0, description="keep closed shards within this many MiB, oldest evicted (0 = off)"
    )
    min_free_mb: int = Field(256, ge=0, description="stop writing (and report) below this much free space")
    chunk_kb: int = Field(1024, ge=16, description="mcap chunk size: at most this much is lost on a crash")
    compression_level: int = Field(1, ge=1, le=22, description="zstd level of the chunks")
    distro: Literal["humble", "jazzy", "kilted"] = Field("jazzy", description="bag metadata flavour")
    queue_size: int = Field(32, ge=1, description="kept samples waiting for the writer thread (then dropped)")
    ring_seconds: float = Field(10.0, ge=0, description="~/snapshot saves the last this many seconds")
    ring_max_mb: int = Field(1024, ge=0, description="memory bound of the snapshot ring buffer")
    snapshot_dir: str = Field("", description="snapshot bags go here ('' = <output_dir>/snapshots)")
    reliable: bool = Field(
        False, description="subscribe reliable instead of best-effort (sensor data QoS) to the sensors"
    )
    qos_depth: int = Field(10, ge=1, description="subscription queue depth of the sensor topics")
    diagnostics_period_s: float = Field(1.0, gt=0, description="period of /diagnostics")

    @field_validator("camera_image_topic", "camera_info_topic")
    @classmethod
    def _placeholder(cls, value: str) -> str:
        if "{camera}" not in value:
            raise ValueError("must contain the placeholder '{camera}'")
        return value

    @field_validator("cameras")
    @classmethod
    def _cameras(cls, value: list[str]) -> list[str]:
        if not value or any(not c for c in value) or len(set(value)) != len(value):
            raise ValueError(f"needs at least one camera and unique non-empty names, got {value}")
        return value

    def image_topic(self, camera: str) -> str:
        return self.camera_image_topic.format(camera=camera)

    def info_topic(self, camera: str) -> str:
        return self.camera_info_topic.format(camera=camera)

    @property
    def image_msgtype(self) -> str:
        return IMAGE_MSGTYPES[self.image_type]


class PlayerConfig(_Params):
    """``bag_player``: publishes a bag's messages as they were recorded."""

    bags: list[str] = Field(default_factory=list, description="bags, folders of bags or globs to play")
    rate: float = Field(1.0, ge=0, description="playback speed factor (0 = as fast as possible)")
    loop: bool = Field(False, description="start over at the end")
    topics: list[str] = Field(default_factory=list, description="topics to play (empty = all)")
    wait_for_subscribers_s: float = Field(
        5.0, ge=0, description="before playing, wait up to this long for every topic to have a subscriber"
    )
    start_delay_s: float = Field(0.0, ge=0, description="extra wait before the first message")
    reliable: bool = Field(True, description="publish reliable (false: best effort)")
    qos_depth: int = Field(100, ge=1, description="publisher queue depth")
    shutdown_when_done: bool = Field(True, description="exit after the last message")

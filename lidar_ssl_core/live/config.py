"""Settings of the ``segmenter`` and ``pretrain`` nodes (declared as ROS parameters from these models)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SegmenterConfig(_Params):
    """``segmenter``: a model package served on a PointCloud2 stream."""

    model: str = Field(
        "", description="model package folder or segmentation checkpoint (.pt), loaded on configure"
    )
    backend: Literal["torch", "spconv", "onnxruntime", "tensorrt"] = Field(
        "torch", description="inference backend of lidar_ssl_core.deploy"
    )
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    threads: int = Field(0, ge=0, description="CPU threads of the engine (0 = library default)")
    input_topic: str = Field("/lidar/points", description="sensor_msgs/PointCloud2 input (sensor-data QoS)")
    labels_topic: str = Field("~/labels", description="PointCloud2 x y z intensity rgb label score")
    colored_topic: str = Field(
        "~/colored", description="PointCloud2 x y z intensity rgb label (RViz/Foxglove)"
    )
    confidence_topic: str = Field(
        "~/confidence",
        description="Vector3Stamped per scan: x mean score, y fraction under low_score, z points",
    )
    autostart: bool = Field(
        True, description="configure and activate at start (false: wait for lifecycle transitions)"
    )
    low_score: float = Field(0.5, ge=0, le=1, description="a point scored below this counts as unsure")
    reliable: bool = Field(False, description="subscribe reliable instead of best-effort")
    latency_window: int = Field(500, ge=10, description="scans the latency percentiles are taken over")
    diagnostics_period_s: float = Field(1.0, gt=0, description="period of /diagnostics")


class PretrainNodeConfig(_Params):
    """``pretrain``: the core trainer over bags or over the recorder's shard folder."""

    @property
    def bag_list(self) -> list[str]:
        return [b.strip() for b in self.bags.split(",") if b.strip()]

    bags: str = Field("", description="comma-separated bags, folders or globs ('' = follow shard_dir)")
    shard_dir: str = Field(
        "", description="recorder output folder: train on its closed shards, pick up new ones"
    )
    shard_prefix: str = Field("shard", description="shard name prefix of the recorder")
    config: str = Field("", description="lidar_ssl YAML config (docs/config.md); '' = defaults")
    method: str = Field("", description="pretraining method ('' = the config's pretrain.method)")
    output: str = Field("runs/pretrain_node", description="run folder: checkpoints, metrics, config")
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE config overrides (like --set)")
    steps_per_round: int = Field(
        50, ge=1, description="optimiser steps between checkpoints / looks for new shards"
    )
    min_shards: int = Field(1, ge=1, description="wait for this many closed shards before training")
    poll_s: float = Field(10.0, gt=0, description="how often the shard folder is looked at when idle")
    nice: int = Field(10, ge=0, le=19, description="niceness added to the process (low priority)")
    threads: int = Field(2, ge=1, description="torch CPU threads (bounded, leaves cores to the drivers)")
    exit_when_done: bool = Field(
        True, description="exit when the epochs are done (false: idle and keep reporting until stopped)"
    )
    status_period_s: float = Field(2.0, gt=0, description="period of ~/status and /diagnostics")

"""What a deployed model is: weights plus everything needed to run them (one record for .pt and packages).

A :class:`ModelSpec` is built from a segmentation checkpoint (:func:`spec_from_checkpoint`) or from a
model package (:mod:`lidar_ssl_core.deploy.package`); every backend of the engine reads only this.
The architecture and the voxel grid come from the model itself: a caller may restate them, and only an
explicit *conflicting* setting is refused (:func:`check_overrides`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from lidar_ssl_core.config import VoxelConfig, VoxelMode
from lidar_ssl_core.downstream.classes import ClassMap, class_map_from_dict
from lidar_ssl_core.downstream.model import SEGMENTATION_FORMAT, SEGMENTATION_REQUIRED, refuse_conflicts
from lidar_ssl_core.errors import ConfigError
from lidar_ssl_core.models.config import BackboneConfig
from lidar_ssl_core.sparse.kernel_map import COORD_MAX
from lidar_ssl_core.train.checkpoint import TrainingCheckpointError, load_checkpoint

#: a cell index beyond this (per axis, either sign) is "outside the grid": the kernel-map keys pack 16
#: bits per axis and the coarsest level plus a 3x3x3 kernel must stay inside them
GRID_LIMIT = COORD_MAX - 64

#: default refusal threshold of the engine (a 128-beam sweep has ~260k points; 2M is a broken input)
DEFAULT_MAX_POINTS = 1_000_000


@dataclass(frozen=True)
class InputSpec:
    """The point fields the network reads and how a voxel's feature is formed from them.

    ``intensity`` enters unnormalised (``scale`` 1, ``offset`` 0: as the sensor reports it, which is what
    training saw; the bag profile keeps nuScenes 0-255 and KITTI 0-1) from the voxel's representative
    point, the first point of the voxel in input order (MinkowskiEngine ``sparse_quantize``).
    """

    fields: tuple[str, ...] = ("x", "y", "z", "intensity")
    feature: str = "intensity"
    scale: float = 1.0
    offset: float = 0.0
    point_to_voxel: str = "floor(coordinate / size); representative = first point of each voxel"

    def to_dict(self) -> dict[str, Any]:
        return {
            "fields": list(self.fields),
            "feature": self.feature,
            "scale": self.scale,
            "offset": self.offset,
            "point_to_voxel": self.point_to_voxel,
        }

    @staticmethod
    def from_dict(doc: dict[str, Any]) -> InputSpec:
        return InputSpec(
            tuple(doc["fields"]),
            str(doc["feature"]),
            float(doc["scale"]),
            float(doc["offset"]),
            str(doc["point_to_voxel"]),
        )


@dataclass(frozen=True)
class ModelSpec:
    """A segmentation network's weights and its description (architecture, grid, classes, inputs)."""

    backbone: BackboneConfig  # out_dim = number of classes, normalize off
    class_map: ClassMap
    voxels: VoxelConfig
    state: dict[str, torch.Tensor]
    source: str  # the file it came from
    inputs: InputSpec = field(default_factory=InputSpec)
    config: dict[str, Any] | None = None  # the training config, when the checkpoint carries it
    max_points: int = DEFAULT_MAX_POINTS

    @property
    def num_classes(self) -> int:
        return self.class_map.num_classes

    @property
    def palette(self) -> npt.NDArray[np.uint8]:
        return np.asarray(self.class_map.colors, np.uint8)

    def grid_extent_m(self) -> tuple[float, float]:
        """(horizontal, vertical) metric reach of the grid: farther points are left unlabelled."""
        s = self.voxels.size
        if self.voxels.mode == VoxelMode.CYLINDRICAL:
            return GRID_LIMIT * s[0], GRID_LIMIT * s[2]
        return GRID_LIMIT * min(s[0], s[1]), GRID_LIMIT * s[2]

    def describe(self) -> dict[str, Any]:
        """The JSON description a package stores beside the weights."""
        return {
            "backbone": self.backbone.model_dump(mode="json"),
            "class_map": self.class_map.to_dict(),
            "voxels": self.voxels.model_dump(mode="json"),
            "inputs": self.inputs.to_dict(),
            "max_points": self.max_points,
            "grid_limit_cells": GRID_LIMIT,
        }


def spec_from_parts(
    description: dict[str, Any], state: dict[str, torch.Tensor], source: str, config: dict[str, Any] | None
) -> ModelSpec:
    """A ModelSpec from a stored description (checkpoint entries or a package's model.json)."""
    try:
        backbone = BackboneConfig.model_validate({**description["backbone"], "backend": "portable"})
        class_map = class_map_from_dict(description["class_map"], source=f"class map of {source}")
        voxels = VoxelConfig.model_validate(description["voxels"])
        inputs = InputSpec.from_dict(description["inputs"]) if "inputs" in description else InputSpec()
        max_points = int(description.get("max_points", DEFAULT_MAX_POINTS))
    except (ValueError, TypeError, KeyError) as err:
        raise TrainingCheckpointError(f"{source} has an invalid model description: {err}") from err
    if backbone.out_dim != class_map.num_classes:
        raise TrainingCheckpointError(
            f"{source}: the head has {backbone.out_dim} outputs but the class map "
            f"{class_map.num_classes} classes"
        )
    return ModelSpec(backbone, class_map, voxels, state, source, inputs, config, max_points)


def spec_from_checkpoint(path: Path | str) -> ModelSpec:
    """The ModelSpec of a segmentation checkpoint written by ``lidar-ssl finetune`` / ``probe``."""
    state = load_checkpoint(Path(path), formats=(SEGMENTATION_FORMAT,), required=SEGMENTATION_REQUIRED)
    weights = state["model"]
    if not isinstance(weights, dict):
        raise TrainingCheckpointError(f"checkpoint {path} holds no model weights")
    config = state.get("config") if isinstance(state.get("config"), dict) else None
    return spec_from_parts(state, dict(weights), str(path), config)


def check_overrides(
    spec: ModelSpec,
    preset: str | None = None,
    voxel_mode: str | None = None,
    voxel_size: tuple[float, float, float] | None = None,
) -> None:
    """Refuse a restated ``--preset`` / ``--voxel-mode`` / ``--voxel-size`` that contradicts the model's own
    (the rule of :func:`~lidar_ssl_core.downstream.model.refuse_conflicts`; only what was given is
    compared, so restating the size alone of a Cartesian model is fine)."""
    if voxel_mode is not None and voxel_mode not in {m.value for m in VoxelMode}:
        raise ConfigError(
            f"--voxel-mode {voxel_mode!r} is not a voxel mode; choose {', '.join(m.value for m in VoxelMode)}"
        )
    saved = {
        "--preset": spec.backbone.preset,
        "--voxel-mode": spec.voxels.mode,
        "--voxel-size": spec.voxels.size,
    }
    given = {"--preset": preset, "--voxel-mode": voxel_mode, "--voxel-size": voxel_size}
    refuse_conflicts(
        spec.source,
        saved,
        {k: v for k, v in given.items() if v is not None},
        "leave these options out (the model describes itself) or use a model made with them",
    )

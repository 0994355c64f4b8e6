"""The segmentation network (the sparse U-Net with a class head), its checkpoints, and inference on a sweep.

A segmentation checkpoint is self-describing: model weights, the backbone architecture, the class map and
the voxel grid travel with it, so ``evaluate``, ``segment`` and the live node need nothing but the file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel

from lidar_ssl_core.config import Config, VoxelConfig
from lidar_ssl_core.downstream.classes import ClassMap, class_map_from_dict
from lidar_ssl_core.downstream.data import network_input
from lidar_ssl_core.errors import ConfigError
from lidar_ssl_core.fileio import sha256_of
from lidar_ssl_core.models.config import BackboneConfig, BackendName
from lidar_ssl_core.models.unet import Res16UNet, build_backbone
from lidar_ssl_core.train.checkpoint import FORMAT as PRETRAIN_FORMAT
from lidar_ssl_core.train.checkpoint import TrainingCheckpointError, load_checkpoint
from lidar_ssl_core.types import PointCloud

log = logging.getLogger(__name__)

SEGMENTATION_FORMAT = "lidar_ssl.segmentation/1"
SEGMENTATION_REQUIRED = ("format", "model", "backbone", "class_map", "voxels")
HEAD_PREFIX = "final."


def _checkpoint_file(path: Path) -> Path:
    """``path`` itself, unless it is a folder: then a ``ConfigError`` saying what goes where (a model
    package is a folder, and "checkpoint ... does not exist" would be untrue)."""
    path = Path(path)
    if path.is_dir():
        kind = "a model package" if (path / "manifest.json").is_file() else "a folder"
        raise ConfigError(
            f"{path} is {kind}, not a checkpoint file: --pretrained/--model of probe, finetune and evaluate "
            "take a .pt checkpoint (e.g. runs/lp/model_last.pt); packages run with `lidar-ssl segment`"
        )
    return path


def checkpoint_settings(path: Path) -> dict[str, Any]:
    """The architecture and voxel grid a pretraining or segmentation checkpoint was made with, as dotted
    config keys: ``downstream.backbone.preset`` / ``.in_channels`` and ``data.voxels.mode`` / ``.size`` (a key
    the checkpoint does not record is absent).

    Tensors are memory-mapped, not read: this costs next to nothing even for a large checkpoint.
    """
    path = _checkpoint_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint, or unreadable: load_checkpoint words the error
        state = None
    if not isinstance(state, dict) or state.get("format") not in (PRETRAIN_FORMAT, SEGMENTATION_FORMAT):
        state = load_checkpoint(path, formats=(PRETRAIN_FORMAT, SEGMENTATION_FORMAT), required=("format",))
    if state["format"] == PRETRAIN_FORMAT:
        saved = state.get("config")
        backbone = saved.get("backbone") if isinstance(saved, Mapping) else None
    else:
        backbone = state.get("backbone")
    found: dict[str, Any] = {}
    if isinstance(backbone, Mapping):
        arch = {k: backbone[k] for k in ("preset", "in_channels") if k in backbone}
        found.update({f"downstream.backbone.{k}": v for k, v in arch.items()})
    voxels = state.get("voxels")
    if isinstance(voxels, Mapping):
        found.update({f"data.voxels.{k}": voxels[k] for k in ("mode", "size") if k in voxels})
    return found


def explicit_settings(config: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Dotted keys (with their values) that were given explicitly, in a YAML file or an override, rather
    than left at their defaults (pydantic's ``model_fields_set``, followed into sub-sections)."""
    found: dict[str, Any] = {}
    for name in config.model_fields_set:
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            found.update(explicit_settings(value, f"{prefix}{name}."))
        else:
            found[f"{prefix}{name}"] = value
    return found


def _json(value: Any) -> Any:
    """Comparable form of a config value (tuples as lists, enums as their values)."""
    if isinstance(value, (tuple, list)):
        return [_json(v) for v in value]
    return getattr(value, "value", value)


def refuse_conflicts(source: object, saved: Mapping[str, Any], given: Mapping[str, Any], how: str) -> None:
    """The one rule for a self-describing model: a setting given explicitly (``given``: config keys or CLI
    flags) is refused only when it contradicts the model's own (``saved``, same keys); an equal or unset
    one is fine. A ``ConfigError`` names every conflicting key with both values and says ``how`` to fix it.
    """
    conflicts = [
        f"`{key}: {_json(given[key])}` (the checkpoint has {_json(value)})"
        for key, value in saved.items()
        if key in given and _json(given[key]) != _json(value)
    ]
    if conflicts:
        raise ConfigError(
            f"{source} was trained with another network or voxel grid than asked for: "
            f"{'; '.join(conflicts)}. A checkpoint describes its own network: {how}"
        )


def settings_from_checkpoint(path: Path, config: Config) -> dict[str, Any]:
    """Overrides that make ``config`` describe the network and voxel grid of the checkpoint at ``path``.

    A checkpoint describes its network, so its settings win over the defaults; only a setting the user gave
    explicitly (config file or ``-s/--set``) that contradicts the checkpoint is refused, with a
    ``ConfigError`` naming both values. Shared by ``probe``, ``finetune``, ``evaluate``, ``segment`` and
    ``export``.
    """
    saved = checkpoint_settings(path)
    refuse_conflicts(
        path,
        saved,
        explicit_settings(config),
        "remove these settings from the config file or -s/--set to use the checkpoint's",
    )
    return saved


def build_segmentation_model(backbone: BackboneConfig, num_classes: int) -> Res16UNet:
    """The U-Net with a ``num_classes`` head and raw logits (no l2 normalisation)."""
    return build_backbone(backbone.model_copy(update={"out_dim": num_classes, "normalize": False}))


@dataclass(frozen=True)
class LoadedWeights:
    """What :func:`load_pretrained_backbone` took from a checkpoint."""

    path: Path
    kind: str  # "pretraining" or "segmentation"
    loaded: int  # tensors copied
    skipped_head: int  # head tensors left at their fresh initialisation
    sha256: str  # of the checkpoint file: part of a downstream run's identity (resume)


def load_pretrained_backbone(
    model: Res16UNet, path: Path, voxels: VoxelConfig | None = None
) -> LoadedWeights:
    """Copy every backbone tensor of a pretraining (or segmentation) checkpoint into ``model``; the class
    head stays freshly initialised (its shape differs, as in SLidR's downstream code).

    A missing tensor or a shape mismatch is a ``ConfigError`` naming the tensors and both architectures.
    A checkpoint pretrained on another voxel grid is refused too (the reference code asserts the same).
    """
    file = _checkpoint_file(path)
    state = load_checkpoint(file, formats=(PRETRAIN_FORMAT, SEGMENTATION_FORMAT), required=("format",))
    kind = "pretraining" if state["format"] == PRETRAIN_FORMAT else "segmentation"
    weights: Mapping[str, torch.Tensor] | None = state.get("backbone" if kind == "pretraining" else "model")
    if not isinstance(weights, Mapping):
        raise TrainingCheckpointError(f"checkpoint {path} holds no model weights")
    saved_voxels = state.get("voxels")
    if (
        voxels is not None
        and isinstance(saved_voxels, Mapping)
        and VoxelConfig.model_validate(saved_voxels) != voxels
    ):
        raise ConfigError(
            f"{path} was trained on voxels {dict(saved_voxels)} but data.voxels is "
            f"{voxels.model_dump(mode='json')}: use the same grid downstream"
        )
    own = model.state_dict()
    body = {k: v for k, v in own.items() if not k.startswith(HEAD_PREFIX)}
    missing = [k for k in body if k not in weights]
    wrong = [
        f"{k} {tuple(weights[k].shape)} != {tuple(v.shape)}"
        for k, v in body.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if missing or wrong:
        arch = model.config.preset
        saved = state.get("config", {}).get("backbone") if kind == "pretraining" else state.get("backbone")
        theirs = saved.get("preset") if isinstance(saved, Mapping) else None
        hint = f"pass -s downstream.backbone.preset={theirs}" if theirs else "set downstream.backbone.preset"
        raise ConfigError(
            f"{path} does not fit the '{arch}' backbone (checkpoint preset: {theirs or 'unknown'}): "
            f"{len(missing)} tensors missing ({missing[:3]}...), {len(wrong)} of another shape "
            f"({wrong[:3]}...); {hint} and the in_channels it was trained with"
        )
    model.load_state_dict({**own, **{k: weights[k] for k in body}})
    skipped = len(own) - len(body)
    log.info("loaded %d backbone tensors from %s checkpoint %s", len(body), kind, path)
    return LoadedWeights(Path(path), kind, len(body), skipped, sha256_of(file))


def segmentation_state(
    model: Res16UNet, class_map: ClassMap, voxels: VoxelConfig, **extra: Any
) -> dict[str, Any]:
    """A weights_only-loadable checkpoint holding everything inference needs."""
    return {
        "format": SEGMENTATION_FORMAT,
        "model": model.state_dict(),
        "backbone": model.config.model_dump(mode="json"),
        "class_map": class_map.to_dict(),
        "voxels": voxels.model_dump(mode="json"),
        **extra,
    }


@dataclass
class SegmentationModel:
    """A trained network with its class map and voxel grid, ready for inference."""

    network: Res16UNet
    class_map: ClassMap
    voxels: VoxelConfig
    device: torch.device

    @torch.no_grad()
    def predict(
        self, xyz: npt.NDArray[np.floating], intensity: npt.NDArray[np.floating]
    ) -> npt.NDArray[np.int64]:
        """Training ids (N,) of a sweep's points (voxel prediction of each point's voxel)."""
        if len(xyz) == 0:
            return np.zeros(0, np.int64)
        inputs = network_input(xyz, intensity, self.voxels)
        coords = np.hstack([np.zeros((len(inputs.coords), 1), np.int32), inputs.coords])
        logits = self.network(
            torch.from_numpy(coords).to(self.device), torch.from_numpy(inputs.features).to(self.device)
        )
        voxel_ids = logits.argmax(dim=1).cpu().numpy()
        out: npt.NDArray[np.int64] = voxel_ids[inputs.voxels.point_to_voxel].astype(np.int64)
        return out

    def predict_cloud(self, cloud: PointCloud) -> npt.NDArray[np.int64]:
        return self.predict(cloud.xyz, cloud.intensity)


def load_segmentation_model(
    path: Path, device: str | torch.device | None = None, backend: BackendName = "portable"
) -> SegmentationModel:
    """A segmentation checkpoint as a ready :class:`SegmentationModel` (eval mode).

    Both backends share one state dict, so a model trained with spconv runs on the portable backend (the
    default: no spconv needed, e.g. on a Jetson or for export) and vice versa.
    """
    state = load_checkpoint(
        _checkpoint_file(path), formats=(SEGMENTATION_FORMAT,), required=SEGMENTATION_REQUIRED
    )
    try:
        backbone = BackboneConfig.model_validate({**state["backbone"], "backend": backend})
        class_map = class_map_from_dict(state["class_map"], source=f"class map of {path}")
        voxels = VoxelConfig.model_validate(state["voxels"])
    except (ValueError, TypeError) as err:
        raise TrainingCheckpointError(f"checkpoint {path} has an invalid description: {err}") from err
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    network = build_backbone(backbone)
    network.load_state_dict(state["model"])
    network.to(dev).eval()
    return SegmentationModel(network, class_map, voxels, dev)

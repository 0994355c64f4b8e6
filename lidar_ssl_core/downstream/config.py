"""Downstream segmentation settings (methods.md §1.5 and A.1: the SLidR protocols).

* Linear probing: the backbone frozen with frozen BatchNorm statistics, the point-wise linear head trained,
  lr 0.05, 50 epochs.
* Fine-tuning: the whole network, cross-entropy + Lovasz-softmax (plain sum, as the reference code), head lr
  2.0 and backbone lr 0.02, 100 epochs at 1% of the labels and 50 otherwise. A randomly initialised
  network gets one learning rate everywhere (the paper's rule), the backbone's 0.02 (the reference code's
  config without ``lr_head``).
* SGD, momentum 0.9, dampening 0.1, weight decay 1e-4, cosine to 0; BatchNorm momentum 0.02.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lidar_ssl_core.models.config import BackboneConfig

Mode = Literal["probe", "finetune"]

#: learning rates and epochs of the protocols (mode -> value); None in the config means "the protocol's"
PROTOCOL_LR_HEAD: dict[str, float] = {"probe": 0.05, "finetune": 2.0}
PROTOCOL_LR_BACKBONE = 0.02
DOWNSTREAM_BN_MOMENTUM = 0.02


def protocol_epochs(mode: Mode, label_fraction: float) -> int:
    """50 epochs, except fine-tuning on 1% (or fewer) of the labels: 100."""
    return 100 if mode == "finetune" and label_fraction <= 0.01 else 50


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DownstreamConfig(_Section):
    """Semantic segmentation on labelled bags: linear probing, fine-tuning and evaluation."""

    class_map: str = Field(
        "synthetic",
        description="nuscenes | semantickitti | synthetic, or a YAML file (docs/downstream-evaluation.md)",
    )
    pretrained: Path | None = Field(
        None, description="backbone weights: a pretraining or segmentation checkpoint; None = random init"
    )
    train_bags: tuple[Path, ...] = Field((), description="labelled training bags; empty = data.bags")
    val_bags: tuple[Path, ...] = Field((), description="labelled validation bags (evaluated after training)")
    label_fraction: float = Field(
        1.0, gt=0, le=1, description="share of the training sweeps, drawn by whole bags (scenes)"
    )
    split_seed: int = Field(0, description="seed of the label-fraction draw (nested across fractions)")
    block_frames: int = Field(
        40, ge=1, description="one training bag: blocks of this many sweeps act as scenes for the fraction"
    )
    epochs: int | None = Field(None, ge=1, description="None = the protocol's (50; 100 fine-tuning at 1%)")
    lr_head: float | None = Field(None, gt=0, description="head lr; None = 0.05 probing, 2.0 fine-tuning")
    lr_backbone: float = Field(PROTOCOL_LR_BACKBONE, gt=0, description="backbone lr when fine-tuning")
    momentum: float = Field(0.9, ge=0, description="SGD momentum")
    dampening: float = Field(0.1, ge=0, description="SGD dampening")
    weight_decay: float = Field(1e-4, ge=0, description="SGD weight decay")
    lovasz: bool = Field(True, description="add the Lovasz-softmax loss to cross-entropy")
    probe_cache: bool = Field(
        False,
        description="probing: compute the frozen backbone's features once (no augmentation) and train the "
        "head on them; fast on small sets, memory = voxels x feature size",
    )
    batch_size: int = Field(4, ge=1, description="sweeps per batch")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes")
    device: str | None = Field(None, description="torch device; None = cuda when available, else cpu")
    seed: int = Field(0, description="seeds the head init, data order and augmentation")
    backbone: BackboneConfig = Field(
        BackboneConfig(normalize=False, bn_momentum=DOWNSTREAM_BN_MOMENTUM),
        description="architecture (must match the pretrained weights); out_dim is set to the class count",
    )
    run_dir: Path = Field(Path("runs/segmentation"), description="checkpoints, logs and reports go here")

    @field_validator("backbone", mode="before")
    @classmethod
    def _downstream_backbone_defaults(cls, value: Any) -> Any:
        """Setting e.g. only ``backbone.preset`` keeps the downstream defaults (BN momentum 0.02, no l2)."""
        if isinstance(value, dict):
            return {"normalize": False, "bn_momentum": DOWNSTREAM_BN_MOMENTUM, **value}
        return value

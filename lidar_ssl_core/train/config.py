"""Pretraining settings (methods.md §1.3 and A.1: SGD lr 0.5, momentum 0.9, dampening 0.1, wd 1e-4, cosine
to 0 over 50 epochs). The batch size lives in ``data.loader``; the models keep their own config sections."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lidar_ssl_core.losses import DEFAULT_NUM_MATCHES, DEFAULT_TEMPERATURE, STForm, Tolerance
from lidar_ssl_core.models.image_teacher import TeacherConfig
from lidar_ssl_core.models.unet import BackboneConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class LossOptions(_Section):
    """Options of the losses in :mod:`lidar_ssl_core.losses` (defaults = the authors' settings)."""

    temperature: float = Field(DEFAULT_TEMPERATURE, gt=0, description="InfoNCE temperature tau")
    num_matches: int = Field(DEFAULT_NUM_MATCHES, ge=1, description="pairs sampled per batch (PPKT, ST-PPKT)")
    tolerance: Tolerance = Field(Tolerance.KNN, description="ST: knn | alpha | none")
    k_fraction: float = Field(0.01, ge=0, lt=1, description="ST: fraction of negatives excluded (K)")
    alpha_min: float = Field(0.0, description="ST alpha tolerance: alpha below this counts as 0")
    balance: bool = Field(True, description="ST-SLidR: class-agnostic balancing of the anchors")
    ppkt_balance: bool = Field(False, description="ST-PPKT: balancing (off: noisy at pixel level)")
    form: STForm = Field(STForm.PAPER, description="ST: paper | authors_code")
    vote_threshold: float | None = Field(None, description="ST balancing vote threshold; None = form default")
    adaptive_k: bool = Field(False, description="ST: per-anchor K (beyond the papers)")
    gather_negatives: bool = Field(
        False,
        description="multi-GPU: contrast against the anchors of every process "
        "(off: per-GPU negatives, as the authors' code)",
    )


class PretrainConfig(_Section):
    """One pretraining run."""

    method: str = Field(
        "slidr",
        description="a registered method (lidar_ssl_core/train/methods/): ppkt | slidr | st-slidr | st-ppkt",
    )
    epochs: int = Field(50, ge=1, description="training epochs; the cosine schedule reaches 0 at the last")
    lr: float = Field(0.5, gt=0, description="initial SGD learning rate")
    momentum: float = Field(0.9, ge=0, description="SGD momentum")
    dampening: float = Field(0.1, ge=0, description="SGD dampening")
    weight_decay: float = Field(1e-4, ge=0, description="SGD weight decay")
    schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="cosine: annealed per epoch from lr to 0 (CosineAnnealingLR, T_max=epochs)"
    )
    amp: bool = Field(True, description="mixed precision; used on CUDA only, ignored on CPU")
    amp_dtype: Literal["float16", "bfloat16"] = Field("bfloat16", description="autocast dtype on CUDA")
    device: str | None = Field(
        None, description="torch device; None = cuda when available, else cpu (torchrun: cuda:LOCAL_RANK)"
    )
    sync_batchnorm: bool = Field(False, description="multi-GPU: BatchNorm statistics over all processes")
    seed: int = Field(0, description="seeds model init, data order and loss sampling")
    shuffle: bool = Field(True, description="shuffle the frames each epoch")
    drop_last: bool = Field(True, description="drop the last incomplete batch of an epoch")
    checkpoint_every: int = Field(
        500, ge=0, description="also write ckpt_last.pt every this many steps (0 = at epoch ends only)"
    )
    log_every: int = Field(10, ge=1, description="log the loss every this many steps")
    tensorboard: bool = Field(False, description="write TensorBoard scalars (needs the tensorboard package)")
    run_dir: Path = Field(Path("runs/pretrain"), description="checkpoints and logs go here")
    backbone: BackboneConfig = BackboneConfig()
    teacher: TeacherConfig = TeacherConfig()
    loss: LossOptions = LossOptions()

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from lidar_ssl_core.train.methods.base import method_names  # lazy: the methods import this module

        names = method_names()
        if value not in names:
            raise ValueError(f"unknown pretraining method {value!r}; choose one of {list(names)}")
        return value

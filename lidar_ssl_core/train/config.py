"""Pretraining settings (methods.md §1.3 and A.1: SGD lr 0.5, momentum 0.9, dampening 0.1, wd 1e-4, cosine
to 0 over 50 epochs). The batch size lives in ``data.loader``; the models keep their own config sections."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lidar_ssl_core.loss_options import (
    DEFAULT_NUM_MATCHES,
    DEFAULT_TEMPERATURE,
    STForm,
    Tolerance,
    VoteNorm,
)
from lidar_ssl_core.models.config import BackboneConfig, TeacherConfig
from lidar_ssl_core.train.method_names import known_method_names


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
    vote_norm: VoteNorm = Field(
        VoteNorm.MINMAX,
        description="ST balancing: minmax (v - v_min) / (v_max - v_min), the paper's text and the authors' "
        "code; printed (v - v_min) / v_max, the paper's printed formula (weights in a narrow band)",
    )
    swap_teacher_axes: bool = Field(
        False,
        description="ST-PPKT: sample the teacher at (row, col) swapped, as the authors' released code does "
        "(reproduction only; off = the pair's own pixel)",
    )
    gather_negatives: bool = Field(
        False,
        description="multi-GPU: contrast against the anchors of every process "
        "(off: per-GPU negatives, as the authors' code)",
    )


class NclrOptions(_Section):
    """NCLR (2D-3D neural calibration, methods.md section 3). Paper values unless marked "not stated"."""

    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (paper 1e-3; pretrain.lr is SGD's)")
    weight_decay: float = Field(1e-3, ge=0, description="AdamW weight decay (paper 1e-3)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas (not stated: torch default)")
    rotation_range: float = Field(
        math.pi, ge=0, description="perturbation: rotation about z ~ U[-r, r] rad (paper pi)"
    )
    translation_range: float = Field(
        15.0, ge=0, description="perturbation: x and y translation ~ U[-r, r] m each (paper 15)"
    )
    temperature: float = Field(0.07, gt=0, description="LTA InfoNCE temperature tau (paper 0.07)")
    weight_feature: float = Field(1.0, ge=0, description="lambda_f, LTA InfoNCE weight (paper 1.0)")
    weight_overlap: float = Field(0.5, ge=0, description="lambda_o, overlap BCE weight (paper 0.5)")
    weight_pose: float = Field(0.2, ge=0, description="lambda_p, Huber pose loss weight (paper 0.2)")
    pose_start: float = Field(
        0.9,
        ge=0,
        le=1,
        description="the pose loss joins from epoch floor(pose_start x pretrain.epochs) on; before, it is "
        "only logged (paper: not stated; code: epoch 45 of 50 = 0.9; 0 = from the first step). From the "
        "first step its noisy gradients (EPnP on untrained matches) stall the InfoNCE at chance: "
        "docs/pretraining.md",
    )
    num_pairs: int = Field(
        1024, ge=2, description="InfoNCE pairs P_S per sample of the batch (not stated; code 1024 x B)"
    )
    r_p: float = Field(2.0, ge=0, description="positive margin in pixels (not stated)")
    r_n: float = Field(8.0, ge=0, description="negative margin in pixels (not stated)")
    image_layers: tuple[int, int, int, int] = Field(
        (3, 4, 6, 3), description="ResNet stage depths of the image branch (not stated; ResNet-50)"
    )
    fpn_dim: int = Field(256, gt=0, description="FPN width (not stated; Lin et al. 256)")
    fusion_layers: int = Field(1, ge=0, description="fusion transformer layers (not stated; code 1)")
    fusion_heads: int = Field(4, ge=1, description="attention heads (not stated)")
    fusion_ffn: int = Field(256, gt=0, description="feed-forward width of the fusion layers (not stated)")
    keypoints: int = Field(4096, ge=6, description="voxels per image in the fusion N_E (code 4096)")
    token_stride: int = Field(8, ge=4, description="image token stride of the fusion, multiple of 4")
    overlap_threshold: float = Field(0.5, gt=0, lt=1, description="overlap score threshold (not stated)")
    pnp_points: int = Field(128, ge=6, description="at most this many points P_o per image (code 128)")
    pnp_min_points: int = Field(10, ge=6, description="at least this many (top scores) (code 10)")
    match_temperature: float = Field(1.0, gt=0, description="soft matching temperature (paper: none = 1)")
    huber_delta: float = Field(1.0, gt=0, description="Huber delta of the pose loss (not stated; code 1)")
    max_fit_rms_px: float = Field(
        2.0, gt=0, description="images whose ground-truth camera fit is worse (pixels) get no pose loss"
    )

    @model_validator(mode="after")
    def _check(self) -> NclrOptions:
        if self.r_n < self.r_p:
            raise ValueError(f"nclr.r_n ({self.r_n}) must be >= nclr.r_p ({self.r_p})")
        if self.token_stride % 4:
            raise ValueError(f"nclr.token_stride ({self.token_stride}) must be a multiple of 4")
        if self.pnp_min_points > self.pnp_points:
            raise ValueError("nclr.pnp_min_points must be <= nclr.pnp_points")
        return self


class ScalrOptions(_Section):
    """ScaLR-style feature distillation (``--method scalr``; losses/scalr.py). Paper: Puy et al. 2024 with
    cosine_weight 0, l2_weight 1, one camera and at most 20,000 points per scan, DINOv2 ViT-L/14 pre-norm
    features of 224x448 images, AdamW lr 2e-3 wd 0.03."""

    cosine_weight: float = Field(1.0, ge=0, description="weight of 1 - cos(student, teacher)")
    l2_weight: float = Field(
        0.0,
        ge=0,
        description="weight of ||s^ - t^|| of the unit vectors (ScaLR's released loss: 1, cosine 0)",
    )
    level: Literal["pair", "voxel"] = Field(
        "pair",
        description="pair: every paired point regresses its pixel (its voxel's feature); voxel: every voxel "
        "regresses the mean target of its points",
    )
    cameras_per_sample: int | None = Field(
        None, ge=1, description="random cameras per sample the teacher sees (ScaLR: 1); None = all"
    )
    points_per_sample: int | None = Field(
        20000, ge=1, description="random pairs kept per sample (ScaLR: 20,000 points per scan); None = all"
    )
    student_head: Literal["linear", "none"] = Field(
        "linear",
        description="linear: a trainable map from the backbone's out_dim to the teacher width; none: the "
        "backbone's own head must output the teacher width (ScaLR: set pretrain.backbone.out_dim)",
    )
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="adamw with scalr.lr / scalr.weight_decay (ScaLR), or pretrain's SGD settings"
    )
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate (ScaLR 2e-3)")
    weight_decay: float = Field(0.03, ge=0, description="AdamW weight decay (ScaLR 0.03)")

    @model_validator(mode="after")
    def _check_weights(self) -> ScalrOptions:
        if self.cosine_weight + self.l2_weight == 0:
            raise ValueError("scalr.cosine_weight and scalr.l2_weight cannot both be 0")
        return self


class OlivineOptions(_Section):
    """OLIVINE (weak-label distillation, methods.md section 4). The paper leaves most values unstated; the
    defaults are the authors' code where it gives one."""

    mask_dir: Path | None = Field(
        None,
        description="weak-label masks <mask_dir>/<bag>/<camera>/<stamp>.png (class ids, 255 = none), made "
        "offline by a vision foundation model (data/weak_labels.py); required",
    )
    num_classes: int = Field(16, ge=1, description="weak classes K (paper: 16 nuScenes prompts; code 17)")
    temperature: float = Field(0.07, gt=0, description="tau of both contrastive losses (code 0.07)")
    num_matches: int = Field(4096, ge=2, description="sampled pairs M_s per batch (code 4096)")
    weight_ppnce: float = Field(0.5, ge=0, description="lambda_1 (not stated; code mean(L_PPNCE, L_sup))")
    weight_sup: float = Field(0.5, ge=0, description="lambda_2 (not stated; code 0.5)")
    weight_kl: float = Field(1.0, ge=0, description="lambda_3 (not stated; code 1)")
    ema_alpha: float = Field(
        0.9999, ge=0, lt=1, description="EMA coefficient alpha of the class means (code)"
    )
    kl_warmup_steps: int = Field(
        10000, ge=0, description="L_kl is applied from this global step on (code: 10k-step EMA warm-up)"
    )
    freeze_statistics: bool = Field(
        False, description="stop the EMA after the warm-up (code: yes; paper: updates every batch)"
    )
    ppnce_sampling: Literal["dcas", "uniform"] = Field(
        "dcas", description="pairs of L_PPNCE: DCAS like L_sup (paper) or uniform (code)"
    )


#: schedule settings a method runs with unless the configuration sets them (a key set there wins)
METHOD_SCHEDULE_DEFAULTS: dict[str, dict[str, object]] = {
    # ScaLR (Puy et al. 2024): 3,500-iteration linear warm-up, then a per-iteration cosine to 1e-5
    "scalr": {"schedule": "warmup_cosine", "warmup_steps": 3500, "min_lr": 1e-5},
}


class PretrainConfig(_Section):
    """One pretraining run."""

    method: str = Field(
        "slidr",
        description="a registered method (lidar_ssl_core/train/methods/): ppkt | slidr | st-slidr | st-ppkt "
        "| nclr | olivine | scalr",
    )
    epochs: int = Field(
        50, ge=1, description="training epochs; the cosine schedules reach min_lr at the end of the last"
    )
    lr: float = Field(0.5, gt=0, description="initial SGD learning rate")
    momentum: float = Field(0.9, ge=0, description="SGD momentum")
    dampening: float = Field(0.1, ge=0, description="SGD dampening")
    weight_decay: float = Field(1e-4, ge=0, description="SGD weight decay")
    schedule: Literal["cosine", "warmup_cosine", "constant"] = Field(
        "cosine",
        description="cosine: annealed once per epoch from the optimiser's lr to min_lr (CosineAnnealingLR, "
        "T_max=epochs; the SLidR family); warmup_cosine: per optimiser step, linear warm-up from 0 over "
        "warmup_steps, then cosine to min_lr at the last step (ScaLR; the default of --method scalr); "
        "constant: no schedule. Applies to the method's own optimiser too (scalr.lr, nclr.lr)",
    )
    warmup_steps: int = Field(
        0,
        ge=0,
        description="warmup_cosine: optimiser steps of the linear warm-up (--method scalr: 3500, ScaLR's)",
    )
    min_lr: float = Field(
        0.0,
        ge=0,
        description="where the cosine schedules end (absolute lr, every parameter group; --method scalr: "
        "1e-5, ScaLR's)",
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
    scalr: ScalrOptions = ScalrOptions()
    nclr: NclrOptions = NclrOptions()
    olivine: OlivineOptions = OlivineOptions()

    @model_validator(mode="before")
    @classmethod
    def _method_schedule_defaults(cls, data: object) -> object:
        """Schedule keys the configuration leaves out take the method's (METHOD_SCHEDULE_DEFAULTS)."""
        if not isinstance(data, dict):
            return data
        defaults = METHOD_SCHEDULE_DEFAULTS.get(str(data.get("method", "slidr")), {})
        missing = {k: v for k, v in defaults.items() if k not in data}
        return {**data, **missing} if missing else data

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        names = known_method_names()  # from the module files: validating a config needs no torch
        if value not in names:
            raise ValueError(f"unknown pretraining method {value!r}; choose one of {list(names)}")
        return value

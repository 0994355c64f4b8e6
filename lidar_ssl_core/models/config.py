"""Typed configs of the networks, importable without torch (``lidar_ssl_core.config`` builds on them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PresetName = Literal["res16unet34c", "small", "tiny"]
BackendName = Literal["portable", "spconv"]
CheckpointLayout = Literal["auto", "torchvision", "moco", "swav", "dino", "obow", "densecl"]


class BackboneConfig(BaseModel):
    """The 3D backbone: architecture preset, input/output widths, sparse-conv backend, head options."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    preset: PresetName = Field("res16unet34c", description="architecture: res16unet34c (SLidR), small, tiny")
    in_channels: int = Field(1, gt=0, description="voxel feature channels (1 = LiDAR intensity)")
    out_dim: int = Field(64, gt=0, description="channels of the final 1x1 projection head (F)")
    backend: BackendName = Field(
        "portable", description="portable: pure-PyTorch sparse convs (CPU ok); spconv: spconv 2.x"
    )
    normalize: bool = Field(True, description="l2-normalise output features (off for downstream heads)")
    bn_momentum: float = Field(0.05, gt=0.0, le=1.0, description="BatchNorm momentum (torch convention)")


class TeacherConfig(BaseModel):
    """The 2D teacher: backbone, form, weights file and projection size."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    arch: Literal["resnet50", "dinov2", "filterbank"] = Field(
        "resnet50",
        description="resnet50 (the papers; give weights), dinov2 (ViT-S/B/L/g 14, with or without "
        "registers; size read from the weights, which are required) or filterbank (fixed label-free "
        "colour/texture features, no weights: the synthetic-world teacher, models/filterbank.py)",
    )
    form: Literal["dilated", "strided"] = Field(
        "dilated",
        description="resnet50 only. dilated: strides of layer2..4 replaced by dilation, output stride 4 "
        "(SLidR); strided: plain ResNet, output stride 32 (PPKT)",
    )
    weights: Path | None = Field(
        None,
        description="self-supervised checkpoint (never downloaded): a file; for dinov2 the official .pth or "
        "a Hugging Face folder (config.json + model.safetensors); None = random init (resnet50, tests only)",
    )
    layout: CheckpointLayout = Field(
        "auto", description="resnet50 checkpoint key layout; auto-detected by default (dinov2: always auto)"
    )
    container: str | None = Field(None, description="override: top-level key that holds the state dict")
    prefix: str | None = Field(None, description="override: key prefix of the backbone tensors, stripped")
    out_dim: int = Field(64, gt=0, description="channels of the projected per-pixel features (F)")
    allow_random: bool = Field(
        False,
        description="let `lidar-ssl pretrain` run a resnet50 teacher without weights (random init: "
        "teaches nothing; smoke tests only)",
    )
    layers: tuple[int, ...] = Field(
        (-1,),
        min_length=1,
        description="dinov2: blocks whose patch tokens are concatenated (negative = from the end; "
        "-1 = last block)",
    )
    final_norm: bool = Field(
        True,
        description="dinov2: apply the ViT's final LayerNorm to the chosen blocks (DINOv2's "
        "x_norm_patchtokens); false = raw block output (ScaLR's x_pre_norm)",
    )
    image_size: tuple[int, int] | None = Field(
        None,
        description="dinov2: resize images to this (H, W), multiples of 14, before the ViT (ScaLR: "
        "224x448); None = the nearest multiples of 14 of the input size",
    )
    half_precision: bool = Field(
        True, description="dinov2 on CUDA: run the frozen ViT under float16 autocast (ignored on CPU)"
    )

    @model_validator(mode="after")
    def _check_weights(self) -> TeacherConfig:
        if self.arch == "filterbank" and self.weights is not None:
            raise ValueError("the filterbank teacher has no weights file; unset teacher.weights")
        if self.arch == "dinov2":
            if self.weights is None:
                raise ValueError(
                    "the dinov2 teacher needs teacher.weights (its size is read from the checkpoint): "
                    "an official dinov2_vit*14*_pretrain.pth or a Hugging Face folder"
                )
            if not self.weights.exists():
                raise ValueError(f"teacher weights {self.weights} do not exist")
            if self.layout != "auto":
                raise ValueError("teacher.layout applies to resnet50; dinov2 layouts are auto-detected")
            if self.image_size is not None and any(s <= 0 or s % 14 for s in self.image_size):
                raise ValueError(f"teacher.image_size {self.image_size} must be positive multiples of 14")
        elif self.weights is not None and not self.weights.is_file():
            raise ValueError(f"teacher weights file {self.weights} does not exist")
        return self

"""ScaLR-style feature distillation (``--method scalr``): points regress the frozen teacher's pixel features.

Per step: draw ``scalr.cameras_per_sample`` cameras of each sample (the teacher only runs on those: its
forward is the cost that grows fastest), keep at most ``scalr.points_per_sample`` random pairs per sample
on them, map the backbone's voxel features to the teacher width (``scalr.student_head``) and apply
:func:`~lidar_ssl_core.losses.scalr.scalr_loss` against the frozen pre-head map (no negatives: nothing is
gathered under DDP; each process averages its own pairs). The teacher's 1x1 head is not used and stays
frozen; the whole teacher is rebuilt from its weights file, so nothing of it is checkpointed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lidar_ssl_core.losses.scalr import ScalrLossOptions, scalr_loss
from lidar_ssl_core.models.image_teacher import ImageTeacher
from lidar_ssl_core.train.methods.base import (
    MethodError,
    MethodOutput,
    MethodSetup,
    PretrainMethod,
    StepContext,
    register,
)

if TYPE_CHECKING:
    from lidar_ssl_core.train.config import PretrainConfig


def sample_per_group(
    groups: torch.Tensor, per_group: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Sorted indices of at most ``per_group`` random entries of every group id in ``groups`` (all: None).

    Cameras: ``groups`` = ``image_batch`` (sample of each image); pairs: the sample of each pair.
    """
    if per_group is None:
        return torch.arange(groups.shape[0])
    ids = groups.cpu()
    chosen = []
    for group in torch.unique(ids).tolist():
        members = torch.nonzero(ids == group).squeeze(1)
        order = torch.randperm(members.numel(), generator=generator)
        chosen.append(members[order[:per_group]])
    return torch.sort(torch.cat(chosen)).values


@register
class ScaLR(PretrainMethod):
    """Point-to-pixel feature regression with a cosine (and/or L2) loss (Puy et al. 2024)."""

    name = "scalr"
    uses_teacher = True
    batch_keys = ("pairing_voxels", "pairing_images", "images", "image_batch")

    def __init__(self, config: PretrainConfig, setup: MethodSetup) -> None:
        super().__init__(config, setup)
        self.options = config.scalr
        self.teacher = ImageTeacher(config.teacher)
        self.teacher.head.requires_grad_(False)  # targets are the frozen pre-head features
        width = self.teacher.backbone.out_channels
        self.head: nn.Module
        if self.options.student_head == "linear":
            self.head = nn.Linear(setup.student_dim, width)
        elif setup.student_dim != width:
            raise MethodError(
                f"scalr.student_head: none needs the backbone to output the teacher width {width}, but "
                f"pretrain.backbone.out_dim is {setup.student_dim}; set it to {width} or use "
                "scalr.student_head: linear"
            )
        else:
            self.head = nn.Identity()
        self.loss_options = ScalrLossOptions(
            cosine_weight=self.options.cosine_weight,
            l2_weight=self.options.l2_weight,
            level=self.options.level,
            align_corners=self.teacher.aligns_corners,
        )

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("teacher.",)

    def train(self, mode: bool = True) -> ScaLR:
        super().train(mode)
        self.teacher.train(False)
        return self

    def lr_setting(self) -> str:
        return "pretrain.scalr.lr" if self.options.optimizer == "adamw" else super().lr_setting()

    def build_optimizer(self, groups: Sequence[dict[str, Any]]) -> torch.optim.Optimizer:
        """AdamW with ``scalr.lr`` / ``scalr.weight_decay`` (ScaLR), or the SGD of the SLidR family."""
        if self.options.optimizer == "sgd":
            return super().build_optimizer(groups)
        return torch.optim.AdamW(list(groups), lr=self.options.lr, weight_decay=self.options.weight_decay)

    def forward(  # type: ignore[override]
        self, batch: Mapping[str, Any], point_feats: torch.Tensor, step: StepContext
    ) -> MethodOutput:
        pv, pi = batch["pairing_voxels"], batch["pairing_images"].long()
        images, image_batch = batch["images"], batch["image_batch"]
        cams = sample_per_group(image_batch, self.options.cameras_per_sample, step.generator)
        remap = torch.full((images.shape[0],), -1, dtype=torch.long)
        remap[cams] = torch.arange(cams.numel())
        remap = remap.to(pi.device)
        on_cam = torch.nonzero(remap[pi[:, 0]] >= 0).squeeze(1)
        pair_sample = image_batch.to(pi.device)[pi[on_cam, 0]]
        keep = on_cam[
            sample_per_group(pair_sample, self.options.points_per_sample, step.generator).to(pi.device)
        ]
        if keep.numel() == 0:
            raise MethodError("scalr: no point-pixel pair on the sampled cameras of this batch")
        pairs_img = torch.stack([remap[pi[keep, 0]], pi[keep, 1], pi[keep, 2]], 1)
        with step.autocast():
            teacher_feats = self.teacher.frozen_features(images[cams.to(images.device)])
        student = self.head(point_feats)
        loss = scalr_loss(
            student.float(),
            teacher_feats.float(),
            pv[keep],
            pairs_img,
            image_size=(int(images.shape[2]), int(images.shape[3])),
            options=self.loss_options,
        )
        return MethodOutput(loss, {})

"""OLIVINE: fine-grained image-to-LiDAR distillation with weak labels from a vision foundation model
(methods.md section 4; losses in :mod:`lidar_ssl_core.losses.olivine`).

Networks: the frozen 2D teacher with two decoupled heads (``pp``: the teacher's own 1x1 head; ``sem``: a
second 1x1 conv on the frozen features, bilinear upsampling to the image, l2) and two 3D heads on the
backbone's output (linear + l2 each). Per step, over the M point-pixel pairs with a weak label:

1. DCAS samples ``num_matches`` pairs with ``p ~ 1 / (density(distance) * class count)``;
2. ``L_PPNCE``: point-pixel InfoNCE on the pp embeddings (Eq. 1);
3. ``L_sup``: supervised contrastive loss on the sem embeddings with the weak classes (Eq. 2);
4. the moving class statistics (EMA of each class's mean sem embedding) are updated, and from
   ``kl_warmup_steps`` on ``L_kl`` pulls each point's sem embedding towards its class's vMF (Eq. 11);
5. ``L = 0.5 L_PPNCE + 0.5 L_sup + 1.0 L_kl`` (the paper's lambdas are not stated: the code's).

Weak labels come from mask files made offline (:class:`~lidar_ssl_core.data.weak_labels.MaskFiles`,
``pretrain.olivine.mask_dir``); nothing is downloaded. SGD as the SLidR family (paper).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lidar_ssl_core.errors import ConfigError
from lidar_ssl_core.losses.infonce import infonce, sample_pairs
from lidar_ssl_core.losses.olivine import ClassStatistics, dcas_sample, l2, supcon_loss, vmf_kl_loss
from lidar_ssl_core.losses.ppkt import gather_pixel_features
from lidar_ssl_core.train.methods.base import (
    MethodError,
    MethodOutput,
    MethodSetup,
    PretrainMethod,
    StepContext,
    register,
)
from lidar_ssl_core.train.methods.distill import TeacherDistillation

if TYPE_CHECKING:
    from lidar_ssl_core.config import DataConfig
    from lidar_ssl_core.train.config import PretrainConfig


@register
class OLIVINE(TeacherDistillation):
    """PPNCE + weak-label SupCon + vMF class consistency with DCAS sampling (module docstring)."""

    name = "olivine"
    needs_weak_labels = True
    batch_keys = ("pairing_voxels", "pairing_points", "pairing_images", "pairing_labels", "points", "images")

    def __init__(self, config: PretrainConfig, setup: MethodSetup) -> None:
        super().__init__(config, setup)
        dim, opts = setup.student_dim, config.olivine
        self.sem_head_2d = nn.Conv2d(self.teacher.head.in_channels, dim, kernel_size=1)
        self.pp_head_3d = nn.Linear(dim, dim)
        self.sem_head_3d = nn.Linear(dim, dim)
        self.statistics = ClassStatistics(opts.num_classes, dim, opts.ema_alpha)

    @classmethod
    def dataset_sources(cls, config: PretrainConfig, data: DataConfig) -> dict[str, Any]:
        from lidar_ssl_core.data.weak_labels import MaskFiles

        if config.olivine.mask_dir is None:
            raise ConfigError(
                "OLIVINE needs weak labels: set pretrain.olivine.mask_dir to the folder of class masks made "
                "offline by a vision foundation model (<mask_dir>/<bag>/<camera>/<stamp>.png; for the "
                "synthetic world: lidar_ssl_core.synth.weak_masks.write_weak_masks)"
            )
        return {**super().dataset_sources(config, data), "weak_labels": MaskFiles(config.olivine.mask_dir)}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return PretrainMethod.trainable_parameters(self)  # teacher head + the decoupled heads

    def semantic_map(
        self, backbone_features: torch.Tensor, size: Sequence[int], step: StepContext
    ) -> torch.Tensor:
        """Unit sem embeddings per image pixel (B, F, H, W): the sem head on the frozen map, upsampled as
        the teacher upsamples its pp map (corners for ResNet maps, patch centres for ViTs), so the two
        maps of a pixel come from the same place of the image."""
        with step.autocast():
            sem = self.sem_head_2d(backbone_features)
        size_hw = (int(size[0]), int(size[1]))
        upsampled = F.interpolate(
            sem.float(), size=size_hw, mode="bilinear", align_corners=self.teacher.aligns_corners
        )
        return l2(upsampled)

    def forward(  # type: ignore[override]
        self, batch: Mapping[str, Any], point_feats: torch.Tensor, step: StepContext
    ) -> MethodOutput:
        opts = self.config.olivine
        teacher = self.teacher_features(batch, step)
        g2_map = self.semantic_map(teacher.backbone_features, batch["images"].shape[-2:], step)
        f3, g3 = l2(self.pp_head_3d(point_feats)), l2(self.sem_head_3d(point_feats))

        pv, pi, labels = batch["pairing_voxels"], batch["pairing_images"], batch["pairing_labels"].long()
        valid = torch.nonzero((labels >= 0) & (labels < opts.num_classes)).squeeze(1)
        if valid.numel() < 2:
            raise MethodError(
                f"OLIVINE: {valid.numel()} of {labels.numel()} pairs have a weak label in "
                f"0..{opts.num_classes - 1} (check pretrain.olivine.mask_dir and num_classes)"
            )
        distance = batch["points"][batch["pairing_points"][valid]].norm(dim=1)
        sup_idx = valid[dcas_sample(distance, labels[valid], opts.num_matches, step.generator)]
        if opts.ppnce_sampling == "dcas":
            pp_idx = sup_idx
        else:
            pp_idx = sample_pairs(pv.shape[0], opts.num_matches, step.generator, device=pv.device)

        f2 = gather_pixel_features(teacher.pixel_features, pi[pp_idx])
        loss_pp = infonce(f3[pv[pp_idx]], f2, opts.temperature)
        g2 = gather_pixel_features(g2_map, pi[sup_idx])
        loss_sup = supcon_loss(g3[pv[sup_idx]], g2, labels[sup_idx], opts.temperature)

        warm = step.global_step >= opts.kl_warmup_steps
        g3_valid = g3[pv[valid]]
        if not (warm and opts.freeze_statistics):
            self.statistics.update(g3_valid.detach(), labels[valid])
        loss = opts.weight_ppnce * loss_pp + opts.weight_sup * loss_sup
        terms = {
            "ppnce": loss_pp.detach(),
            "supcon": loss_sup.detach(),
            "labelled_pairs": torch.tensor(float(valid.numel()) / max(labels.numel(), 1)),
        }
        if warm:
            mu, kappa, known = self.statistics.parameters_vmf()
            keep = known[labels[valid]]
            loss_kl = vmf_kl_loss(g3_valid[keep], labels[valid][keep], mu.to(g3.dtype), kappa)
            loss = loss + opts.weight_kl * loss_kl
            terms["vmf_kl"] = loss_kl.detach()
        return MethodOutput(loss, terms)

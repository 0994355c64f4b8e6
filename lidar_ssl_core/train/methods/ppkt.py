"""PPKT: point-pixel InfoNCE over ``loss.num_matches`` sampled pairs (losses/ppkt.py).

Under DDP with ``loss.gather_negatives`` each process contrasts its anchors against the pixels of every
process and returns its share of the global loss (:func:`ppkt_local_rows_loss`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lidar_ssl_core.losses import Gather, gather_pixel_features, ppkt_loss
from lidar_ssl_core.losses.gather import distributed_world
from lidar_ssl_core.losses.infonce import check_features, check_index, sample_pairs
from lidar_ssl_core.models.image_teacher import TeacherOutput
from lidar_ssl_core.train.config import LossOptions
from lidar_ssl_core.train.methods.base import MethodError, StepContext, register
from lidar_ssl_core.train.methods.distill import TeacherDistillation


def ppkt_local_rows_loss(
    q: torch.Tensor, k: torch.Tensor, *, temperature: float, gather: Gather
) -> torch.Tensor:
    """This process's share of the PPKT InfoNCE over the pairs of every process.

    ``q`` (n, F) are the local anchors (points) and ``k`` (n, F) their pixels; the keys are the pixels of
    every process (N, F), so the logits are (n, N), not the (N, N) of gathering both sides. The result is
    ``W / N * sum_i L_i`` over the local anchors i (W processes): the mean over the processes is the global
    loss ``(1/N) sum_i L_i``, and because the gather's backward sums every process's gradient into the local
    keys, DDP's averaging leaves exactly the gradient of the global loss (the same as when every process
    computes all N rows). ``gather`` is :func:`~lidar_ssl_core.losses.all_gather_rows`.
    """
    rank, world = distributed_world()
    keys = gather(k)
    counts = gather(torch.tensor([q.shape[0]], dtype=torch.long, device=q.device))
    start = int(counts[:rank].sum())
    target = torch.arange(start, start + q.shape[0], device=q.device)
    total = nn.functional.cross_entropy(q @ keys.T / temperature, target, reduction="sum")
    return total * (world / keys.shape[0])


def ppkt_batch_loss(
    batch: Mapping[str, Any],
    point_feats: torch.Tensor,
    teacher: TeacherOutput,
    options: LossOptions,
    generator: torch.Generator | None = None,
    gather: Gather | None = None,
) -> torch.Tensor:
    """PPKT loss of a collated batch (``pairing_voxels``, ``pairing_images``) and the teacher's pixels."""
    pv, pi = batch["pairing_voxels"], batch["pairing_images"]
    pixel_feats = gather_pixel_features(teacher.pixel_features, pi)
    if gather is None:
        return ppkt_loss(
            point_feats,
            pixel_feats,
            pv,
            num_matches=options.num_matches,
            temperature=options.temperature,
            generator=generator,
        )
    check_features("point_feats", point_feats)
    check_features("pixel_feats", pixel_feats, point_feats.shape[1])
    check_index("pairing_voxels", pv, point_feats.shape[0], "rows of point_feats")
    if pv.shape[0] != pixel_feats.shape[0]:
        raise MethodError(
            f"pairing_voxels {tuple(pv.shape)} and pairing_images {tuple(pi.shape)} disagree on the pairs"
        )
    idx = sample_pairs(pixel_feats.shape[0], options.num_matches, generator, device=point_feats.device)
    return ppkt_local_rows_loss(
        point_feats[pv[idx]], pixel_feats[idx], temperature=options.temperature, gather=gather
    )


@register
class PPKT(TeacherDistillation):
    """PPKT (SLidR's re-implementation): InfoNCE on sampled point-pixel pairs."""

    name = "ppkt"

    def distillation_loss(
        self, batch: Mapping[str, Any], point_feats: torch.Tensor, teacher: TeacherOutput, step: StepContext
    ) -> torch.Tensor:
        return ppkt_batch_loss(batch, point_feats, teacher, self.config.loss, step.generator, step.gather)

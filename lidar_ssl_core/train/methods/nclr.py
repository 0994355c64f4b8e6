"""NCLR: self-supervised LiDAR learning by 2D-3D neural calibration (methods.md section 3; paper = spec).

Per step:

1. **Perturbation** (``prepare_batch``): each sample's cloud is moved by a random rigid transform,
   ``p' = R_z(theta) (p + t)``, theta ~ U[-pi, pi], t = (tx, ty, 0) with tx, ty ~ U[-15, 15] m, and
   re-voxelised (the network sees the perturbed cloud; pairs follow their points). The dataset's own
   augmentations stay as configured.
2. **Features**: the 3D backbone on the perturbed voxels; a trainable ResNet + FPN on the images
   (:mod:`lidar_ssl_core.models.image_fpn`, stride 4).
3. **L_f**: LTA InfoNCE with the learnable symmetric ``W_f`` on ``num_pairs`` sampled pairs per sample
   (backbone point features, image features sampled bilinearly at the pixel centres).
4. **Fusion + overlap**: per image, ``keypoints`` voxels of its cloud and the image tokens (stride
   ``token_stride``) pass the fusion transformer; heads predict per point / token whether it lies in the
   image-LiDAR overlap, supervised by BCE. Ground truth: a point is in the overlap when it has a pair in that
   image, a token when a pair falls in its cell.
5. **Pose**: the points predicted in the overlap (P_o) are soft-matched to the tokens predicted in the
   overlap (I_o) with ``W_f``, EPnP (:mod:`lidar_ssl_core.losses.epnp`) turns the expected 2D locations into
   R^, t^, and the Huber pose loss compares them with the ground truth. The ground-truth camera (K, R, t of
   the perturbed cloud) is fitted to the image's exact point-pixel pairs (DLT), so it is right after any
   crop, resize or flip; an image whose fit is poor (``max_fit_rms_px``) gets no pose loss.
6. ``L = 1.0 L_f + 0.5 L_o + 0.2 L_p``; AdamW (lr 1e-3, weight decay 1e-3) over everything.

Deviation (architecture, stated): the fusion runs after the two decoders (the backbone is the project's
U-Net, shared by every method), so L_f trains the backbone's own features directly and the fused features
serve overlap and matching. The authors' code differs from the paper (no W_f, pose loss from epoch 45,
weights 1/1/1/1); the paper is followed, except for when the pose loss joins, which the paper does not
state: from ``nclr.pose_start`` (default 0.9 of the epochs, the code's 45 of 50), because from the first
step the pose gradients of untrained matches stall the InfoNCE at chance (measured, docs/pretraining.md).
Before that the pose is still solved, without gradient, so its error is logged throughout.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lidar_ssl_core.errors import ConfigError, LossInputError
from lidar_ssl_core.losses.epnp import Camera, camera_from_correspondences, epnp, normalise_pixels
from lidar_ssl_core.losses.nclr import lta_infonce, overlap_loss, pose_loss, soft_match, symmetric
from lidar_ssl_core.models.image_fpn import FPN_STRIDE, ResNetFPN
from lidar_ssl_core.models.nclr_fusion import Fusion, overlap_head
from lidar_ssl_core.train.methods.base import (
    MethodError,
    MethodOutput,
    MethodSetup,
    PretrainMethod,
    StepContext,
    register,
)
from lidar_ssl_core.voxels import voxelize

if TYPE_CHECKING:
    from lidar_ssl_core.train.config import PretrainConfig

log = logging.getLogger(__name__)

#: a perturbed batch carries these besides the collated keys
VOXEL_POINTS = "nclr_voxel_points"
PERTURBATION = "nclr_perturbation"


def _uniform(n: int, bound: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64)
    return ((2.0 * u - 1.0) * bound).to(device)


def rotation_z(theta: torch.Tensor) -> torch.Tensor:
    """(3, 3) rotation about z by ``theta``."""
    c, s = torch.cos(theta), torch.sin(theta)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack(
        [torch.stack([c, -s, zero]), torch.stack([s, c, zero]), torch.stack([zero, zero, one])]
    )


def sample_bilinear(
    fmap: torch.Tensor, image: torch.Tensor, rc: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Features (S, C) of ``fmap`` (I, C, h, w) at the centres of pixels ``rc`` (S, 2) (row, col) of images
    ``image`` (S,) of size ``size`` (H, W) (the map covers the image; align_corners=False)."""
    height, width = size
    out = fmap.new_empty(rc.shape[0], fmap.shape[1])
    for c in torch.unique(image).tolist():
        sel = image == c
        y = (rc[sel, 0].to(fmap.dtype) + 0.5) / height * 2.0 - 1.0
        x = (rc[sel, 1].to(fmap.dtype) + 0.5) / width * 2.0 - 1.0
        grid = torch.stack([x, y], 1)[None, None]
        out[sel] = F.grid_sample(fmap[c : c + 1], grid, mode="bilinear", align_corners=False)[0, :, 0].T
    return out


@register
class NCLR(PretrainMethod):
    """2D-3D neural calibration as a pretext task (module docstring)."""

    name = "nclr"
    batch_keys = ("points", "point_batch", "pairing_points", "pairing_images", "images", "image_batch")
    ddp_find_unused_parameters = True  # the pose head path is skipped on images without a valid pose

    def __init__(self, config: PretrainConfig, setup: MethodSetup) -> None:
        super().__init__(config, setup)
        if setup.voxels is None:
            raise ConfigError("NCLR re-voxelises the perturbed cloud: it needs the data.voxels settings")
        opts = config.nclr
        dim = setup.student_dim
        self.image_branch = ResNetFPN(dim, layers=opts.image_layers, fpn_dim=opts.fpn_dim)
        self.w_param = nn.Parameter(torch.eye(dim))  # W_f = (A + A^T)/2, starts as the cosine similarity
        self.fusion = Fusion(dim, layers=opts.fusion_layers, heads=opts.fusion_heads, ffn=opts.fusion_ffn)
        self.point_overlap = overlap_head(dim)
        self.pixel_overlap = overlap_head(dim)

    # --- perturbation --------------------------------------------------------------------------------------
    def prepare_batch(self, batch: dict[str, Any], step: StepContext) -> dict[str, Any]:
        """Perturb each sample's cloud (``p' = R_z (p + t)``) and re-voxelise it."""
        assert self.setup.voxels is not None
        opts = self.config.nclr
        points, point_batch = batch["points"], batch["point_batch"]
        device = points.device
        n_samples = int(point_batch.max()) + 1 if point_batch.numel() else 0
        thetas = _uniform(n_samples, opts.rotation_range, step.generator, device)
        shifts = _uniform(2 * n_samples, opts.translation_range, step.generator, device).reshape(n_samples, 2)
        # input feature per point: its old voxel's (the representative's intensity); kept per new voxel
        point_feature = batch["features"][batch["point_to_voxel"]]
        new_points = torch.empty_like(points)
        coords, feats, p2v, vox_points, poses = [], [], [], [], []
        offset = 0
        for b in range(n_samples):
            sel = torch.nonzero(point_batch == b).squeeze(1)
            rot = rotation_z(thetas[b]).to(points.dtype)
            shift = torch.cat([shifts[b], shifts.new_zeros(1)]).to(points.dtype)
            moved = (points[sel] + shift) @ rot.T
            new_points[sel] = moved
            vox = voxelize(moved.detach().cpu().numpy(), self.setup.voxels)
            v2p = torch.from_numpy(vox.voxel_to_point).to(device)
            coords.append(
                torch.cat(
                    [
                        torch.full((vox.num_voxels, 1), b, dtype=torch.int32, device=device),
                        torch.from_numpy(vox.coords).to(device),
                    ],
                    1,
                )
            )
            feats.append(point_feature[sel][v2p])
            vox_points.append(moved[v2p])
            p2v.append(torch.from_numpy(vox.point_to_voxel).to(device) + offset)
            offset += vox.num_voxels
            poses.append(torch.cat([thetas[b : b + 1], shifts[b]]))
        point_to_voxel = torch.empty_like(batch["point_to_voxel"])
        for b, part in enumerate(p2v):
            point_to_voxel[point_batch == b] = part
        out = dict(batch)
        out.update(
            points=new_points,
            coords=torch.cat(coords),
            features=torch.cat(feats),
            point_to_voxel=point_to_voxel,
            pairing_voxels=point_to_voxel[batch["pairing_points"]],
        )
        out[VOXEL_POINTS] = torch.cat(vox_points)
        out[PERTURBATION] = torch.stack(poses) if poses else torch.zeros(0, 3, device=device)
        return out

    # --- optimisation -------------------------------------------------------------------------------------
    def lr_setting(self) -> str:
        return "pretrain.nclr.lr"

    def build_optimizer(self, groups: Sequence[dict[str, Any]]) -> torch.optim.Optimizer:
        """AdamW (paper: lr 1e-3, weight decay 1e-3)."""
        opts = self.config.nclr
        return torch.optim.AdamW(list(groups), lr=opts.lr, weight_decay=opts.weight_decay, betas=opts.betas)

    def w_f(self) -> torch.Tensor:
        return symmetric(self.w_param)

    # --- loss ----------------------------------------------------------------------------------------------
    def forward(  # type: ignore[override]
        self, batch: Mapping[str, Any], point_feats: torch.Tensor, step: StepContext
    ) -> MethodOutput:
        opts = self.config.nclr
        images = batch["images"]
        size = (int(images.shape[2]), int(images.shape[3]))
        with step.autocast():
            fmap = self.image_branch(images)
        fmap = F.normalize(fmap.float(), dim=1)
        q_all = F.normalize(point_feats, dim=1)
        w_f = self.w_f()
        pv, pi = batch["pairing_voxels"], batch["pairing_images"].long()
        if pv.numel() == 0:
            raise MethodError("NCLR: the batch has no point-pixel pairs")

        # L_f on sampled pairs
        n_samples = int(batch["image_batch"].max()) + 1 if batch["image_batch"].numel() else 1
        n_pairs = min(opts.num_pairs * n_samples, pv.shape[0])
        gen_device = step.generator.device if step.generator is not None else torch.device("cpu")
        idx = torch.randperm(pv.shape[0], generator=step.generator, device=gen_device)[:n_pairs]
        idx = idx.to(pv.device)
        k = F.normalize(sample_bilinear(fmap, pi[idx, 0], pi[idx, 1:], size), dim=1)
        loss_f = lta_infonce(
            q_all[pv[idx]],
            k,
            pi[idx, 1:].float(),
            pi[idx, 0],
            w_f,
            temperature=opts.temperature,
            r_p=opts.r_p,
            r_n=opts.r_n,
        )

        # fusion, overlap and pose per image
        point_logits, point_targets, pixel_logits, pixel_targets = [], [], [], []
        pose_losses: list[torch.Tensor] = []
        rot_errors: list[float] = []
        pose_on = self.pose_loss_on(step.epoch)
        for c in range(images.shape[0]):
            out = self._image_terms(batch, q_all, fmap, w_f, c, size, step, pose_on)
            point_logits.append(out["point_logits"])
            point_targets.append(out["point_targets"])
            pixel_logits.append(out["pixel_logits"])
            pixel_targets.append(out["pixel_targets"])
            if "pose" in out:
                pose_losses.append(out["pose"])
                rot_errors.append(out["rot_error_deg"])
        loss_o = overlap_loss(
            torch.cat(point_logits),
            torch.cat(point_targets),
            torch.cat(pixel_logits),
            torch.cat(pixel_targets),
        )
        loss_p = torch.stack(pose_losses).mean() if pose_losses else loss_o.new_zeros(())
        loss = opts.weight_feature * loss_f + opts.weight_overlap * loss_o
        if pose_on:
            loss = loss + opts.weight_pose * loss_p
        terms = {
            "lta_infonce": loss_f.detach(),
            "overlap": loss_o.detach(),
            "pose": loss_p.detach(),
            "pose_images": torch.tensor(float(len(pose_losses))),
            "pose_on": torch.tensor(float(pose_on)),
        }
        if rot_errors:
            terms["pose_rotation_error_deg"] = torch.tensor(float(np.mean(rot_errors)))
        return MethodOutput(loss, terms)

    def pose_loss_on(self, epoch: int) -> bool:
        """Whether the pose loss trains in ``epoch`` (0-based): from floor(pose_start x epochs) on."""
        return epoch >= math.floor(self.config.nclr.pose_start * self.config.epochs)

    def _image_terms(
        self,
        batch: Mapping[str, Any],
        q_all: torch.Tensor,
        fmap: torch.Tensor,
        w_f: torch.Tensor,
        c: int,
        size: tuple[int, int],
        step: StepContext,
        pose_on: bool = True,
    ) -> dict[str, Any]:
        opts = self.config.nclr
        device = q_all.device
        sample = int(batch["image_batch"][c])
        voxels = torch.nonzero(batch["coords"][:, 0] == sample).squeeze(1)
        gen_device = step.generator.device if step.generator is not None else torch.device("cpu")
        perm = torch.randperm(voxels.shape[0], generator=step.generator, device=gen_device).to(device)
        keypoints = voxels[perm[: opts.keypoints]]
        xyz = batch[VOXEL_POINTS][keypoints]

        pi = batch["pairing_images"].long()
        mine = pi[:, 0] == c
        pair_vox = batch["pairing_voxels"][mine]
        pair_rc = pi[mine, 1:]
        pool = opts.token_stride // FPN_STRIDE
        tokens_map = F.avg_pool2d(fmap[c : c + 1], pool, ceil_mode=True)[0] if pool > 1 else fmap[c]
        th, tw = tokens_map.shape[-2:]
        tokens = tokens_map.flatten(1).T
        rows = (torch.arange(th, device=device).float() + 0.5) * opts.token_stride
        cols = (torch.arange(tw, device=device).float() + 0.5) * opts.token_stride
        token_rc = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)

        fused_p, fused_i = self.fusion(q_all[keypoints], xyz.float(), tokens, token_rc)
        p_logit = self.point_overlap(fused_p)[:, 0]
        i_logit = self.pixel_overlap(fused_i)[:, 0]
        in_image = torch.zeros(q_all.shape[0], dtype=torch.bool, device=device)
        in_image[pair_vox] = True
        cell = (pair_rc[:, 0] // opts.token_stride).clamp_max(th - 1) * tw + (
            pair_rc[:, 1] // opts.token_stride
        ).clamp_max(tw - 1)
        token_hit = torch.zeros(th * tw, dtype=torch.bool, device=device)
        token_hit[cell] = True
        out: dict[str, Any] = {
            "point_logits": p_logit,
            "point_targets": in_image[keypoints].float(),
            "pixel_logits": i_logit,
            "pixel_targets": token_hit.float(),
        }

        # ground-truth camera of the perturbed cloud, fitted to the exact pairs of this image
        pair_points = batch["pairing_points"][mine]
        if pair_points.shape[0] < 12:
            return out
        uv = torch.stack([pair_rc[:, 1], pair_rc[:, 0]], 1).double() + 0.5
        camera = camera_from_correspondences(batch["points"][pair_points], uv)
        if not math.isfinite(camera.rms) or camera.rms > opts.max_fit_rms_px:
            log.debug("image %d: camera fit rms %.2f px, no pose loss", c, camera.rms)
            return out

        with torch.set_grad_enabled(pose_on and torch.is_grad_enabled()):  # off: solved, logged only
            return self._pose_terms(out, fused_p, fused_i, p_logit, i_logit, token_rc, w_f, xyz, camera, c)

    def _pose_terms(
        self,
        out: dict[str, Any],
        fused_p: torch.Tensor,
        fused_i: torch.Tensor,
        p_logit: torch.Tensor,
        i_logit: torch.Tensor,
        token_rc: torch.Tensor,
        w_f: torch.Tensor,
        xyz: torch.Tensor,
        camera: Camera,
        c: int,
    ) -> dict[str, Any]:
        """P_o (points) and I_o (tokens) from the predicted overlap, soft matching, EPnP, pose loss."""
        opts = self.config.nclr
        device = fused_p.device
        p_score, i_score = torch.sigmoid(p_logit.detach()), torch.sigmoid(i_logit.detach())
        p_o = _select(p_score, opts.overlap_threshold, opts.pnp_min_points, opts.pnp_points)
        i_o = torch.nonzero(i_score > opts.overlap_threshold).squeeze(1)
        if i_o.numel() < opts.pnp_min_points:
            i_o = torch.arange(i_score.shape[0], device=device)
        predicted = soft_match(
            F.normalize(fused_p[p_o], dim=1),
            F.normalize(fused_i[i_o], dim=1),
            torch.stack([token_rc[i_o, 1], token_rc[i_o, 0]], 1),  # (u, v) = (col, row)
            w_f,
            temperature=opts.match_temperature,
        )
        if predicted.requires_grad:  # EPnP near a degenerate input must not poison the step
            predicted.register_hook(_finite_grad)  # type: ignore[no-untyped-call]
        k = camera.intrinsics.to(device)
        try:
            pose = epnp(xyz[p_o].double(), normalise_pixels(predicted.double(), k))
        except (RuntimeError, LossInputError) as err:  # torch.linalg.LinAlgError is a RuntimeError
            log.debug("image %d: EPnP failed (%s), no pose loss", c, err)
            return out
        loss = pose_loss(
            pose.rotation,
            pose.translation,
            camera.rotation.to(device),
            camera.translation.to(device),
            delta=opts.huber_delta,
        ).float()
        if torch.isfinite(loss):
            out["pose"] = loss
            cos = ((camera.rotation.to(device).T @ pose.rotation.detach()).trace() - 1.0) / 2.0
            out["rot_error_deg"] = math.degrees(math.acos(float(cos.clamp(-1.0, 1.0))))
        return out


def _select(score: torch.Tensor, threshold: float, at_least: int, at_most: int) -> torch.Tensor:
    """Indices of the scores above ``threshold``; the top ``at_least`` if fewer, top ``at_most`` if more."""
    above = int((score > threshold).sum())
    count = min(max(above, at_least), at_most, score.shape[0])
    return torch.topk(score, count).indices


def _finite_grad(grad: torch.Tensor) -> torch.Tensor:
    """Zero the non-finite entries of a gradient and cap its norm (EPnP's eigen-gradients blow up when
    the predicted 2D points are nearly degenerate, early in training)."""
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    norm = grad.norm()
    return grad * (10.0 / norm) if norm > 10.0 else grad

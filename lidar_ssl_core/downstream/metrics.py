"""Confusion matrix, per-class IoU and mIoU for point-wise semantic segmentation.

Rows are ground truth, columns predictions (``m[t, p]`` points of class ``t`` predicted as ``p``);
points whose target is ``ignore_index`` are not counted. IoU of class c is
``TP / (TP + FP + FN) = m[c, c] / (row_c + col_c - m[c, c])``.

Which classes enter the mean (docs/downstream-evaluation.md explains the choice):

- ``miou()`` (our number): classes with an empty union (neither in the ground truth nor predicted)
  have IoU NaN and are left out of the mean; a class absent from the ground truth but predicted gets
  IoU 0 and counts, since those points are false positives the model should not produce. This is the
  nuScenes devkit's ``nanmean`` convention; on the full nuScenes / SemanticKITTI validation sets every
  class is present, so it equals the plain mean there. ``miou(classes="target")`` averages only the
  classes present in the ground truth.
- ``slidr_code_miou()``: the SLidR code's convention, empty-union classes count as IoU 1.0 and the
  mean runs over all C classes. It inflates small evaluation sets; use it only to compare with
  numbers produced by that code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from lidar_ssl_core.downstream.classes import IGNORE_INDEX

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


class ConfusionMatrix:
    """A (C, C) int64 confusion matrix that accumulates over batches, frames and bags."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a class id (0..{num_classes - 1})")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix: npt.NDArray[np.int64] = np.zeros((num_classes, num_classes), np.int64)

    @classmethod
    def from_matrix(cls, matrix: npt.ArrayLike, ignore_index: int = IGNORE_INDEX) -> ConfusionMatrix:
        m = np.asarray(matrix)
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.dtype.kind not in "iu" or (m < 0).any():
            raise ValueError(f"need a square non-negative integer array, not {m.shape} {m.dtype}")
        out = cls(m.shape[0], ignore_index)
        out.matrix = m.astype(np.int64)
        return out

    # ---------------------------------------------------------------------------------- counting
    def update(self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> None:
        """Count one batch of predicted and true training ids (same shape, numpy or torch, any device)."""
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        c = self.num_classes
        if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
            p = torch.as_tensor(pred).reshape(-1).long()
            t = torch.as_tensor(target, device=p.device).reshape(-1).long()
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
            if t.numel():
                self._check_range(int(t.min()), int(t.max()), "target")
                self._check_range(int(p.min()), int(p.max()), "prediction")
            counts = torch.bincount(t * c + p, minlength=c * c).cpu().numpy()
        else:
            pn = np.asarray(pred).reshape(-1).astype(np.int64, copy=False)
            tn = np.asarray(target).reshape(-1).astype(np.int64, copy=False)
            keep = tn != self.ignore_index
            if not keep.all():
                pn, tn = pn[keep], tn[keep]
            if tn.size:
                self._check_range(int(tn.min()), int(tn.max()), "target")
                self._check_range(int(pn.min()), int(pn.max()), "prediction")
            counts = np.bincount(tn * c + pn, minlength=c * c)
        self.matrix += counts.reshape(c, c).astype(np.int64)

    def _check_range(self, lo: int, hi: int, what: str) -> None:
        if lo < 0 or hi >= self.num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{what} holds id {bad}, outside 0..{self.num_classes - 1} and not ignore_index "
                f"{self.ignore_index} (remap raw labels with the class map first)"
            )

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Sum of two matrices (per-bag or per-process results), as a new matrix."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) into a "
                f"{self.num_classes}-class one (ignore {self.ignore_index})"
            )
        out = ConfusionMatrix(self.num_classes, self.ignore_index)
        out.matrix = self.matrix + other.matrix
        return out

    __add__ = merge

    @staticmethod
    def sum(matrices: Iterable[ConfusionMatrix]) -> ConfusionMatrix:
        """Merge many matrices (at least one)."""
        it = iter(matrices)
        try:
            total = next(it)
        except StopIteration:
            raise ValueError("ConfusionMatrix.sum needs at least one matrix") from None
        for m in it:
            total = total.merge(m)
        return total

    def reset(self) -> None:
        self.matrix[:] = 0

    # ----------------------------------------------------------------------------------- metrics
    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    @property
    def support(self) -> npt.NDArray[np.int64]:
        """Ground-truth points per class (row sums)."""
        return np.asarray(self.matrix.sum(axis=1), np.int64)

    @property
    def predicted(self) -> npt.NDArray[np.int64]:
        """Predicted points per class (column sums)."""
        return np.asarray(self.matrix.sum(axis=0), np.int64)

    def iou_per_class(self) -> npt.NDArray[np.float64]:
        """IoU per class; NaN where the union is empty (class neither in the ground truth nor predicted)."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.support + self.predicted - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = tp / union
        return np.where(union > 0, iou, np.nan)

    def evaluated_classes(self, classes: Literal["union", "target"] = "union") -> npt.NDArray[np.bool_]:
        """Mask of the classes entering ``miou(classes)``."""
        if classes == "union":
            return (self.support + self.predicted) > 0
        if classes == "target":
            return self.support > 0
        raise ValueError(f"classes must be 'union' or 'target', not {classes!r}")

    def miou(self, classes: Literal["union", "target"] = "union") -> float:
        """Mean IoU over evaluated classes (see module docstring); NaN when nothing was counted."""
        mask = self.evaluated_classes(classes)
        if not mask.any():
            return float("nan")
        return float(np.nan_to_num(self.iou_per_class()[mask]).mean())

    def slidr_code_miou(self) -> float:
        """SLidR reference-code convention: empty-union classes count as 1.0, mean over all classes."""
        return float(np.nan_to_num(self.iou_per_class(), nan=1.0).mean())

    def accuracy(self) -> float:
        """Overall point accuracy (NaN when nothing was counted)."""
        total = self.total
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def class_accuracy(self) -> npt.NDArray[np.float64]:
        """Recall per class, TP / ground-truth points (NaN for classes absent from the ground truth)."""
        sup = self.support
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sup > 0, np.diag(self.matrix) / sup, np.nan)

    def fw_iou(self) -> float:
        """Frequency-weighted IoU (weights = ground-truth share), as also reported by SLidR's code."""
        total = self.total
        if not total:
            return float("nan")
        return float((self.support / total * np.nan_to_num(self.iou_per_class())).sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "matrix": self.matrix.tolist(),
        }


def voxel_to_point(
    pred_voxel: ArrayOrTensor, point_to_voxel: ArrayOrTensor, *, ignore_index: int = IGNORE_INDEX
) -> ArrayOrTensor:
    """Per-point training ids from per-voxel logits ``(V, C)`` (argmax) or labels ``(V,)``.

    ``point_to_voxel[i]`` is the voxel of point i (the inverse index of voxelisation); a negative index
    (point dropped by a crop or a range limit) yields ``ignore_index``. Evaluate on every original
    point this way, not on voxels (as the papers' code does).
    """
    if pred_voxel.ndim not in (1, 2):
        raise ValueError(
            f"pred_voxel must be (V,) labels or (V, C) logits, got shape {tuple(pred_voxel.shape)}"
        )
    if point_to_voxel.ndim != 1:
        raise ValueError(f"point_to_voxel must be (N,), got shape {tuple(point_to_voxel.shape)}")
    n_vox = int(pred_voxel.shape[0])
    if isinstance(pred_voxel, torch.Tensor):
        idx_t = torch.as_tensor(point_to_voxel, device=pred_voxel.device).long()
        if idx_t.numel() and int(idx_t.max()) >= n_vox:
            raise ValueError(f"point_to_voxel holds {int(idx_t.max())} but there are only {n_vox} voxels")
        labels_t = pred_voxel.argmax(dim=1) if pred_voxel.ndim == 2 else pred_voxel.long()
        valid_t = idx_t >= 0
        out_t = labels_t[idx_t.clamp(min=0)] if n_vox else torch.zeros_like(idx_t)
        return torch.where(valid_t, out_t, torch.full_like(out_t, ignore_index))
    idx = np.asarray(point_to_voxel).astype(np.int64, copy=False)
    if idx.size and int(idx.max()) >= n_vox:
        raise ValueError(f"point_to_voxel holds {int(idx.max())} but there are only {n_vox} voxels")
    labels = np.asarray(pred_voxel).argmax(axis=1) if pred_voxel.ndim == 2 else np.asarray(pred_voxel)
    labels = labels.astype(np.int64, copy=False)
    out = labels[np.maximum(idx, 0)] if n_vox else np.zeros(idx.shape, np.int64)
    return np.where(idx >= 0, out, np.int64(ignore_index))


__all__ = ["ConfusionMatrix", "voxel_to_point"]

"""Segmentation quality measures used by the tests and the benchmark."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt


def boundary_mask(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.bool_]:
    """Pixels whose right or lower neighbour has another label."""
    edges = np.zeros(labels.shape, dtype=bool)
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edges[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edges


def boundary_recall(
    labels: npt.NDArray[np.integer], gt_labels: npt.NDArray[np.integer], tolerance_px: int = 2
) -> float:
    """Fraction of ground-truth boundary pixels with a predicted boundary within ``tolerance_px``."""
    gt = boundary_mask(gt_labels)
    if not gt.any():
        return 1.0
    size = 2 * tolerance_px + 1
    near = cv2.dilate(boundary_mask(labels).astype(np.uint8), np.ones((size, size), np.uint8)) > 0
    return float(np.count_nonzero(near & gt) / np.count_nonzero(gt))


def undersegmentation_error(labels: npt.NDArray[np.integer], gt_labels: npt.NDArray[np.integer]) -> float:
    """Corrected undersegmentation error: leakage of superpixels across ground-truth regions, in [0, 1]."""
    pred = labels.ravel().astype(np.int64)
    gt = gt_labels.ravel().astype(np.int64)
    _, gt = np.unique(gt, return_inverse=True)
    n_gt = int(gt.max()) + 1
    joint = np.bincount(pred * n_gt + gt, minlength=(int(pred.max()) + 1) * n_gt).reshape(-1, n_gt)
    # each superpixel leaks every pixel outside its best-overlapping ground-truth region
    leak = joint.sum(axis=1) - joint.max(axis=1)
    return float(leak.sum() / pred.size)

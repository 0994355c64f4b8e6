"""Lovász-softmax loss (Berman, Rannen Triki, Blaschko, CVPR 2018), a convex surrogate of 1 - IoU.

For class c with foreground set F_c and per-point errors m_i = |[y_i = c] - p_i(c)|, the Jaccard loss
of a set S of mispredicted points is Δ(S) = |S| / |F_c ∪ S|. Its Lovász extension at m is
``Σ_k m_(k) (Δ(S_k) - Δ(S_{k-1}))`` with m sorted in decreasing order and S_k the first k points; it
is piecewise linear in m, so its gradient is the vector of those differences. The loss is the mean
of the class losses over the whole batch ("per-batch"; the alternative per-image averaging is not
offered), by default over the classes *present* in the labels (the reference default
``classes='present'``). Points labelled ``ignore_index`` are removed first. All classes are handled
in one sort over a (N, C) error matrix rather than a Python loop over classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lidar_ssl_core.downstream.classes import IGNORE_INDEX
from lidar_ssl_core.errors import LossInputError

ClassSelection = Literal["present", "all"] | Sequence[int]


def _flatten(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) & (N,), or (B, C, *S) & (B, *S) -> (M, C) & (M,)."""
    if probs.ndim < 2:
        raise LossInputError(f"probabilities must be (N, C) or (B, C, ...), got shape {tuple(probs.shape)}")
    if probs.ndim > 2:
        expected = (probs.shape[0], *probs.shape[2:])
        probs = probs.movedim(1, -1).reshape(-1, probs.shape[1])
    else:
        expected = (probs.shape[0],)
    if tuple(labels.shape) != tuple(expected):
        raise LossInputError(f"labels have shape {tuple(labels.shape)}, expected {tuple(expected)}")
    return probs, labels.reshape(-1)


def _lovasz_gradient(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Δ(S_k) - Δ(S_{k-1}) per column of a (M, C) 0/1 matrix sorted by decreasing error."""
    n_fg = fg_sorted.sum(dim=0)
    intersection = n_fg - fg_sorted.cumsum(dim=0)
    union = n_fg + (1.0 - fg_sorted).cumsum(dim=0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)


def lovasz_softmax(
    probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    classes: ClassSelection = "present",
) -> torch.Tensor:
    """Lovász-softmax of class probabilities (softmax outputs, not logits) against training ids.

    ``classes``: ``'present'`` (classes in the non-ignored labels), ``'all'``, or a list of class ids.
    Returns a 0-d tensor; 0 (still attached to the graph) when no point or no class is left.
    """
    probs, labels = _flatten(probs, labels)
    num_classes = probs.shape[1]
    keep = labels != ignore_index
    probs, labels = probs[keep], labels[keep].long()
    if labels.numel() == 0:
        return probs.sum() * 0.0
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise LossInputError(
            f"labels hold id {lo if lo < 0 else hi}, outside 0..{num_classes - 1} and not "
            f"ignore_index {ignore_index}"
        )
    fg = F.one_hot(labels, num_classes).to(probs.dtype)
    errors = (fg - probs).abs()
    errors_sorted, order = torch.sort(errors, dim=0, descending=True)
    fg_sorted = torch.gather(fg, 0, order)
    per_class = (errors_sorted * _lovasz_gradient(fg_sorted)).sum(dim=0)
    if classes == "present":
        selected = per_class[fg.sum(dim=0) > 0]
    elif classes == "all":
        selected = per_class
    elif isinstance(classes, str):
        raise LossInputError(f"classes must be 'present', 'all' or a list of class ids, not {classes!r}")
    else:
        ids = [int(c) for c in classes]
        if any(not 0 <= c < num_classes for c in ids):
            raise LossInputError(f"class ids {ids} must lie in 0..{num_classes - 1}")
        selected = per_class[ids]
    if selected.numel() == 0:
        return probs.sum() * 0.0
    return selected.mean()


class LovaszSoftmaxLoss(nn.Module):
    """Lovász-softmax on logits (softmax over dim 1), the module form used next to cross-entropy."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, classes: ClassSelection = "present") -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.classes = classes

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        half = logits.dtype in (torch.float16, torch.bfloat16)  # sort + cumsum need float32 at least
        probs = logits.softmax(dim=1, dtype=torch.float32 if half else None)
        return lovasz_softmax(probs, labels, ignore_index=self.ignore_index, classes=self.classes)


__all__ = ["LovaszSoftmaxLoss", "lovasz_softmax"]

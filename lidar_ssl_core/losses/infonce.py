"""Shared pieces of the image-to-LiDAR contrastive losses: input checks, InfoNCE, pair sampling.

Conventions (all losses): anchors are the **point** (voxel) embeddings ``q`` (rows), targets the **pixel**
embeddings ``k`` (columns), as in the SLidR code's ``CrossEntropy((k q^T)/tau, arange)`` with point features
first. Everything is vectorised torch, device- and dtype-agnostic.

Argument order (every batch-level loss): the tensors positionally, in the order student point features,
trainable pixel embeddings, frozen teacher features, ``pairing_points``, ``pairing_images``,
``superpixels``, ``pairing_superpixels`` (each loss takes the ones it needs); every setting keyword-only
(a typed options object where there are several), then ``generator`` and ``gather``. The ``*_details``
variants return a :class:`LossDetails` with the per-anchor terms instead of the scalar alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lidar_ssl_core.errors import LossInputError
from lidar_ssl_core.loss_options import DEFAULT_NUM_MATCHES, DEFAULT_TEMPERATURE


@dataclass(frozen=True)
class LossDetails:
    """Per-anchor diagnostics of a loss (all rows in the same order; A kept anchors).

    loss: the scalar (what the plain function returns); per_anchor: (A,) each kept anchor's term;
    weights: (A,) balancing weights, None for a plain mean; anchors: (A,) which candidates were kept
    (superpixel ids for superpixel losses, sampled pair indices for pair losses, rows of q for the q/k-level
    functions; under ``gather``, indices into the gathered rows); dropped: (D,) the candidates dropped for
    having no teacher feature (same index space); kept_negatives: (A, A) bool, True where j stays a negative
    of anchor i (diagonal = the positive), None where every negative is kept.
    """

    loss: torch.Tensor
    per_anchor: torch.Tensor
    weights: torch.Tensor | None
    anchors: torch.Tensor
    dropped: torch.Tensor
    kept_negatives: torch.Tensor | None = None

    def reindexed(self, index: torch.Tensor) -> LossDetails:
        """The same details with ``anchors``/``dropped`` mapped through ``index`` (rows -> batch ids)."""
        return LossDetails(
            self.loss,
            self.per_anchor,
            self.weights,
            index[self.anchors],
            index[self.dropped],
            self.kept_negatives,
        )


def check_features(name: str, x: torch.Tensor, dim: int | None = None) -> None:
    """Raise LossInputError unless ``x`` is a floating (N, F) matrix (with F == ``dim`` when given)."""
    if x.ndim != 2 or not x.is_floating_point():
        raise LossInputError(f"{name} must be a floating (N, F) tensor, got shape {tuple(x.shape)} {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise LossInputError(
            f"{name} has feature size {x.shape[1]} but {dim} was expected (shape {tuple(x.shape)})"
        )


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise LossInputError unless ``a`` and ``b`` have the same shape (paired rows)."""
    if a.shape != b.shape:
        raise LossInputError(
            f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must have the same shape"
            " (row i pairs row i)"
        )


def check_index(name: str, idx: torch.Tensor, size: int, axis_name: str) -> None:
    """Raise LossInputError unless ``idx`` is an integer vector of valid indices into ``size`` rows."""
    if idx.ndim != 1 or idx.is_floating_point() or idx.dtype == torch.bool:
        raise LossInputError(
            f"{name} must be an integer (P,) tensor, got shape {tuple(idx.shape)} {idx.dtype}"
        )
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
        raise LossInputError(
            f"{name} indexes {axis_name} in [{int(idx.min())}, {int(idx.max())}] but there are only {size}"
        )


def infonce_per_anchor(logits: torch.Tensor) -> torch.Tensor:
    """Per-anchor InfoNCE ``-log softmax(logits_i)_i`` of an (M, M) logit matrix (positives on the diagonal).

    ``-inf`` entries are removed negatives (they get zero weight and zero gradient).
    """
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target, reduction="none")


def infonce(
    q: torch.Tensor,
    k: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch InfoNCE ``L = -(1/M) sum_i log( exp(<q_i,k_i>/tau) / sum_j exp(<q_i,k_j>/tau) )``.

    ``q`` (M, F) anchors (points), ``k`` (M, F) positives (pixels); row i of each form a positive pair and
    every other row of ``k`` is a negative. The denominator includes the positive. With ``weights`` (M,) the
    mean is replaced by ``sum_i w_i L_i / sum_i w_i``. Features are used as given (normalise them beforehand).
    """
    return reduce_weighted(infonce_details(q, k, temperature).per_anchor, weights)


def infonce_details(
    q: torch.Tensor, k: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
) -> LossDetails:
    """:func:`infonce` (unweighted) with its per-anchor terms; ``anchors`` are the rows of q."""
    check_features("q", q)
    check_features("k", k)
    check_same_shape("q", q, "k", k)
    if temperature <= 0:
        raise LossInputError(f"temperature must be > 0, got {temperature}")
    per_anchor = infonce_per_anchor(q @ k.T / temperature)
    rows = torch.arange(q.shape[0], device=q.device)
    return LossDetails(per_anchor.mean(), per_anchor, None, rows, rows[:0])


def reduce_weighted(per_anchor: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``per_anchor`` or, with weights, ``sum w_i L_i / sum w_i`` (0 when the weights sum to 0)."""
    if weights is None:
        return per_anchor.mean()
    if weights.shape != per_anchor.shape:
        raise LossInputError(
            f"weights {tuple(weights.shape)} must match the anchors {tuple(per_anchor.shape)}"
        )
    total = weights.sum()
    return (weights * per_anchor).sum() / torch.where(total != 0, total, torch.ones_like(total))


def sample_pairs(
    num_pairs: int,
    num_matches: int = DEFAULT_NUM_MATCHES,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Indices of ``min(num_matches, num_pairs)`` pairs drawn uniformly without replacement (PPKT sampling).

    The permutation is drawn on the generator's device (CPU by default) and moved to ``device``, so a seeded
    CPU generator gives the same pairs whatever device the features are on.
    """
    if num_matches <= 0:
        raise LossInputError(f"num_matches must be > 0, got {num_matches}")
    if num_pairs <= 0:
        raise LossInputError("there are no point-pixel pairs to sample from (num_pairs == 0)")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(num_pairs, generator=generator, device=gen_device)[:num_matches]
    return perm.to(device) if device is not None else perm

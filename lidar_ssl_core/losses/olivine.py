"""OLIVINE losses (Zhang & Hou, NeurIPS 2024; methods.md section 4): weak-label SupCon, the von Mises-Fisher
class-consistency term with moving class statistics, and the density- and category-aware sampling (DCAS).

Supervised contrastive distillation (Eq. 2), over S sampled pairs with semantic embeddings G (unit norm):

    L_sup = -(1/S) sum_i log( (1/|A(i)|) sum_{a in A(i)} exp(<G3_i, G2_a>/tau) / sum_j exp(<G3_i, G2_j>/tau) )

A(i): the sampled pairs with the weak class of pair i (i included).

vMF (Eqs. 3-9): ``f_C(z; mu, kappa) = K_C(kappa) exp(kappa mu^T z)``,
``K_C(kappa) = kappa^(C/2-1) / ((2 pi)^(C/2) I_(C/2-1)(kappa))``; the statistics are a moving average of
each class's mean embedding ``zbar_k <- alpha zbar_k + (1 - alpha) z_k``, ``mu_k = zbar_k / ||zbar_k||``,
``kappa_k = R (C - R^2) / (1 - R^2)`` with ``R = ||zbar_k||`` (Sra's approximation).

KL term (Eq. 11), mu and kappa constants (no gradient):

    L_kl = (1/M) sum_i ( -log K_C(kappa_{y_i}) - kappa_{y_i} mu_{y_i}^T G3_i )

DCAS (Eqs. 12-13): ``rho_i = 1 / (f_h(d_i) |A(i)|)`` with ``f_h`` a Gaussian kernel density of the pairs'
distances to the sensor (Silverman bandwidth ``1.06 std n^(-1/5)``; the paper states neither, the authors'
code uses these) and ``|A(i)|`` the count of pair i's weak class among the valid pairs.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lidar_ssl_core.errors import LossInputError
from lidar_ssl_core.losses.infonce import check_features

#: above this many pairs the KDE is evaluated on a histogram (exact below)
KDE_EXACT_MAX = 8192
KDE_BINS = 2048


def supcon_loss(
    point_feats: torch.Tensor, pixel_feats: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """``L_sup`` (Eq. 2) of S pairs: row i of ``point_feats``/``pixel_feats`` (S, C) is a pair of class
    ``labels[i]`` (all labels valid: drop the unlabelled pairs first)."""
    check_features("point_feats", point_feats)
    check_features("pixel_feats", pixel_feats, point_feats.shape[1])
    if labels.shape != (point_feats.shape[0],) or pixel_feats.shape[0] != point_feats.shape[0]:
        raise LossInputError(
            f"point_feats {tuple(point_feats.shape)}, pixel_feats {tuple(pixel_feats.shape)} and labels "
            f"{tuple(labels.shape)} must describe the same S pairs"
        )
    if temperature <= 0:
        raise LossInputError(f"temperature must be > 0, got {temperature}")
    logits = point_feats @ pixel_feats.T / temperature
    same = labels[:, None] == labels[None, :]
    ninf = torch.finfo(logits.dtype).min
    log_num = torch.logsumexp(logits.masked_fill(~same, ninf), dim=1) - torch.log(
        same.sum(1).to(logits.dtype)
    )
    return (torch.logsumexp(logits, dim=1) - log_num).mean()


def log_bessel_iv(order: float, x: torch.Tensor) -> torch.Tensor:
    """``log I_v(x)`` of the modified Bessel function of the first kind (Eq. 5), summed in log space over
    enough terms around the series' largest one; float64, no gradient needed (kappa is a constant)."""
    x = x.double().clamp_min(1e-300)
    peak = float(x.max()) / 2.0
    terms = int(peak + 20.0 * math.sqrt(peak + 1.0) + 60)
    m = torch.arange(terms, dtype=torch.float64, device=x.device)
    log_terms = (
        (2.0 * m[None] + order) * torch.log(x[:, None] / 2.0)
        - torch.lgamma(m[None] + 1.0)
        - torch.lgamma(m[None] + order + 1.0)
    )
    return torch.logsumexp(log_terms, dim=1)


def log_vmf_normaliser(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """``log K_C(kappa)`` (Eq. 4) for the C = ``dim`` sphere."""
    v = dim / 2.0 - 1.0
    k = kappa.double().clamp_min(1e-12)
    return v * torch.log(k) - (dim / 2.0) * math.log(2.0 * math.pi) - log_bessel_iv(v, k)


def sra_kappa(resultant: torch.Tensor, dim: int) -> torch.Tensor:
    """Concentration from the mean resultant length R (Eq. 9): ``R (C - R^2) / (1 - R^2)``."""
    r = resultant.double().clamp(0.0, 1.0 - 1e-9)
    return r * (dim - r * r) / (1.0 - r * r)


def vmf_kl_loss(
    point_feats: torch.Tensor, labels: torch.Tensor, mu: torch.Tensor, kappa: torch.Tensor
) -> torch.Tensor:
    """``L_kl`` (Eq. 11) over the M pairs with a label in ``0..K-1``: ``point_feats`` (M, C) unit vectors,
    ``mu`` (K, C), ``kappa`` (K,) taken as constants."""
    check_features("point_feats", point_feats)
    if labels.shape != (point_feats.shape[0],):
        raise LossInputError(f"labels {tuple(labels.shape)} must have one entry per row of point_feats")
    if labels.numel() == 0:
        return point_feats.new_zeros(())
    mu, kappa = mu.detach(), kappa.detach()
    log_k = log_vmf_normaliser(kappa, point_feats.shape[1]).to(point_feats.dtype)
    per_pair = -log_k[labels] - kappa[labels].to(point_feats.dtype) * (point_feats * mu[labels]).sum(1)
    return per_pair.mean()


class ClassStatistics(nn.Module):
    """Moving-average vMF statistics per class (Eqs. 6-9); buffers, so checkpoints carry them."""

    mean: torch.Tensor
    seen: torch.Tensor

    def __init__(self, num_classes: int, dim: int, alpha: float) -> None:
        super().__init__()
        if not 0.0 <= alpha < 1.0:
            raise LossInputError(f"the moving-average coefficient alpha must be in [0, 1), got {alpha}")
        self.num_classes, self.dim, self.alpha = num_classes, dim, alpha
        self.register_buffer("mean", torch.zeros(num_classes, dim, dtype=torch.float64))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.int64))

    @torch.no_grad()
    def update(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """``zbar_k <- alpha zbar_k + (1 - alpha) z_k`` for the classes present in the batch, with ``z_k``
        the batch mean of class k (averaged over the processes under DDP)."""
        valid = (labels >= 0) & (labels < self.num_classes)
        feats, labels = feats[valid].double(), labels[valid]
        sums = torch.zeros(self.num_classes, self.dim, dtype=torch.float64, device=feats.device)
        sums.index_add_(0, labels, feats)
        counts = torch.bincount(labels, minlength=self.num_classes).to(torch.float64)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        present = counts > 0
        batch_mean = sums[present] / counts[present, None]
        self.mean[present] = self.alpha * self.mean[present] + (1.0 - self.alpha) * batch_mean.to(
            self.mean.device
        )
        self.seen[present] += 1

    def parameters_vmf(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu (K, C), kappa (K,), known (K,) bool: classes seen at least once)."""
        resultant = self.mean.norm(dim=1)
        mu = self.mean / resultant.clamp_min(1e-12)[:, None]
        return mu, sra_kappa(resultant, self.dim), self.seen > 0


def kernel_density(values: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
    """Gaussian KDE ``f_h(d) = 1/(M h) sum_i phi((d - d_i)/h)`` at every value (M,); Silverman's ``h`` by
    default. Exact up to :data:`KDE_EXACT_MAX` values, on a :data:`KDE_BINS`-bin histogram above."""
    d = values.double()
    n = d.shape[0]
    if n == 0:
        return d
    if bandwidth is not None:
        h = bandwidth
    else:
        h = 1.06 * float(d.std(unbiased=True)) * n ** (-0.2) if n > 1 else 1.0
    h = max(h, 1e-6)
    norm = 1.0 / (n * h * math.sqrt(2.0 * math.pi))
    if n <= KDE_EXACT_MAX:
        return norm * torch.exp(-0.5 * ((d[:, None] - d[None, :]) / h) ** 2).sum(1)
    lo, hi = float(d.min()), float(d.max())
    edges = torch.linspace(lo, hi, KDE_BINS + 1, dtype=torch.float64, device=d.device)
    centres = 0.5 * (edges[1:] + edges[:-1])
    counts = torch.histc(d, bins=KDE_BINS, min=lo, max=hi)
    density = norm * (torch.exp(-0.5 * ((centres[:, None] - centres[None, :]) / h) ** 2) * counts[None]).sum(
        1
    )
    index = ((d - lo) / max(hi - lo, 1e-12) * KDE_BINS).long().clamp(0, KDE_BINS - 1)
    return density[index]


def dcas_weights(distances: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unnormalised DCAS probabilities ``1 / (f_h(d_i) |A(i)|)`` (Eq. 13) of M valid pairs."""
    if distances.shape != labels.shape:
        raise LossInputError(f"distances {tuple(distances.shape)} and labels {tuple(labels.shape)} differ")
    density = kernel_density(distances)
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    weights: torch.Tensor = 1.0 / (density * counts[inverse].double()).clamp_min(1e-300)
    return weights


def dcas_sample(
    distances: torch.Tensor, labels: torch.Tensor, num: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``min(num, M)`` pair indices drawn without replacement with the DCAS probabilities."""
    weights = dcas_weights(distances, labels)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    picked = torch.multinomial(
        weights.to(gen_device), min(num, weights.shape[0]), replacement=False, generator=generator
    )
    return picked.to(distances.device)


def l2(x: torch.Tensor) -> torch.Tensor:
    """Row-wise l2 normalisation (the heads' last step)."""
    return F.normalize(x, p=2.0, dim=1)

"""Sparse 3D convolutions in plain PyTorch (gather + matmul + index_add), weight-compatible with spconv.

Weights have spconv 2.x's layout ``(out_channels, k, k, k, in_channels)`` and the parameter is
called ``weight`` (and ``bias`` when enabled), so one state dict loads into either backend. Every op
is an ordinary differentiable torch op: training works on CPU, any device works, and nothing stops
later export except the data-dependent kernel-map construction, which can run outside the graph.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from lidar_ssl_core.sparse.kernel_map import KernelMap, build_downsample_map, build_submanifold_map
from lidar_ssl_core.sparse.tensor import SparseTensor

Algo = Literal["gather_scatter", "im2col"]


def sparse_conv_features(
    features: Tensor,
    weight: Tensor,
    kmap: KernelMap,
    algo: Algo = "gather_scatter",
    identity_centre: bool = False,
) -> Tensor:
    """Apply ``weight`` (Cout, k, k, k, Cin) along ``kmap``; returns (num_out, Cout) features.

    ``gather_scatter``: for each kernel offset, ``out[o_k] += features[i_k] @ W_k`` (exact FLOPs).
    ``im2col``: one gather of a dense (num_out, K * Cin) neighbour matrix and one GEMM.
    ``identity_centre`` (submanifold only) starts from ``features @ W_centre`` without a scatter.
    """
    c_out = weight.shape[0]
    c_in = weight.shape[-1]
    volume = kmap.kernel_volume
    w = weight.reshape(c_out, volume, c_in)
    if features.shape[1] != c_in:
        raise ValueError(f"features have {features.shape[1]} channels, the conv expects {c_in}")
    if algo == "im2col":
        padded = torch.cat([features, features.new_zeros(1, c_in)], dim=0)
        cols = padded[kmap.neighbour_table()].reshape(kmap.num_out, volume * c_in)
        return cols @ w.permute(1, 2, 0).reshape(volume * c_in, c_out)
    centre = volume // 2 if identity_centre else -1
    out = features @ w[:, centre, :].t() if centre >= 0 else features.new_zeros(kmap.num_out, c_out)
    in_split = torch.split(kmap.in_idx, list(kmap.counts))
    out_split = torch.split(kmap.out_idx, list(kmap.counts))
    for k, (i_k, o_k) in enumerate(zip(in_split, out_split, strict=True)):
        if k == centre or i_k.numel() == 0:
            continue
        out = out.index_add(0, o_k, features[i_k] @ w[:, k, :].t())
    return out


class _SparseConvBase(nn.Module):
    """Shared parameters: ``weight`` (Cout, k, k, k, Cin) like spconv, optional ``bias`` (Cout,)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, bias: bool, indice_key: str | None
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        # Accepted so a network can build this backend and spconv's with the same kwargs; maps are
        # keyed by tensor stride in the SparseTensor's cache, which identifies the same level.
        self.indice_key = indice_key
        self.algo: Algo = "gather_scatter"
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, k, k, k, in_channels))
        self.bias: nn.Parameter | None = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform over fan_in = k**3 * Cin, as torch's dense Conv3d default."""
        fan_in = self.in_channels * self.kernel_size**3
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.kaiming_uniform_(self.weight.view(self.out_channels, -1), a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def _finish(self, out: Tensor) -> Tensor:
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"bias={self.bias is not None}, indice_key={self.indice_key!r}"
        )


class SubMConv3d(_SparseConvBase):
    """Submanifold conv: output sites = input sites, odd ``kernel_size`` (1, 3, 5, ...)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        bias: bool = False,
        indice_key: str | None = None,
    ) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"SubMConv3d needs an odd kernel_size, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, bias, indice_key)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.kernel_size == 1:
            # spconv 2.x computes its 1x1 convs as ``features @ weight.view(in, out)`` (a reshape of the
            # (out, 1, 1, 1, in) tensor, not a transpose); do the same so a state dict means the same.
            w = self.weight.reshape(self.in_channels, self.out_channels)
            return x.replace_features(self._finish(x.features @ w))
        key = ("subm", x.stride, self.kernel_size)
        kmap = x.cache.maps.get(key)
        if kmap is None:
            kmap = build_submanifold_map(x.coords, self.kernel_size)
            x.cache.maps[key] = kmap
        out = sparse_conv_features(x.features, self.weight, kmap, self.algo, identity_centre=True)
        return x.replace_features(self._finish(out))


class SparseConv3d(_SparseConvBase):
    """Downsampling conv with ``kernel_size == stride`` (default 2): sites ``unique(floor(c / 2))``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 2,
        stride: int | None = None,
        bias: bool = False,
        indice_key: str | None = None,
    ) -> None:
        stride = kernel_size if stride is None else stride
        if stride != kernel_size:
            raise ValueError(
                f"SparseConv3d supports kernel_size == stride only (got {kernel_size}, {stride}); "
                "use kernel_size=2, stride=2 for U-Net downsampling"
            )
        super().__init__(in_channels, out_channels, kernel_size, bias, indice_key)
        self.stride = stride

    def forward(self, x: SparseTensor) -> SparseTensor:
        key = ("down", x.stride, self.kernel_size)
        out_stride = x.stride * self.kernel_size
        kmap = x.cache.maps.get(key)
        if kmap is None:
            kmap, out_coords = build_downsample_map(x.coords, self.kernel_size)
            x.cache.maps[key] = kmap
            x.cache.coords.setdefault(out_stride, out_coords)
        out = sparse_conv_features(x.features, self.weight, kmap, self.algo)
        return SparseTensor(self._finish(out), x.cache.coords[out_stride], out_stride, x.cache)


class SparseInverseConv3d(_SparseConvBase):
    """Upsampling conv undoing the ``SparseConv3d(kernel_size)`` that produced ``x``.

    Output sites and row order are exactly those of the finer tensor that was downsampled, so a
    skip connection can be added or concatenated row by row. Weight (Cout, k, k, k, Cin) as spconv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 2,
        bias: bool = False,
        indice_key: str | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias, indice_key)

    def forward(self, x: SparseTensor) -> SparseTensor:
        fine_stride, rem = divmod(x.stride, self.kernel_size)
        key = ("down", fine_stride, self.kernel_size)
        kmap = x.cache.maps.get(key)
        if rem != 0 or kmap is None:
            raise ValueError(
                f"no SparseConv3d(kernel_size={self.kernel_size}) from stride {fine_stride} to {x.stride} "
                "ran on this tensor's cache; an inverse conv can only undo a downsampling of the same input"
            )
        out = sparse_conv_features(x.features, self.weight, kmap.transposed(), self.algo)
        return SparseTensor(self._finish(out), x.cache.coords[fine_stride], fine_stride, x.cache)

"""spconv 2.x backend of the sparse U-Net (GPU training/inference with the same state dict).

spconv is imported lazily, only when this backend is built, so the library works without it; a
missing install raises :class:`SpconvUnavailableError` naming the fix. The layer factory mirrors the
portable one in :mod:`lidar_ssl_core.models.unet` (same module types' parameter names and shapes:
``weight`` (Cout, k, k, k, Cin), ``bias``), so one state dict loads into either backend.

Coordinates may be negative in the library; spconv needs non-negative indices inside a spatial
shape. Each axis is shifted by a multiple of 16 (= the U-Net's total stride) so that every
``floor(c / 2)`` grouping of the four stride-2 convs is the same as the portable backend's, and the
shape is rounded up to a multiple of 16 so spconv's strided convs (``(S - 2) // 2 + 1`` outputs)
never drop a border voxel.

Caveat: spconv's CPU forward is only deterministic (and correct) with ``torch.set_num_threads(1)``;
a warning is logged once otherwise. GPU use is unaffected.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from lidar_ssl_core.errors import ConfigError

logger = logging.getLogger(__name__)

#: total stride of the U-Net encoder (four stride-2 convs); shifts and shapes are multiples of it
GRID_MULTIPLE = 16

_warned_threads = False


class SpconvUnavailableError(ConfigError, ImportError):
    """``backend="spconv"`` was asked for but ``spconv.pytorch`` cannot be imported."""


def import_spconv() -> Any:
    """Return the ``spconv.pytorch`` module or raise :class:`SpconvUnavailableError`."""
    try:
        import spconv.pytorch as spconv_pt
    except ImportError as exc:  # includes a broken CUDA/cumm install, not only a missing package
        raise SpconvUnavailableError(
            f"backend='spconv' needs spconv 2.x (import failed: {exc}); install it "
            "(`pip install spconv` for CPU, `spconv-cu12x` for CUDA) or use backend='portable'"
        ) from exc
    return spconv_pt


def grid_for(coords: Tensor) -> tuple[Tensor, list[int]]:
    """Per-axis shift (3,) int64 (a multiple of 16) and spatial shape (multiple of 16) for ``coords``."""
    xyz = coords[:, 1:].to(torch.int64)
    lo = xyz.min(dim=0).values
    hi = xyz.max(dim=0).values
    shift = -torch.div(lo, GRID_MULTIPLE, rounding_mode="floor") * GRID_MULTIPLE
    shape = (torch.div(hi + shift, GRID_MULTIPLE, rounding_mode="floor") + 1) * GRID_MULTIPLE
    return shift, [int(s) for s in shape.tolist()]


class SpconvOps:
    """Layer factory and tensor helpers over ``spconv.pytorch`` (see ``SparseOps`` in unet.py)."""

    name = "spconv"

    def __init__(self) -> None:
        import_spconv()  # fail at build time, with the typed error

    @property
    def sp(self) -> Any:
        """``spconv.pytorch`` (not stored, so models stay deep-copyable and picklable)."""
        return import_spconv()

    def subm(self, c_in: int, c_out: int, kernel_size: int, level: int, bias: bool = False) -> nn.Module:
        key = f"subm{level}" if kernel_size > 1 else None
        module: nn.Module = self.sp.SubMConv3d(c_in, c_out, kernel_size, bias=bias, indice_key=key)
        return module

    def down(self, c_in: int, c_out: int, level: int) -> nn.Module:
        module: nn.Module = self.sp.SparseConv3d(
            c_in, c_out, 2, stride=2, bias=False, indice_key=f"down{level}"
        )
        return module

    def up(self, c_in: int, c_out: int, level: int) -> nn.Module:
        """Undo the downsampling conv that went from stride ``level // 2`` to ``level``."""
        module: nn.Module = self.sp.SparseInverseConv3d(
            c_in, c_out, 2, bias=False, indice_key=f"down{level // 2}"
        )
        return module

    def make_input(self, coords: Tensor, features: Tensor, cache: Any = None) -> Any:
        """``cache`` (portable kernel maps) is ignored: spconv builds its own indice pairs."""
        global _warned_threads
        if features.device.type == "cpu" and torch.get_num_threads() > 1 and not _warned_threads:
            _warned_threads = True
            logger.warning(
                "spconv CPU forward with %d torch threads is non-deterministic; "
                "use torch.set_num_threads(1) or backend='portable' on CPU",
                torch.get_num_threads(),
            )
        shift, shape = grid_for(coords)
        indices = coords.to(torch.int32).clone()
        indices[:, 1:] += shift.to(device=indices.device, dtype=torch.int32)
        batch_size = int(coords[:, 0].max()) + 1
        return self.sp.SparseConvTensor(features, indices.contiguous(), shape, batch_size)

    def features(self, x: Any) -> Tensor:
        out: Tensor = x.features
        return out

    def with_features(self, x: Any, features: Tensor) -> Any:
        return x.replace_feature(features)

    def same_sites(self, a: Any, b: Any) -> bool:
        return a.indices is b.indices or (
            a.indices.shape == b.indices.shape and bool(torch.equal(a.indices, b.indices))
        )

"""The 3D student of SLidR / ST-SLidR: a residual sparse U-Net equal to MinkowskiEngine's Res16UNet34C.

Layout (as ``Res16UNetBase`` of SpatioTemporalSegmentation, used by SLidR): a 3x3x3 stem
``conv0p1s1`` (in -> INIT_DIM), four [stride-2 kernel-2 conv + BN + ReLU + BasicBlocks] encoder
stages, four [kernel-2 transposed conv + BN + ReLU, concatenation with the skip of the same stride
(upsampled features first), BasicBlocks] decoder stages, and ``final``, a 1x1 conv with bias
(PLANES[7] -> out_dim) that is the projection head, followed by l2 normalisation. Convs are bias-free
except ``final``; BasicBlock = conv3-BN-ReLU-conv3-BN + (1x1 conv + BN projection when the width
changes), add, ReLU. Module names follow the reference (``conv0p1s1``, ``bn0``, ``block1.0.conv1``,
``block1.0.norm1.bn``, ``convtr4p16s2``, ``bntr4``, ``final``) so checkpoints map one to one.

Two backends build the same module tree with the same parameter names and shapes:
``portable`` (:mod:`lidar_ssl_core.sparse`, pure PyTorch, trains on CPU) and ``spconv``
(:mod:`lidar_ssl_core.models.spconv_backend`), so ``a.load_state_dict(b.state_dict())`` works across
backends and gives the same outputs. Parameter count of the full preset: 37,846,644 for
in_channels=3 / out_dim=20 (MinkowskiEngine's Res16UNet34C: ~37.8M); 37,849,184 for the SLidR
setting in_channels=1 / out_dim=64 (:func:`parameter_count`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lidar_ssl_core.errors import LidarSslError
from lidar_ssl_core.models.config import BackboneConfig, BackendName
from lidar_ssl_core.models.spconv_backend import SpconvOps
from lidar_ssl_core.sparse import KernelMapCache, SparseConv3d, SparseInverseConv3d, SparseTensor, SubMConv3d

logger = logging.getLogger(__name__)


class BackboneInputError(LidarSslError, ValueError):
    """Coordinates or features given to the backbone have the wrong shape, type or content."""


@dataclass(frozen=True)
class UNetArch:
    """Widths and depths of a Res16UNet: ``planes``/``layers`` per stage (4 encoder, 4 decoder)."""

    planes: tuple[int, int, int, int, int, int, int, int]
    layers: tuple[int, int, int, int, int, int, int, int]
    init_dim: int


PRESETS: dict[str, UNetArch] = {
    # MinkowskiEngine / SLidR Res16UNet34C
    "res16unet34c": UNetArch((32, 64, 128, 256, 256, 128, 96, 96), (2, 3, 4, 6, 2, 2, 2, 2), 32),
    # half width, shallower: CPU pretraining experiments
    "small": UNetArch((16, 32, 64, 128, 128, 64, 48, 48), (1, 2, 2, 2, 1, 1, 1, 1), 16),
    # unit tests
    "tiny": UNetArch((8, 16, 16, 32, 32, 16, 16, 16), (1, 1, 1, 1, 1, 1, 1, 1), 8),
}


class SparseOps(Protocol):
    """What the network needs from a sparse-conv backend: layer factories and feature access."""

    name: str

    def subm(self, c_in: int, c_out: int, kernel_size: int, level: int, bias: bool = False) -> nn.Module: ...

    def down(self, c_in: int, c_out: int, level: int) -> nn.Module: ...

    def up(self, c_in: int, c_out: int, level: int) -> nn.Module: ...

    def make_input(self, coords: Tensor, features: Tensor, cache: KernelMapCache | None = None) -> Any: ...

    def features(self, x: Any) -> Tensor: ...

    def with_features(self, x: Any, features: Tensor) -> Any: ...

    def same_sites(self, a: Any, b: Any) -> bool: ...


class PortableOps:
    """Layer factory over :mod:`lidar_ssl_core.sparse` (maps are cached per stride, keys ignored)."""

    name = "portable"

    def subm(self, c_in: int, c_out: int, kernel_size: int, level: int, bias: bool = False) -> nn.Module:
        key = f"subm{level}" if kernel_size > 1 else None
        return SubMConv3d(c_in, c_out, kernel_size, bias=bias, indice_key=key)

    def down(self, c_in: int, c_out: int, level: int) -> nn.Module:
        return SparseConv3d(c_in, c_out, 2, 2, bias=False, indice_key=f"down{level}")

    def up(self, c_in: int, c_out: int, level: int) -> nn.Module:
        return SparseInverseConv3d(c_in, c_out, 2, bias=False, indice_key=f"down{level // 2}")

    def make_input(
        self, coords: Tensor, features: Tensor, cache: KernelMapCache | None = None
    ) -> SparseTensor:
        """``cache``: kernel maps built beforehand (the inference engine times them separately)."""
        if cache is None:
            return SparseTensor(features, coords.to(torch.int32))
        return SparseTensor(features, coords.to(torch.int32), cache=cache)

    def features(self, x: Any) -> Tensor:
        out: Tensor = x.features
        return out

    def with_features(self, x: Any, features: Tensor) -> SparseTensor:
        out: SparseTensor = x.replace_features(features)
        return out

    def same_sites(self, a: Any, b: Any) -> bool:
        return a.coords is b.coords or bool(torch.equal(a.coords, b.coords))


def make_ops(backend: BackendName) -> SparseOps:
    """The layer factory of ``backend`` (spconv is imported here, lazily)."""
    if backend == "spconv":
        return SpconvOps()
    return PortableOps()


def _relu(ops: SparseOps, x: Any) -> Any:
    return ops.with_features(x, F.relu(ops.features(x)))


class SparseBatchNorm(nn.Module):
    """BatchNorm1d over the voxel features (parameters under ``bn.`` as MinkowskiBatchNorm)."""

    def __init__(self, ops: SparseOps, channels: int, momentum: float) -> None:
        super().__init__()
        self.ops = ops
        self.bn = nn.BatchNorm1d(channels, momentum=momentum)

    def forward(self, x: Any) -> Any:
        return self.ops.with_features(x, self.bn(self.ops.features(x)))


class BasicBlock(nn.Module):
    """ResNet basic block of two 3x3x3 submanifold convs; 1x1 conv + BN shortcut when widths differ."""

    def __init__(self, ops: SparseOps, inplanes: int, planes: int, level: int, momentum: float) -> None:
        super().__init__()
        self.ops = ops
        self.conv1 = ops.subm(inplanes, planes, 3, level)
        self.norm1 = SparseBatchNorm(ops, planes, momentum)
        self.conv2 = ops.subm(planes, planes, 3, level)
        self.norm2 = SparseBatchNorm(ops, planes, momentum)
        self.downsample: nn.Sequential | None = None
        if inplanes != planes:
            self.downsample = nn.Sequential(
                ops.subm(inplanes, planes, 1, level), SparseBatchNorm(ops, planes, momentum)
            )

    def forward(self, x: Any) -> Any:
        ops = self.ops
        out = _relu(ops, self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return ops.with_features(out, F.relu(ops.features(out) + ops.features(residual)))


class Res16UNet(nn.Module):
    """Sparse residual U-Net: voxels (V, 4) + features (V, C_in) -> (V, out_dim) in input row order."""

    def __init__(self, config: BackboneConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else BackboneConfig()
        self.arch = arch = PRESETS[config.preset]
        self.ops = ops = make_ops(config.backend)
        p, n, m = arch.planes, arch.layers, config.bn_momentum
        self.inplanes = arch.init_dim

        self.conv0p1s1 = ops.subm(config.in_channels, arch.init_dim, 3, 1)
        self.bn0 = SparseBatchNorm(ops, arch.init_dim, m)
        self.conv1p1s2 = ops.down(arch.init_dim, arch.init_dim, 1)
        self.bn1 = SparseBatchNorm(ops, arch.init_dim, m)
        self.block1 = self._make_layer(p[0], n[0], 2)
        self.conv2p2s2 = ops.down(self.inplanes, self.inplanes, 2)
        self.bn2 = SparseBatchNorm(ops, self.inplanes, m)
        self.block2 = self._make_layer(p[1], n[1], 4)
        self.conv3p4s2 = ops.down(self.inplanes, self.inplanes, 4)
        self.bn3 = SparseBatchNorm(ops, self.inplanes, m)
        self.block3 = self._make_layer(p[2], n[2], 8)
        self.conv4p8s2 = ops.down(self.inplanes, self.inplanes, 8)
        self.bn4 = SparseBatchNorm(ops, self.inplanes, m)
        self.block4 = self._make_layer(p[3], n[3], 16)

        self.convtr4p16s2 = ops.up(self.inplanes, p[4], 16)
        self.bntr4 = SparseBatchNorm(ops, p[4], m)
        self.inplanes = p[4] + p[2]
        self.block5 = self._make_layer(p[4], n[4], 8)
        self.convtr5p8s2 = ops.up(self.inplanes, p[5], 8)
        self.bntr5 = SparseBatchNorm(ops, p[5], m)
        self.inplanes = p[5] + p[1]
        self.block6 = self._make_layer(p[5], n[5], 4)
        self.convtr6p4s2 = ops.up(self.inplanes, p[6], 4)
        self.bntr6 = SparseBatchNorm(ops, p[6], m)
        self.inplanes = p[6] + p[0]
        self.block7 = self._make_layer(p[6], n[6], 2)
        self.convtr7p2s2 = ops.up(self.inplanes, p[7], 2)
        self.bntr7 = SparseBatchNorm(ops, p[7], m)
        self.inplanes = p[7] + arch.init_dim
        self.block8 = self._make_layer(p[7], n[7], 1)

        self.final = ops.subm(p[7], config.out_dim, 1, 1, bias=True)
        self.reset_parameters()

    @property
    def feature_dim(self) -> int:
        """Channels entering the projection head (D = 96 for res16unet34c)."""
        return self.arch.planes[7]

    def _make_layer(self, planes: int, blocks: int, level: int) -> nn.Sequential:
        layers = []
        for _ in range(blocks):
            layers.append(BasicBlock(self.ops, self.inplanes, planes, level, self.config.bn_momentum))
            self.inplanes = planes
        return nn.Sequential(*layers)

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out, ReLU) conv weights, unit/zero BN, zero head bias, as MinkowskiEngine."""
        for module in self.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(weight, nn.Parameter) and weight.ndim == 5:
                fan_out = weight.shape[0] * weight.shape[1] * weight.shape[2] * weight.shape[3]
                with torch.no_grad():
                    weight.normal_(0.0, math.sqrt(2.0 / fan_out))
                bias = getattr(module, "bias", None)
                if isinstance(bias, nn.Parameter):
                    nn.init.zeros_(bias)

    def _check_inputs(self, coords: Tensor, features: Tensor) -> None:
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise BackboneInputError(
                f"coords must have shape (V, 4) [batch, c0, c1, c2], got {tuple(coords.shape)}"
            )
        if coords.dtype.is_floating_point or coords.dtype == torch.bool or coords.is_complex():
            raise BackboneInputError(f"coords must be an integer tensor, got {coords.dtype}")
        c_in = self.config.in_channels
        if features.ndim != 2 or features.shape[1] != c_in:
            raise BackboneInputError(
                f"features must have shape (V, {c_in}) (in_channels={c_in}), got {tuple(features.shape)}"
            )
        if features.shape[0] != coords.shape[0]:
            raise BackboneInputError(
                f"features has {features.shape[0]} rows but coords has {coords.shape[0]}; one row per voxel"
            )
        if coords.shape[0] == 0:
            raise BackboneInputError("empty input: the backbone needs at least one voxel")
        if int(coords[:, 0].min()) < 0:
            raise BackboneInputError("batch indices (coords[:, 0]) must be >= 0")

    def forward(self, coords: Tensor, features: Tensor, cache: KernelMapCache | None = None) -> Tensor:
        """Per-voxel features (V, out_dim), rows in the order of ``coords``; l2-normalised if configured.

        ``coords`` (V, 4) integer ``[batch, c0, c1, c2]`` (unique per batch item, may be negative);
        ``features`` (V, in_channels) float on the same device.
        """
        return self.head(self.trunk(coords, features, cache))

    def trunk(self, coords: Tensor, features: Tensor, cache: KernelMapCache | None = None) -> Tensor:
        """Features (V, feature_dim) entering the 1x1 head: what a linear probe classifies."""
        self._check_inputs(coords, features)
        ops = self.ops
        x = ops.make_input(coords, features, cache)
        out_p1 = _relu(ops, self.bn0(self.conv0p1s1(x)))
        out = _relu(ops, self.bn1(self.conv1p1s2(out_p1)))
        out_b1p2 = self.block1(out)
        out = _relu(ops, self.bn2(self.conv2p2s2(out_b1p2)))
        out_b2p4 = self.block2(out)
        out = _relu(ops, self.bn3(self.conv3p4s2(out_b2p4)))
        out_b3p8 = self.block3(out)
        out = _relu(ops, self.bn4(self.conv4p8s2(out_b3p8)))
        out = self.block4(out)

        out = self.block5(self._up_cat(self.convtr4p16s2, self.bntr4, out, out_b3p8))
        out = self.block6(self._up_cat(self.convtr5p8s2, self.bntr5, out, out_b2p4))
        out = self.block7(self._up_cat(self.convtr6p4s2, self.bntr6, out, out_b1p2))
        out = self.block8(self._up_cat(self.convtr7p2s2, self.bntr7, out, out_p1))
        if not ops.same_sites(out, x):
            raise RuntimeError(f"{ops.name} backend returned voxels in a different order than its input")
        return ops.features(out)

    def head(self, features: Tensor) -> Tensor:
        """The 1x1x1 ``final`` conv on (V, feature_dim) features, as the matmul it is; l2-normalised if
        configured. Identical to running ``final`` on either backend (tested)."""
        weight, bias = self.final.weight, self.final.bias
        if not isinstance(weight, Tensor) or not isinstance(bias, Tensor):
            raise TypeError(f"{self.ops.name} backend's final conv has no weight/bias tensors")
        # (out, 1, 1, 1, in) read as an (in, out) matrix by a plain reshape: spconv 2.x's 1x1 convention,
        # which the portable SubMConv3d follows too (sparse/conv.py), so one state dict means one function
        y = features @ weight.reshape(weight.shape[-1], weight.shape[0]) + bias
        return F.normalize(y, p=2.0, dim=1) if self.config.normalize else y

    def _up_cat(self, conv: nn.Module, norm: nn.Module, x: Any, skip: Any) -> Any:
        ops = self.ops
        up = _relu(ops, norm(conv(x)))
        if not ops.same_sites(up, skip):
            raise RuntimeError(f"{ops.name} backend: upsampled sites differ from the skip connection's")
        return ops.with_features(up, torch.cat([ops.features(up), ops.features(skip)], dim=1))


def parameter_count(arch: UNetArch, in_channels: int, out_dim: int) -> int:
    """Closed-form parameter count of a Res16UNet (convs, BN affine, head bias); no buffers."""

    def block(c_in: int, c: int) -> int:
        proj = c_in * c + 2 * c if c_in != c else 0
        return 27 * c_in * c + 2 * c + 27 * c * c + 2 * c + proj

    def stage(c_in: int, c: int, depth: int) -> int:
        return block(c_in, c) + (depth - 1) * block(c, c)

    p, n, d0 = arch.planes, arch.layers, arch.init_dim
    total = 27 * in_channels * d0 + 2 * d0  # stem
    widths = [d0, p[0], p[1], p[2]]  # inputs of the four encoder stages
    for i in range(4):
        total += 8 * widths[i] * widths[i] + 2 * widths[i] + stage(widths[i], p[i], n[i])
    dec_in = [p[3], p[4], p[5], p[6]]
    skips = [p[2], p[1], p[0], d0]
    for i in range(4):
        c = p[4 + i]
        total += 8 * dec_in[i] * c + 2 * c + stage(c + skips[i], c, n[4 + i])
    return total + p[7] * out_dim + out_dim


def build_backbone(config: BackboneConfig | None = None) -> Res16UNet:
    """Build the backbone and log its size."""
    model = Res16UNet(config)
    n = sum(p.numel() for p in model.parameters())
    logger.info("3D backbone %s (%s backend): %d parameters", model.config.preset, model.ops.name, n)
    return model

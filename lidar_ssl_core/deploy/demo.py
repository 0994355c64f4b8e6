"""Segmentation checkpoints with random weights, for tests and benchmarks (no trained model is shipped).

BatchNorm statistics and affine parameters are randomised too, so that BN folding in the exported graph
is exercised rather than being an identity.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lidar_ssl_core.config import VoxelConfig
from lidar_ssl_core.downstream.classes import ClassMap
from lidar_ssl_core.downstream.model import build_segmentation_model, segmentation_state
from lidar_ssl_core.models.config import BackboneConfig, PresetName


def random_segmentation_checkpoint(
    path: Path | str,
    class_map: ClassMap,
    *,
    preset: PresetName = "tiny",
    voxels: VoxelConfig | None = None,
    seed: int = 0,
) -> Path:
    """Write a ``lidar_ssl.segmentation/1`` checkpoint with seeded random weights and BN statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_segmentation_model(BackboneConfig(preset=preset), class_map.num_classes)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                c = module.num_features
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
                module.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                module.bias.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
    state = segmentation_state(net, class_map, voxels or VoxelConfig())
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    tmp.replace(out)  # never a half-written checkpoint under the final name
    return out

"""The eager backends of the engine: ``torch`` (portable sparse convs, CPU or CUDA) and ``spconv`` (GPU).

A backend turns voxel coordinates into kernel maps (:meth:`Backend.kernel_maps`) and runs the network on
them (:meth:`Backend.network`); the engine times the two apart. The compiled backends live in
:mod:`lidar_ssl_core.deploy.ort_backend` and :mod:`lidar_ssl_core.deploy.trt_backend`.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import torch
from torch import Tensor

from lidar_ssl_core.deploy.kernel_maps import portable_cache
from lidar_ssl_core.deploy.spec import ModelSpec
from lidar_ssl_core.downstream.model import build_segmentation_model
from lidar_ssl_core.errors import BackendUnavailableError
from lidar_ssl_core.models.spconv_backend import SpconvUnavailableError, import_spconv
from lidar_ssl_core.models.unet import Res16UNet

log = logging.getLogger(__name__)


class Backend(Protocol):
    """What the engine needs from a backend."""

    name: str
    device: torch.device

    def kernel_maps(self, coords: Tensor) -> Any:
        """Neighbour tables of every level for level-1 ``coords`` (V, 4) int32 on ``device``."""
        ...

    def network(self, features: Tensor, coords: Tensor, maps: Any) -> Tensor:
        """Logits (V, C) for ``features`` (V, in_channels) float32 on ``device``."""
        ...


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device; asking for CUDA where there is none is a typed error."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device '{device}' was asked for but CUDA is not available here")
    return dev


def build_network(spec: ModelSpec, backend: str, device: torch.device) -> Res16UNet:
    """The segmentation network of ``spec`` on a sparse-conv backend, weights loaded, eval mode."""
    config = spec.backbone.model_copy(update={"backend": backend})
    network = build_segmentation_model(config, spec.num_classes)
    network.load_state_dict(spec.state)
    return network.to(device).eval()


class TorchBackend:
    """The portable pure-PyTorch network, eager; kernel maps prebuilt with :func:`portable_cache`."""

    name = "torch"

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        self.device = device
        self.net = build_network(spec, "portable", device)

    def kernel_maps(self, coords: Tensor) -> Any:
        return portable_cache(coords)

    def network(self, features: Tensor, coords: Tensor, maps: Any) -> Tensor:
        out: Tensor = self.net(coords, features, maps)
        return out


class SpconvBackend:
    """spconv 2.x (GPU; its CPU forward is correct single-threaded only, so on a CPU each call runs with
    one torch thread: with two, scores differed from the portable network's by up to 0.66 on the sample
    bag). spconv builds its own indice pairs inside the network, so its kernel-map time is part of
    ``network`` and ``kernel_maps`` reports ~0."""

    name = "spconv"

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        try:
            import_spconv()
        except SpconvUnavailableError as err:
            raise BackendUnavailableError(str(err)) from err
        if device.type != "cuda":
            log.warning("spconv backend on %s: meant for CUDA; its CPU forward runs single-threaded", device)
        self.device = device
        self.net = build_network(spec, "spconv", device)

    def kernel_maps(self, coords: Tensor) -> Any:
        return None

    def network(self, features: Tensor, coords: Tensor, maps: Any) -> Tensor:
        if self.device.type == "cuda":
            out: Tensor = self.net(coords, features)
            return out
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # process-wide, restored below: spconv's CPU kernels race otherwise
        try:
            out = self.net(coords, features)
        finally:
            torch.set_num_threads(threads)
        return out

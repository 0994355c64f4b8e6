"""``onnxruntime`` backend: the exported graph (:mod:`lidar_ssl_core.deploy.onnx_graph`) in ONNX Runtime.

Kernel maps are built by :func:`~lidar_ssl_core.deploy.kernel_maps.graph_tables` (torch ops, outside the
graph) and fed as inputs. It runs the scatter-add form of the graph (``network.onnx``: only existing
neighbour pairs are moved); the gather-sum form that TensorRT compiles runs here too (``reduction``).
A session on one thread (``threads=1``) runs the scatter-add graph with each conv's per-offset scatters
fused into one (:func:`~lidar_ssl_core.deploy.onnx_graph.fuse_scatter_chains`, same results, 5-10 %
faster); with more threads the per-offset form, whose scatters never add into one row twice, is kept.
The CPU execution provider is used on CPU; on a CUDA device the CUDA provider is asked for (with CPU
fallback for anything it does not place), and the session is refused with a typed error when the
installed onnxruntime has no CUDA provider.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lidar_ssl_core.deploy.kernel_maps import GraphTables, graph_tables
from lidar_ssl_core.deploy.spec import ModelSpec
from lidar_ssl_core.errors import BackendUnavailableError

log = logging.getLogger(__name__)

#: the scatter-add graph ONNX Runtime runs, and the gather-sum graph TensorRT compiles (same weights)
ONNX_FILE = "network.onnx"
TRT_ONNX_FILE = "network.gather.onnx"


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendUnavailableError(
            f"backend 'onnxruntime' needs the onnxruntime package (import failed: {err}); "
            "install the project's `deploy` extra, or use backend 'torch'"
        ) from err
    return onnxruntime


def onnx_bytes_for(spec: ModelSpec, package: Path | None, reduction: str = "scatter") -> bytes:
    """The package's verified graph of that ``reduction``, or one built now from the weights."""
    name = ONNX_FILE if reduction == "scatter" else TRT_ONNX_FILE
    if package is not None and (package / name).is_file():
        return (package / name).read_bytes()
    from lidar_ssl_core.deploy.onnx_graph import build_onnx

    log.info(
        "building the %s ONNX graph of %s in memory (export a package to skip this)", reduction, spec.source
    )
    return build_onnx(spec, "scatter" if reduction == "scatter" else "gather")


class OnnxRuntimeBackend:
    """An ONNX Runtime session over the exported graph."""

    name = "onnxruntime"

    def __init__(
        self,
        spec: ModelSpec,
        device: torch.device,
        *,
        threads: int | None = None,
        package: Path | None = None,
        reduction: str = "scatter",
    ) -> None:
        ort = import_onnxruntime()
        self.device = device
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = max(1, int(threads))
            options.inter_op_num_threads = 1
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailableError(
                    "backend 'onnxruntime' on CUDA needs onnxruntime-gpu (this install has "
                    f"{ort.get_available_providers()}); use device cpu (--device cpu) or install "
                    "onnxruntime-gpu"
                )
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        self.reduction = "scatter" if reduction == "scatter" else "gather"
        graph = onnx_bytes_for(spec, package, reduction)
        one_thread = device.type == "cpu" and threads is not None and int(threads) <= 1
        self.fused = self.reduction == "scatter" and one_thread
        if self.fused:  # one ScatterND per conv: exact on one thread only (see fuse_scatter_chains)
            from lidar_ssl_core.deploy.onnx_graph import fuse_scatter_chains

            graph = fuse_scatter_chains(graph)
        self.session = ort.InferenceSession(graph, options, providers=providers)
        self.input_names = {i.name for i in self.session.get_inputs()}

    def kernel_maps(self, coords: Tensor) -> GraphTables:
        return graph_tables(coords, self.reduction)

    def network(self, features: Tensor, coords: Tensor, maps: Any) -> Tensor:
        feeds: dict[str, Any] = {"features": features.detach().cpu().numpy()}
        for name, tensor in maps.feeds().items():
            if name in self.input_names:
                feeds[name] = tensor.cpu().numpy()
        missing = self.input_names - feeds.keys()
        if missing:
            raise RuntimeError(
                f"the ONNX graph expects inputs the engine did not build: {sorted(missing)[:4]}"
            )
        (logits,) = self.session.run(["logits"], feeds)
        return torch.from_numpy(np.asarray(logits)).to(self.device)

"""``tensorrt`` backend: the exported ONNX graph compiled by TensorRT's ONNX parser (FP16), no plugins.

Why the ONNX parser and not torch_tensorrt: the graph is already a plain ONNX file whose ops (Gather,
MatMul, Add, Relu, Concat, ReduceSum) the parser supports natively; ONNX Runtime runs the very same file,
so CPU parity tests cover what TensorRT compiles; and the vehicle needs only the TensorRT runtime (no
torch_tensorrt, whose version must match torch's exactly). The data-dependent kernel maps stay outside,
computed by torch ops on the GPU (:func:`~lidar_ssl_core.deploy.kernel_maps.graph_tables`).

Every voxel-count dimension gets one optimisation profile (min 1, opt from a representative sweep scaled
to ``opt_voxels``, max ``max_voxels``); a cloud with more voxels than the profile allows is a
:class:`~lidar_ssl_core.errors.PointCloudInputError`. The serialized engine is stored in the package with
the TensorRT version and GPU it was built for; on another GPU or TensorRT version it is rebuilt from the
package's ``network.onnx`` (logged, naming the file and the reason), or refused when there is no graph.

Not run on the development machine (no GPU); written against the TensorRT 8.6 / 10.x Python API.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lidar_ssl_core.deploy.kernel_maps import GraphTables, graph_tables
from lidar_ssl_core.deploy.spec import ModelSpec
from lidar_ssl_core.errors import BackendUnavailableError, EngineCompatibilityError, PointCloudInputError

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 4 << 30


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as err:
        raise BackendUnavailableError(
            f"backend 'tensorrt' needs the tensorrt package (import failed: {err}); install TensorRT "
            "(e.g. `pip install tensorrt` on an x86 CUDA machine, JetPack on a Jetson) or use 'onnxruntime'"
        ) from err
    return tensorrt


def check_tensorrt_available() -> None:
    """CUDA and the tensorrt package are both present, or a typed error saying which is not."""
    if not torch.cuda.is_available():
        raise BackendUnavailableError("TensorRT needs a CUDA GPU and none is available here")
    import_tensorrt()


def gpu_identity(device: torch.device | None = None) -> dict[str, str]:
    """What a serialized engine is tied to: the TensorRT version and the GPU model / compute capability."""
    trt = import_tensorrt()
    index = (device.index if device is not None else None) or 0
    major, minor = torch.cuda.get_device_capability(index)
    return {
        "tensorrt_version": str(trt.__version__),
        "gpu": torch.cuda.get_device_name(index),
        "compute_capability": f"{major}.{minor}",
    }


def _representative_tables() -> GraphTables:
    """Tables of the embedded sample's first sweep (the shape mix of a real scan for the profile's opt)."""
    from lidar_ssl_core.bag.reader import BagReader
    from lidar_ssl_core.config import VoxelConfig
    from lidar_ssl_core.downstream.data import network_input
    from lidar_ssl_core.msg.pointcloud2 import cloud_to_pointcloud
    from lidar_ssl_core.resources import default_bag

    with BagReader(default_bag()) as reader:
        message = next(iter(reader.messages(["/lidar/points"])))
        cloud = cloud_to_pointcloud(message.msg)
    inputs = network_input(cloud.xyz, cloud.intensity, VoxelConfig())
    return graph_tables(torch.from_numpy(inputs.coords))


def profile_shapes(
    max_voxels: int, opt_voxels: int, in_channels: int = 1
) -> dict[str, tuple[tuple[int, ...], ...]]:
    """input name -> (min, opt, max) shapes; the opt mix is the sample sweep's, scaled to ``opt_voxels``."""
    tables = _representative_tables()
    scale = opt_voxels / max(1, tables.num_voxels[1])
    shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
    for name, tensor in tables.feeds().items():
        rest = tuple(int(d) for d in tensor.shape[1:])
        opt = int(min(max_voxels, max(1, round(tensor.shape[0] * scale))))
        # a position table's rows are a level's voxels (the graph's named dims V1..V16, which features
        # shares): the same range for all of them; a gather list has up to one row more (its sentinel)
        hi = max_voxels if name.endswith("_pos") else max_voxels + 1
        shapes[name] = ((1, *rest), (opt, *rest), (hi, *rest))
    shapes["features"] = ((1, in_channels), (opt_voxels, in_channels), (max_voxels, in_channels))
    return shapes


def build_serialized_engine(
    onnx_bytes: bytes, precision: str, max_voxels: int, opt_voxels: int, in_channels: int = 1
) -> bytes:
    """Parse the ONNX graph and build a serialized engine with one dynamic voxel-count profile."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(str(trt.__version__).split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailableError(f"TensorRT cannot parse the exported graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(max_voxels, opt_voxels, in_channels).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendUnavailableError("TensorRT failed to build an engine from the graph (see its log)")
    return bytes(plan)


def build_engine_file(
    onnx_bytes: bytes, folder: Path, precision: str, max_voxels: int, opt_voxels: int, in_channels: int = 1
) -> dict[str, Any]:
    """Build the engine into ``folder``; returns its manifest entry (file, precision, what it is tied to)."""
    name = f"network.{precision}.plan"
    plan = build_serialized_engine(onnx_bytes, precision, max_voxels, opt_voxels, in_channels)
    (folder / name).write_bytes(plan)
    return {
        "file": name,
        "precision": precision,
        "max_voxels": max_voxels,
        "opt_voxels": opt_voxels,
        **gpu_identity(),
    }


def _engine_bytes(spec: ModelSpec, device: torch.device, package: Path | None) -> tuple[bytes, int]:
    """The stored engine when it fits this GPU / TensorRT, else one rebuilt from the graph (logged)."""
    from lidar_ssl_core.deploy.ort_backend import TRT_ONNX_FILE, onnx_bytes_for

    max_voxels, opt_voxels, precision = 300_000, 40_000, "fp16"
    if package is not None:
        from lidar_ssl_core.deploy.package import read_manifest

        entry = read_manifest(package).get("tensorrt")
        if isinstance(entry, dict):
            max_voxels = int(entry.get("max_voxels", max_voxels))
            opt_voxels = int(entry.get("opt_voxels", opt_voxels))
            precision = str(entry.get("precision", precision))
            here = gpu_identity(device)
            built = {k: str(entry.get(k)) for k in here}
            plan = package / str(entry.get("file"))
            if built == here:
                return plan.read_bytes(), max_voxels
            reason = ", ".join(f"{k} {built[k]} != {here[k]}" for k in here if built[k] != here[k])
            if not (package / TRT_ONNX_FILE).is_file():
                raise EngineCompatibilityError(
                    f"{plan} was built for another GPU / TensorRT ({reason}) and the package has no "
                    f"{TRT_ONNX_FILE} to rebuild it from; re-export the package on this machine"
                )
            log.warning(
                "%s was built for another GPU / TensorRT (%s); rebuilding it from %s",
                plan,
                reason,
                TRT_ONNX_FILE,
            )
    log.warning("compiling a TensorRT engine for %s now (minutes); export a package to store it", spec.source)
    plan_bytes = build_serialized_engine(
        onnx_bytes_for(spec, package, "gather"), precision, max_voxels, opt_voxels, spec.backbone.in_channels
    )
    return plan_bytes, max_voxels


class TensorRTBackend:
    """A deserialized TensorRT engine run on torch CUDA tensors (``execute_async_v3``)."""

    name = "tensorrt"

    def __init__(self, spec: ModelSpec, device: torch.device, *, package: Path | None = None) -> None:
        check_tensorrt_available()
        if device.type != "cuda":
            raise BackendUnavailableError(f"backend 'tensorrt' runs on a CUDA device, not '{device}'")
        trt = import_tensorrt()
        self.device = device
        plan, self.max_voxels = _engine_bytes(spec, device, package)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineCompatibilityError("TensorRT could not deserialize the engine (see its log)")
        self.context = self.engine.create_execution_context()
        # one execution context holds the input shapes and tensor addresses of the call in flight: two
        # threads segmenting at once (a re-configured node, an application's pool) would mix them
        self._lock = threading.Lock()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]

    def kernel_maps(self, coords: Tensor) -> GraphTables:
        if coords.shape[0] > self.max_voxels:
            raise PointCloudInputError(
                f"{coords.shape[0]} voxels exceed the TensorRT profile's max_voxels={self.max_voxels}; "
                "re-export with a larger --trt-max-voxels"
            )
        return graph_tables(coords)

    def network(self, features: Tensor, coords: Tensor, maps: Any) -> Tensor:
        with self._lock:
            return self._run(features, maps)

    def _run(self, features: Tensor, maps: Any) -> Tensor:
        feeds = {"features": features.float().contiguous(), **maps.feeds()}
        keep = []
        for name in self.inputs:
            tensor = feeds[name].contiguous()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        shape = tuple(self.context.get_tensor_shape("logits"))
        out = torch.empty(shape, dtype=torch.float32, device=self.device)
        self.context.set_tensor_address("logits", out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (see its log)")
        stream.synchronize()
        del keep
        return out


__all__ = ["TensorRTBackend", "build_engine_file", "check_tensorrt_available"]

"""One inference engine: points in, per-point labels and scores out, on any backend.

``points (N, 4+) -> voxelize -> kernel maps -> network -> per-point label + score``. The voxelisation is
training's own (:func:`~lidar_ssl_core.deploy.preprocess.prepare_cloud` ->
:func:`~lidar_ssl_core.downstream.data.network_input`); each point takes the prediction of its voxel,
and its score is the softmax probability of that label. Points that are not finite or lie beyond the
grid get ``ignore_index`` and score 0, an empty cloud gives empty arrays, and a cloud of the wrong layout
or above ``max_points`` is a :class:`~lidar_ssl_core.errors.PointCloudInputError`.

Backends (:data:`BACKENDS`), chosen by name: ``torch`` (portable, CPU/CUDA, eager), ``spconv`` (GPU),
``onnxruntime`` (the exported graph; CPU EP, CUDA EP where present) and ``tensorrt`` (the same graph
compiled by TensorRT, FP16). ``load_engine`` takes a model package folder or a segmentation checkpoint.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from lidar_ssl_core.deploy.backends import Backend, SpconvBackend, TorchBackend, resolve_device
from lidar_ssl_core.deploy.preprocess import prepare_cloud, split_points
from lidar_ssl_core.deploy.spec import ModelSpec, check_overrides, spec_from_checkpoint
from lidar_ssl_core.errors import ConfigError, PointCloudInputError
from lidar_ssl_core.types import PointCloud

log = logging.getLogger(__name__)

BACKENDS = ("torch", "spconv", "onnxruntime", "tensorrt")
STAGES = ("voxelize", "kernel_maps", "network", "postprocess")


@dataclass(frozen=True)
class Segmentation:
    """Per-point result in the input's point order."""

    labels: npt.NDArray[np.uint16]  # (N,) training id, ignore_index where there is no prediction
    scores: npt.NDArray[np.float32]  # (N,) softmax probability of the label, 0 where none
    timings_ms: dict[str, float] = field(default_factory=dict)  # voxelize, kernel_maps, network, postprocess
    num_voxels: int = 0


class SegmentationEngine:
    """A loaded model on one backend; :meth:`segment` is safe to call for every incoming sweep."""

    def __init__(self, spec: ModelSpec, backend: Backend, package: Path | None = None) -> None:
        self.spec = spec
        self.impl = backend
        self.backend: str = backend.name
        self.device = backend.device
        self.package = package
        self.class_names: list[str] = list(spec.class_map.class_names)
        self.palette: npt.NDArray[np.uint8] = spec.palette
        self.ignore_index: int = int(spec.class_map.ignore_index)
        self.ignore_color: tuple[int, int, int] = tuple(int(c) for c in spec.class_map.ignore_color)  # type: ignore[assignment]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def segment(self, cloud: PointCloud) -> Segmentation:
        """Labels and scores of every point of ``cloud`` (``xyz`` (N, 3), ``intensity`` (N,))."""
        if not isinstance(cloud, PointCloud):
            raise PointCloudInputError(f"segment() takes a PointCloud, got {type(cloud).__name__}")
        return self.segment_arrays(cloud.xyz, cloud.intensity)

    def segment_points(self, points: npt.ArrayLike) -> Segmentation:
        """Labels and scores of an (N, 4+) ``x y z intensity [...]`` array (e.g. a KITTI .bin)."""
        xyz, intensity = split_points(points)
        return self.segment_arrays(xyz, intensity)

    @torch.inference_mode()
    def segment_arrays(self, xyz: npt.ArrayLike, intensity: npt.ArrayLike) -> Segmentation:
        t0 = time.perf_counter()
        prep = prepare_cloud(xyz, intensity, self.spec.voxels, max_points=self.spec.max_points)
        n = prep.num_points
        labels = np.full(n, self.ignore_index, np.uint16)
        scores = np.zeros(n, np.float32)
        if prep.inputs is None:
            zero = {s: 0.0 for s in STAGES}
            zero["voxelize"] = 1e3 * (time.perf_counter() - t0)
            return Segmentation(labels, scores, zero, 0)
        inputs = prep.inputs
        coords_np = np.zeros((len(inputs.coords), 4), np.int32)
        coords_np[:, 1:] = inputs.coords
        coords = torch.from_numpy(coords_np).to(self.device)
        feats = torch.from_numpy(np.ascontiguousarray(inputs.features)).to(self.device)
        self._sync()
        t1 = time.perf_counter()
        maps = self.impl.kernel_maps(coords)
        self._sync()
        t2 = time.perf_counter()
        logits = self.impl.network(feats, coords, maps)
        self._sync()
        t3 = time.perf_counter()
        score_v, label_v = torch.softmax(logits.float(), dim=1).max(dim=1)
        p2v = inputs.voxels.point_to_voxel
        point_labels = label_v.to(torch.int32).cpu().numpy()[p2v].astype(np.uint16)
        point_scores = score_v.cpu().numpy()[p2v]
        if prep.keep is None:
            labels, scores = point_labels, point_scores
        else:
            labels[prep.keep] = point_labels
            scores[prep.keep] = point_scores
        t4 = time.perf_counter()
        timings = {
            "voxelize": 1e3 * (t1 - t0),
            "kernel_maps": 1e3 * (t2 - t1),
            "network": 1e3 * (t3 - t2),
            "postprocess": 1e3 * (t4 - t3),
        }
        return Segmentation(labels, scores.astype(np.float32, copy=False), timings, inputs.voxels.num_voxels)


def _load_spec(model: Path) -> tuple[ModelSpec, Path | None]:
    if model.is_dir():
        from lidar_ssl_core.deploy.package import load_package

        pkg = load_package(model)
        return pkg.spec, model
    return spec_from_checkpoint(model), None


def make_backend(
    spec: ModelSpec, backend: str, device: torch.device, threads: int | None, package: Path | None
) -> Backend:
    """Build the named backend for ``spec`` (compiled forms come from ``package`` when given)."""
    if backend == "torch":
        return TorchBackend(spec, device)
    if backend == "spconv":
        return SpconvBackend(spec, device)
    if backend == "onnxruntime":
        from lidar_ssl_core.deploy.ort_backend import OnnxRuntimeBackend

        ort: Backend = OnnxRuntimeBackend(spec, device, threads=threads, package=package)
        return ort
    if backend == "tensorrt":
        from lidar_ssl_core.deploy.trt_backend import TensorRTBackend

        trt: Backend = TensorRTBackend(spec, device, package=package)
        return trt
    raise ConfigError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")


def default_device(backend: str) -> str:
    """``cuda`` where the backend can use it here, else ``cpu``: onnxruntime needs its CUDA provider
    (onnxruntime-gpu) as well as a GPU, so a GPU machine with the CPU-only package runs it on the CPU
    instead of refusing the default."""
    if not torch.cuda.is_available():
        return "cpu"
    if backend == "onnxruntime":
        try:
            import onnxruntime
        except ImportError:
            return "cpu"  # the backend's own check words the missing package
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "cpu"
    return "cuda"


def load_engine(
    model: Path | str,
    backend: str = "torch",
    device: str = "cpu",
    threads: int | None = None,
    *,
    restated: dict[str, Any] | None = None,
) -> SegmentationEngine:
    """A ready engine for a model package folder or a segmentation checkpoint (.pt).

    ``threads`` sets the CPU threads: torch's (process-wide) setting, which runs the kernel maps and the
    eager networks, and the ONNX Runtime session's. A package is verified first (manifest, hashes,
    format version). ``restated``: :func:`~lidar_ssl_core.deploy.spec.check_overrides` keyword arguments
    (``preset``, ``voxel_mode``, ``voxel_size``), checked before any backend is built (a TensorRT build
    takes minutes).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    path = Path(model)
    dev = resolve_device(device)
    if threads is not None and backend != "tensorrt":
        torch.set_num_threads(max(1, int(threads)))  # torch runs the network and/or the kernel maps
    spec, package = _load_spec(path)
    if restated:
        check_overrides(spec, **restated)
    impl = make_backend(spec, backend, dev, threads, package)
    log.info(
        "engine: %s (%s, %d classes) on %s/%s", path, spec.backbone.preset, spec.num_classes, backend, dev
    )
    return SegmentationEngine(spec, impl, package)

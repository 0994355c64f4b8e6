"""One engine, several backends: same labels (>= 99.9 % of points) and close scores on real scans.

Score tolerance: 1e-4 absolute between eager torch and the fp32 ONNX graphs (both forms), i.e. float32
summation-order noise; TensorRT FP16 on a GPU: 2e-2 (and the label agreement bound).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lidar_ssl_core.bag import BagReader
from lidar_ssl_core.config import VoxelConfig
from lidar_ssl_core.deploy.demo import random_segmentation_checkpoint
from lidar_ssl_core.deploy.engine import STAGES, SegmentationEngine, load_engine
from lidar_ssl_core.deploy.kernel_maps import graph_tables, portable_cache
from lidar_ssl_core.deploy.ort_backend import OnnxRuntimeBackend
from lidar_ssl_core.deploy.preprocess import prepare_cloud
from lidar_ssl_core.downstream.classes import SYNTHETIC
from lidar_ssl_core.msg import cloud_to_pointcloud
from lidar_ssl_core.resources import default_bag
from lidar_ssl_core.types import PointCloud

LABEL_AGREEMENT = 0.999
SCORE_TOL_FP32 = 1e-4
SCORE_TOL_FP16 = 2e-2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_segmentation_checkpoint(tmp_path_factory.mktemp("m") / "tiny.pt", SYNTHETIC, seed=1)


@pytest.fixture(scope="module")
def engines(checkpoint: Path) -> dict[str, SegmentationEngine]:
    torch_engine = load_engine(checkpoint, "torch")
    ort = load_engine(checkpoint, "onnxruntime", threads=1)
    cpu = torch.device("cpu")
    gather = SegmentationEngine(
        torch_engine.spec, OnnxRuntimeBackend(torch_engine.spec, cpu, reduction="gather", threads=1)
    )
    # two intra-op threads: the per-offset scatters (one thread runs them fused, one per conv)
    two = SegmentationEngine(torch_engine.spec, OnnxRuntimeBackend(torch_engine.spec, cpu, threads=2))
    return {"torch": torch_engine, "onnxruntime": ort, "onnxruntime-gather": gather, "onnxruntime-2": two}


def _bag_sweep() -> PointCloud:
    with BagReader(default_bag()) as reader:
        message = next(iter(reader.messages(["/lidar/points"])))
    return cloud_to_pointcloud(message.msg)


def _nuscenes(root: Path) -> np.ndarray:
    path = sorted((root / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))[0]
    return np.fromfile(path, np.float32).reshape(-1, 5)  # x y z intensity ring


def _kitti(root: Path) -> np.ndarray:
    return np.fromfile(root / "sequences" / "00" / "velodyne" / "000000.bin", np.float32).reshape(-1, 4)


def _assert_parity(engines: dict[str, SegmentationEngine], points: np.ndarray) -> None:
    results = {name: e.segment_points(points) for name, e in engines.items()}
    ref = results.pop("torch")
    assert ref.num_voxels > 1000 and set(ref.timings_ms) == set(STAGES)
    assert (ref.labels != SYNTHETIC.ignore_index).mean() > 0.99
    for name, res in results.items():
        agree = float((res.labels == ref.labels).mean())
        assert agree >= LABEL_AGREEMENT, f"{name}: labels agree on {agree:.5f} of points"
        diff = float(np.abs(res.scores - ref.scores).max())
        assert diff <= SCORE_TOL_FP32, f"{name}: scores differ by up to {diff}"
        assert res.labels.dtype == np.uint16 and res.scores.dtype == np.float32


def test_parity_on_the_embedded_bag(engines: dict[str, SegmentationEngine]) -> None:
    cloud = _bag_sweep()
    _assert_parity(engines, np.column_stack([cloud.xyz, cloud.intensity]))
    seg = engines["onnxruntime"].segment(cloud)  # the PointCloud entry point gives the same
    np.testing.assert_array_equal(
        seg.labels,
        engines["onnxruntime"].segment_points(np.column_stack([cloud.xyz, cloud.intensity])).labels,
    )


def test_one_thread_session_runs_one_scatter_per_conv(engines: dict[str, SegmentationEngine]) -> None:
    """On one thread each conv's per-offset ScatterND chain becomes one ScatterND over all its pairs (and
    only there: ONNX Runtime's multi-threaded ScatterND loses additions into a repeated row)."""
    import onnx

    from lidar_ssl_core.deploy.onnx_graph import build_onnx, fuse_scatter_chains

    one, two = engines["onnxruntime"].impl, engines["onnxruntime-2"].impl
    assert isinstance(one, OnnxRuntimeBackend) and isinstance(two, OnnxRuntimeBackend)
    assert one.fused and not two.fused
    graph = build_onnx(engines["torch"].spec, "scatter")
    ops = [n.op_type for n in onnx.load_from_string(graph).graph.node]
    fused = [n.op_type for n in onnx.load_from_string(fuse_scatter_chains(graph)).graph.node]
    convs = fused.count("ScatterND")  # 3x3x3 submanifold convs (26 offsets) + downsamplings (8)
    assert convs > 10 and ops.count("ScatterND") > 8 * convs
    assert fused.count("Concat") == ops.count("Concat") + 2 * convs  # its indices and its products
    assert len(fused) == len(ops) - ops.count("ScatterND") + 3 * convs


def test_one_engine_serves_two_threads_at_once(engines: dict[str, SegmentationEngine]) -> None:
    """The live node's worker and, e.g., an application's pool may share an engine: concurrent calls give
    the results of sequential ones."""
    from concurrent.futures import ThreadPoolExecutor

    with BagReader(default_bag()) as reader:
        clouds = [cloud_to_pointcloud(m.msg) for m in list(reader.messages(["/lidar/points"]))[:2]]
    for name in ("torch", "onnxruntime"):
        engine = engines[name]
        alone = [engine.segment(c) for c in clouds]
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(engine.segment, clouds * 2))
        for a, b in zip(alone * 2, together, strict=True):
            assert int((a.labels != b.labels).sum()) == 0, name
            assert float(np.abs(a.scores - b.scores).max()) <= 1e-6, name


def test_parity_on_a_nuscenes_scan(engines: dict[str, SegmentationEngine], nuscenes_root: Path) -> None:
    _assert_parity(engines, _nuscenes(nuscenes_root))


@pytest.mark.slow
def test_parity_on_a_semantickitti_scan(
    engines: dict[str, SegmentationEngine], semantickitti_root: Path
) -> None:
    _assert_parity(engines, _kitti(semantickitti_root))


def test_spconv_cpu_forward_matches(checkpoint: Path) -> None:
    """spconv's CPU forward agrees with the portable backend on real sweeps whatever torch's thread count
    (its CPU kernels race with two threads: the backend runs them on one)."""
    pytest.importorskip("spconv.pytorch")
    with BagReader(default_bag()) as reader:
        clouds = [cloud_to_pointcloud(m.msg) for m in list(reader.messages(["/lidar/points"]))[:3]]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sp_engine, ref_engine = load_engine(checkpoint, "spconv"), load_engine(checkpoint, "torch")
        for cloud in clouds:
            sp, ref = sp_engine.segment(cloud), ref_engine.segment(cloud)
            assert torch.get_num_threads() == 2  # restored after the call
            assert float((sp.labels == ref.labels).mean()) >= LABEL_AGREEMENT
            assert float(np.abs(sp.scores - ref.scores).max()) <= SCORE_TOL_FP32
    finally:
        torch.set_num_threads(threads)


def test_graph_tables_match_the_portable_kernel_maps() -> None:
    """The graph's gather lists hold exactly the portable maps' (input, output, offset) triples."""
    cloud = _bag_sweep()
    prep = prepare_cloud(cloud.xyz, cloud.intensity, VoxelConfig(), max_points=10**6)
    assert prep.inputs is not None
    coords = torch.zeros((prep.num_voxels, 4), dtype=torch.int32)
    coords[:, 1:] = torch.from_numpy(prep.inputs.coords)
    cache, tables, scatter = portable_cache(coords), graph_tables(coords), graph_tables(coords, "scatter")
    for stride in (1, 4, 16):
        kmap = cache.maps[("subm", stride, 3)]
        lists, pos = tables.subm[stride]
        n = tables.num_voxels[stride]
        inputs = lists.flat.long()[pos.long()]  # (V, 26): input row of each (output, offset), n if none
        out_idx, j = torch.nonzero(inputs != n, as_tuple=True)
        k = j + (j >= 13).long()  # the centre offset is not in the tables
        got = torch.sort((inputs[out_idx, j] * n + out_idx) * 27 + k).values
        keep = kmap.kernel_idx != 13
        want = torch.sort((kmap.in_idx[keep] * n + kmap.out_idx[keep]) * 27 + kmap.kernel_idx[keep]).values
        assert torch.equal(got, want), f"stride {stride}: the pair sets differ"
        owners = scatter.subm[stride][0].owner
        assert owners is not None and torch.equal(scatter.subm[stride][0].flat, lists.flat)
        owner = owners[:, 0]
        rows = pos.long()[out_idx, j]
        assert torch.equal(owner[rows], out_idx)  # each product row adds into its output
        assert int((owner == n).sum()) == 26  # one sentinel per offset, sent to the dump row


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_gpu_parity_torch_spconv_tensorrt(checkpoint: Path, semantickitti_root: Path) -> None:
    """On a GPU: portable torch (CUDA) vs spconv vs TensorRT FP16 on a real KITTI scan."""
    points = _kitti(semantickitti_root)
    ref = load_engine(checkpoint, "torch", device="cuda").segment_points(points)
    cpu = load_engine(checkpoint, "torch").segment_points(points)
    assert float((ref.labels == cpu.labels).mean()) >= LABEL_AGREEMENT
    pytest.importorskip("spconv.pytorch")
    sp = load_engine(checkpoint, "spconv", device="cuda").segment_points(points)
    assert float((sp.labels == ref.labels).mean()) >= LABEL_AGREEMENT
    assert float(np.abs(sp.scores - ref.scores).max()) <= 1e-3  # TF32 / atomics on GPU
    pytest.importorskip("tensorrt")
    trt = load_engine(checkpoint, "tensorrt", device="cuda").segment_points(points)
    assert float((trt.labels == ref.labels).mean()) >= LABEL_AGREEMENT
    assert float(np.abs(trt.scores - ref.scores).max()) <= SCORE_TOL_FP16


def test_tensorrt_graph_and_profile_need_no_plugin(checkpoint: Path) -> None:
    """The graph TensorRT compiles uses only natively parsed ops, and the optimisation profile covers
    every one of its inputs with min <= opt <= max (checked here, where TensorRT itself is absent)."""
    import onnx

    from lidar_ssl_core.deploy.onnx_graph import build_onnx
    from lidar_ssl_core.deploy.spec import spec_from_checkpoint
    from lidar_ssl_core.deploy.trt_backend import profile_shapes

    model = onnx.load_from_string(build_onnx(spec_from_checkpoint(checkpoint), "gather"))
    assert {n.op_type for n in model.graph.node} <= {"Gather", "MatMul", "Add", "Relu", "Concat", "ReduceSum"}
    inputs = {i.name: len(i.type.tensor_type.shape.dim) for i in model.graph.input}
    shapes = profile_shapes(max_voxels=300_000, opt_voxels=40_000)
    assert set(inputs) <= set(shapes)
    for name, rank in inputs.items():
        lo, opt, hi = shapes[name]
        assert len(lo) == len(opt) == len(hi) == rank
        assert all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)), name
        assert lo[0] >= 1  # no zero-sized dimension: every gather list holds at least its sentinel
    # inputs that share a named dimension (a level's voxel count) get one range for it: the parser
    # makes them equal at run time, so a profile that gives them different ranges is inconsistent
    ranges: dict[str, set[tuple[int, int, int]]] = {}
    for value in model.graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param:
                lo, opt, hi = shapes[value.name]
                ranges.setdefault(dim.dim_param, set()).add((lo[axis], opt[axis], hi[axis]))
    assert {d: r for d, r in ranges.items() if len(r) > 1} == {}
    assert ranges["V1"] == {(1, 40_000, 300_000)}

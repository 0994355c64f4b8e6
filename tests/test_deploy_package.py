"""Model packages: written atomically, verified on load (tampered, missing, newer), compiled-engine checks,
and the export / segment commands on them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lidar_ssl_core.bag import BagReader
from lidar_ssl_core.cli import app
from lidar_ssl_core.deploy import trt_backend
from lidar_ssl_core.deploy.demo import random_segmentation_checkpoint
from lidar_ssl_core.deploy.engine import load_engine
from lidar_ssl_core.deploy.package import MANIFEST, export_package, load_package
from lidar_ssl_core.deploy.spec import spec_from_checkpoint
from lidar_ssl_core.downstream.classes import SYNTHETIC
from lidar_ssl_core.errors import EngineCompatibilityError, LidarSslError, ModelPackageError
from lidar_ssl_core.fileio import sha256_of
from lidar_ssl_core.msg import cloud_to_pointcloud, read_cloud
from lidar_ssl_core.resources import default_bag

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_segmentation_checkpoint(tmp_path_factory.mktemp("m") / "tiny.pt", SYNTHETIC, seed=2)


@pytest.fixture(scope="module")
def package(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("p") / "pkg"
    export_package(spec_from_checkpoint(checkpoint), out)
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_package_contents_and_manifest(package: Path, checkpoint: Path) -> None:
    names = sorted(p.name for p in package.iterdir())
    assert names == ["manifest.json", "model.json", "network.onnx", "weights.safetensors"]
    assert not list(package.parent.glob(".pkg.tmp*"))  # nothing half-written left beside it
    manifest = json.loads((package / MANIFEST).read_text())
    assert manifest["format_version"] == 1 and manifest["formats"] == ["torch", "onnx"]
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_of(package / name)
    assert {"lidar_ssl", "torch", "onnx", "onnxruntime"} <= set(manifest["libraries"])
    model = json.loads((package / "model.json").read_text())
    assert model["backbone"]["preset"] == "tiny" and model["voxels"]["size"] == [0.1, 1.0, 0.1]
    assert model["inputs"]["feature"] == "intensity" and model["class_map"]["name"] == SYNTHETIC.name
    assert (package / "weights.safetensors").read_bytes()[8:9] == b"{"  # safetensors JSON header, no pickle
    pkg = load_package(package)
    ref = spec_from_checkpoint(checkpoint)
    assert pkg.spec.backbone == ref.backbone and pkg.spec.voxels == ref.voxels
    assert all(bool((pkg.spec.state[k] == v).all()) for k, v in ref.state.items())


def test_package_and_checkpoint_give_the_same_labels(package: Path, checkpoint: Path) -> None:
    with BagReader(default_bag()) as reader:
        cloud = cloud_to_pointcloud(next(iter(reader.messages(["/lidar/points"]))).msg)
    a = load_engine(package, "onnxruntime").segment(cloud)
    b = load_engine(checkpoint, "onnxruntime").segment(cloud)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_tampered_missing_and_newer_packages_are_refused(package: Path, tmp_path: Path) -> None:
    tampered = _copy(package, tmp_path / "tampered")
    data = bytearray((tampered / "network.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "network.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match=r"network\.onnx does not match its sha256"):
        load_engine(tampered, "onnxruntime")

    missing = _copy(package, tmp_path / "missing")
    (missing / "weights.safetensors").unlink()
    with pytest.raises(ModelPackageError, match=r"weights\.safetensors is missing"):
        load_package(missing)

    newer = _copy(package, tmp_path / "newer")
    manifest = json.loads((newer / MANIFEST).read_text())
    manifest["format_version"] = 99
    (newer / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match="newer"):
        load_package(newer)

    with pytest.raises(ModelPackageError, match=r"manifest\.json is missing"):
        load_package(tmp_path)


def test_unlisted_files_and_malformed_entries_are_refused(package: Path, tmp_path: Path) -> None:
    """Every file in the folder is verified: a graph dropped in beside an onnx-less manifest would
    otherwise be run by the onnxruntime backend unchecked; a malformed entry is a typed error."""
    extra = _copy(package, tmp_path / "extra")
    (extra / "network.gather.onnx").write_bytes(b"not listed")
    with pytest.raises(
        ModelPackageError, match=r"holds 'network\.gather\.onnx', which manifest\.json does not"
    ):
        load_package(extra)
    bad = _copy(package, tmp_path / "bad")
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["files"]["model.json"] = "abc"
    (bad / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match=r"entry of model\.json"):
        load_package(bad)


def test_export_refuses_to_overwrite_and_replaces_atomically(package: Path, checkpoint: Path) -> None:
    spec = spec_from_checkpoint(checkpoint)
    with pytest.raises(ModelPackageError, match="exists"):
        export_package(spec, package)
    before = sha256_of(package / "weights.safetensors")
    export_package(spec, package, overwrite=True)
    assert sha256_of(package / "weights.safetensors") == before
    assert sorted(p.name for p in package.parent.iterdir() if p.name.startswith(".")) == []


def _fake_trt(monkeypatch: pytest.MonkeyPatch, built: dict[str, bytes]) -> None:
    """Stand-ins for the GPU-only TensorRT calls: the compatibility logic is what is under test."""

    def build(onnx_bytes: bytes, precision: str, max_voxels: int, opt_voxels: int, c_in: int = 1) -> bytes:
        built["graph"] = onnx_bytes
        return b"rebuilt-" + precision.encode()

    monkeypatch.setattr(trt_backend, "build_serialized_engine", build)
    here = {"tensorrt_version": "10.3.0", "gpu": "NVIDIA H100", "compute_capability": "9.0"}
    monkeypatch.setattr(trt_backend, "gpu_identity", lambda device=None: here)


def _with_engine_entry(package: Path, folder: Path, gpu: str, with_graph: bool) -> Path:
    pkg = _copy(package, folder)
    (pkg / "network.fp16.plan").write_bytes(b"stored-engine")
    if with_graph:
        (pkg / "network.gather.onnx").write_bytes(b"gather-graph")
    manifest = json.loads((pkg / MANIFEST).read_text())
    manifest["tensorrt"] = {
        "file": "network.fp16.plan",
        "precision": "fp16",
        "max_voxels": 1000,
        "opt_voxels": 100,
        "tensorrt_version": "10.3.0",
        "gpu": gpu,
        "compute_capability": "9.0" if gpu == "NVIDIA H100" else "8.7",
    }
    (pkg / MANIFEST).write_text(json.dumps(manifest))
    return pkg


def test_engine_for_another_gpu_is_rebuilt_or_refused(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    built: dict[str, bytes] = {}
    _fake_trt(monkeypatch, built)
    spec = load_package(package).spec
    import torch

    dev = torch.device("cuda")
    same = _with_engine_entry(package, tmp_path / "same", "NVIDIA H100", with_graph=True)
    assert trt_backend._engine_bytes(spec, dev, same) == (b"stored-engine", 1000)
    other = _with_engine_entry(package, tmp_path / "other", "Orin", with_graph=True)
    with caplog.at_level(logging.WARNING):
        plan, _ = trt_backend._engine_bytes(spec, dev, other)
    assert plan == b"rebuilt-fp16" and built["graph"] == b"gather-graph"
    assert (
        "network.fp16.plan was built for another GPU" in caplog.text
        and "compute_capability 8.7" in caplog.text
    )
    orphan = _with_engine_entry(package, tmp_path / "orphan", "Orin", with_graph=False)
    with pytest.raises(EngineCompatibilityError, match=r"network\.fp16\.plan .*another GPU"):
        trt_backend._engine_bytes(spec, dev, orphan)


def _segment_args(model: Path, out: Path, backend: str) -> list[str]:
    return [
        "segment",
        "--model",
        str(model),
        "--bag",
        str(default_bag()),
        "--out",
        str(out),
        "--backend",
        backend,
    ]


@pytest.mark.slow
def test_export_and_segment_commands(checkpoint: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    result = runner.invoke(app, ["export", "--model", str(checkpoint), "--out", str(pkg)])
    assert result.exit_code == 0, result.output
    conflict = runner.invoke(
        app, ["export", "--model", str(checkpoint), "--out", str(tmp_path / "x"), "--preset", "small"]
    )
    assert conflict.exit_code == 1 and "`--preset: small` (the checkpoint has tiny)" in conflict.output
    same = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(checkpoint),
            "--out",
            str(tmp_path / "y"),
            "--preset",
            "tiny",
            "--voxel-size",
            "0.1",
            "1",
            "0.1",
        ],
    )
    assert same.exit_code == 0, same.output  # restating the model's own settings is fine
    out = tmp_path / "seg"
    result = runner.invoke(app, [*_segment_args(pkg, out, "onnxruntime"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    engine = load_engine(pkg, "onnxruntime")
    with BagReader(out) as reader:
        src = cloud_to_pointcloud(next(iter(reader.messages(["/lidar/points"]))).msg)
        seg = next(iter(reader.messages(["/lidar/segmentation"]))).msg
    fields = {f.name: f.offset for f in seg.fields}
    assert fields == {"x": 0, "y": 4, "z": 8, "intensity": 12, "rgb": 16, "label": 20, "score": 24}
    assert seg.point_step == 28
    pts = read_cloud(seg)
    expected = engine.segment(src)
    np.testing.assert_array_equal(pts["label"], expected.labels)
    np.testing.assert_allclose(pts["score"], expected.scores, atol=1e-6)
    bad = runner.invoke(app, _segment_args(pkg, tmp_path / "z", "nope"))
    assert bad.exit_code == 1 and "unknown backend 'nope'" in bad.output


def test_tensorrt_export_without_gpu_writes_nothing(checkpoint: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(LidarSslError, match="CUDA"):
        export_package(spec_from_checkpoint(checkpoint), tmp_path / "pkg", formats=("onnx", "tensorrt"))
    assert list(tmp_path.iterdir()) == []

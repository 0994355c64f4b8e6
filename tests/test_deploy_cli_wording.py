"""``lidar-ssl export`` / ``segment`` restatements and refusals, as a CLI user sees them: the rule of a
self-describing model applies to what was typed only, and every refusal names the CLI flag."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lidar_ssl_core.cli import app
from lidar_ssl_core.config import VoxelConfig, VoxelMode
from lidar_ssl_core.deploy.demo import random_segmentation_checkpoint
from lidar_ssl_core.downstream.classes import SYNTHETIC
from lidar_ssl_core.resources import default_bag

runner = CliRunner()


@pytest.fixture(scope="module")
def cartesian(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model on a Cartesian 0.2 m grid (not the default cylindrical one)."""
    voxels = VoxelConfig(mode=VoxelMode.CARTESIAN, size=(0.2, 0.2, 0.2))
    path = tmp_path_factory.mktemp("m") / "cart.pt"
    return random_segmentation_checkpoint(path, SYNTHETIC, voxels=voxels, seed=3)


def _export(model: Path, out: Path, *extra: str) -> tuple[int, str]:
    result = runner.invoke(app, ["export", "--model", str(model), "--out", str(out), *extra])
    return result.exit_code, result.output


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("ERROR:")]
    assert len(lines) == 1, output
    return lines[0]


def test_restating_part_of_the_grid_is_compared_with_that_part_only(cartesian: Path, tmp_path: Path) -> None:
    """``--voxel-size`` alone (the model's own) is accepted for a Cartesian model; the refusal that follows
    is the existing output folder's, which comes after the restatement check."""
    tmp_path.joinpath("pkg").mkdir()
    code, output = _export(cartesian, tmp_path / "pkg", "--voxel-size", "0.2", "0.2", "0.2")
    assert code == 1 and "exists already" in _one_error_line(output)
    code, output = _export(cartesian, tmp_path / "pkg", "--voxel-mode", "cartesian", "--preset", "tiny")
    assert code == 1 and "exists already" in _one_error_line(output)


def test_a_conflicting_restatement_names_the_flag_and_both_values(cartesian: Path, tmp_path: Path) -> None:
    code, output = _export(cartesian, tmp_path / "pkg", "--voxel-mode", "cylindrical", "--preset", "small")
    line = _one_error_line(output)
    assert code == 1 and "`--voxel-mode: cylindrical` (the checkpoint has cartesian)" in line
    assert "`--preset: small` (the checkpoint has tiny)" in line
    code, output = _export(cartesian, tmp_path / "pkg", "--voxel-mode", "polar")
    assert code == 1 and "--voxel-mode 'polar' is not a voxel mode" in _one_error_line(output)
    code, output = _export(
        cartesian, tmp_path / "pkg", "--formats", "tensorrt", "--trt-opt-voxels", "5", "--trt-max-voxels", "4"
    )
    assert code == 1 and "--trt-opt-voxels (5) <= --trt-max-voxels (4)" in _one_error_line(output)
    code, output = _export(cartesian, tmp_path / "pkg", "--formats", "onnx,openvino")
    assert code == 1 and "unknown --formats ['openvino']" in _one_error_line(output)
    assert not (tmp_path / "pkg").exists()


def test_an_existing_package_names_the_flag_not_the_library_argument(cartesian: Path, tmp_path: Path) -> None:
    tmp_path.joinpath("pkg").mkdir()
    code, output = _export(cartesian, tmp_path / "pkg")
    line = _one_error_line(output)
    assert code == 1 and "pass --overwrite" in line and "overwrite=True" not in line


def test_segment_names_its_input_topic_flag(cartesian: Path, tmp_path: Path) -> None:
    args = ["segment", "--model", str(cartesian), "--bag", str(default_bag()), "--device", "cpu"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "--lidar-topic", "/velodyne"])
    line = _one_error_line(result.output)
    assert result.exit_code == 1 and "/lidar/points" in line and "--lidar-topic" in line
    assert "topic_in" not in line
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--topic", "/tf_static"])
    line = _one_error_line(result.output)
    assert result.exit_code == 1 and "choose another output --topic" in line
    assert sorted(tmp_path.iterdir()) == []  # nothing written


def test_a_package_given_where_a_checkpoint_file_is_needed_is_named_as_such(
    cartesian: Path, tmp_path: Path
) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "manifest.json").write_text("{}")
    for args in (
        ["evaluate", "--model", str(pkg), "--bags", str(default_bag())],
        ["probe", "--pretrained", str(pkg), "--run-dir", str(tmp_path / "run")],
    ):
        result = runner.invoke(app, args)
        line = _one_error_line(result.output)
        assert result.exit_code == 1 and "is a model package, not a checkpoint file" in line
        assert "does not exist" not in line and "lidar-ssl segment" in line


def test_segment_on_a_gpu_machine_without_onnxruntime_gpu_runs_onnxruntime_on_the_cpu(
    cartesian: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default device follows what the backend can use: a GPU with the CPU-only onnxruntime package
    is not a refusal of ``segment --backend onnxruntime`` without --device."""
    import onnxruntime
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    out = tmp_path / "seg"
    args = ["segment", "--model", str(cartesian), "--bag", str(default_bag()), "--out", str(out)]
    result = runner.invoke(app, [*args, "--backend", "onnxruntime", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "on onnxruntime/cpu" in result.output and out.is_dir()


def test_segment_refuses_a_conflicting_restatement_before_building_a_backend(
    cartesian: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lidar_ssl_core.deploy import engine

    built: list[str] = []
    monkeypatch.setattr(engine, "make_backend", lambda spec, backend, *a: built.append(backend))
    args = ["segment", "--model", str(cartesian), "--bag", str(default_bag()), "--out", str(tmp_path / "s")]
    result = runner.invoke(app, [*args, "--backend", "onnxruntime", "--device", "cpu", "--preset", "small"])
    assert result.exit_code == 1 and "`--preset: small`" in _one_error_line(result.output)
    assert built == []  # refused before the graph (or a TensorRT engine) was built

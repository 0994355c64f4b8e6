"""The first hour of a new user (issue 14): artifacts that describe themselves, defaults that fit the
machine, and one clear message per failure, through the ``lidar-ssl`` command line."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lidar_ssl_core.bag.reader import damage_summary, read_custom_data
from lidar_ssl_core.bag_formats import CLASS_MAP_KEY
from lidar_ssl_core.cli import app
from lidar_ssl_core.config import load_config
from lidar_ssl_core.downstream.classes import recorded_class_map
from lidar_ssl_core.resources import default_bag
from lidar_ssl_core.train import PretrainConfig, build_pretraining
from lidar_ssl_core.visualize import range_colours, range_legend

runner = CliRunner()
CPU_DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "cpu_demo.yaml")
GRID = [0.2, 2.0, 0.2]  # not the default voxel grid: downstream must take it from the checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real pretraining checkpoint of the ``tiny`` preset on a non-default voxel grid (not trained:
    the architecture and grid are what matter here)."""
    run = tmp_path_factory.mktemp("pretrain")
    data = load_config(overrides={"data.voxels.size": GRID, "data.loader.num_workers": 0}).data
    cfg = PretrainConfig.model_validate(
        {"run_dir": run, "backbone": {"preset": "tiny"}, "teacher": {"arch": "filterbank"}, "epochs": 1}
    )
    saved: Path | None = build_pretraining(cfg, data).save()
    assert saved is not None
    return saved


def test_probe_takes_architecture_and_voxel_grid_from_the_checkpoint(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    args = ["probe", "--pretrained", str(tiny_checkpoint), "--epochs", "1", "--run-dir", str(tmp_path)]
    args += ["-s", "downstream.label_fraction=0.25", "-s", "downstream.block_frames=2"]  # 4 of 16 sweeps
    result = runner.invoke(
        app, [*args, "-s", "downstream.num_workers=0", "-s", "downstream.probe_cache=true"]
    )
    assert result.exit_code == 0, result.output
    resolved = load_config(tmp_path / "config.yaml")
    assert resolved.downstream.backbone.preset == "tiny"
    assert list(resolved.data.voxels.size) == GRID
    assert (tmp_path / "model_last.pt").is_file()


def test_an_explicit_conflicting_setting_is_refused_naming_the_key(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    args = ["probe", "--pretrained", str(tiny_checkpoint), "--run-dir", str(tmp_path)]
    result = runner.invoke(app, [*args, "-s", "downstream.backbone.preset=small"])
    assert result.exit_code == 1
    assert "`downstream.backbone.preset: small` (the checkpoint has tiny)" in result.output
    assert result.output.count("ERROR") == 1
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("data:\n  voxels:\n    size: [0.1, 1.0, 0.1]\n")
    result = runner.invoke(app, [*args, "--config", str(cfg)])
    assert result.exit_code == 1 and "data.voxels.size" in result.output
    assert not (tmp_path / "model_last.pt").exists()


def test_a_converted_bag_carries_its_class_map_and_probe_uses_it(
    semantickitti_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bags"
    result = runner.invoke(
        app, ["convert", "semantickitti", "--root", str(semantickitti_root), "--sequence", "00",
              "--out", str(out), "--workers", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (bag,) = out.iterdir()
    assert read_custom_data(bag) == {CLASS_MAP_KEY: "semantickitti"}
    run = tmp_path / "probe"
    args = [
        "probe",
        "--bags",
        str(out),
        "--epochs",
        "1",
        "--run-dir",
        str(run),
        "-s",
        "downstream.num_workers=0",
    ]
    result = runner.invoke(app, [*args, "-s", "downstream.backbone.preset=tiny"])
    assert result.exit_code == 0, result.output
    assert "class map semantickitti (19 classes, recorded in the bags)" in result.output
    assert load_config(run / "config.yaml").downstream.class_map == "semantickitti"
    # an explicit setting wins over the record (here a wrong one, refused by the ignored-points check)
    result = runner.invoke(
        app, [*args, "-s", "downstream.backbone.preset=tiny", "-s", "downstream.class_map=nuscenes"]
    )
    assert result.exit_code == 1 and "class map 'nuscenes' ignores" in result.output
    assert "-s downstream.class_map=NAME" in result.output


def test_a_bag_without_a_record_keeps_the_configured_class_map() -> None:
    assert read_custom_data(default_bag()) == {}  # the committed sample bag is unchanged
    assert recorded_class_map([default_bag()]) is None


def test_pretraining_with_a_random_image_teacher_is_refused_unless_asked_for(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "--run-dir", str(run)])
    assert result.exit_code == 1
    assert (
        "pretrain.teacher.weights" in result.output and "pretrain.teacher.allow_random: true" in result.output
    )
    if not torch.cuda.is_available():  # a CPU-only machine is told which configuration fits it
        assert "configs/cpu_demo.yaml" in result.output
    assert not run.exists()  # refused before anything was read or written


def test_a_converter_failure_is_reported_once_in_cli_words(
    semantickitti_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "sk"
    shutil.copytree(semantickitti_root, root)
    (scan,) = (root / "sequences" / "00" / "velodyne").iterdir()
    with scan.open("r+b") as fh:
        fh.truncate(1001)  # not a whole number of points
    out = tmp_path / "bags"
    args = ["convert", "semantickitti", "--root", str(root), "--sequence", "00", "--out", str(out)]
    with caplog.at_level(logging.DEBUG):
        result = runner.invoke(app, [*args, "--workers", "1"])
    assert result.exit_code == 1
    assert result.output.count("1001 bytes") == 1, result.output  # the summary line, nothing else
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "1001" in r.getMessage()]

    existing = tmp_path / "existing"
    existing.mkdir()
    result = runner.invoke(app, ["synth", "--out", str(existing), "--preset", "tiny"])
    assert result.exit_code == 1 and "--overwrite" in result.output and "overwrite=True" not in result.output


@pytest.fixture()
def damaged_bag(tmp_path: Path) -> Path:
    """The sample bag with its mcap file cut at 60 % (a copy cut short, a recording killed)."""
    bag = tmp_path / "damaged"
    shutil.copytree(default_bag(), bag)
    (storage,) = bag.glob("*.mcap")
    with storage.open("r+b") as fh:
        fh.truncate(storage.stat().st_size * 6 // 10)
    return bag


def test_a_damaged_bag_is_one_warning_line_and_an_error_with_strict(
    damaged_bag: Path, tmp_path: Path
) -> None:
    summary = damage_summary(damaged_bag)
    assert summary is not None and summary.expected is not None
    lost = summary.lost()
    assert lost is not None and 0 < lost < sum(summary.expected.values())
    assert damage_summary(default_bag()) is None

    result = runner.invoke(app, ["info", str(damaged_bag)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "truncated" in line]
    assert len(lines) == 1 and "damaged; recovered" in lines[0] and f"lost {lost}" in lines[0]
    assert "/lidar/points messages readable" in lines[0]

    for args in (
        ["info", str(damaged_bag)],
        ["samples", "--bags", str(damaged_bag), "-n", "1", "--workers", "0"],
        ["probe", "--bags", str(damaged_bag), "--run-dir", str(tmp_path / "probe")],
        ["pretrain", "--bags", str(damaged_bag), "--run-dir", str(tmp_path / "pre"), "--config", CPU_DEMO],
    ):
        result = runner.invoke(app, [*args, "--strict"])
        assert result.exit_code == 1, (args, result.output)
        assert "damaged bag(s) and --strict" in result.output and result.output.count("ERROR") == 1
    assert not (tmp_path / "probe").exists() and not (tmp_path / "pre").exists()


def test_sample_preview_names_each_camera_and_has_a_range_legend(tmp_path: Path) -> None:
    cfg = tmp_path / "one.yaml"
    cfg.write_text("data:\n  loader:\n    batch_size: 1\n")
    out = tmp_path / "preview"
    result = runner.invoke(
        app, ["samples", "-n", "1", "--workers", "0", "--config", str(cfg), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    read = cv2.imread(str(out / "pairs_preview.png"))
    assert read is not None
    png = read[:, :, ::-1]
    legend_height = range_legend(png.shape[1]).shape[0]
    assert np.array_equal(png[-legend_height:], range_legend(png.shape[1]))  # the legend is drawn as built
    bar = png[-legend_height + 10, 10:20]  # the bar starts at 0 m
    assert np.abs(bar.astype(int) - range_colours([0.0])[0].astype(int)).max() <= 20
    tiles = png[:-legend_height]
    h, w = tiles.shape[0] // 2, tiles.shape[1] // 3  # six cameras: 2 x 3
    corners = [tiles[r * h + 1, c * w + 1] for r in range(2) for c in range(3)]
    assert all(int(px.max()) == 0 for px in corners)  # each tile has its name box


def test_info_shows_each_extrinsic_and_where_it_came_from() -> None:
    result = runner.invoke(app, ["info", str(default_bag())])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "extrinsic base_link <- " in line]
    assert len(lines) == 7 and all(line.rstrip().endswith("from /tf_static") for line in lines)  # LiDAR + 6
    front = next(line for line in lines if "<- front:" in line)
    assert "xyz (1.700, 0.000, 1.550) m" in front and "roll/pitch/yaw (-90.00, 0.00, -90.00) deg" in front


@pytest.mark.fixtures
def test_info_describes_a_lidar_only_converted_bag(semantickitti_root: Path, tmp_path: Path) -> None:
    """A SemanticKITTI sequence without images converts to a LiDAR-only bag: ``info`` describes it (exit
    0, its recorded class map) instead of failing on the missing cameras."""
    out = tmp_path / "sk"
    args = ["convert", "semantickitti", "--root", str(semantickitti_root), "--sequence", "00", "--out"]
    assert runner.invoke(app, [*args, str(out)]).exit_code == 0
    result = runner.invoke(app, ["info", str(out / "sequence_00")])
    assert result.exit_code == 0, result.output
    assert "/lidar/points" in result.output and "a LiDAR-only bag" in result.output
    assert "class map recorded: semantickitti" in result.output


@pytest.mark.fixtures
def test_evaluate_on_another_datasets_bag_does_not_advise_a_setting_it_ignores(
    semantickitti_root: Path, tmp_path: Path
) -> None:
    """evaluate uses the model's class map: advising `-s downstream.class_map` there would change nothing."""
    from lidar_ssl_core.deploy.demo import random_segmentation_checkpoint
    from lidar_ssl_core.downstream.classes import SYNTHETIC

    model = random_segmentation_checkpoint(tmp_path / "synthetic.pt", SYNTHETIC)
    out = tmp_path / "sk"
    args = ["convert", "semantickitti", "--root", str(semantickitti_root), "--sequence", "00", "--out"]
    assert runner.invoke(app, [*args, str(out)]).exit_code == 0
    result = runner.invoke(
        app, ["evaluate", "--model", str(model), "--bags", str(out), "--out", str(tmp_path)]
    )
    errors = [line for line in result.output.splitlines() if line.startswith("ERROR:")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert "ignores 100.0%" in errors[0] and "carries its own class map" in errors[0]
    assert "-s downstream.class_map" not in errors[0]

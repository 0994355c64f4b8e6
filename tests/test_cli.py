"""The lidar-ssl command line on the embedded sample bag and on bad input."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from lidar_ssl_core.cli import app
from lidar_ssl_core.resources import default_bag

runner = CliRunner()


def test_samples_on_the_embedded_bag_writes_a_preview(tmp_path: Path) -> None:
    result = runner.invoke(app, ["samples", "-n", "2", "--workers", "0", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "samples/s" in result.output
    assert (tmp_path / "pairs_preview.png").stat().st_size > 10_000
    assert "superpixels" in (tmp_path / "config.yaml").read_text()


def test_info_reports_topics_and_frames() -> None:
    result = runner.invoke(app, ["info", str(default_bag())])
    assert result.exit_code == 0, result.output
    assert "/lidar/points" in result.output and "frames: 16" in result.output


def test_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["info", str(tmp_path / "missing_bag")])
    assert result.exit_code == 1
    assert "ERROR" in result.output and "missing_bag" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  loader:\n    batch_size: 0\n")
    result = runner.invoke(app, ["samples", "--config", str(bad)])
    assert result.exit_code == 1 and "data.loader.batch_size" in result.output


def test_synth_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "b"
    out.mkdir()
    result = runner.invoke(app, ["synth", "--out", str(out), "--preset", "tiny"])
    assert result.exit_code == 1 and "exists" in result.output


def test_pretrain_runs_and_resumes_on_the_embedded_bag(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "data:\n  loader:\n    batch_size: 1\n    num_workers: 0\n"
        "pretrain:\n  epochs: 1\n  backbone:\n    preset: tiny\n"
        "  teacher:\n    form: strided\n    allow_random: true\n"
    )
    run = tmp_path / "run"
    args = ["pretrain", "--config", str(cfg), "--run-dir", str(run), "--max-steps", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 steps" in result.output and (run / "ckpt_last.pt").is_file()
    assert "backbone" in (run / "config.yaml").read_text()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and "step 4" in result.output


def test_pretrain_rejects_an_unknown_method(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pretrain", "--method", "byol", "--run-dir", str(tmp_path)])
    assert result.exit_code == 1 and "pretrain.method" in result.output

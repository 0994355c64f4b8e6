"""A run folder's config.yaml (and the samples preview) are written atomically: a write that dies leaves
the previous file whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lidar_ssl_core import fileio
from lidar_ssl_core.cli import app
from lidar_ssl_core.cli_common import write_run_config
from lidar_ssl_core.config import load_config

runner = CliRunner()


def test_the_cli_writes_the_run_config_through_the_atomic_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[Path] = []
    real = fileio.atomic_write_bytes

    def spy(path: Path | str, data: bytes) -> Path:
        written.append(Path(path))
        return real(path, data)

    monkeypatch.setattr(fileio, "atomic_write_bytes", spy)
    result = runner.invoke(app, ["samples", "-n", "1", "--workers", "0", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert tmp_path / "config.yaml" in written and tmp_path / "pairs_preview.png" in written
    assert "superpixels" in (tmp_path / "config.yaml").read_text()


def test_a_run_config_write_that_dies_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_run_config(tmp_path, load_config(overrides={"pretrain.epochs": 3}))
    before = (tmp_path / "config.yaml").read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_run_config(tmp_path, load_config(overrides={"pretrain.epochs": 7}))
    monkeypatch.undo()
    assert (tmp_path / "config.yaml").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary left behind

"""The continual-pretraining node writes its run folder's config.yaml atomically: a write that fails leaves
the previous file whole and no temporary beside it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from test_pretrain import bag  # noqa: F401  (module fixture)

from lidar_ssl_core.live.config import PretrainNodeConfig
from lidar_ssl_core.live.pretrain import ContinualPretraining, PretrainProgress


class _ReachedTrainingError(Exception):
    """Raised by the progress callback once the node reports training (the config is written by then)."""


def test_failed_config_write_keeps_the_previous_config_whole(
    bag: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("previous: run\n")
    node = PretrainNodeConfig(
        bags=str(bag),
        output=str(run),
        method="ppkt",
        overrides=["pretrain.backbone.preset=tiny", "pretrain.teacher.arch=filterbank"],
    )

    def reached(progress: PretrainProgress) -> None:
        if progress.state == "training":
            raise _ReachedTrainingError

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the write dies after its bytes, before publishing
    with pytest.raises(OSError, match="No space left"):
        ContinualPretraining(node, on_progress=reached).run(threading.Event())
    assert (run / "config.yaml").read_text() == "previous: run\n"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]

"""Learning-rate schedules (``pretrain.schedule``): ScaLR's per-iteration warm-up + cosine, its defaults for
``--method scalr``, exact resume mid-epoch, and the non-finite-loss error naming the lr key to lower."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from test_pretrain import _build, _weights, bag  # noqa: F401  (module fixture)

from lidar_ssl_core.config import load_config
from lidar_ssl_core.errors import ConfigError
from lidar_ssl_core.train import PretrainConfig, TrainingError, load_checkpoint
from lidar_ssl_core.train.schedule import warmup_cosine_factor


def test_warmup_cosine_factor_is_linear_then_cosine_to_the_floor() -> None:
    f = [warmup_cosine_factor(i, warmup=4, total=12, floor=0.1) for i in range(14)]
    assert f[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert f[8] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))  # half-way down the cosine
    assert f[12] == pytest.approx(0.1) and f[13] == pytest.approx(0.1)  # held at the floor past the end
    assert all(b < a for a, b in itertools.pairwise(f[4:13]))
    assert warmup_cosine_factor(0, warmup=0, total=10, floor=0.0) == 1.0  # no warm-up: from the peak


def test_scalr_defaults_to_its_schedule_and_a_set_key_wins() -> None:
    scalr = load_config(overrides={"pretrain.method": "scalr"}).pretrain
    assert (scalr.schedule, scalr.warmup_steps, scalr.min_lr) == ("warmup_cosine", 3500, 1e-5)
    mine = load_config(
        overrides={"pretrain.method": "scalr", "pretrain.schedule": "cosine", "pretrain.min_lr": 0.0}
    ).pretrain
    assert (mine.schedule, mine.warmup_steps, mine.min_lr) == ("cosine", 3500, 0.0)
    slidr = PretrainConfig()
    assert (slidr.schedule, slidr.warmup_steps, slidr.min_lr) == ("cosine", 0, 0.0)  # unchanged


def test_warmup_cosine_steps_every_iteration_and_resumes_exactly(bag: Path, tmp_path: Path) -> None:  # noqa: F811
    # 4 frames, batch 1, 1 epoch = 4 steps: 2 warm-up steps, then cosine from 0.1 to 0.01 over 2
    settings: dict[str, Any] = {
        "method": "ppkt",
        "teacher": {"arch": "filterbank"},  # a cheap frozen teacher: the schedule is what is tested
        "epochs": 1,
        "schedule": "warmup_cosine",
        "warmup_steps": 2,
        "min_lr": 0.01,
        "checkpoint_every": 2,
    }
    lrs: list[float] = []
    full = _build(bag, tmp_path / "full", **settings)
    full_result = full.fit(on_step=lambda s: lrs.append(s.lr))
    assert lrs == pytest.approx([0.0, 0.05, 0.1, 0.055], abs=1e-12)  # the lr each step ran with
    assert full.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # min_lr after the last step

    # killed after 3 steps: the last checkpoint is step 2, mid-epoch; its schedule is at step 2 too
    first = _build(bag, tmp_path / "cut", **settings)
    assert first.fit(max_steps=3).global_step == 3
    saved = load_checkpoint(first.checkpoint_path)
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (0, 2, 2)
    assert saved["scheduler"]["last_epoch"] == 2
    del first

    torch.manual_seed(1234)  # the resumed process starts with other RNG states
    resumed = _build(bag, tmp_path / "cut", **settings)
    assert resumed.resume()
    resumed_lrs: list[float] = []
    result = resumed.fit(on_step=lambda s: resumed_lrs.append(s.lr))
    assert result.finished and result.losses == full_result.losses[2:]
    assert resumed_lrs == lrs[2:]
    want, got = _weights(full), _weights(resumed)
    assert want.keys() == got.keys()
    assert [k for k in want if not torch.equal(want[k], got[k])] == []


def test_the_schedule_wraps_the_methods_own_optimiser(bag: Path, tmp_path: Path) -> None:  # noqa: F811
    trainer = _build(bag, tmp_path, method="scalr", teacher={"arch": "filterbank"}, epochs=1)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert isinstance(trainer.scheduler, torch.optim.lr_scheduler.LambdaLR)
    assert trainer.scheduler.base_lrs == [2e-3]  # scalr.lr, not pretrain.lr
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0  # the warm-up starts from 0
    with pytest.raises(ConfigError, match=r"pretrain\.min_lr.*above"):
        _build(bag, tmp_path, method="scalr", teacher={"arch": "filterbank"}, min_lr=0.01)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"method": "ppkt", "teacher": {"arch": "filterbank"}}, "pretrain.lr"),
        ({"method": "scalr", "teacher": {"arch": "filterbank"}}, "pretrain.scalr.lr"),
    ],
)
def test_non_finite_loss_names_the_learning_rate_key(
    bag: Path,  # noqa: F811
    tmp_path: Path,
    overrides: dict[str, Any],
    key: str,
) -> None:
    trainer = _build(bag, tmp_path, schedule="constant", **overrides)
    batch = next(iter(trainer.loader))
    batch["features"] = torch.full_like(batch["features"], float("nan"))  # a poisoned input
    with pytest.raises(TrainingError, match=rf"non-finite loss.*`{key}`.*-s {key}="):
        trainer.train_step(batch)

"""The pretraining trainer: exact resume, learning signal, every method, and checkpoint safety."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from lidar_ssl_core.config import DataConfig, load_config
from lidar_ssl_core.errors import ConfigError, LidarSslError
from lidar_ssl_core.synth import preset
from lidar_ssl_core.synth.bagfile import write_synthetic_bag
from lidar_ssl_core.train import (
    EpochBatchSampler,
    PretrainConfig,
    Pretrainer,
    TrainingCheckpointError,
    build_pretraining,
    load_checkpoint,
    save_checkpoint,
)
from lidar_ssl_core.train import checkpoint as checkpoint_module

N_FRAMES = 4


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = preset("tiny", n_frames=N_FRAMES, image_width=160, image_height=96, seed=5)
    return write_synthetic_bag(tmp_path_factory.mktemp("bags") / "tiny", cfg)


def _data(batch_size: int = 1) -> DataConfig:
    overrides: dict[str, Any] = {
        "data.loader.batch_size": batch_size,
        "data.loader.num_workers": 0,
        "data.augment.crop_size": (96, 64),
        "data.augment.min_pairs": 20,
        "data.superpixels.n_segments": 12,
    }
    return load_config(overrides=overrides).data


def _config(run_dir: Path, **overrides: Any) -> PretrainConfig:
    base: dict[str, Any] = {
        "run_dir": run_dir,
        "epochs": 2,
        "lr": 0.1,
        "checkpoint_every": 0,
        "backbone": {"preset": "tiny"},
        "teacher": {"form": "strided"},  # output stride 32: cheap on CPU, same code path
        "loss": {"num_matches": 256},
    }
    return PretrainConfig.model_validate({**base, **overrides})


def _build(bag: Path, run_dir: Path, batch_size: int = 1, **overrides: Any) -> Pretrainer:
    return build_pretraining(_config(run_dir, **overrides), _data(batch_size), bags=[bag], device="cpu")


def _weights(trainer: Pretrainer) -> dict[str, torch.Tensor]:
    out = {f"backbone.{k}": v.clone() for k, v in trainer.backbone.state_dict().items()}
    out.update({f"head.{k}": v.clone() for k, v in trainer.method.teacher.head.state_dict().items()})
    return out


def test_resumed_run_ends_with_exactly_the_weights_of_an_uninterrupted_run(bag: Path, tmp_path: Path) -> None:
    # 4 frames, batch 1, 2 epochs = 8 steps; checkpoints every 3 steps and at each epoch end
    full = _build(bag, tmp_path / "full", checkpoint_every=3)
    full_result = full.fit()
    assert full_result.finished and full_result.global_step == 8 and full.epoch == 2
    assert full.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine down to 0

    # interrupted after 7 steps: the last checkpoint is step 6 (epoch 2, 2 batches in), step 7 is lost
    first = _build(bag, tmp_path / "cut", checkpoint_every=3)
    assert first.fit(max_steps=7).global_step == 7
    saved = load_checkpoint(first.checkpoint_path)
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 2, 6)
    del first

    torch.manual_seed(1234)  # the resumed process starts with other RNG states
    resumed = _build(bag, tmp_path / "cut", checkpoint_every=3)
    assert resumed.resume()
    result = resumed.fit()
    assert result.finished and result.global_step == 8 and len(result.losses) == 2
    assert result.losses == full_result.losses[6:]
    expected, got = _weights(full), _weights(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    # and the optimiser's momentum buffers too
    for a, b in zip(full.optimizer.state.values(), resumed.optimizer.state.values(), strict=True):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


def test_slidr_loss_is_finite_and_decreases_on_a_fixed_batch(bag: Path, tmp_path: Path) -> None:
    trainer = _build(bag, tmp_path, batch_size=2, method="slidr", lr=0.2)
    batch = next(iter(trainer.loader))
    losses = [trainer.train_step(batch) for _ in range(10)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses
    assert sum(b < a for a, b in itertools.pairwise(losses)) >= 8, losses  # steadily down


@pytest.mark.parametrize("method", ["ppkt", "slidr", "st-slidr", "st-ppkt"])
def test_every_method_trains_the_student_and_head_only(bag: Path, tmp_path: Path, method: str) -> None:
    trainer = _build(bag, tmp_path, batch_size=2, method=method)
    batch = next(iter(trainer.loader))
    assert ("superpixels" in batch) == (method in ("slidr", "st-slidr"))  # computed only when needed
    before = _weights(trainer)
    frozen = {k: v.clone() for k, v in trainer.method.teacher.backbone.state_dict().items()}
    loss = trainer.train_step(batch)
    assert loss == pytest.approx(loss) and 0.0 < loss < 50.0
    after = _weights(trainer)
    assert not torch.equal(before["head.weight"], after["head.weight"])
    changed = [k for k in before if k.startswith("backbone.") and not torch.equal(before[k], after[k])]
    assert len(changed) > 10
    for k, v in trainer.method.teacher.backbone.state_dict().items():
        assert torch.equal(v, frozen[k]), k


def test_batch_sampler_starts_mid_epoch_with_the_same_order() -> None:
    sampler = EpochBatchSampler(10, 3, seed=7, shuffle=True, drop_last=False)
    sampler.set_epoch(2)
    whole = list(sampler)
    assert sorted(i for b in whole for i in b) == list(range(10)) and len(whole) == len(sampler) == 4
    sampler.set_start(2)
    assert list(sampler) == whole[2:]
    assert list(sampler) == whole  # the start is used once
    sampler.set_epoch(3)
    assert list(sampler) != whole


def _state() -> dict[str, Any]:
    return {
        "format": checkpoint_module.FORMAT,
        "backbone": {"w": torch.arange(1000.0)},
        "teacher_head": {},
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 1,
        "step_in_epoch": 2,
        "global_step": 3,
        "rng": checkpoint_module.capture_rng(),
    }


def test_truncated_or_foreign_checkpoint_is_a_typed_error_naming_the_file(tmp_path: Path) -> None:
    path = save_checkpoint(_state(), tmp_path / "ckpt_last.pt")
    assert load_checkpoint(path)["global_step"] == 3
    data = path.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrainingCheckpointError, match=r"truncated\.pt") as info:
        load_checkpoint(truncated)
    assert isinstance(info.value, LidarSslError)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(TrainingCheckpointError, match=r"garbage\.pt"):
        load_checkpoint(garbage)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(TrainingCheckpointError, match=r"foreign\.pt.*not a lidar_ssl"):
        load_checkpoint(foreign)

    with pytest.raises(TrainingCheckpointError, match=r"missing\.pt.*does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    import random

    import numpy as np

    path = save_checkpoint(_state(), tmp_path / "ckpt.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    checkpoint_module.restore_rng(load_checkpoint(path)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_failed_write_leaves_no_partial_file_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = save_checkpoint(_state(), tmp_path / "ckpt_last.pt")
    before = good.read_bytes()

    def failing_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the disk, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(TrainingCheckpointError, match=r"ckpt_last\.pt.*No space left"):
        save_checkpoint({**_state(), "global_step": 99}, good)
    with pytest.raises(TrainingCheckpointError, match=r"fresh\.pt"):
        save_checkpoint(_state(), tmp_path / "fresh.pt")

    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_last.pt"]  # no temp file, no fresh.pt
    monkeypatch.undo()
    assert load_checkpoint(good)["global_step"] == 3


def test_config_is_strict_and_has_the_paper_defaults() -> None:
    cfg = PretrainConfig()
    assert (cfg.epochs, cfg.lr, cfg.momentum, cfg.dampening, cfg.weight_decay) == (50, 0.5, 0.9, 0.1, 1e-4)
    with pytest.raises(ValueError, match=r"extra"):
        PretrainConfig.model_validate({"learning_rate": 1.0})
    with pytest.raises(ValueError, match=r"method"):
        PretrainConfig.model_validate({"method": "pointcontrast"})
    with pytest.raises(ValueError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_sync_batchnorm_off_cuda_is_a_config_error_naming_the_setting(tmp_path: Path) -> None:
    # rejected before anything is built (SyncBatchNorm would fail at the first step on CPU / gloo)
    with pytest.raises(ConfigError, match=r"pretrain\.sync_batchnorm.*cpu"):
        build_pretraining(
            _config(tmp_path, sync_batchnorm=True), _data(), bags=[tmp_path / "none"], device="cpu"
        )


def test_missing_scheduler_state_is_a_warning_not_a_crash(
    bag: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trainer = _build(bag, tmp_path, method="ppkt", epochs=1)
    state = trainer.state_dict()
    state["scheduler"] = None
    path = save_checkpoint(state, tmp_path / "ckpt_last.pt")
    with caplog.at_level(logging.WARNING):
        trainer.load(path)
    assert "no scheduler state" in caplog.text


def test_resuming_with_another_setup_is_refused_with_the_differences(bag: Path, tmp_path: Path) -> None:
    first = _build(bag, tmp_path)
    first.save()
    for overrides, named in (
        ({"backbone": {"preset": "small"}}, "pretrain.backbone"),  # would crash in load_state_dict
        ({"method": "ppkt"}, "pretrain.method"),
        ({"epochs": 3}, "pretrain.epochs"),  # the restored schedule would not match the new length
    ):
        other = _build(bag, tmp_path, **overrides)
        with pytest.raises(ConfigError, match=f"belongs to another run.*{named}.*--no-resume"):
            other.resume()
    same = _build(bag, tmp_path, log_every=3)  # logging settings may change
    assert same.resume()

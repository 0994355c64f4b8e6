"""Multi-process training on CPU (gloo): sharded batches, cross-process negatives, torchrun end to end;
and the scalar log (metrics.jsonl, TensorBoard)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lidar_ssl_core.losses import all_gather_rows, infonce
from lidar_ssl_core.synth import preset
from lidar_ssl_core.synth.bagfile import write_synthetic_bag
from lidar_ssl_core.train import EpochBatchSampler, TrainingError, load_checkpoint
from lidar_ssl_core.train.scalars import ScalarLog, read_metrics

ROWS = (3, 5)  # rows per process: unequal on purpose (padding inside the gather)
DIM = 8


def test_sharded_sampler_splits_each_global_batch_between_the_processes() -> None:
    single = EpochBatchSampler(11, 4, seed=3, shuffle=True, drop_last=True)
    ranks = [
        EpochBatchSampler(11, 2, seed=3, shuffle=True, drop_last=True, rank=r, world_size=2) for r in range(2)
    ]
    for s in (single, *ranks):
        s.set_epoch(1)
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 2
    for global_batch, b0, b1 in zip(single, ranks[0], ranks[1], strict=True):
        assert b0 + b1 == global_batch  # same frames as one process with the global batch
    ranks[1].set_start(1)  # resuming mid-epoch keeps the shard
    assert list(ranks[1]) == [list(single)[1][2:]]
    with pytest.raises(TrainingError, match="drop_last"):
        EpochBatchSampler(11, 2, seed=3, shuffle=True, drop_last=False, rank=0, world_size=2)
    with pytest.raises(TrainingError, match="rank 2"):
        EpochBatchSampler(11, 2, seed=3, shuffle=True, drop_last=True, rank=2, world_size=2)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(sum(ROWS), DIM, generator=g, dtype=torch.float64), dim=1)
    k = torch.nn.functional.normalize(torch.randn(sum(ROWS), DIM, generator=g, dtype=torch.float64), dim=1)
    return q, k


def _gather_worker(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    q_all, k_all = _inputs()
    lo = sum(ROWS[:rank])
    q = q_all[lo : lo + ROWS[rank]].clone().requires_grad_(True)
    k = k_all[lo : lo + ROWS[rank]].clone().requires_grad_(True)
    loss = infonce(all_gather_rows(q), all_gather_rows(k), temperature=0.1)
    loss.backward()
    assert q.grad is not None and k.grad is not None
    torch.save({"loss": loss.detach(), "q": q.grad, "k": k.grad}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_gathered_negatives_give_the_global_loss_and_its_gradient(tmp_path: Path) -> None:
    world = len(ROWS)
    mp.spawn(_gather_worker, args=(world, str(tmp_path / "store"), str(tmp_path / "grad")), nprocs=world)

    q, k = _inputs()
    q.requires_grad_(True)
    k.requires_grad_(True)
    expected = infonce(q, k, temperature=0.1)
    expected.backward()
    assert q.grad is not None and k.grad is not None
    lo = 0
    for rank, n in enumerate(ROWS):
        got = torch.load(tmp_path / f"grad.{rank}", weights_only=True)
        torch.testing.assert_close(got["loss"], expected.detach())  # every process: the global loss
        # each process receives the sum of all processes' gradients (world x dL/dx); DDP's averaging of
        # the parameter gradients divides by world again, which leaves exactly dL/dtheta
        torch.testing.assert_close(got["q"], world * q.grad[lo : lo + n])
        torch.testing.assert_close(got["k"], world * k.grad[lo : lo + n])
        lo += n


def test_all_gather_rows_is_the_identity_in_a_single_process() -> None:
    x = torch.randn(4, 3)
    assert all_gather_rows(x) is x


def test_scalar_log_writes_rows_and_drops_the_replayed_steps_on_resume(tmp_path: Path) -> None:
    with ScalarLog(tmp_path) as log:
        for step in range(1, 6):
            log.write(step, {"loss/train": 1.0 / step, "lr": 0.1})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "loss/tr')  # torn last line of a killed run
    with ScalarLog(tmp_path) as log:
        log.truncate_after(3)  # the checkpoint was at step 3: steps 4.. are replayed
        log.write(4, {"loss/train": float("nan"), "lr": 0.1})
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["loss/train"] == pytest.approx(0.5) and rows[3]["loss/train"] is None
    assert ScalarLog(None).path is None  # non-main processes write nothing


def test_tensorboard_receives_the_same_scalars(tmp_path: Path) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    with ScalarLog(tmp_path, tensorboard=True) as log:
        for step in range(1, 4):
            log.write(step, {"loss/train": float(step), "throughput/samples_per_s": 2.0})
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss/train", "throughput/samples_per_s"}
    assert [e.value for e in acc.Scalars("loss/train")] == [1.0, 2.0, 3.0]


@pytest.mark.slow
def test_two_processes_under_torchrun_train_and_write_one_checkpoint(tmp_path: Path) -> None:
    bag = write_synthetic_bag(
        tmp_path / "bag", preset("tiny", n_frames=4, image_width=160, image_height=96, seed=5)
    )
    config = tmp_path / "cfg.yaml"
    config.write_text(
        "data:\n  loader:\n    batch_size: 1\n    num_workers: 0\n"
        "  augment:\n    crop_size: [96, 64]\n    min_pairs: 20\n  superpixels:\n    n_segments: 12\n"
        "pretrain:\n  method: slidr\n  epochs: 1\n  lr: 0.1\n  backbone:\n    preset: tiny\n"
        "  teacher:\n    form: strided\n  loss:\n    gather_negatives: true\n"
    )
    run = tmp_path / "run"
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",  # keep the collectives on this machine
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "lidar_ssl_core",
        "pretrain",
        "--config",
        str(config),
        "--bags",
        str(bag),
        "--run-dir",
        str(run),
        "--no-progress",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # 4 frames, 1 per process, 2 processes: 2 global steps make the epoch
    state = load_checkpoint(run / "ckpt_last.pt")
    assert state["epoch"] == 1 and state["global_step"] == 2
    assert "module." not in next(iter(state["backbone"]))  # the unwrapped model's names, not DDP's
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # written once (rank 0), not once per process
    assert all(r["loss/train"] is not None and r["throughput/samples_per_s"] > 0 for r in rows)
    assert "on 2 process(es)" in done.stderr + done.stdout

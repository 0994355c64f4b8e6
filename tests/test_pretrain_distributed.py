"""Multi-process training on CPU (gloo): sharded batches, cross-process negatives, agreement between the
processes (resume, non-finite loss, failed checkpoint write), torchrun end to end; and the scalar log
(metrics.jsonl, TensorBoard)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lidar_ssl_core.losses import all_gather_rows, infonce
from lidar_ssl_core.models.image_teacher import TeacherOutput
from lidar_ssl_core.synth import preset
from lidar_ssl_core.synth.bagfile import write_synthetic_bag
from lidar_ssl_core.train import (
    EpochBatchSampler,
    LossOptions,
    PretrainConfig,
    Pretrainer,
    TrainingCheckpointError,
    TrainingError,
    load_checkpoint,
    save_checkpoint,
)
from lidar_ssl_core.train import pretrain as pretrain_module
from lidar_ssl_core.train.distributed import DistContext
from lidar_ssl_core.train.methods import MethodOutput, MethodSetup, PretrainMethod, StepContext
from lidar_ssl_core.train.methods.ppkt import ppkt_batch_loss, ppkt_local_rows_loss
from lidar_ssl_core.train.pretrain import _rank_seeds
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


def _single_process_reference() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss and gradients of one process holding every row: what the distributed runs must reproduce."""
    q, k = _inputs()
    q.requires_grad_(True)
    k.requires_grad_(True)
    loss = infonce(q, k, temperature=0.1)
    loss.backward()  # type: ignore[no-untyped-call]
    assert q.grad is not None and k.grad is not None
    return loss.detach(), q.grad, k.grad


def _gather_worker(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    q_all, k_all = _inputs()
    lo = sum(ROWS[:rank])
    q = q_all[lo : lo + ROWS[rank]].clone().requires_grad_(True)
    k = k_all[lo : lo + ROWS[rank]].clone().requires_grad_(True)
    loss = infonce(all_gather_rows(q), all_gather_rows(k), temperature=0.1)
    loss.backward()  # type: ignore[no-untyped-call]
    assert q.grad is not None and k.grad is not None
    torch.save({"loss": loss.detach(), "q": q.grad, "k": k.grad}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_gathered_negatives_give_the_global_loss_and_its_gradient(tmp_path: Path) -> None:
    world = len(ROWS)
    mp.spawn(  # type: ignore[attr-defined,no-untyped-call]
        _gather_worker, args=(world, str(tmp_path / "store"), str(tmp_path / "grad")), nprocs=world
    )

    expected, q_grad, k_grad = _single_process_reference()
    lo = 0
    for rank, n in enumerate(ROWS):
        got = torch.load(tmp_path / f"grad.{rank}", weights_only=True)
        torch.testing.assert_close(got["loss"], expected.detach())  # every process: the global loss
        # each process receives the sum of all processes' gradients (world x dL/dx); DDP's averaging of
        # the parameter gradients divides by world again, which leaves exactly dL/dtheta
        torch.testing.assert_close(got["q"], world * q_grad[lo : lo + n])
        torch.testing.assert_close(got["k"], world * k_grad[lo : lo + n])
        lo += n


def _spawn(fn: Any, args: tuple[Any, ...], nprocs: int, timeout_s: float = 60.0) -> None:
    """mp.spawn that fails instead of hanging when a worker waits forever."""
    ctx = mp.spawn(fn, args=args, nprocs=nprocs, join=False)  # type: ignore[attr-defined,no-untyped-call]
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=max(deadline - time.monotonic(), 0.1)):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"workers still running after {timeout_s} s: a process was left waiting")


def _local_rows_worker(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=30)
    )
    q_all, k_all = _inputs()
    lo = sum(ROWS[:rank])
    q = q_all[lo : lo + ROWS[rank]].clone().requires_grad_(True)
    k = k_all[lo : lo + ROWS[rank]].clone().requires_grad_(True)
    loss = ppkt_local_rows_loss(q, k, temperature=0.1, gather=all_gather_rows)
    loss.backward()  # type: ignore[no-untyped-call]
    assert q.grad is not None and k.grad is not None
    torch.save({"loss": loss.detach(), "q": q.grad, "k": k.grad}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_ppkt_local_rows_against_gathered_keys_give_the_global_loss_and_its_gradient(tmp_path: Path) -> None:
    """Each process computes (n_local, N) logits only; the mean over processes is the global loss and the
    gradients are those of gathering both sides (world x dL/dx before DDP's averaging)."""
    world = len(ROWS)
    _spawn(_local_rows_worker, (world, str(tmp_path / "store"), str(tmp_path / "grad")), world)

    expected, q_grad, k_grad = _single_process_reference()
    got = [torch.load(tmp_path / f"grad.{rank}", weights_only=True) for rank in range(world)]
    torch.testing.assert_close(sum(g["loss"] for g in got) / world, expected.detach())
    assert not torch.allclose(got[0]["loss"], got[1]["loss"])  # each process its own share
    lo = 0
    for rank, n in enumerate(ROWS):
        torch.testing.assert_close(got[rank]["q"], world * q_grad[lo : lo + n])
        torch.testing.assert_close(got[rank]["k"], world * k_grad[lo : lo + n])
        lo += n


def test_ppkt_with_gather_routes_through_the_local_rows_loss_and_matches_ppkt_in_one_process() -> None:
    g = torch.Generator().manual_seed(1)
    feats = torch.nn.functional.normalize(torch.randn(30, DIM, generator=g, dtype=torch.float64), dim=1)
    pixels = torch.nn.functional.normalize(torch.randn(2, DIM, 6, 7, generator=g, dtype=torch.float64), dim=1)
    n_pairs = 50
    batch = {
        "pairing_voxels": torch.randint(0, 30, (n_pairs,), generator=g),
        "pairing_images": torch.stack(
            [
                torch.randint(0, 2, (n_pairs,), generator=g),
                torch.randint(0, 6, (n_pairs,), generator=g),
                torch.randint(0, 7, (n_pairs,), generator=g),
            ],
            1,
        ),
    }
    teacher = TeacherOutput(pixels, pixels)
    options = LossOptions(num_matches=20)
    plain = ppkt_batch_loss(batch, feats, teacher, options, torch.Generator().manual_seed(5))
    calls: list[int] = []

    def gather(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x

    local = ppkt_batch_loss(batch, feats, teacher, options, torch.Generator().manual_seed(5), gather)
    assert calls == [20, 1]  # the keys and the row counts are gathered, not the anchors
    torch.testing.assert_close(local, plain)  # one process: its share is the whole loss


class _Method(PretrainMethod):
    """A stand-in method with one trainable head (these tests check the processes' agreement)."""

    name = "test-stand-in"

    def __init__(self, config: PretrainConfig) -> None:
        super().__init__(config, MethodSetup(student_dim=2))
        self.head = torch.nn.Linear(2, 2)

    def forward(self, batch: Any, point_feats: torch.Tensor, step: StepContext) -> MethodOutput:  # type: ignore[override]
        return MethodOutput(self.head(point_feats).sum(), {})


SEED = 3


def _tiny_trainer(run_dir: Path, rank: int, world: int) -> Pretrainer:
    """A Pretrainer with stand-in modules: what these tests check is the processes' agreement, not a model."""
    torch.manual_seed(0)
    config = PretrainConfig(run_dir=run_dir, seed=SEED, checkpoint_every=0)
    backbone, method = torch.nn.Linear(3, 2), _Method(config)
    params = [*backbone.parameters(), *method.parameters()]
    return Pretrainer(
        config,
        backbone=backbone,  # type: ignore[arg-type]
        method=method,
        loader=torch.utils.data.DataLoader(list(range(4)), batch_size=1),  # type: ignore[arg-type]
        optimizer=torch.optim.SGD(params, lr=0.1),
        scheduler=None,
        dist=DistContext(rank=rank, world_size=world),
    )


def _outcome(fn: Any) -> list[Any]:
    try:
        return ["ok", fn()]
    except Exception as err:
        return [type(err).__name__, str(err)]


def _agreement_worker(rank: int, world: int, store: str, root: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=20)
    )
    base = Path(root)
    shared, private = base / "shared", base / f"private{rank}"
    results: dict[str, Any] = {}

    # step statistics of the global batch: pairs summed, loss averaged
    stats = _tiny_trainer(shared, rank, world)._stats(
        float(rank), 0.1, {"pairing_points": torch.zeros(3 + rank)}, 1.0
    )
    results["stats"] = [stats.pairs, stats.loss]

    # resume from a shared run folder: every process at step 5, RNGs re-seeded per rank
    first = _tiny_trainer(shared, rank, world)
    first.global_step, first.step_in_epoch = 5, 1
    first.save()
    resumed = _tiny_trainer(shared, rank, world)
    results["resume"] = _outcome(resumed.resume)
    results["positions"] = [resumed.epoch, resumed.step_in_epoch, resumed.global_step]
    results["seeds"] = [resumed.loss_generator.initial_seed(), torch.initial_seed()]

    # rank 0 finds a checkpoint that rank 1 cannot see (a run folder per node)
    results["not_shared"] = _outcome(_tiny_trainer(shared if rank == 0 else private, rank, world).resume)

    # a checkpoint per process, at different steps
    copy = base / f"copy{rank}"
    state = first.state_dict()
    state["global_step"] = 5 + rank
    save_checkpoint(state, copy / "ckpt_last.pt")
    results["positions_differ"] = _outcome(_tiny_trainer(copy, rank, world).resume)

    # a non-finite loss on rank 1 only
    trainer = _tiny_trainer(shared, rank, world)
    weight = trainer.backbone.weight  # type: ignore[attr-defined]
    trainer.forward_loss = lambda batch: weight.sum() * (float("nan") if rank == 1 else 1.0)  # type: ignore[method-assign]
    results["non_finite"] = _outcome(lambda: trainer.train_step({}))

    # the checkpoint write fails on rank 0
    def failing_save(state: Any, path: Path) -> Path:
        raise TrainingCheckpointError(f"cannot write checkpoint {path}: No space left on device")

    setattr(pretrain_module, "save_checkpoint", failing_save)  # noqa: B010  (spawned process: no restore)
    results["save_fails"] = _outcome(lambda: _tiny_trainer(shared, rank, world).save())

    dist.barrier()  # everyone is still in step: nobody was left waiting
    (base / f"result.{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def test_processes_agree_on_resume_non_finite_loss_and_failed_writes(tmp_path: Path) -> None:
    world = 2
    _spawn(_agreement_worker, (world, str(tmp_path / "store"), str(tmp_path)), world, timeout_s=90.0)
    results = [json.loads((tmp_path / f"result.{rank}.json").read_text()) for rank in range(world)]
    r0, r1 = results

    assert r0["stats"] == r1["stats"] == [7, 0.5]  # 3 + 4 pairs; loss (0 + 1) / 2

    assert r0["resume"] == r1["resume"] == ["ok", True]
    assert r0["positions"] == r1["positions"] == [0, 1, 5]
    for rank, r in enumerate(results):  # deterministic in (seed, rank, step), different per rank
        assert r["seeds"] == _rank_seeds(SEED, rank, 5)[:2]
    assert r0["seeds"][0] != r1["seeds"][0]

    assert r0["not_shared"][0] == r1["not_shared"][0] == "TrainingError"
    assert "shared by all nodes" in r1["not_shared"][1]
    assert "another process could not read" in r0["not_shared"][1]

    assert r0["positions_differ"][0] == r1["positions_differ"][0] == "TrainingError"
    assert "(0, 1, 5) and (0, 1, 6)" in r0["positions_differ"][1]

    assert r0["non_finite"][0] == r1["non_finite"][0] == "TrainingError"
    assert "non-finite loss nan" in r1["non_finite"][1]
    assert "non-finite loss on another process" in r0["non_finite"][1]

    assert r0["save_fails"] == ["TrainingCheckpointError", r0["save_fails"][1]]
    assert "No space left" in r0["save_fails"][1]
    assert r1["save_fails"][0] == "TrainingError" and "rank 0 could not write" in r1["save_fails"][1]


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


def test_scalar_log_rewrite_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ScalarLog(tmp_path) as log:
        for step in range(1, 4):
            log.write(step, {"loss/train": float(step)})
    before = (tmp_path / "metrics.jsonl").read_bytes()

    def failing_replace(self: Path, target: Path) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"), ScalarLog(tmp_path) as log:
        log.truncate_after(1)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file left
    monkeypatch.undo()
    with ScalarLog(tmp_path) as log:
        log.truncate_after(1)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]


def test_tensorboard_drops_the_replayed_steps_on_resume(tmp_path: Path) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    with ScalarLog(tmp_path, tensorboard=True) as log:
        for step in range(1, 6):
            log.write(step, {"loss/train": float(step)})
    with ScalarLog(tmp_path, tensorboard=True) as log:  # resumed from the checkpoint of step 3
        log.truncate_after(3)
        for step in (4, 5):
            log.write(step, {"loss/train": 10.0 * step})
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    events = acc.Scalars("loss/train")
    assert [e.step for e in events] == [1, 2, 3, 4, 5]  # no duplicated steps 4 and 5
    assert [e.value for e in events] == [1.0, 2.0, 3.0, 40.0, 50.0]
    assert [r["loss/train"] for r in read_metrics(tmp_path)] == [1.0, 2.0, 3.0, 40.0, 50.0]


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
        "  teacher:\n    form: strided\n    allow_random: true\n  loss:\n    gather_negatives: true\n"
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

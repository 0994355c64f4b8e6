"""Crash tests (issue 13): pretraining and fine-tuning killed with SIGKILL at random moments, including
inside checkpoint writes, resume to exactly the weights of an uninterrupted run.

Runs go through the CLI (``python -m lidar_ssl_core ...``) in subprocesses, as a user or a scheduler
would run them. A small wrapper only widens the checkpoint-write window (a pause before the fsync of
every atomic write), so that a kill lands inside a write when the test asks for it; the kill moments
are drawn from ``LIDAR_SSL_CRASH_SEED`` (default 13).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from lidar_ssl_core.synth import preset
from lidar_ssl_core.synth.bagfile import write_synthetic_bag
from lidar_ssl_core.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

WRAPPER = """
import os, runpy, sys, time
_fsync = os.fsync
def slow_fsync(fd):
    time.sleep(float(os.environ["LIDAR_SSL_CRASH_WRITE_PAUSE_S"]))
    _fsync(fd)
os.fsync = slow_fsync
sys.argv = ["lidar_ssl_core", *sys.argv[1:]]
runpy.run_module("lidar_ssl_core", run_name="__main__", alter_sys=True)
"""

CONFIG = """
data:
  loader: {num_workers: 0, batch_size: 1}
  augment: {crop_size: [96, 64], min_pairs: 20}
  superpixels: {n_segments: 12}
  voxels: {size: [0.8, 8.0, 0.8]}
pretrain:
  epochs: 2
  checkpoint_every: 1
  backbone: {preset: tiny}
  teacher: {arch: filterbank}
downstream:
  num_workers: 0
  batch_size: 2
  epochs: 3
  backbone: {preset: tiny}
"""

SEED = int(os.environ.get("LIDAR_SSL_CRASH_SEED", "13"))
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("crash")
    bag = write_synthetic_bag(
        root / "bag", preset("tiny", n_frames=4, image_width=160, image_height=96, seed=5)
    )
    cfg = root / "cfg.yaml"
    cfg.write_text(CONFIG)
    return bag, cfg


def _launch(args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LIDAR_SSL_CRASH_WRITE_PAUSE_S": "0.1"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-c", WRAPPER, *args], stdout=out, stderr=out, env=env)


def _temporaries(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    return [p for p in run_dir.iterdir() if p.name.startswith(".") and ".tmp" in p.name]


def _kill_inside_write(proc: subprocess.Popen[bytes], run_dir: Path, nth: int) -> bool:
    """SIGKILL ``proc`` while its ``nth`` atomic write of this run is in progress; False if it ended first."""
    present: set[str] = set()
    appeared = 0
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        now = {p.name for p in _temporaries(run_dir)}
        appeared += len(now - present)  # a write starts when its temporary appears
        present = now
        if appeared >= nth:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.wait(timeout=RUN_TIMEOUT_S)
    return False


def _kill_after(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _tensors(value: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint by its path (non-tensor leaves such as paths are left out)."""
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    items: list[tuple[Any, Any]] = []
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list | tuple):
        items = list(enumerate(value))
    out: dict[str, torch.Tensor] = {}
    for key, child in items:
        out.update(_tensors(child, f"{prefix}/{key}"))
    return out


def _crash_and_resume(
    args: Sequence[str], run_dir: Path, checkpoint: str, log: Path, formats: tuple[str, ...]
) -> int:
    """Kill runs of ``args`` (in writes, at random moments), let one finish; returns kills inside writes."""
    rng = random.Random(SEED)
    in_writes = 0
    for plan in ("write", "random", "write"):
        proc = _launch(args, log)
        if plan == "write":
            killed = _kill_inside_write(proc, run_dir, nth=rng.randint(1, 3))
            in_writes += killed
        else:
            killed = _kill_after(proc, rng.uniform(2.0, 12.0))
        if killed and (run_dir / checkpoint).exists():  # never half a checkpoint under the real name
            load_checkpoint(run_dir / checkpoint, formats=formats, required=())
        if not killed:
            assert proc.returncode == 0, log.read_text()[-3000:]
    final = _launch(args, log)
    assert final.wait(timeout=RUN_TIMEOUT_S) == 0, log.read_text()[-3000:]
    assert _temporaries(run_dir) == [], "temporaries of killed writes were not cleaned up"
    return in_writes


def _assert_same_weights(reference: Path, resumed: Path) -> None:
    """Weights, optimiser and schedule state bit-identical. The global RNG states stored at the end are
    not compared: a resumed process draws from them at other moments relative to its checkpoint (e.g.
    the DataLoader iterator's base seed, drawn when the resumed epoch starts), without effect on what
    is trained (nothing trained reads them: every tensor compared here is equal)."""
    ref = _tensors(torch.load(reference, map_location="cpu", weights_only=True))
    got = _tensors(torch.load(resumed, map_location="cpu", weights_only=True))
    ref = {k: v for k, v in ref.items() if not k.startswith("/rng/")}
    got = {k: v for k, v in got.items() if not k.startswith("/rng/")}
    assert ref.keys() == got.keys()
    different = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert different == [], f"{len(different)} of {len(ref)} tensors differ, e.g. {different[:5]}"


def _crashed_and_reference(
    command: Sequence[str], tmp_path: Path, checkpoint: str, formats: tuple[str, ...]
) -> tuple[Path, Path]:
    """Run ``command`` uninterrupted and, alongside, killed and resumed; both checkpoints, compared."""

    def args(run_dir: Path) -> list[str]:
        return [*command, "--run-dir", str(run_dir)]

    reference = _launch(args(tmp_path / "reference"), tmp_path / "reference.log")
    in_writes = _crash_and_resume(
        args(tmp_path / "crashed"), tmp_path / "crashed", checkpoint, tmp_path / "crashed.log", formats
    )
    assert reference.wait(timeout=RUN_TIMEOUT_S) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    assert in_writes >= 1
    expected, got = tmp_path / "reference" / checkpoint, tmp_path / "crashed" / checkpoint
    _assert_same_weights(expected, got)
    return expected, got


def test_pretraining_killed_at_random_moments_resumes_to_the_uninterrupted_weights(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    bag, cfg = setup
    command = ["pretrain", "-c", str(cfg), "-b", str(bag), "--no-progress"]
    _, got = _crashed_and_reference(command, tmp_path, "ckpt_last.pt", ("lidar_ssl.pretrain/1",))
    assert load_checkpoint(got, required=())["global_step"] == 8


def test_fine_tuning_killed_at_random_moments_resumes_to_the_uninterrupted_weights(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    bag, cfg = setup
    command = ["finetune", "-c", str(cfg), "--bags", str(bag)]
    _, got = _crashed_and_reference(command, tmp_path, "model_last.pt", ("lidar_ssl.segmentation/1",))
    assert load_checkpoint(got, formats=("lidar_ssl.segmentation/1",), required=())["epoch"] == 3

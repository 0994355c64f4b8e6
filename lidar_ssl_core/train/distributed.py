"""Multi-GPU / multi-node training through torchrun: one process per GPU, DistributedDataParallel.

torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous variables; :func:`init_distributed`
reads them and joins the process group (NCCL on CUDA, gloo on CPU, which also makes the path testable on a
CPU-only machine). Without those variables it is a single-process run and nothing is initialised.

    torchrun --nproc-per-node 8 -m lidar_ssl_core pretrain --config cfg.yaml
    torchrun --nnodes 2 --node-rank 0 --master-addr host0 --nproc-per-node 8 -m lidar_ssl_core pretrain ...

``data.loader.batch_size`` is per process: the global batch is ``batch_size * world_size``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from lidar_ssl_core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as err:
        raise ConfigError(
            f"environment variable {name}={value!r} is not an integer (set by torchrun)"
        ) from err


def launched_by_torchrun() -> bool:
    """True when torchrun (or an equivalent launcher) started this process as one of several."""
    world = _env_int("WORLD_SIZE")
    return world is not None and world > 1


def init_distributed(device: str | None = None, *, timeout_s: float = 1800.0) -> DistContext:
    """Join the torchrun process group when there is one; pick this process's device.

    ``device`` is the configured device (None = CUDA when available). Under torchrun on CUDA each process
    takes ``cuda:LOCAL_RANK``. Calling it again returns the existing context.
    """
    want = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not launched_by_torchrun():
        return DistContext(device=want)
    rank, local_rank, world = _env_int("RANK") or 0, _env_int("LOCAL_RANK") or 0, _env_int("WORLD_SIZE") or 1
    if want.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices: "
                "lower torchrun --nproc-per-node"
            )
        want = torch.device("cuda", local_rank)
        torch.cuda.set_device(want)
    if not dist.is_initialized():
        backend = "nccl" if want.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        log.info("joined process group: rank %d of %d (%s, %s)", rank, world, backend, want)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world, device=want)


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def shutdown_distributed() -> None:
    """Leave the process group (no-op when not distributed)."""
    if _initialised():
        dist.destroy_process_group()


def all_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sums of ``values`` over the processes, in one collective (the values when not
    distributed). ``device`` must suit the backend (CUDA for NCCL, CPU for gloo)."""
    if not _initialised():
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def all_true(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on every process: lets all processes take the same branch (raise together
    instead of leaving the others waiting in the next collective). ``flag`` itself when not distributed."""
    if not _initialised():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_flag(flag: bool, device: torch.device, *, src: int = 0) -> bool:
    """Process ``src``'s ``flag`` on every process (``flag`` itself when not distributed)."""
    if not _initialised():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(t, src=src)
    return bool(t.item())


def all_min_max(values: Sequence[int], device: torch.device) -> tuple[list[int], list[int]]:
    """Element-wise (minimum, maximum) of integers over the processes, e.g. to check that every process is
    at the same data position. (values, values) when not distributed."""
    if not _initialised():
        return [int(v) for v in values], [int(v) for v in values]
    lo = torch.tensor(list(values), dtype=torch.int64, device=device)
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return [int(v) for v in lo.tolist()], [int(v) for v in hi.tolist()]

"""Contrasting against the negatives of every process in multi-GPU training.

Under DistributedDataParallel each process sees only its share of the batch, so an in-batch InfoNCE has
``world_size`` times fewer negatives than on one GPU with the whole batch. :func:`all_gather_rows`
concatenates the anchors/targets of all processes (rows may differ in number: they are padded for the
collective and trimmed after) and keeps the gradient of the local rows. Every process then computes the same
global loss; the backward sums the gradients that all processes send to the local rows (``world_size`` times
dL/dx), and DDP's gradient averaging divides that by ``world_size``: the parameters receive exactly dL/dθ.

The backward uses ``all_reduce`` only (gloo has no ``reduce_scatter``), so this also runs on CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

Gather = Callable[[torch.Tensor], torch.Tensor]
"""Maps a process's (n, ...) rows to the (N, ...) rows of all processes, in rank order."""


def distributed_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        rank, world = distributed_world()
        counts = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
        all_counts = [torch.zeros_like(counts) for _ in range(world)]
        dist.all_gather(all_counts, counts)
        sizes = [int(c) for c in all_counts]
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` from every process, concatenated in rank order, differentiable for the local rows.

    Without an initialised process group (or with one process) this returns ``x`` itself. Every process must
    call it the same number of times, in the same order.
    """
    _, world = distributed_world()
    if world == 1:
        return x
    out: torch.Tensor = _AllGatherRows.apply(x)  # type: ignore[no-untyped-call]
    return out


def identity(x: torch.Tensor) -> torch.Tensor:
    """The no-op :data:`Gather` (single process, or gathering switched off)."""
    return x

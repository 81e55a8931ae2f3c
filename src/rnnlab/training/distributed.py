"""Data-parallel training across processes: torchrun, torch.distributed, DDP.

``rnnlab train`` (and every ``rnnlab task``) runs unchanged under::

    torchrun --nproc_per_node=N -m rnnlab train ...

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; the
process group uses NCCL on GPUs and gloo on CPUs.  ``--batch-size`` stays the *global*
number of parallel streams (or examples): rank r of N takes its own B/N of them, gradients
are averaged by ``DistributedDataParallel``, and every rank then holds the same averaged
gradient, so clipping by its norm is clipping by the global norm.  Rank 0 alone writes
checkpoints, metrics and progress.  A collective that waits longer than
``RNNLAB_DIST_TIMEOUT`` seconds (default 120) fails instead of hanging.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist

from rnnlab.errors import UserError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (no-ops in one process) ---------------------------------------------
    def sum(self, *values: float) -> list[float]:
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def mean(self, value: float) -> float:
        return self.sum(value)[0] / self.world_size

    def any(self, flag: bool) -> bool:
        return self.sum(float(flag))[0] > 0

    def average_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor)
            tensor /= self.world_size
        return tensor

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's tensor (same shape on every rank), in rank order."""
        if not self.enabled:
            return [tensor]
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return parts

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shard(self, count: int, what: str = "--batch-size") -> slice:
        """This rank's contiguous share of ``count`` items (streams)."""
        if count % self.world_size:
            raise UserError(
                f"{what} {count} is not divisible by the {self.world_size} processes; "
                f"use a multiple of {self.world_size}"
            )
        share = count // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)


def current() -> Distributed:
    """The process group this process belongs to (one process when none)."""
    if dist.is_available() and dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size())
    return Distributed()


def init_from_environment() -> Distributed:
    """Join the process group torchrun describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    # gloo: the command-line engine keeps its models on the CPU, where NCCL cannot reduce
    timeout = timedelta(seconds=float(os.environ.get("RNNLAB_DIST_TIMEOUT", "120")))
    dist.init_process_group(backend="gloo", timeout=timeout)
    return current()


def shutdown(together: bool = False) -> None:
    """Leave the process group.  ``together`` (a run that ended normally on every rank):
    first wait at a barrier for the other ranks, so that no rank tears its connections
    down while another still talks to it (rank 0 saves and reports after the last update;
    a rank that left first aborted in gloo's teardown, "terminate called without an
    active exception", in about 1 run in 10 of ``tests/test_distributed.py``).  A run that
    failed leaves at once: another rank may be gone, and the barrier would wait for it
    until the timeout."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if together:
        try:
            dist.barrier()
        except RuntimeError:  # another rank failed after all: leave anyway
            pass
    dist.destroy_process_group()


def exit_worker(code: int) -> NoReturn:
    """End a worker rank (not rank 0) that has left the process group: flush its output
    and exit at once, without the interpreter's teardown.  Rank 0 writes every file, so a
    worker has nothing left to finish; and in that teardown PyTorch's own threads aborted
    a worker now and then ("terminate called without an active exception", SIGABRT, in
    about 1 run in 20 of ``tests/test_distributed.py``), which torchrun reports as the
    whole run failing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

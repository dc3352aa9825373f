"""Multi-process meta-training on torch.distributed.

The tasks of each meta-batch are split across processes (rank r takes tasks r, r+W,
r+2W, ...); each process back-propagates its share of the mean loss and the gradients
are summed with one all-reduce, so the update equals the single-process update on the
whole meta-batch, for every method, second-order MAML included. Gloo on CPU, NCCL on
GPU. Launch with ``torchrun --nproc-per-node N -m fewshot train ...`` (or ``fewshot
train --nproc N ...``, which calls torchrun for you); see the README for several nodes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group: ``rank`` of ``world_size``."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def all_reduce_(self, tensor: torch.Tensor, op=None) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        return tensor

    def all_reduce_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Sum gradients over processes in one flat all-reduce (a missing gradient counts as zero)."""
        if not self.active:
            return
        params = [p for p in parameters if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Start every process from rank 0's weights and buffers."""
        if self.active:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def from_environment() -> Distributed:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), once; else one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


def check_nproc(nproc: int, meta_batch: int) -> None:
    """Refuse, before any process starts, a process count that is not 1 to the number of
    devices (GPUs, else CPU cores), or that leaves processes without a task of the meta-batch."""
    from .errors import ConfigError

    limit = torch.cuda.device_count() or os.cpu_count() or 1
    if isinstance(nproc, bool) or not isinstance(nproc, int) or not 1 <= nproc <= limit:
        raise ConfigError(f"--nproc must be from 1 to {limit} (this machine's "
                          f"{'GPUs' if torch.cuda.device_count() else 'CPU cores'}), got {nproc}")
    if meta_batch < nproc:
        raise ConfigError(f"--meta-batch {meta_batch} gives {nproc} processes nothing to do; use a meta-batch of "
                          f"at least {nproc} (each process takes every {nproc}th task)")


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``fewshot <argv>`` in ``nproc`` processes on this machine through torchrun."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "fewshot", *argv]
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc)), **os.environ}
    return subprocess.call(command, env=env)

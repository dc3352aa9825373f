"""Multi-process meta-training on torch.distributed.

The tasks of each meta-batch are split across processes (rank r takes tasks r, r+W,
r+2W, ...); each process back-propagates its share of the mean loss and the gradients
are summed with one all-reduce, so the update equals the single-process update on the
whole meta-batch, for every method, second-order MAML included. One process per GPU
(``LOCAL_RANK`` -> ``cuda:LOCAL_RANK``, see :func:`fewshot.devices.resolve`) with NCCL;
gloo when the run computes on the CPU (also on a machine that has GPUs, with
``--device cpu``), its collectives on CPU tensors. Launch with ``torchrun --nproc-per-node N -m fewshot train ...`` (or ``fewshot
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

from .errors import ConfigError


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group: ``rank`` of ``world_size``."""

    rank: int = 0
    world_size: int = 1
    #: Where collectives run: the GPU for NCCL, the CPU for gloo.
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def all_reduce_(self, tensor: torch.Tensor, op=None) -> torch.Tensor:
        if self.active:
            staged = tensor.to(self.device)
            dist.all_reduce(staged, op=op or dist.ReduceOp.SUM)
            if staged is not tensor:
                tensor.copy_(staged)
        return tensor

    def all_reduce_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Sum gradients over processes in one flat all-reduce (a missing gradient counts as zero)."""
        if not self.active:
            return
        params = [p for p in parameters if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params]).to(self.device)
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
                staged = tensor.data.to(self.device)
                dist.broadcast(staged, src=0)
                if staged is not tensor.data:
                    tensor.data.copy_(staged)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def backend_for(device: torch.device) -> str:
    """NCCL for a run on CUDA GPUs, gloo for one on the CPU (or MPS, staged through the CPU)."""
    return "nccl" if device.type == "cuda" else "gloo"


def from_environment(device: torch.device | None = None) -> Distributed:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), once; else one process.

    ``device`` is this process's device (:func:`fewshot.devices.resolve` gives
    ``cuda:LOCAL_RANK`` under torchrun); it decides the backend.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(device=device)
    backend = backend_for(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    elif dist.get_backend() != backend:
        raise ConfigError(f"this process group uses {dist.get_backend()}, but a run on {device} needs {backend}; "
                          "use one device type in one launch")
    return Distributed(dist.get_rank(), dist.get_world_size(), device if backend == "nccl" else torch.device("cpu"))


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

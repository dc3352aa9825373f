"""Multi-process meta-training on torch.distributed.

The tasks of each meta-batch are split across processes (rank r takes tasks r, r+W,
r+2W, ...); each process back-propagates its share of the mean loss and the gradients
are summed with one all-reduce, so the update equals the single-process update on the
whole meta-batch, for every method, second-order MAML included. One process per GPU
(``LOCAL_RANK`` -> ``cuda:LOCAL_RANK``, see :func:`fewshot.devices.resolve`) with NCCL;
gloo when the run computes on the CPU (also on a machine that has GPUs, with
``--device cpu``), its collectives on CPU tensors. Launch with ``torchrun --nproc-per-node N -m fewshot train ...`` (or ``fewshot
train --nproc N ...``, which calls torchrun for you); see the README for several nodes.

The launch's variables are checked before anything waits on them, and the processes
must meet within ``$FEWSHOT_DIST_TIMEOUT`` seconds (default 60; the collectives after
keep torch's own timeout): a missing peer is one line naming it, not a wait without end.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
import torch.distributed as dist

from .devices import LAUNCH_HINT, launch_variable, launch_world_size, local_rank
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


#: Seconds a process waits for the others to join before giving up (``$FEWSHOT_DIST_TIMEOUT``).
DEFAULT_RENDEZVOUS_TIMEOUT = 60.0


@dataclass(frozen=True)
class Launch:
    """A multi-process launch as its environment describes it (torchrun's variables), checked."""

    rank: int
    world_size: int
    local_rank: int | None
    master_addr: str
    master_port: int
    timeout: float


def launch_environment() -> Launch | None:
    """The launch ``WORLD_SIZE`` > 1 describes, every variable checked up front (one line
    naming the one that is wrong, rather than a hang or a traceback), else None."""
    world_size = launch_world_size()
    if world_size == 1:
        return None
    rank = launch_variable("RANK", 0, required=True)
    if rank >= world_size:
        raise ConfigError(f"RANK={rank} is not a rank of WORLD_SIZE={world_size} (ranks are 0 to {world_size - 1}); "
                          f"{LAUNCH_HINT}")
    on_machine = local_rank()
    addr = os.environ.get("MASTER_ADDR", "").strip()
    if not addr:
        raise ConfigError(f"WORLD_SIZE={world_size} needs MASTER_ADDR (the host of rank 0) and MASTER_PORT; "
                          f"{LAUNCH_HINT}")
    port = launch_variable("MASTER_PORT", 1, required=True)
    if port > 65535:
        raise ConfigError(f"MASTER_PORT must be a port number from 1 to 65535, got {port}")
    return Launch(rank, world_size, on_machine, addr, port, rendezvous_timeout())


def rendezvous_timeout() -> float:
    """``$FEWSHOT_DIST_TIMEOUT`` seconds (default :data:`DEFAULT_RENDEZVOUS_TIMEOUT`)."""
    text = os.environ.get("FEWSHOT_DIST_TIMEOUT")
    if text is None or not text.strip():
        return DEFAULT_RENDEZVOUS_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 86400:
        raise ConfigError(f"FEWSHOT_DIST_TIMEOUT must be a number of seconds from 0 to 86400, got {text!r}")
    return seconds


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null meanwhile (what fails is reported in one line after)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _join(launch: Launch, backend: str) -> None:
    """Meet the other processes at ``MASTER_ADDR:MASTER_PORT`` within the rendezvous timeout,
    then form the process group (whose collectives keep torch's own, longer, timeout)."""
    from datetime import timedelta

    from torch.distributed.constants import default_pg_timeout

    where = f"{launch.master_addr}:{launch.master_port}"
    try:
        with _quiet_stderr():  # c10d logs each failed connection try, with a C++ stack, to stderr
            store, _, _ = next(dist.rendezvous("env://", launch.rank, launch.world_size,
                                               timeout=timedelta(seconds=launch.timeout)))
    except (RuntimeError, ValueError, OSError) as e:
        reason = " ".join(str(e).split())[:200]
        if launch.rank == 0:
            others = "rank 1" if launch.world_size == 2 else f"ranks 1 to {launch.world_size - 1}"
            raise ConfigError(f"rank 0 of {launch.world_size} waited {launch.timeout:g} s at {where} for {others}, "
                              f"and not all joined ({reason}); start every rank with the same MASTER_ADDR and "
                              "MASTER_PORT, or raise FEWSHOT_DIST_TIMEOUT") from None
        raise ConfigError(f"rank {launch.rank} of {launch.world_size} could not reach rank 0 at {where} within "
                          f"{launch.timeout:g} s ({reason}); start rank 0, check MASTER_ADDR and MASTER_PORT, or "
                          "raise FEWSHOT_DIST_TIMEOUT") from None
    store.set_timeout(default_pg_timeout)
    dist.init_process_group(backend=backend, store=dist.PrefixStore("default_pg", store), rank=launch.rank,
                            world_size=launch.world_size)


def from_environment(device: torch.device | None = None) -> Distributed:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), once; else one process.

    ``device`` is this process's device (:func:`fewshot.devices.resolve` gives
    ``cuda:LOCAL_RANK`` under torchrun); it decides the backend. The environment is checked
    first (:func:`launch_environment`) and the other processes must join within
    ``$FEWSHOT_DIST_TIMEOUT`` seconds (default 60), else a one-line error names the missing one.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    if launch_world_size() == 1:
        return Distributed(device=device)
    backend = backend_for(device)
    if not dist.is_initialized():  # (a group the caller formed itself is used as it is)
        launch = launch_environment()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        _join(launch, backend)
    elif dist.get_backend() != backend:
        raise ConfigError(f"this process group uses {dist.get_backend()}, but a run on {device} needs {backend}; "
                          "use one device type in one launch")
    return Distributed(dist.get_rank(), dist.get_world_size(), device if backend == "nccl" else torch.device("cpu"))


def check_nproc(nproc: int, config) -> None:
    """Refuse, before any process starts, a process count that is not 1 to the number of
    devices (GPUs, else CPU cores), that leaves processes without a task of the meta-batch,
    or that :func:`check_split` refuses for the method of ``config`` (a TrainConfig): checked
    here for a task family's run, whose method is built in a moment; the trainer checks every run."""
    from .data.tasks import TASK_FAMILIES, input_shape
    from .runs import build_model

    meta_batch = config.meta_batch
    limit = torch.cuda.device_count() or os.cpu_count() or 1
    if isinstance(nproc, bool) or not isinstance(nproc, int) or not 1 <= nproc <= limit:
        raise ConfigError(f"--nproc must be from 1 to {limit} (this machine's "
                          f"{'GPUs' if torch.cuda.device_count() else 'CPU cores'}), got {nproc}")
    if meta_batch < nproc:
        raise ConfigError(f"--meta-batch {meta_batch} gives {nproc} processes nothing to do; use a meta-batch of "
                          f"at least {nproc} (each process takes every {nproc}th task)")
    if nproc > 1 and config.dataset in TASK_FAMILIES:
        check_split(build_model(config, input_shape(config.dataset, None)), nproc)


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``fewshot <argv>`` in ``nproc`` processes on this machine through torchrun."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "fewshot", *argv]
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc)), **os.environ}
    return subprocess.call(command, env=env)


def check_split(method, nproc: int) -> None:
    """Refuse ``nproc`` > 1 processes for a method whose update is not the sum of its tasks'
    gradients (``own_step``: TRPO's KL-bounded step, PPO's epochs): processes holding parts
    of the meta-batch would each compute another update, and their sum is neither."""
    if nproc > 1 and method.own_step:
        raise ConfigError(f"{method.name} here computes one constrained update (TRPO, PPO) from the whole "
                          "meta-batch, which processes holding parts of it would not reproduce; drop --nproc")

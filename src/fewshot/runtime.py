"""How a run computes, decided once: the :class:`Runtime`.

A runtime is the device, the precision, the number of CPU threads, the backend switches
(TF32, deterministic algorithms), this process's place in a multi-process launch and the
allocator setting, resolved by one function, :func:`resolve_runtime`, from (highest first)
the explicit requests (command-line flags), a run's config, and the environment
(``LOCAL_RANK`` / ``WORLD_SIZE`` of a torchrun launch). The task kind's device rule
applies there and nowhere else: a reinforcement task's rollouts run on the host, so
``auto`` means the CPU for it and another device is refused
(:attr:`fewshot.taskkind.TaskKind.host_only`). Commands pass the request down unresolved;
the trainer and evaluation receive the runtime, and methods receive its device (they
carry no runtime options).

The device helpers themselves (naming, autocast, the backend, memory, random state) are
:mod:`fewshot.devices`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch

from . import devices
from .config import DEFAULT_PRECISION
from .errors import ConfigError
from .taskkind import TaskKind, task_kind


@dataclass(frozen=True)
class Runtime:
    """How a run computes (see the module docstring); made by :func:`resolve_runtime`.

    ``requested`` is the device asked for (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``)
    and ``reason`` why ``auto`` chose :attr:`device`, for the line a command prints.
    ``threads`` (None: torch's own count, left alone) is set by :meth:`apply`.
    ``tune_allocator`` lets glibc keep freed memory for reuse (:func:`keep_freed_memory`).
    """

    device: torch.device = torch.device("cpu")
    precision: str = DEFAULT_PRECISION
    threads: int | None = None
    tf32: bool = True
    deterministic: bool = False
    rank: int | None = None
    world_size: int = 1
    tune_allocator: bool = True
    requested: str = "auto"
    reason: str = ""

    def apply(self) -> None:
        """Set the process up for this runtime: backend switches, threads, the allocator."""
        devices.Backend(tf32=self.tf32, deterministic=self.deterministic).apply(self.device)
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if self.tune_allocator:
            keep_freed_memory()

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of :attr:`precision` on :attr:`device` (a no-op for fp32)."""
        return devices.autocast(self.device, self.precision)

    def grad_scaler(self) -> "torch.amp.GradScaler | None":
        """A gradient scaler for fp16; None otherwise."""
        return devices.grad_scaler(self.device, self.precision)

    def say(self) -> str:
        """The device in one line, and why ``auto`` chose it: ``device auto -> cpu (16 threads): ...``."""
        if self.requested != "auto":
            return f"device {devices.describe(self.device)}"
        return f"device auto -> {devices.describe(self.device)}" + (f": {self.reason}" if self.reason else "")


def resolve_runtime(device: str | torch.device | None = None, precision: str | None = None, *,
                    kind: TaskKind | str | Any = None, what: str = "", config: Any = None,
                    tf32: bool | None = None, deterministic: bool | None = None, threads: int | None = None,
                    tune_allocator: bool = True) -> Runtime:
    """The runtime of a run: each setting from its argument, else ``config`` (a
    :class:`~fewshot.config.TrainConfig` or anything with ``device`` / ``precision`` /
    ``tf32`` / ``deterministic``), else its default; the rank from the environment.

    ``kind`` (a :class:`~fewshot.taskkind.TaskKind`, its name, or a sampler or method
    carrying one) applies its device rule; ``what`` names the data in its refusal. A
    device this machine lacks, a precision it cannot run, or a device the kind refuses
    is a one-line :class:`~fewshot.errors.ConfigError`.
    """
    def setting(given: Any, name: str, default: Any) -> Any:
        if given is not None:
            return given
        value = getattr(config, name, None)
        return default if value is None else value

    requested = str(setting(device, "device", "auto")).strip().lower()
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a whole number of at least 1, got {threads!r}")
    rank = devices.local_rank()
    try:
        world_size = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}; launch with torchrun") from None
    spec, reason = requested, ""
    if kind is not None:
        kind = task_kind(kind)
        spec = kind.device_request(requested)
        kind.check_device(spec, what or kind.name)
        if kind.host_only and requested == "auto":
            reason = f"{kind.name} rollouts run on the host"
    resolved = devices.resolve(spec, rank=rank)
    if requested == "auto" and not reason and resolved.type == "cpu":
        reason = "no CUDA GPU or MPS device found"
    return Runtime(device=resolved, precision=devices.check_precision(setting(precision, "precision", DEFAULT_PRECISION),
                                                                       resolved),
                   threads=threads, tf32=bool(setting(tf32, "tf32", True)),
                   deterministic=bool(setting(deterministic, "deterministic", False)), rank=rank,
                   world_size=world_size, tune_allocator=tune_allocator, requested=requested, reason=reason)


# -- the allocator -------------------------------------------------------------------------------

_malloc_tuned = False


def keep_freed_memory() -> bool:
    """Ask glibc's ``malloc`` to keep freed memory for reuse rather than hand it back to the OS.

    A training step allocates and frees the same large activation tensors for every
    task (MAML's inner loop most of all); by default glibc returns them to the kernel
    (``munmap``, heap trimming) and every task then pays page faults to get them back,
    which costs 10-30 % of a MAML meta-iteration on CPU (``benchmarks/results/maml_speed.json``).
    This sets ``M_MMAP_THRESHOLD`` to 32 MiB and ``M_TRIM_THRESHOLD`` to 1 GiB, the
    ``mallopt`` equivalents of the ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
    environment variables. Peak memory is unchanged; memory freed after the peak stays
    with the process. Process-wide and idempotent; a no-op (returning ``False``) off
    glibc.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    ok = bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
    _malloc_tuned = ok
    return ok


__all__ = ["Runtime", "keep_freed_memory", "resolve_runtime"]

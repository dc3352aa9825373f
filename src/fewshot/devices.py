"""Where tensors live and in what precision they are computed.

One place resolves a device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``),
sets up the backend (TF32, cuDNN autotuning, deterministic algorithms), opens the
autocast context of a precision (``fp32``, ``bf16``, ``fp16``) and reports peak memory.
These are the helpers; a run's device and precision are decided once, with its task
kind's device rule, by :func:`fewshot.runtime.resolve_runtime`, so a device means the
same thing everywhere.

``auto`` picks CUDA, then Apple's MPS, then the CPU. In a multi-process run (torchrun
sets ``LOCAL_RANK``) ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK``: one process per GPU.
A device that is not there is a :class:`~fewshot.errors.ConfigError`.

**Precision.** ``bf16`` and ``fp16`` run the forward pass under
:func:`torch.autocast`: matrix products and convolutions in the reduced type,
reductions and losses in float32, weights and optimiser state in float32. ``fp16``
needs a gradient scaler (:func:`grad_scaler`) against underflow; ``bf16`` has float32's
range and needs none. On CPUs autocast runs too (bf16 is fast only on CPUs with AVX-512
BF16 or AMX; elsewhere it is for checking, not speed).

**Determinism.** ``deterministic=True`` turns on :func:`torch.use_deterministic_algorithms`
(ops without a deterministic kernel warn, naming themselves), cuDNN's deterministic
mode and no autotuning, and sets ``CUBLAS_WORKSPACE_CONFIG``: GPU runs then repeat
bit for bit, at the cost of cuDNN's fastest (autotuned, non-deterministic) kernels.
Without it, cuDNN autotunes its convolution algorithms for the fixed episode shapes
(``cudnn.benchmark``).
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from dataclasses import dataclass
from typing import Iterator

import torch

from .config import DEFAULT_PRECISION, PRECISIONS
from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


LAUNCH_HINT = "launch with torchrun (or `fewshot train --nproc N`), or unset WORLD_SIZE to run one process"


def launch_variable(name: str, minimum: int, required: bool = False) -> int:
    """The whole number in environment variable ``name`` of a multi-process launch (``minimum``
    when unset and not ``required``); anything else is one line naming the variable."""
    text = os.environ.get(name)
    if text is None:
        if required:
            raise ConfigError(f"{name} is not set, but WORLD_SIZE={os.environ.get('WORLD_SIZE')} asks for several "
                              f"processes; {LAUNCH_HINT}")
        return minimum
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ConfigError(f"{name} must be a whole number ≥ {minimum}, got {text[:40]!r}; {LAUNCH_HINT}")
    return value


def launch_world_size() -> int:
    """``WORLD_SIZE`` (checked), 1 when unset: how many processes this launch has."""
    text = os.environ.get("WORLD_SIZE")
    return 1 if text is None or not text.strip() else launch_variable("WORLD_SIZE", 1)


def local_rank() -> int | None:
    """This process's rank on its machine in a torchrun launch (``LOCAL_RANK``, checked), else None.
    (:func:`fewshot.distributed.launch_environment` checks the rest of the launch's variables.)"""
    if launch_world_size() == 1 or os.environ.get("LOCAL_RANK") is None:
        return None
    rank = launch_variable("LOCAL_RANK", 0)
    if os.environ.get("LOCAL_WORLD_SIZE") is not None and rank >= launch_variable("LOCAL_WORLD_SIZE", 1):
        raise ConfigError(f"LOCAL_RANK={rank} is not below LOCAL_WORLD_SIZE={os.environ['LOCAL_WORLD_SIZE']}; "
                          f"{LAUNCH_HINT}")
    return rank


def resolve(spec: str | torch.device | None = "auto", *, rank: int | None = None) -> torch.device:
    """The :class:`torch.device` of ``spec`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``).

    ``rank`` (default: ``LOCAL_RANK`` of a multi-process launch) turns ``auto`` and
    ``cuda`` into ``cuda:rank``. A device this machine lacks is a :class:`ConfigError`.
    """
    rank = local_rank() if rank is None else rank
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = "auto" if spec is None else str(spec).strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            spec = "cuda"
        elif _mps_available() and rank is None:  # one MPS device: no process per device
            spec = "mps"
        else:
            return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise ConfigError("--device mps: this machine has no Apple MPS device; use --device cpu (or auto)")
        if rank is not None:
            raise ConfigError("--device mps runs one process; drop --nproc, or use --device cpu for several")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        index_text = spec.partition(":")[2]
        if spec.startswith("cuda:") and not index_text.isdigit():
            raise ConfigError(f"--device {spec}: write cuda:N with N a GPU number, e.g. cuda:0")
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: this machine has no CUDA GPU (torch {torch.__version__}, "
                              f"{'CPU-only build' if torch.version.cuda is None else 'no device visible'}); "
                              "use --device cpu (or auto)")
        count = torch.cuda.device_count()
        index = int(index_text) if index_text else (rank or 0)
        if index >= count:
            why = (f"process {rank} needs its own GPU, and" if not index_text and rank is not None else "")
            raise ConfigError(f"--device {spec}: {why} this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1}); "
                              f"{'use --nproc ' + str(count) + ' or fewer' if why else 'choose one of those'}")
        return torch.device("cuda", index)
    raise ConfigError(f"unknown device '{spec}'; choose one of: {', '.join(DEVICES)}")


def describe(device: torch.device) -> str:
    """A device in words: ``cuda:0 (NVIDIA H200, 139 GiB)``, ``mps``, ``cpu (16 threads)``."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{device} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'' if threads == 1 else 's'})"
    return str(device)


def why_auto(spec: str | None, device: torch.device) -> str:
    """What ``auto`` chose and why, for the one line a command prints."""
    if (spec or "auto") != "auto":
        return f"device {describe(device)}"
    if device.type == "cpu":
        return f"device auto -> {describe(device)}: no CUDA GPU or MPS device found"
    return f"device auto -> {describe(device)}"


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


# -- precision -------------------------------------------------------------------------------

def check_precision(precision: str, device: torch.device | None = None) -> str:
    """``precision`` if this device can run it; a :class:`ConfigError` otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
    if device is not None and device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--precision bf16: {describe(device)} has no bfloat16 support; use fp16 or fp32")
    if device is not None and device.type == "mps" and precision == "bf16":
        macos_ok = torch.backends.mps.is_macos_or_newer(14, 0) if hasattr(torch.backends.mps, "is_macos_or_newer") else False
        if not macos_ok:
            raise ConfigError("--precision bf16 on MPS needs macOS 14 or newer; use fp16 or fp32")
    return precision


def autocast(device: torch.device, precision: str = DEFAULT_PRECISION) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == DEFAULT_PRECISION:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[check_precision(precision)])


def grad_scaler(device: torch.device, precision: str) -> "torch.amp.GradScaler | None":
    """A gradient scaler for fp16 (its small range underflows small gradients); None otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


# -- the backend -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Backend:
    """Backend switches a run sets: TF32 matmuls and convolutions on GPUs that have them
    (Ampere and newer; about 10 mantissa bits in products, float32 range), and
    ``deterministic`` algorithms (see the module docstring)."""

    tf32: bool = True
    deterministic: bool = False

    def apply(self, device: torch.device) -> None:
        if self.deterministic:
            # cuBLAS needs a fixed workspace for reproducible results; set before its first use.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(self.deterministic, warn_only=True)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32
            torch.backends.cudnn.deterministic = self.deterministic
            # Episodes have fixed shapes, so autotuning pays once and then every step.
            torch.backends.cudnn.benchmark = not self.deterministic


# -- memory ------------------------------------------------------------------------------------

def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int | None, str]:
    """``(bytes, what)``: the peak memory of this process on ``device`` and what was measured.

    CUDA: the peak of tensors allocated since :func:`reset_peak_memory`; MPS: memory
    the driver holds now (MPS keeps no peak); CPU: the process's peak resident set
    size over its whole life (the kernel keeps no resettable peak).
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda peak allocated"
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory()), "mps driver allocated"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib if sys.platform == "darwin" else kib * 1024), "process peak resident set"


def available_memory(device: torch.device) -> int | None:
    """Bytes a run could still allocate on ``device``: free GPU memory plus what this
    process's allocator holds unused; on CPU the kernel's MemAvailable; None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    try:
        with open("/proc/meminfo") as f:
            for line in f.read(1 << 16).splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# -- random state ------------------------------------------------------------------------------

def rng_tensors(device: torch.device) -> dict[str, torch.Tensor]:
    """The RNG states a checkpoint keeps: the CPU generator's, and ``device``'s own (as
    ``rng.cuda`` / ``rng.mps``; CPU tensors, so the file is device-free)."""
    out = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        out["rng.cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        out["rng.mps"] = torch.mps.get_rng_state()
    return out


def restore_rng(tensors: dict[str, torch.Tensor], device: torch.device) -> list[str]:
    """Restore the RNG states of a checkpoint on ``device``; returns the names of saved
    device states this device cannot take (a GPU run resumed on the CPU: its CPU stream
    continues exactly, the GPU's has no counterpart here)."""
    torch.set_rng_state(tensors["rng.torch"])
    skipped = []
    for kind in ("cuda", "mps"):
        state = tensors.get(f"rng.{kind}")
        if state is None:
            continue
        if device.type != kind:
            skipped.append(f"rng.{kind}")
        elif kind == "cuda":
            torch.cuda.set_rng_state(state, device)
        else:
            torch.mps.set_rng_state(state)
    return skipped


@contextlib.contextmanager
def fork_rng(device: torch.device) -> Iterator[None]:
    """Run a block without shifting the CPU's or ``device``'s random streams."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


__all__ = ["Backend", "LAUNCH_HINT", "DEVICES", "PRECISIONS", "autocast", "available_memory", "check_precision",
           "describe", "fork_rng", "grad_scaler", "launch_variable", "launch_world_size", "local_rank",
           "module_device", "peak_memory", "reset_peak_memory", "resolve", "restore_rng", "rng_tensors", "why_auto"]

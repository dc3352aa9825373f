"""Will a training step fit in the device's memory? Measured before training starts.

A meta-batch that does not fit should fail at once with advice, not after the data
is loaded and the first checkpoint is due (on a GPU: an out-of-memory error deep in
the backward pass; on a CPU: swapping, or the kernel killing the process).

:func:`check_batch_data_fits` first checks, before a meta-batch is drawn, that its
episodes' data alone can be held (extrapolated from one episode). :func:`check_step_fits` then runs one real forward and backward pass of the step's
episodes (this process's share of the meta-batch) on the device, without an
optimiser step, and measures the peak bytes of the tensors autograd keeps for the
backward pass (through :func:`torch.autograd.graph.saved_tensors_hooks`, counting
each storage once while it is alive). That works the same on every device and
respects how a method frees memory (MAML frees each task's graph as soon as its
meta-gradient is known, so its peak is one task's, not the meta-batch's). To it are
added what the step does not show yet: the gradients and the optimiser's state
(Adam: two tensors per parameter). The sum is compared with what the device can still
give (:func:`fewshot.devices.available_memory`). On a GPU an out-of-memory error in
the dry run itself is caught and reported the same way. Weights, buffers (BatchNorm
statistics) and the random streams are restored afterwards: the dry run changes nothing.
"""

from __future__ import annotations

import copy
import weakref
from typing import Sequence

import torch

from . import devices
from .config import DEFAULT_PRECISION
from .data.episodes import Episode

MB = 2**20


class _Held:
    """What a saved-tensor hook keeps instead of the tensor: freed with the graph node."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class GraphMemory:
    """Peak bytes of distinct storages autograd holds for backward, while active."""

    def __init__(self, exclude: Sequence[torch.Tensor] = ()):
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, holders]
        self.current = self.peak = 0
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def pack(self, tensor: torch.Tensor):
        held = _Held(tensor)
        try:
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. a tensor subclass without a plain storage
            return held
        if key in self._exclude or size == 0:
            return held
        entry = self.live.setdefault(key, [size, 0])
        if entry[1] == 0:
            self.current += size
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(held, self._release, key)
        return held

    @staticmethod
    def unpack(held: _Held) -> torch.Tensor:
        return held.tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


def _episode_bytes(episodes: Sequence[Episode]) -> int:
    """Bytes of the tensors the episodes hold (an episode of any kind: its tensor fields)."""
    tensors = [t for ep in episodes for t in vars(ep).values() if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def step_memory(method: torch.nn.Module, episodes: Sequence[Episode], device: torch.device,
                precision: str = DEFAULT_PRECISION, optimizer_slots: int = 2) -> dict[str, int]:
    """Bytes one training step on ``episodes`` needs beyond what is already allocated:
    ``graph`` (peak saved tensors of its forward and backward), ``gradients``,
    ``optimizer`` (``optimizer_slots`` tensors per parameter, created at the first
    step), ``episodes`` and their ``total``. Runs the step's loss and backward once;
    the method's weights, buffers, gradients and the random streams are left as they were."""
    params = [p for p in method.parameters() if p.requires_grad]
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    snapshot = copy.deepcopy(method.state_dict())
    grads_before = [p.grad for p in params]
    meter = GraphMemory(exclude=list(method.parameters()) + list(method.buffers()))
    try:
        with devices.fork_rng(device), meter.hooks():
            with devices.autocast(device, precision):
                loss, _ = method.loss(list(episodes))
            loss.float().backward()
    finally:
        for p, g in zip(params, grads_before):
            p.grad = g
        method.load_state_dict(snapshot)  # BatchNorm statistics, class maps: as before the dry run
    gradients = 0 if all(g is not None for g in grads_before) else param_bytes
    optimizer = optimizer_slots * param_bytes
    data = _episode_bytes(episodes)
    return {"graph": meter.peak, "gradients": gradients, "optimizer": optimizer, "episodes": data,
            "total": meter.peak + gradients + optimizer + data}


def check_batch_data_fits(probe: Sequence[Episode], meta_batch: int, device: torch.device, *,
                          available: int | None = None) -> str | None:
    """None if the data of a whole meta-batch can be held on ``device``; else a one-line
    message. Checked before the meta-batch is drawn, from ``probe`` (one or a few of its
    episodes, all of one shape): drawing ``--meta-batch 100000`` digits episodes, only for
    :func:`check_step_fits` to refuse them, held 6.8 GB first (issue 34).
    ``available`` (bytes) defaults to :func:`fewshot.devices.available_memory`."""
    if not probe:
        return None
    need = _episode_bytes(probe) * meta_batch // len(probe)
    available = devices.available_memory(device) if available is None else available
    if available is None or need <= available:
        return None
    return (f"the {meta_batch:,} episodes of one meta-batch hold about {need / MB:,.0f} MB of data on "
            f"{devices.describe(device)} before any computation, but {available / MB:,.0f} MB are free; "
            f"use a smaller --meta-batch (now {meta_batch:,})")


def check_step_fits(method: torch.nn.Module, episodes: Sequence[Episode], device: torch.device,
                    precision: str = DEFAULT_PRECISION, *, optimizer_slots: int = 2, meta_batch: int | None = None,
                    available: int | None = None) -> str | None:
    """None if a training step on ``episodes`` fits on ``device``; else a one-line
    message saying how much it needs, how much there is, and what to change.

    ``available`` (bytes) defaults to :func:`fewshot.devices.available_memory`; when
    that is unknown the step is only dry-run (which on a GPU still catches running out).
    """
    meta_batch = meta_batch or len(episodes)
    advice = (f"use a smaller --meta-batch (now {meta_batch}), or for the MAML family --first-order or "
              "fewer --inner-steps")
    if not episodes:
        return None
    try:
        need = step_memory(method, episodes, device, precision, optimizer_slots)
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return (f"one training step of {len(episodes)} episode(s) does not fit in the memory of "
                f"{devices.describe(device)} (out of memory in a dry run); {advice}")
    available = devices.available_memory(device) if available is None else available
    if available is None or need["total"] <= available:
        return None
    return (f"one training step of {len(episodes)} episode(s) needs about {need['total'] / MB:,.0f} MB on "
            f"{devices.describe(device)} (autograd graph {need['graph'] / MB:,.0f} MB, gradients and optimiser "
            f"{(need['gradients'] + need['optimizer']) / MB:,.0f} MB), but {available / MB:,.0f} MB are free; {advice}")


__all__ = ["GraphMemory", "check_batch_data_fits", "check_step_fits", "step_memory"]

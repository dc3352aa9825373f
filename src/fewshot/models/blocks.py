"""Blocks of a backbone: the units that transfer strategies freeze, unfreeze and tune.

For an ``nn.Sequential`` backbone (Conv-4, ResNet-12, MLP and most user networks) the
blocks are its top-level children that hold parameters (Conv-4: its four conv blocks;
Flatten, ReLU and pooling are skipped). Other modules are split into their direct
children that hold parameters, in registration order; a module with a single such
child is split through it (a wrapper around a Sequential splits like the Sequential).
Parameters held directly by a container join the last block. Pass ``names=[...]``
(names of sub-modules, bottom to top) to split a network your own way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .backbones import Conv4


@dataclass
class Block:
    """A unit of freezing: named sub-modules and the parameters they hold."""

    name: str
    modules: list[nn.Module]
    params: list[nn.Parameter] = field(default_factory=list)
    child: int | None = None  # index among the top-level children, for Sequential backbones

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def split_blocks(backbone: nn.Module, names: Sequence[str] | None = None) -> list[Block]:
    """The blocks of ``backbone``, bottom (input) to top (features); see the module docstring."""
    if names:
        lookup = dict(backbone.named_modules())
        blocks, seen = [], set()
        for name in names:
            if name not in lookup:
                raise ConfigError(f"backbone has no sub-module '{name}'; it has: "
                                  f"{', '.join(n for n in lookup if n)[:300]}")
            params = [p for p in lookup[name].parameters() if id(p) not in seen]
            seen.update(id(p) for p in params)
            blocks.append(Block(name, [lookup[name]], params))
        rest = [p for p in backbone.parameters() if id(p) not in seen]
        if rest and blocks:
            blocks[-1].params.extend(rest)
        return blocks
    prefix, module = "", backbone
    while True:
        children = [(n, c) for n, c in module.named_children() if _has_params(c)]
        if len(children) == 1 and not isinstance(module, nn.Sequential) and not list(module.parameters(recurse=False)):
            prefix, module = f"{prefix}{children[0][0]}.", children[0][1]
            continue
        break
    if not children:
        return [Block(prefix.rstrip(".") or "backbone", [module], list(module.parameters()))] if _has_params(module) else []
    sequential = module is backbone and isinstance(backbone, nn.Sequential)
    all_children = [n for n, _ in module.named_children()]
    blocks = [Block(f"{prefix}{n}", [c], list(c.parameters()), all_children.index(n) if sequential else None)
              for n, c in children]
    own = list(module.parameters(recurse=False))
    if own:
        blocks[-1].params.extend(own)
    return blocks


def sequential_runner(backbone: nn.Module) -> Callable[[torch.Tensor, int, int], torch.Tensor] | None:
    """``run(x, start, stop)`` applying top-level children ``start .. stop-1``, for backbones
    whose forward is the plain Sequential one (Conv-4 only adds a memory format); else None."""
    forward = type(backbone).forward
    if not isinstance(backbone, nn.Sequential) or forward not in (nn.Sequential.forward, Conv4.forward):
        return None
    children = list(backbone.children())
    channels_last = isinstance(backbone, Conv4)

    def run(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        if start == 0 and channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        for child in children[start:stop]:
            x = child(x)
        return x

    run.length = len(children)  # type: ignore[attr-defined]
    return run

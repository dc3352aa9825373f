"""Transfer strategies as a table: which blocks of a backbone learn, at which rate, and when.

Each strategy is a small function ``plan(num_blocks, options) -> Plan``;
:class:`~fewshot.methods.transfer.FineTune` fits the head and the planned blocks with
one loop for all of them. A new strategy is one function and one line in
:data:`STRATEGIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError


@dataclass
class Plan:
    """What fine-tuning does to the backbone's blocks (indices bottom to top).

    ``tuned``: blocks that may learn; ``rates``: every block's learning rate;
    ``unfreeze``: ``(step, block)`` events when a tuned block joins, for strategies
    that start with the head alone (then only the blocks of these events ever learn);
    ``fine_tune``: False for a linear probe, which trains the head alone in closed
    form and takes no fine-tuning steps.
    """

    tuned: list[int]
    rates: list[float]
    unfreeze: list[tuple[int, int]] = field(default_factory=list)
    fine_tune: bool = True

    @property
    def starts_frozen(self) -> bool:
        return bool(self.unfreeze) or (self.fine_tune and not self.tuned)


def discriminative_rates(num_blocks: int, lr: float, decay: float) -> list[float]:
    """Learning rate of each block, bottom to top: the top block gets ``lr``, each block
    below ``decay`` times the rate of the block above it (Howard and Ruder, 2018,
    arXiv:1801.06146)."""
    return [lr * decay ** (num_blocks - 1 - i) for i in range(num_blocks)]


def gradual_schedule(num_blocks: int, steps: int, every: int | None = None) -> list[tuple[int, int]]:
    """When each block is unfrozen: ``[(step, block), ...]`` from the top block down.

    The head trains alone for ``every`` steps, then the top block joins, ``every`` steps
    later the one below it, and so on (blocks whose turn would come at or after
    ``steps`` never do). ``every`` defaults to ``steps // (num_blocks + 1)`` (at least
    1), so the whole network trains for the last stage.
    """
    every = max(1, steps // (num_blocks + 1)) if every is None else int(every)
    if every < 1:
        raise ConfigError(f"unfreeze_every must be at least 1, got {every}")
    events = [((j + 1) * every, num_blocks - 1 - j) for j in range(num_blocks)]
    return [(s, b) for s, b in events if s < steps]


def _same_rate(n: int, o: dict[str, Any]) -> list[float]:
    return [o["backbone_lr"]] * n


def linear_probe(n: int, o: dict[str, Any]) -> Plan:
    """Feature extraction: the backbone stays frozen, only a linear head is fitted."""
    return Plan([], _same_rate(n, o), fine_tune=False)


def finetune(n: int, o: dict[str, Any]) -> Plan:
    """The whole network learns, the backbone at ``backbone_lr``."""
    return Plan(list(range(n)), _same_rate(n, o))


def freeze_k(n: int, o: dict[str, Any]) -> Plan:
    """The first ``k`` blocks stay frozen (default: half of them), the rest learn."""
    k = n // 2 if o["k"] is None else int(o["k"])
    if not 0 <= k <= n:
        raise ConfigError(f"freeze-k: k must lie in 0..{n} (the backbone has {n} blocks), got {k}")
    return Plan(list(range(k, n)), _same_rate(n, o))


def discriminative(n: int, o: dict[str, Any]) -> Plan:
    """Every block learns, each at ``decay`` times the rate of the block above."""
    return Plan(list(range(n)), discriminative_rates(n, o["backbone_lr"], o["decay"]))


def gradual_unfreeze(n: int, o: dict[str, Any]) -> Plan:
    """The head first, then one block more every ``unfreeze_every`` steps, top down."""
    return Plan(list(range(n)), _same_rate(n, o), gradual_schedule(n, o["steps"], o["unfreeze_every"]))


def surgical(n: int, o: dict[str, Any]) -> Plan:
    """One chosen ``block`` learns (Lee et al., 2022, arXiv:2210.11466): the first for
    input-level shifts, the last for output-level ones; chosen per target domain on its
    validation classes by :func:`fewshot.crossdomain.surgical_for_domain`."""
    b = int(o["block"])
    if not -n <= b < n:
        raise ConfigError(f"surgical: block must lie in {-n}..{n - 1} (the backbone has {n} blocks), got {b}")
    return Plan([b % n], _same_rate(n, o))


#: Strategy name -> its plan. LP-FT (Kumar et al., 2022, arXiv:2202.10054) plans like
#: fine-tuning; what sets it apart is its starting head (the linear probe's).
STRATEGIES: dict[str, Callable[[int, dict[str, Any]], Plan]] = {
    "linear-probe": linear_probe,
    "finetune": finetune,
    "freeze-k": freeze_k,
    "discriminative": discriminative,
    "gradual-unfreeze": gradual_unfreeze,
    "lp-ft": finetune,
    "surgical": surgical,
}

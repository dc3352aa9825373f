"""A run's state, checked: the fields the trainer and the readers rely on.

A damaged or edited state is one :class:`~fewshot.errors.CheckpointError` naming the
field, never a crash later. :func:`named_files` is what a state keeps: the files of the
run folder that nothing may remove while it is the state on disk.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .schema import Shape


def plain_name(name: Any) -> bool:
    """A file of the run folder, not a path elsewhere (nor a hidden temporary)."""
    return isinstance(name, str) and name == Path(name).name and not name.startswith(".")


def state_problem(state: Any) -> str | None:
    """What is wrong with ``state`` (said after the file's name), or None."""
    if not isinstance(state, dict):
        return f"holds a JSON {type(state).__name__}, not an object"
    if not isinstance(state.get("step"), int) or isinstance(state.get("step"), bool) or state["step"] < 0:
        return "has no valid 'step'"
    if not (isinstance(state.get("image_shape"), list) and Shape().accepts(state["image_shape"])):
        return f"has no valid 'image_shape' (it must be {Shape().describe()})"
    if state.get("checkpoint") is not None and not plain_name(state["checkpoint"]):
        return "names no valid 'checkpoint' file"
    if state.get("best") is not None and not (isinstance(state["best"], dict) and plain_name(state["best"].get("file"))):
        return "names no valid 'best' file"
    if state.get("checkpoint") is not None and not (isinstance(state.get("optimizer"), dict)
                                                    and isinstance(state.get("scheduler"), dict)):
        return "lacks the optimiser or scheduler settings"
    return _progress_problem(state)


def named_files(state: Any) -> set[str]:
    """The checkpoint and best files ``state`` names (any it names, even in a damaged state)."""
    if not isinstance(state, dict):
        return set()
    best = state.get("best")
    names = {state.get("checkpoint"), best.get("file") if isinstance(best, dict) else None}
    return {n for n in names if isinstance(n, str)}


def _real(value: Any) -> bool:
    """A JSON number (NaN included: a metric a method does not report)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: Any, low: float = 0.0) -> bool:
    """A finite JSON number of at least ``low``."""
    return _real(value) and math.isfinite(value) and value >= low


def _progress_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with the bookkeeping fields of a state (history, running log, clocks,
    best score, optimiser scalars), or None."""
    history = state.get("history")
    if not (isinstance(history, dict) and isinstance(history.get("train"), list) and isinstance(history.get("val"), list)
            and all(isinstance(row, list) and len(row) == 3 and isinstance(row[0], int)
                    and all(v is None or _real(v) for v in row[1:])
                    for row in history["train"] + history["val"])):
        return "has no valid 'history'"
    log = state.get("log")
    if not (isinstance(log, dict) and _real(log.get("loss")) and _real(log.get("accuracy"))
            and isinstance(log.get("count"), int) and not isinstance(log.get("count"), bool) and log["count"] >= 0):
        return "has no valid 'log'"
    if not (_number(state.get("seconds")) and _number(state.get("cpu_seconds"))):
        return "has no valid 'seconds' or 'cpu_seconds'"
    if not isinstance(state.get("done", False), bool):
        return "has no valid 'done'"
    best = state.get("best")
    if best is not None and not all(v is None or _real(v) for k, v in best.items() if k != "file"):
        return "has no valid 'best' scores"
    optimizer = state.get("optimizer")
    if optimizer is not None:
        scalars = optimizer.get("scalars") if isinstance(optimizer, dict) else None
        if not (isinstance(scalars, dict) and all(
                isinstance(k, str) and k.isdigit() and isinstance(v, dict)
                and all(_number(x, -math.inf) for x in v.values()) for k, v in scalars.items())
                and isinstance(optimizer.get("param_groups"), list)):
            return "has no valid 'optimizer' settings"
    return None


__all__ = ["named_files", "plain_name", "state_problem"]

"""A CPU-time deadline that long computations check from inside (``--cpu-minutes``).

The trainer checks its CPU budget between meta-iterations; one meta-iteration of MAML
with many inner steps on a large model can last minutes, so the budget is also
checked inside it. The trainer runs each step within :func:`cpu_deadline` (the
process CPU time, :func:`time.process_time`, at which its budget is spent); inner
loops call :func:`check` between their steps, which raises :class:`OutOfBudget` once
that time has passed. The trainer then abandons the meta-iteration as a whole: no
gradient of it is applied, its random-number state is restored, and the run stops
validated and checkpointed at the last completed step (:mod:`fewshot.train`). So a
budget is overrun by at most one inner step (plus the final validation and
checkpoint), and a run that does not reach its budget computes exactly what it did
before.

Outside a :func:`cpu_deadline` block (evaluation, prediction, a method used on its
own) :func:`check` does nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Iterator

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("fewshot_cpu_deadline", default=None)


class OutOfBudget(Exception):
    """The CPU budget ran out inside a computation; the computation is abandoned, not an error."""


@contextlib.contextmanager
def cpu_deadline(deadline: float | None) -> Iterator[None]:
    """Within this block :func:`check` raises once ``time.process_time()`` reaches
    ``deadline`` (None: never)."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check() -> None:
    """Raise :class:`OutOfBudget` if the deadline of the enclosing :func:`cpu_deadline` has passed."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.process_time() >= deadline:
        raise OutOfBudget(f"the CPU budget ran out (process CPU time {time.process_time():.1f} s, "
                          f"deadline {deadline:.1f} s)")


__all__ = ["OutOfBudget", "check", "cpu_deadline"]

"""Declarative checks of settings, the one way options are validated.

In the manner of scikit-learn's parameter constraints: a class (a config, a method)
declares what each option may hold, once, as a dict of constraints, and
:func:`validate` checks given values against it, raising a
:class:`~fewshot.errors.ConfigError` that names the owner, the option, what it must be
and what it got::

    PROTONET = {"distance": OneOf("euclidean", "cosine"), "normalize": Boolean()}
    validate("protonet", {"distance": distance, "normalize": normalize}, PROTONET)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from .errors import ConfigError, did_you_mean


class Constraint:
    """What one option may hold; :meth:`accepts` checks a value, :meth:`describe` says it in words."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Integer(Constraint):
    """An integer (a Python or NumPy one, not a bool) in ``[low, high]`` (either bound may be None)."""

    low: int | None = None
    high: int | None = None

    def accepts(self, value: Any) -> bool:
        return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
                and (self.low is None or value >= self.low) and (self.high is None or value <= self.high))

    def describe(self) -> str:
        return "an integer" + _range(self.low, self.high, closed_low=True)


@dataclass(frozen=True)
class Real(Constraint):
    """A finite number (int or float, not a bool) above ``low`` (strictly if ``open_low``) and up to ``high``."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)

    def describe(self) -> str:
        return "a finite number" + _range(self.low, self.high, closed_low=not self.open_low,
                                          closed_high=not self.open_high)


@dataclass(frozen=True)
class Boolean(Constraint):
    """``True`` or ``False`` (JSON ``true``/``false``), not 0 or 1."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


class OneOf(Constraint):
    """One of a fixed set of values (compared with ``==``, and of the same type)."""

    def __init__(self, *choices: Any):
        self.choices = choices

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(c) and value == c for c in self.choices)

    def describe(self) -> str:
        return "one of " + ", ".join(str(c) for c in self.choices)


@dataclass(frozen=True)
class Text(Constraint):
    """A non-empty string."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value)

    def describe(self) -> str:
        return "a non-empty string"


@dataclass(frozen=True)
class Settings(Constraint):
    """A JSON object (a dict with string keys)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)

    def describe(self) -> str:
        return "an object of named settings"


@dataclass(frozen=True)
class Optional(Constraint):
    """``None`` or what ``inner`` accepts."""

    inner: Constraint

    def accepts(self, value: Any) -> bool:
        return value is None or self.inner.accepts(value)

    def describe(self) -> str:
        return f"{self.inner.describe()} (or null)"


@dataclass(frozen=True)
class ListOf(Constraint):
    """A list (or tuple) of ``shortest`` to ``longest`` values, each accepted by ``inner``."""

    inner: Constraint
    shortest: int = 0
    longest: int = 16

    def accepts(self, value: Any) -> bool:
        return (isinstance(value, (list, tuple)) and self.shortest <= len(value) <= self.longest
                and all(self.inner.accepts(v) for v in value))

    def describe(self) -> str:
        return f"a list of {self.shortest} to {self.longest} values, each {self.inner.describe()}"


def _number(x: float) -> str:
    """``x`` as written: whole numbers in full (a seed bound is 2147483647, not 2.14748e+09)."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range(low: float | None, high: float | None, *, closed_low: bool = True, closed_high: bool = True) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'≥' if closed_low else '>'} {_number(low)}"
    if low is None:
        return f" {'≤' if closed_high else '<'} {_number(high)}"
    return f" in {'[' if closed_low else '('}{_number(low)}, {_number(high)}{']' if closed_high else ')'}"


# -- bounds on the compute and memory a configuration (a file, a flag) can ask for ------------
# Checked where a value is read, before anything is allocated or run: a number in a file
# must not make fewshot allocate terabytes or loop for ever (issue 34).

#: Steps of an inner loop or of fine-tuning that a configuration may name (``inner_steps``,
#: ``test_inner_steps``, a transfer strategy's ``steps``): MAML uses 1-10, fine-tuning
#: 50-500; an exported model naming 10**9 would make ``predict`` run for ever. The default
#: bound: a user who means more raises it (:func:`max_steps`).
MAX_STEPS = 10_000
#: The environment variable that raises (or lowers) :data:`MAX_STEPS` for a process and the
#: processes it starts (data workers, distributed ranks); the CLI's ``--max-steps N`` sets it.
MAX_STEPS_ENV = "FEWSHOT_MAX_STEPS"
#: Episodes of one evaluation or validation (600 is the usual suite; 10**12 asked 7 TiB).
MAX_EPISODES = 10**6
#: Examples, points or rollouts per task of a generated sampler (rollouts are held for
#: the whole adaptation: 10**7 rollouts of 2D navigation asked for 80 GB).
MAX_PER_TASK = 10_000


def max_steps() -> int:
    """The bound on step counts in force: ``$FEWSHOT_MAX_STEPS`` if set, else :data:`MAX_STEPS`.

    Read at each check, so that a command line that raises it (``--max-steps``, through
    :func:`steps_allowed`) raises it for everything the command loads, files included."""
    text = os.environ.get(MAX_STEPS_ENV, "").strip()
    if not text:
        return MAX_STEPS
    try:
        bound = int(text) if len(text) <= 20 else -1  # no 4,300-digit parse
    except ValueError:
        bound = -1
    if bound < 1:
        raise ConfigError(f"${MAX_STEPS_ENV} must be a positive integer (the bound on step counts), got {text!r}")
    return bound


@contextlib.contextmanager
def steps_allowed(bound: int | None) -> Iterator[None]:
    """Within the block, step counts up to ``bound`` are accepted (None: the bound in force);
    for this process and the ones it starts, as ``$FEWSHOT_MAX_STEPS`` says."""
    if bound is None:
        yield
        return
    if not Integer(low=1).accepts(bound):
        raise ConfigError(f"--max-steps must be a positive integer (the bound on step counts), got {bound!r}")
    saved = os.environ.get(MAX_STEPS_ENV)
    os.environ[MAX_STEPS_ENV] = str(bound)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(MAX_STEPS_ENV, None)
        else:
            os.environ[MAX_STEPS_ENV] = saved


class StepCount(Constraint):
    """A step count (an integer ≥ 0) up to the bound in force (:func:`max_steps`); a refusal
    says how to raise the bound."""

    def accepts(self, value: Any) -> bool:
        return Integer(low=0, high=max_steps()).accepts(value)

    def describe(self) -> str:
        return f"an integer in [0, {max_steps()}] (raise the bound with --max-steps N or ${MAX_STEPS_ENV})"


STEPS = StepCount()
EPISODES = Integer(low=1, high=MAX_EPISODES)

#: The counts of a generated task sampler (sinusoids, environment families): examples
#: (or rollouts) per task, query points, and the seed.
SAMPLER_OPTIONS = {"shot": Integer(low=1, high=MAX_PER_TASK), "query": Integer(low=1, high=MAX_PER_TASK),
                   "seed": Integer(low=0)}


def checked(owner: str, name: str, value: Any, constraint: Constraint) -> Any:
    """``value`` if ``constraint`` accepts it, else the :class:`~fewshot.errors.ConfigError` of :func:`validate`."""
    validate(owner, {name: value}, {name: constraint})
    return value


def validate(owner: str, values: Mapping[str, Any], constraints: Mapping[str, Constraint]) -> None:
    """Check each of ``values`` that has a constraint; the first failure is a
    :class:`~fewshot.errors.ConfigError` naming ``owner`` and the option."""
    for name, constraint in constraints.items():
        if name in values and not constraint.accepts(values[name]):
            raise ConfigError(f"{owner} '{name}' must be {constraint.describe()}, got {values[name]!r}")


def check_known(owner: str, given, accepted, *, how: str = "") -> None:
    """Refuse option names of ``given`` that are not in ``accepted``, in one line naming the
    closest valid one and listing them all (``how`` says where they are described)."""
    accepted = list(accepted)
    unknown = [name for name in given if name not in accepted]
    if unknown:
        listing = ", ".join(accepted) if accepted else "none"
        raise ConfigError(f"{owner} has no option '{unknown[0]}'{did_you_mean(unknown[0], accepted)}; "
                          f"its options: {listing}{how}")


def recording_init(cls: type, init: Callable, kind: str, owner: Callable[[Any], str]) -> Callable:
    """``init`` of a class with declared options (a method, a head) that first checks its
    arguments against ``cls._parameter_constraints`` (one line naming ``owner(self)`` and the
    option) and then keeps them, defaults filled in, as ``self._params`` for ``get_params()``
    (scikit-learn's shape). A subclass's constructor runs last, so what it was given is what
    is kept. ``kind`` names the thing in a bad-signature error ("method", "head"); a
    ``backbone`` argument is the module the options configure, not an option."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as e:
            raise ConfigError(f"bad option for {kind} '{type(self).name}': {e}") from None
        bound.apply_defaults()
        params: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            how = signature.parameters[name].kind
            if how is inspect.Parameter.VAR_KEYWORD:
                params.update(value)
            elif how is not inspect.Parameter.VAR_POSITIONAL and name != "backbone":
                params[name] = value
        validate(owner(self), params, cls._parameter_constraints)
        init(self, *args, **kwargs)
        self._params = params

    return __init__

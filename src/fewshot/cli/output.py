"""What the command line prints as JSON: always valid JSON, and alone on stdout.

Python's ``json.dumps`` writes ``NaN`` and ``Infinity`` for undefined numbers (the
confidence interval of a single episode, say), which no JSON parser accepts. Every
``--json`` output goes through :func:`print_json`, which writes them as ``null``.

With ``--json`` a command's stdout is one JSON document, whose keys
:mod:`fewshot.cli.schemas` documents: the entry point runs the command inside
:func:`json_mode`, where anything else printed (a library's lines, a trial's line)
goes to stderr, with the progress and status lines.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import re
import sys
from typing import Any, Callable, Iterator


_ROLE = re.compile(r":[a-z:]+:`~?(?:([^`<]*?)\s*<[^`>]*>|([^`]*))`")  # :class:`~a.B`, :doc:`text <target>`


def plain_text(doc: str) -> str:
    """A docstring's reST as plain text for the terminal: ``code`` as code, a cross-reference
    (``:class:`~fewshot.learner.FewShotClassifier```) as its last name or its own text."""
    doc = _ROLE.sub(lambda m: m[1] if m[1] is not None else m[2].rsplit(".", 1)[-1], doc)
    return doc.replace("``", "")


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite number (nested in dicts, lists, tuples) as None, and
    NumPy numbers as Python ones."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, numbers.Integral) and not isinstance(value, int):  # NumPy's integers
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        number = float(value)
        return number if math.isfinite(number) else None
    return value


def json_text(value: Any, *, indent: int | None = None, default: Callable[[Any], Any] | None = None) -> str:
    """``value`` as strict JSON (an undefined number is ``null``)."""
    return json.dumps(finite(value), indent=indent, default=default, allow_nan=False)


#: Where :func:`print_json` writes while a command runs in :func:`json_mode` (the real stdout).
_json_stream = None


@contextlib.contextmanager
def json_mode(enabled: bool = True) -> Iterator[None]:
    """Run a command whose stdout must hold its JSON document only: inside, :func:`print_json`
    writes to stdout and every other ``print`` goes to stderr."""
    global _json_stream
    if not enabled:
        yield
        return
    saved, _json_stream = _json_stream, sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_stream = saved


def print_json(value: Any, *, indent: int | None = None, default: Callable[[Any], Any] | None = None) -> None:
    print(json_text(value, indent=indent, default=default), file=_json_stream or sys.stdout)


__all__ = ["finite", "json_mode", "json_text", "print_json"]

"""Progress of long loops and silent phases, shown as the output stream allows.

Every long loop reports through :func:`bar` (or :func:`track`) and every long phase
without a loop (calibrating, embedding, fitting a head) through :func:`status`; nothing
else constructs a progress bar. What the user sees depends on where stderr goes:

- a terminal: a tqdm bar, redrawn in place;
- anything else (a file, a pipe, a CI log): a plain line at most every
  :data:`PLAIN_EVERY` seconds with the same figures, never a carriage return
  (``fewshot: training protonet 1200/5000 steps (24 %), loss 0.41, acc 88.1, 0:42 elapsed``);
- ``TQDM_DISABLE`` set (tqdm's own switch) or a loop asked not to show progress: no bar
  and no lines;
- quiet (the CLI's ``--quiet``, :func:`set_quiet`): neither bars, lines nor status lines.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, TextIO

#: Seconds between two plain progress lines when stderr is not a terminal.
PLAIN_EVERY = 10.0

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence (or not) every progress bar, progress line and status line of this process."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


def _tqdm_disabled() -> bool:
    # tqdm reads TQDM_DISABLE only for arguments not passed explicitly; it is honoured here
    # whatever a caller passes, with tqdm's spelling of false.
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no", "off")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def status(message: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
    """Say on stderr, in one line, what a long phase without a progress bar is doing
    (``fewshot: calibrating on 50 episodes``), unless quiet or not ``enabled`` (a library
    caller's ``progress=False``)."""
    if enabled and not _quiet:
        print(f"fewshot: {message}", file=stream or sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """One loop's progress: a tqdm bar on a terminal, plain lines elsewhere, or nothing.

    Used as tqdm is (``update``, ``set_postfix``, ``set_postfix_str``, a context manager),
    so a call site changes only the line that creates it. ``enabled=False`` (a library
    caller's ``progress=False``) shows nothing. ``leave=False`` marks an inner loop (a
    validation inside training): its bar is erased when done, and in plain mode it says
    no closing line.
    """

    def __init__(self, total: float | None = None, *, desc: str = "", unit: str = "it", initial: float = 0,
                 enabled: bool = True, leave: bool = True, unit_scale: bool = False, stream: TextIO | None = None,
                 every: float = PLAIN_EVERY) -> None:
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.n, self.leave, self.every = initial, leave, every
        self.postfix = ""
        self._bar = None
        self._plain = False
        self._start = self._last = time.monotonic()
        self._said: float | None = None  # the count the last plain line showed
        if not enabled or _quiet or _tqdm_disabled():
            return
        if _isatty(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale, leave=leave,
                             file=self.stream, dynamic_ncols=True)
        else:
            self._plain = True

    # -- the tqdm interface the loops use -----------------------------------------------
    def update(self, n: float = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._plain:
            now = time.monotonic()
            if now - self._last >= self.every:
                self._last = now
                self._say()

    def set_postfix(self, values: dict[str, Any]) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(values)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._plain:
            self._plain = False
            # A log that showed the loop going shows it ending (once).
            if self._said is not None and self._said != self.n and self.leave:
                self._say()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- plain lines ----------------------------------------------------------------------
    def line(self) -> str:
        """The progress in words: ``training protonet 1200/5000 steps (24 %), loss 0.41, 0:42 elapsed``."""
        count = self._amount(self.n)
        units = self.unit if self.unit_scale or self.unit.endswith("s") or self.unit == "B" else f"{self.unit}s"
        if self.total:
            count += f"/{self._amount(self.total)} {units} ({100 * self.n / self.total:.0f} %)"
        else:
            count += f" {units}"
        parts = [f"{self.desc} {count}".strip()] + ([self.postfix] if self.postfix else [])
        return ", ".join(parts + [f"{_clock(time.monotonic() - self._start)} elapsed"])

    def _amount(self, n: float) -> str:
        if self.unit_scale:
            from tqdm import tqdm

            return tqdm.format_sizeof(n)
        return f"{n:g}"

    def _say(self) -> None:
        self._said = self.n
        print(f"fewshot: {self.line()}", file=self.stream, flush=True)


def bar(total: float | None = None, **kwargs: Any) -> Progress:
    """A :class:`Progress` for a loop of ``total`` steps (see the class for the keywords)."""
    return Progress(total, **kwargs)


def track(iterable: Iterable, *, total: float | None = None, **kwargs: Any) -> Iterator:
    """``iterable``, reporting one step per item (a :class:`Progress` around a ``for``)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, **kwargs) as progress:
        for item in iterable:
            yield item
            progress.update()


__all__ = ["PLAIN_EVERY", "Progress", "bar", "is_quiet", "set_quiet", "status", "track"]

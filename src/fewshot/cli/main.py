"""The ``fewshot`` command: its parser and entry point.

Every command has ``--help``. Errors a user can cause print one line and exit with
status 2; nothing is left half-written. Output piped to a reader that stops early
(``fewshot predict --json | head``) ends the command quietly with status 141, as a
process killed by SIGPIPE ends in the shell (128 + 13), so ``set -o pipefail`` sees it
as it sees any Unix tool cut short; see "Note on SIGPIPE" in Python's ``signal`` docs. Each command family lives in its own module
and adds its parsers here, explicitly; a command's flags are built (and its heavy
imports made) only when that command runs, so ``fewshot --help`` is fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Iterator, Sequence

from .. import __version__, progress
from ..errors import FewShotError
from ..params import steps_allowed
from . import core, model, tools, zoo
from .flags import Parser, one_line
from .output import json_mode

# What was interrupted decides how to continue; each long command resumes by design.
RESUME_HINTS = {"train": "`fewshot train --resume RUN_DIR` continues the run",
                "zoo": "`fewshot zoo build` again skips the models already built",
                "select": "`fewshot select build` again adds only the missing rows",
                "tune": "`fewshot tune` again with the same --out adds trials"}


def build_parser() -> Parser:
    parser = Parser(prog="fewshot", description="Learn new tasks from a few examples: meta-learning, "
                    "transfer learning and model selection under one evaluation protocol.")
    parser.add_argument("--version", action="version", version=f"fewshot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    core.register(sub)  # train, evaluate, data, runs, demo
    model.register(sub)  # export, predict
    zoo.register(sub)  # zoo, select
    tools.register(sub)  # report, tune, advise
    return parser


def commands(parser: argparse.ArgumentParser | None = None) -> Iterator[tuple[str, Parser]]:
    """Every command, as ``("zoo add", its parser)``: each parser (the top level's included)
    whose arguments name a function to run, with every flag built. The one list of commands
    the documented JSON keys and flag words are checked against."""
    def walk(p, path):
        if isinstance(p, Parser):
            p.ensure_built()
        if p.get_default("func") is not None:
            yield " ".join(path), p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, (*path, name))

    yield from walk(parser or build_parser(), ())


#: The exit status of a command whose reader closed the pipe (128 + SIGPIPE).
BROKEN_PIPE_STATUS = 141


def _reader_went_away() -> int:
    # Python flushes stdout again at exit: point it at /dev/null so that flush is silent.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (output captured in-process)
        pass
    return BROKEN_PIPE_STATUS


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as the command's one line, ``fewshot: warning: MESSAGE``: no source
    file, line number or code line, which speak to a developer, not to the user."""
    try:
        print(f"fewshot: warning: {one_line(str(message))}", file=file or sys.stderr)
    except OSError:  # stderr gone: a warning is not worth a traceback
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    command_line = argv is None  # the process's own command line, not a call from Python
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command's manners, undone on return: main() also runs inside tests and notebooks,
    # whose own warning handling (pytest.warns, a notebook's display) stays as it is.
    # Set before parsing, which warns of deprecated flags.
    shown, quiet = warnings.showwarning, progress.is_quiet()
    if command_line:
        warnings.showwarning = show_warning
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:  # reported against the command's own flags and help, not the top level's
            args.command_parser.unknown_flags(extras)
    except BaseException:
        warnings.showwarning = shown
        raise
    args.argv = argv
    progress.set_quiet(getattr(args, "quiet", False))
    try:
        # --json: the document alone on stdout (output.json_mode); --max-steps: the step bound raised.
        with json_mode(getattr(args, "json", False)), steps_allowed(getattr(args, "max_steps", None)):
            code = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here, not as a traceback at exit
        return code
    except BrokenPipeError:
        return _reader_went_away()
    except FewShotError as e:
        print(f"fewshot: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = RESUME_HINTS.get(argv[0] if argv else "")
        print(f"fewshot: interrupted{'; ' + how if how else ''}", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
        progress.set_quiet(quiet)

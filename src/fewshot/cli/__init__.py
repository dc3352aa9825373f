"""The ``fewshot`` command line: :func:`main` is the entry point.

``flags`` holds what every command shares; ``core`` (train, evaluate, runs, data,
demo), ``catalog`` (methods, heads), ``model`` (export, predict), ``tools`` (report, tune,
advise) and ``zoo`` (zoo, select) each hold a command family; ``main`` builds the parser
from them. ``schemas`` documents each command's ``--json`` keys and ``words`` each flag's
meaning, once.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]

"""The ``fewshot`` command line: :func:`main` is the entry point.

``flags`` holds what every command shares; ``core`` (train, evaluate, runs, data,
demo), ``tools`` (report, tune, advise) and ``zoo`` (zoo, select) each hold a command
family; ``main`` builds the parser from them.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]

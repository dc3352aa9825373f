"""What every ``fewshot`` command shares: the parser, option parsing and the flag groups.

Nothing here imports torch or the heavy modules: ``fewshot --help`` builds only the
top-level parser, and each command's flags are added when that command is parsed or
its help is asked for (:class:`Parser`'s ``build``).
"""

from __future__ import annotations

import argparse
import re
import warnings
from typing import Any, Callable

from ..config import PRECISIONS
from ..errors import ConfigError, did_you_mean
from ..io import json_or_text


def one_line(message: str) -> str:
    """``message`` on one line: line breaks (a file or folder name may hold them) shown as ``\\n``."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<word>[^']*)' \(choose from (?P<choices>.*)\)")


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line rather than usage plus error.

    ``build``, if given, adds the parser's arguments the first time it parses or prints
    help: a command's flags (and the imports they need, e.g. the method registry for
    ``train``'s choices) cost nothing until that command is used. The parser that
    parsed a command last sets ``command_parser`` on the namespace, so an unknown flag
    is reported against the command's own help.
    """

    def __init__(self, *args: Any, build: Callable[["Parser"], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._build = build

    def ensure_built(self) -> "Parser":
        if self._build is not None:
            build, self._build = self._build, None
            build(self)
        return self

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self.ensure_built()
        namespace, extras = super().parse_known_args(args, namespace)
        if getattr(namespace, "command_parser", None) is None:  # the innermost command parses first
            namespace.command_parser = self
        return namespace, extras

    def format_help(self) -> str:
        self.ensure_built()
        return super().format_help()

    def format_usage(self) -> str:
        self.ensure_built()
        return super().format_usage()

    def option_strings(self) -> list[str]:
        """Every flag this parser takes (``--way``, ``-o`` ...)."""
        self.ensure_built()
        return [s for action in self._actions for s in action.option_strings]

    def unknown_flags(self, extras: list[str]) -> None:
        """Exit (status 2, one line) naming ``extras`` and the closest known flag."""
        first = next((e for e in extras if e.startswith("-")), extras[0])
        hint = did_you_mean(first.split("=", 1)[0], self.option_strings(), quote="") if first.startswith("-") else ""
        self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")

    def error(self, message: str) -> None:  # type: ignore[override]
        match = _INVALID_CHOICE.search(message)
        if match:
            choices = re.findall(r"'([^']*)'", match["choices"])
            message += did_you_mean(match["word"], choices)
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` as ``(key, value)``: the value as JSON when it parses, else the string;
    dashes in the key become underscores."""
    if "=" not in text:
        raise ConfigError(f"option '{text}' must look like KEY=VALUE")
    key, value = text.split("=", 1)
    return key.replace("-", "_"), json_or_text(value, f"option {key}")


def parse_options(texts) -> dict[str, Any]:
    """Repeated ``KEY=VALUE`` flags as a dict."""
    return dict(parse_option(t) for t in texts)


def deprecated(p: argparse.ArgumentParser, *olds: str, use: str, **kwargs: Any) -> None:
    """Old spellings ``olds`` of the flag ``use``, kept working for a while: each does what
    ``use`` does (give the same ``dest`` and kind in ``kwargs``), is hidden from the help, and
    warns once per process, ``fewshot: warning: --query is deprecated, use --queries``
    (:mod:`fewshot.cli.words` lists them)."""
    action = p.add_argument(*olds, help=argparse.SUPPRESS, **kwargs)
    base = type(action)

    def warn_then_act(self, parser, namespace, values, option_string=None):
        warnings.warn(f"{option_string} is deprecated, use {use}", FutureWarning, stacklevel=2)
        base.__call__(self, parser, namespace, values, option_string)

    # The same action (store, append, ...) with a warning first; ``replacement`` names the new flag.
    action.__class__ = type("Deprecated", (base,), {"__call__": warn_then_act, "replacement": use})


# -- shared flag groups ------------------------------------------------------------------

def add_json_flag(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """``--json`` (every command): the result as one JSON document on stdout, with the keys
    :mod:`fewshot.cli.schemas` documents; progress and status stay on stderr. ``nested``: as
    in :func:`add_quiet_flag`."""
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS if nested else False,
                   help="print the result as one JSON document on stdout (progress stays on stderr)")


def add_max_steps_flag(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """``--max-steps N`` (every command that adapts or trains with step counts): the bound on
    inner-loop and fine-tuning steps (:func:`fewshot.params.max_steps`), which the entry point
    raises for the command."""
    from ..params import MAX_STEPS, MAX_STEPS_ENV

    p.add_argument("--max-steps", type=int, metavar="N", default=argparse.SUPPRESS if nested else None,
                   help=f"allow inner-loop and fine-tuning step counts (flags, options, files) up to N "
                        f"(default ${MAX_STEPS_ENV}, else {MAX_STEPS})")


def add_quiet_flag(p: argparse.ArgumentParser, also: str = "", *, nested: bool = False) -> None:
    """``--quiet`` (every command that computes): no progress bars, progress lines or status
    lines (:mod:`fewshot.progress`; the entry point applies it), and no device line;
    ``also`` names what else the command leaves out. ``nested``: an action of a command
    that has the flag too (``select build``), which keeps the command's value."""
    p.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS if nested else False,
                   help="no progress bars, progress lines or status lines on stderr" + (f"; {also}" if also else ""))



def add_data_flags(p: argparse.ArgumentParser, *, default_dataset: str | None) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=default_dataset, help="dataset name (see `fewshot data list`)")
    g.add_argument("--env", dest="dataset", default=argparse.SUPPRESS,
                   help="environment family, for maml-rl (the same as --dataset; see `fewshot data list`)")
    from ..data.styles import STYLES  # the style names, listed where they are decided

    g.add_argument("--style", metavar="STYLE", help="see the dataset's images in a style: --dataset D --style S is "
                   f"--dataset D:S ({', '.join(STYLES.names())}; chained as blur:noise)")
    g.add_argument("--data-root", help="data root (default: $FEWSHOT_DATA, else ~/.cache/fewshot)")
    g.add_argument("--split-scheme", metavar="SCHEME",
                   help="split scheme, for datasets with several (omniglot: vinyals, background)")
    deprecated(g, "--split", use="--split-scheme", dest="split_scheme", metavar="SCHEME")
    g.add_argument("--path", help="folder dataset: a folder with one sub-folder of images per class, or a CSV "
                   "of path,label rows")
    g.add_argument("--image-size", type=int, help="resize images to this many pixels a side (folder: inferred)")
    g.add_argument("--channels", type=int, choices=[1, 3], help="folder dataset: 1 (grey) or 3 (RGB); inferred")
    g.add_argument("--rotations", action=argparse.BooleanOptionalAction, default=None,
                   help="rotated copies as extra classes (omniglot: on by default; digits: on in training's recipe)")
    g.add_argument("--train-classes", metavar="A,B,...", help="folder dataset: the classes to train on "
                   "(default: those no other split names)")
    g.add_argument("--val-classes", metavar="A,B,...", help="folder dataset: the classes to validate on")
    g.add_argument("--test-classes", metavar="A,B,...", help="folder dataset: the classes held out for testing")
    g.add_argument("--val-ratio", type=float, help="folder dataset: fraction of classes held out for validation "
                   "when none are named (default 0.2)")
    g.add_argument("--test-ratio", type=float, help="folder dataset: fraction of classes held out for testing "
                   "when none are named (default 0.2)")
    g.add_argument("--split-seed", type=int, help="folder dataset: seed of the random class split (default 0)")


def dataset_from_args(args: argparse.Namespace, default: str | None = None) -> str | None:
    """The domain of ``--dataset`` (else ``default``) and ``--style``: ``DATASET:STYLE``
    (:func:`fewshot.data.styles.with_style`, which checks the style and refuses a disagreement)."""
    style = getattr(args, "style", None)
    if style is None:
        return getattr(args, "dataset", None) or default
    from ..data.styles import with_style

    return with_style(getattr(args, "dataset", None) or default, style)


def dataset_options(args: argparse.Namespace, base: dict | None = None) -> dict:
    """The dataset options given by the data flags, over ``base``."""
    options = dict(base or {})
    for key in ("split_scheme", "image_size", "path", "channels", "train_classes", "val_classes", "test_classes",
                "val_ratio", "test_ratio", "split_seed"):
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
    if getattr(args, "rotations", None) is not None:
        options["rotations"] = args.rotations
    return options


def add_episode_flags(p: argparse.ArgumentParser, *, train: bool) -> None:
    g = p.add_argument_group("episodes")
    g.add_argument("--way", type=int, help="classes per test episode (default 5)")
    g.add_argument("--shot", type=int, help="support examples per class (default 1)")
    g.add_argument("--query", type=int, help="query examples per class (default 15)")
    g.add_argument("--seed", type=int, help="seed (default 0)")
    if train:
        g.add_argument("--train-way", type=int, help="classes per training episode (default: --way)")
        g.add_argument("--train-shot", type=int, help="support examples per class in training (default: --shot)")
        g.add_argument("--train-query", type=int, help="query examples per class in training (default: --query)")


def add_device_flags(p: argparse.ArgumentParser, *, train: bool = False) -> None:
    """``--device`` and ``--precision`` (every command that computes); with ``train``, also
    ``--tf32`` and ``--deterministic`` (see :mod:`fewshot.runtime`). They are requests: the
    library resolves them once, with the task kind's device rule (:func:`runtime_from_args`)."""
    g = p.add_argument_group("device")
    g.add_argument("--device", metavar="DEVICE",
                   help="auto (default: CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    g.add_argument("--precision", choices=list(PRECISIONS),
                   help=f"{PRECISIONS[0]} (default), or autocast to bf16 / fp16 (fp16 with a gradient scaler)")
    if train:
        g.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None,
                       help="TF32 matmuls and convolutions on GPUs that have them (default on)")
        g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                       help="deterministic algorithms, no cuDNN autotuning: repeatable GPU runs, slower")


def runtime_from_args(args: argparse.Namespace, kind=None, what: str = ""):
    """The :class:`~fewshot.runtime.Runtime` of ``--device`` and ``--precision`` for work of
    task kind ``kind`` (its device rule applies; ``what`` names the data in a refusal). A
    device that is not there, or that the kind refuses, is a ConfigError."""
    from ..runtime import resolve_runtime

    return resolve_runtime(getattr(args, "device", None), getattr(args, "precision", None), kind=kind, what=what)


def resolve_device(args: argparse.Namespace):
    """The torch device of ``--device`` for classification work (see :func:`runtime_from_args`)."""
    return runtime_from_args(args).device


def say_device(args: argparse.Namespace, runtime) -> None:
    """After a command's work: which device did it, and why (``device auto -> cpu: no CUDA GPU
    or MPS device found``), on stderr, unless ``--quiet`` or ``--json``. Said after the
    work, so that an error stays the one line a failed command prints. ``runtime``: the
    :class:`~fewshot.runtime.Runtime` the work ran with (or the device of :func:`resolve_device`)."""
    import sys

    from ..runtime import Runtime

    if not isinstance(runtime, Runtime):  # a device of resolve_device: asked for with --device
        runtime = runtime_from_args(args)
    if not getattr(args, "quiet", False) and not getattr(args, "json", False):
        print(f"fewshot: {runtime.say()}", file=sys.stderr)


def add_head_flag(p: argparse.ArgumentParser, what: str = "the model's", default: str = "") -> None:
    """``--head HEAD``: a test-time head on ``what`` features (:mod:`fewshot.heads`), and
    ``--head-option KEY=VALUE`` for its options; ``default`` says which head is used without
    the flag. The names are not argparse choices: an unknown one is the head registry's line,
    with the closest name. Adding the flag imports the head registry (and torch), as
    ``train``'s method choices do."""
    from ..heads import HEADS

    inductive = ", ".join(n for n, h in HEADS.items() if not h.transductive)
    transductive = ", ".join(n for n, h in HEADS.items() if h.transductive)
    p.add_argument("--head", metavar="HEAD",
                   help=f"classify with a test-time head on {what} features instead of the method's own "
                        f"adaptation: {inductive} (inductive); {transductive} (transductive: they see all "
                        "queries of an episode at once); options with --head-option KEY=VALUE (`fewshot heads` "
                        "lists them)" + (f"; default: {default}" if default else ""))
    p.add_argument("--head-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of --head, e.g. norm=L2N")


def head_from_args(args: argparse.Namespace, default: str | None = None):
    """The :class:`~fewshot.heads.Head` of ``--head`` (else ``default``; None when neither)
    with the ``--head-option`` options; an unknown head or option, or a bad value, is one line.
    Head options given with ``-o`` (the old spelling) still work, with a warning."""
    name = getattr(args, "head", None) or default
    if name is None:
        return None
    from ..heads import build_head

    options, method_options = getattr(args, "head_option", None) or [], getattr(args, "option", None) or []
    if options and method_options:
        raise ConfigError("a head replaces the method's own adaptation, which -o configures: give the head's "
                          "options with --head-option and drop -o")
    if method_options:
        warnings.warn("-o/--option for a head is deprecated, use --head-option", FutureWarning, stacklevel=2)
        options = method_options
    return build_head(name, **parse_options(options))


def trainable_methods() -> list[str]:
    """Names of the registered methods that learn across tasks, i.e. that ``fewshot train``
    trains (imports the registry, and so torch)."""
    from ..methods import METHODS

    return sorted(n for n, m in METHODS.items() if m.learns_across_tasks)


def config_from_args(args: argparse.Namespace) -> "TrainConfig":  # noqa: F821
    """The TrainConfig of a command's flags: defaults < ``--config`` file < flags. A command
    without some flag (``tune`` has no ``--momentum``) leaves that setting to the layers below."""
    from ..config import TrainConfig

    flag = lambda name: getattr(args, name, None)  # noqa: E731
    method_options = parse_options(args.option)
    # Compared with None, never by truthiness: --inner-steps 0 and --inner-lr 0 are values
    # (maml-rl's "pretrained" baseline; the method itself refuses a 0 it cannot take).
    # --first-order is a switch, whose absence is False.
    for name in ("distance", "inner_steps", "inner_lr"):
        if flag(name) is not None:
            method_options[name] = flag(name)
    if flag("first_order"):
        method_options["first_order"] = True
    backbone_options = parse_options(args.backbone_option)
    no_val = (flag("val_split") or "").lower() == "none"
    backbone = args.backbone
    if flag("rollouts") is not None:  # maml-rl: rollouts per adaptation step, and for the outer objective
        args.shot = args.rollouts if flag("shot") is None else args.shot
        args.query = args.rollouts if flag("query") is None else args.query
    dataset = dataset_from_args(args)
    if backbone is None and dataset:
        from ..data.tasks import default_backbone

        backbone = default_backbone(dataset)  # an environment family's policy is an MLP
    config = TrainConfig.layered(
        args.config, method=args.method, dataset=dataset, backbone=backbone,
        dataset_options=dataset_options(args), method_options=method_options or None,
        backbone_options=backbone_options or None,
        **{name: flag(name) for name in (
            "way", "shot", "query", "train_way", "train_shot", "train_query", "episodes", "meta_batch", "optimizer",
            "lr", "lr_step", "momentum", "val_every", "val_episodes", "checkpoint_every", "seed", "train_split",
            "cpu_minutes", "device", "precision", "tf32", "deterministic", "augment")},
        val_split=None if no_val else flag("val_split"))
    if no_val:  # layered() skips None: it cannot override the default
        config = TrainConfig.from_dict({**config.to_dict(), "val_split": None})
    return config


def _missing(module: str, extra: str) -> ConfigError:
    return ConfigError(f"this command needs {module}: pip install 'fewshot[{extra}]'")


def require_matplotlib() -> None:
    """Fail in one line when matplotlib (``fewshot[report]``) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise _missing("matplotlib", "report") from None


def require_optuna() -> None:
    """Fail in one line when Optuna (``fewshot[tune]``) is missing."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise _missing("optuna", "tune") from None


def needs_tool(func, require):
    """``func``, failing first in one line (``require()``) when its optional dependency is missing."""
    def run(args: argparse.Namespace) -> int:
        require()
        return func(args)
    return run

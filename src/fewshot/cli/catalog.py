"""``fewshot methods`` and ``fewshot heads``: what the registries hold, and each entry's options."""

from __future__ import annotations

import argparse
import inspect
import json

from .flags import add_json_flag
from .output import plain_text, print_json


def _options(cls, signature_options=None) -> dict[str, dict]:
    """A method's (or head's) options as ``{name: {"default", "required", "type",
    "constraint"}}``: the constructor's signature (``signature_options``, default
    :func:`~fewshot.methods.method_options`) and the class's declared constraints (in
    words; None where it declares none)."""
    if signature_options is None:
        from ..methods import method_options as signature_options

    options = {}
    for name, p in signature_options(cls).items():
        annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", None)
        constraint = cls._parameter_constraints.get(name)
        options[name] = {"default": None if p.default is inspect.Parameter.empty else p.default,
                         "required": p.default is inspect.Parameter.empty,
                         "type": None if p.annotation is inspect.Parameter.empty else annotation,
                         "constraint": constraint.describe() if constraint is not None else None}
    return options


def describe_method(name: str) -> dict:
    """What ``fewshot methods`` says of one registered method."""
    from ..methods import METHODS

    cls = METHODS[name]  # an unknown name: one line with the closest known one
    doc = plain_text(inspect.getdoc(cls) or "")
    return {"name": name, "summary": " ".join(doc.split("\n\n")[0].split()), "tasks": list(cls.tasks),
            "learns_across_tasks": cls.learns_across_tasks, "needs_backbone": cls.needs_backbone,
            "test_mode": cls.test_mode, "options": _options(cls)}


def cmd_methods(args: argparse.Namespace) -> int:
    from ..methods import METHODS

    names = [args.name] if args.name else METHODS.names()
    described = [describe_method(n) for n in names]
    if args.json:
        print_json(described, default=str)
        return 0
    for d in described:
        kind = ("meta-trained (`fewshot train`)" if d["learns_across_tasks"] else
                "needs no training (`fewshot evaluate NAME`)" if not d["needs_backbone"] else
                "adapts a trained backbone")
        print(f"{d['name']}: {kind}; {' and '.join(d['tasks'])}")
        summary = d["summary"] if args.name else d["summary"].split(". ")[0].rstrip(".") + "."
        print(f"  {summary}")
        if d["options"] and args.name:  # one method: each option, its default and what it may hold
            print("  options (-o KEY=VALUE; auto: the method chooses):")
            for k, o in d["options"].items():
                default = ("(required)" if o["required"] else "auto" if o["default"] is None
                           else json.dumps(o["default"], default=str))
                print(f"    {k} = {default}" + (f"  ({o['constraint']})" if o["constraint"] else ""))
        elif d["options"]:
            text = "  ".join(f"{k}=" + ("(required)" if o["required"] else "auto" if o["default"] is None
                                        else json.dumps(o["default"], default=str))
                             for k, o in d["options"].items())
            print(f"  options (-o KEY=VALUE), with defaults (auto: the method chooses): {text}")
        else:
            print("  options: none")
    return 0


def cmd_heads(args: argparse.Namespace) -> int:
    """``fewshot heads [NAME]``: the test-time heads, whether each is transductive, their options."""
    from ..heads import HEADS, head_options

    names = [args.name] if args.name else HEADS.names()
    described = []
    for name in names:
        cls = HEADS[name]  # an unknown name: the registry's one line, with the closest known one
        doc = inspect.getdoc(cls) or ""
        described.append({"name": name, "summary": " ".join(doc.split("\n\n")[0].split()),
                          "transductive": cls.transductive, "uses_base_features": cls.uses_base_features,
                          "options": _options(cls, head_options)})
    if args.json:
        print_json(described, default=str)
        return 0
    for d in described:
        kind = "transductive (sees all queries of an episode at once)" if d["transductive"] else "inductive"
        print(f"{d['name']}: {kind}")
        print(f"  {d['summary'] if args.name else d['summary'].split('. ')[0].rstrip('.') + '.'}")
        for k, o in d["options"].items():
            default = "auto" if o["default"] is None else json.dumps(o["default"], default=str)
            print(f"    {k} = {default}" + (f"  ({o['constraint']})" if o["constraint"] else ""))
    return 0


# -- parsers -----------------------------------------------------------------------------

def _methods_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="one method (default: every one)")
    add_json_flag(p)
    p.set_defaults(func=cmd_methods)


def _heads_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="one head (default: every one)")
    add_json_flag(p)
    p.set_defaults(func=cmd_heads)


def register(sub) -> None:
    """Add ``methods`` and ``heads`` to the sub-command parsers ``sub``."""
    sub.add_parser("methods", help="the methods and their options (-o KEY=VALUE), with defaults",
                   build=_methods_flags, description="Every registered method: what it does, whether it is "
                   "meta-trained, and its options with their defaults, read from the method's constructor.")
    sub.add_parser("heads", help="the test-time heads (evaluate --head H) and their options (--head-option KEY=VALUE)",
                   build=_heads_flags, description="Every registered head on features: whether it is transductive, "
                   "and its options with their defaults, read from the head's constructor.")


__all__ = ["describe_method", "register"]

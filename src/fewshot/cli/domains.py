"""``fewshot evaluate RUN --domains D1 D2 ...``: the cross-domain protocol (:mod:`fewshot.crossdomain`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import ConfigError, StoreError
from .flags import parse_options, runtime_from_args, say_device
from .output import print_json


def cmd_evaluate_domains(args: argparse.Namespace) -> int:
    """The run on its own test suite and on each ``--domains`` domain's, one table; each
    evaluation is recorded in the run store (dataset: the domain) as ``evaluate`` records are."""
    from ..crossdomain import domain_options, evaluate_domains
    from ..evaluate import record_evaluation
    from ..runs import Run

    if args.head or args.within_groups:
        raise ConfigError("--domains tests the run's own adaptation on each domain: drop --head and --within-groups")
    if args.dataset:
        raise ConfigError("--domains names the target domains; the run's own dataset is the in-domain column: "
                          "drop --dataset")
    if args.style:
        raise ConfigError("--domains names the target domains, each with its styles (DATASET:STYLE, e.g. "
                          f"omniglot:{args.style}): drop --style")
    loaded = Run(args.target).load(args.weights)
    config, method, name = loaded.config, loaded.method, loaded.config.method
    options = parse_options(args.option)
    if args.inner_steps is not None:
        options["inner_steps"] = args.inner_steps
    if args.adapt:
        from ..methods.transfer import adapt_method

        method, name = adapt_method(method, args.adapt, **options), f"{name}+{args.adapt}"
    else:
        method.set_test_options(**options)
    protocol = Run(args.target).protocol.given(way=args.way, shot=args.shot, query=args.query, seed=args.seed,
                                               episodes=args.episodes)
    runtime = runtime_from_args(args, what=config.dataset)
    start = time.process_time()
    table = evaluate_domains({name: method}, args.domains, image_shape=loaded.image_shape, source=config.dataset,
                             source_options=config.dataset_options, split=args.eval_split, way=protocol.way,
                             shot=protocol.shot, query=protocol.query, episodes=protocol.episodes, seed=protocol.seed,
                             data_root=args.data_root, device=runtime.device, progress=not args.quiet)
    cpu = (time.process_time() - start) / len(table.domains)
    record_error = None
    for domain, result in table.results[name].items():
        options = (config.dataset_options if domain == config.dataset
                   else domain_options(domain, loaded.image_shape, config.dataset, config.dataset_options))
        try:
            record_evaluation(result, method=name, dataset=domain, split=args.eval_split, seed=protocol.seed,
                              run_dir=str(Path(args.target).resolve()), cpu_seconds=cpu, runs=args.runs,
                              config={"dataset_options": options, "weights": args.weights, "cross_domain": True})
        except StoreError as e:  # the table is printed all the same
            record_error = str(e)
    if args.json:
        print_json(table.to_dict())
    else:
        print(table.render())
    say_device(args, runtime)
    return 0 if record_error is None else _not_recorded(record_error)


def _not_recorded(error: str) -> int:
    """After the table: one line saying it was not recorded, and exit status 2."""
    import sys

    from .flags import one_line

    print(one_line(f"fewshot: error: {error}; the table above is not recorded: run it again with a writable --runs"),
          file=sys.stderr)
    return 2


__all__ = ["cmd_evaluate_domains"]

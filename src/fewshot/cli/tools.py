"""``fewshot report``, ``tune`` and ``advise``: what the recorded runs say."""

from __future__ import annotations

import argparse

from .output import print_json
from .flags import add_data_flags, add_device_flags, add_episode_flags, add_json_flag, add_max_steps_flag, \
    add_quiet_flag, config_from_args, needs_tool, require_matplotlib, require_optuna, resolve_device, trainable_methods


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import build_report

    report = build_report(args.targets, args.out, runs=args.runs, selection=args.selection, data_root=args.data_root,
                          embed_split=args.embed_split, projection=args.projection, device=resolve_device(args))
    if args.json:
        print_json({"path": str(report.path), "figures": {name: str(path) for name, path in report.figures.items()},
                    "missing": dict(report.missing)})
        return 0
    print(f"report: {len(report.figures)} figure(s) -> {report.path}")
    for name, why in report.missing.items():
        print(f"  not drawn: {name}: {why}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from ..tune import parse_space, tune

    space = parse_space(args.space)
    base = config_from_args(args)
    result = tune(base, space, args.out, trials=args.trials, runs=args.runs, data_root=args.data_root,
                  sampler_seed=args.sampler_seed, log=None if args.quiet else print)
    best = result.best
    if args.json:
        print_json({"study": result.study, "best": best, "trials": result.trials,
                    "config_path": str(result.config_path), "summary_path": str(result.summary_path)})
        return 0
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
    print(f"best: trial {best['number']}: {params}: validation {best['val_accuracy']:.1f} ± "
          f"{best['val_ci95']:.1f} % -> {result.config_path} (train it: fewshot train --config "
          f"{result.config_path} --out RUN_DIR)")
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    from ..advise import Setting, advise
    from ..store import RunStore

    setting = Setting(args.way, args.shot, args.classes, args.images_per_class, args.cross_domain)
    advice = advise(setting, None if args.rules else RunStore(args.runs), data_root=args.data_root)
    if args.json:
        print_json(advice.to_dict(), indent=2)
    else:
        print(advice.text())
    return 0


def _report_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="RUN", help="run folders, or folders holding run folders")
    p.add_argument("--out", required=True, help="folder to write (replaced if it holds an earlier report)")
    p.add_argument("--runs", help="runs folder whose store holds the evaluate records "
                   "(default $FEWSHOT_RUNS, else ~/.local/share/fewshot)")
    p.add_argument("--selection", metavar="FILE",
                   help="model-selection results (JSON: arrays predicted/true/regret, or rows task/predicted/true); "
                        "default: selection by validation accuracy among the runs")
    p.add_argument("--data-root", help="data root for the embedding maps "
                   "(default: $FEWSHOT_DATA, else ~/.cache/fewshot)")
    p.add_argument("--embed-split", default="test", help="split of the episode the embedding maps show (default test)")
    p.add_argument("--projection", choices=["pca", "tsne"], default="pca",
                   help="2-D projection of embeddings (default pca)")
    p.add_argument("--device", metavar="DEVICE", help="where embeddings are computed: auto (default), cpu, cuda, "
                   "cuda:N or mps")
    add_json_flag(p)
    add_quiet_flag(p)
    p.set_defaults(func=needs_tool(cmd_report, require_matplotlib))


def _tune_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", choices=trainable_methods(), help="method to tune")
    p.add_argument("--space", action="append", default=[], required=True, metavar="NAME=RANGE",
                   help="a dimension: lr=1e-4:1e-2:log (log-uniform), inner_steps=1:5 (integers), "
                        "inner_lr=0.01,0.4 (choices); NAME is a config key, backbone.KEY or a method option")
    p.add_argument("--trials", type=int, default=20, help="trials to run (default 20)")
    p.add_argument("--out", required=True, help="folder for the trial runs, best.json and tune.json")
    p.add_argument("--config", help="JSON file of base settings (keys of TrainConfig)")
    p.add_argument("--sampler-seed", type=int, default=0, help="seed of the search (default 0)")
    add_data_flags(p, default_dataset=None)
    add_episode_flags(p, train=True)
    g = p.add_argument_group("each trial")
    g.add_argument("--episodes", type=int, help="meta-training steps of a trial (default 2000)")
    g.add_argument("--cpu-minutes", type=float, help="CPU budget of a trial")
    g.add_argument("--backbone", help="conv4 (default), resnet12 or mlp")
    g.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE", help="backbone option")
    g.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE", help="fixed method option")
    g.add_argument("--meta-batch", type=int, help="episodes per step (default 1)")
    g.add_argument("--optimizer", choices=["adam", "sgd"], help="outer-loop optimiser (default adam)")
    g.add_argument("--lr", type=float, help="outer learning rate, when not searched (default 1e-3)")
    g.add_argument("--val-every", type=int,
                   help="validate every this many steps (default 500; the last step always is)")
    g.add_argument("--val-episodes", type=int, help="validation episodes (default 200)")
    g.add_argument("--train-split", help="split to train on (default train)")
    g.add_argument("--val-split", help="split to score trials on (default val)")
    p.add_argument("--runs", help="runs folder holding the run store and the study "
                   "(default $FEWSHOT_RUNS, else ~/.local/share/fewshot)")
    add_max_steps_flag(p)
    add_device_flags(p, train=True)
    add_json_flag(p)
    add_quiet_flag(p, also="no line per trial")
    p.set_defaults(func=needs_tool(cmd_tune, require_optuna))


def _advise_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--way", type=int, required=True, help="classes per task (N)")
    p.add_argument("--shot", type=int, required=True, help="labelled examples per class (K)")
    p.add_argument("--classes", type=int, required=True, help="classes of the meta-training set")
    p.add_argument("--images-per-class", type=float, required=True, help="images per class of the meta-training set")
    p.add_argument("--cross-domain", action="store_true", help="the new tasks come from another domain than the "
                   "meta-training set")
    p.add_argument("--rules", action="store_true", help="ignore the records: the documented rules only")
    p.add_argument("--runs", help="runs folder holding the run store (default $FEWSHOT_RUNS, else ~/.local/share/fewshot)")
    p.add_argument("--data-root", help="data root, to size the recorded runs' training sets (never downloads)")
    add_json_flag(p)
    add_quiet_flag(p)
    p.set_defaults(func=cmd_advise)


def register(sub) -> None:
    """Add ``report``, ``tune`` and ``advise`` to the sub-command parsers ``sub``."""
    sub.add_parser("report", help="an HTML report with figures on runs",
                       description="Write a self-contained HTML page (index.html and PNG figures in one folder) "
                   "on training runs: learning curves, methods compared on identical episodes, accuracy "
                   "against shots and ways, embedding maps across checkpoints, model selection.", build=_report_flags)
    sub.add_parser("tune", help="hyper-parameter search on the validation split (Optuna)",
                       description="Search hyper-parameters of METHOD by short training runs scored by validation "
                   "accuracy (Optuna: exhaustive for small discrete spaces, else seeded TPE). Every trial is "
                   "recorded in the run store; the best settings go to OUT/best.json for "
                   "`fewshot train --config`. Run again with the same --out to add trials.", build=_tune_flags)
    sub.add_parser("advise", help="which method to use for a new problem, from recorded runs",
                       description="Recommend a method (and a transfer strategy where one fits) for an N-way K-shot "
                   "problem, with its expected accuracy and the evidence: the evaluate records of the run "
                   "store nearest to the problem. With no records, the documented rules.", build=_advise_flags)


__all__ = ["register"]

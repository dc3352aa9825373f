"""``fewshot train``, ``evaluate``, ``runs``, ``data`` and ``demo``: training runs and their evaluation."""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

from ..errors import ConfigError
from . import catalog
from .output import print_json
from .flags import add_data_flags, add_device_flags, add_episode_flags, add_head_flag, add_json_flag, \
    add_max_steps_flag, add_quiet_flag, config_from_args, dataset_from_args, dataset_options, head_from_args, \
    one_line, parse_options, runtime_from_args, say_device, trainable_methods


# -- commands ----------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from ..train import Trainer

    if args.nproc is not None:
        from ..distributed import check_nproc

        # Checked before any process starts: a bad count or config is one line, not one per process.
        check_nproc(args.nproc, _config(args))
    if args.nproc is not None and args.nproc > 1:
        from ..distributed import launch

        argv = list(args.argv)
        i = argv.index("--nproc") if "--nproc" in argv else None
        argv = argv[:i] + argv[i + 2:] if i is not None else [a for a in argv if not a.startswith("--nproc=")]
        return launch(args.nproc, argv)

    config, run_dir = _config(args), Path(args.resume or args.out)
    # The device request goes down unresolved: the trainer decides, with the task kind's rule.
    trainer = Trainer(config, run_dir, data_root=args.data_root, runs=args.runs)
    result = trainer.run(resume=bool(args.resume), progress=not args.quiet)
    if not trainer.dist.is_main:
        return 0
    if args.json:
        print_json({"method": config.method, "dataset": config.dataset, "run_dir": str(run_dir),
                    "run_id": result.run_id, "steps": result.steps, "metric": result.metric, "best": result.best,
                    "best_ci95": result.best_ci95, "seconds": result.seconds, "cpu_seconds": result.cpu_seconds,
                    "images_per_second": result.images_per_second, "device": result.device,
                    "peak_memory_mb": result.peak_memory_mb, "finished_before": result.finished_before})
    elif result.finished_before and result.record_error is None:
        recorded = f"recorded as run {result.run_id}" if result.run_id is not None else "not in the run store"
        print(f"{run_dir} is already finished ({result.steps} steps; {recorded}): nothing to do")
        return 0
    else:
        best = ("no validation split: kept the last weights" if result.best is None
                else f"best validation {trainer.kind.format(result.best, result.best_ci95)}")
        print(f"trained {config.method} for {result.steps} steps in {result.seconds:.0f} s "
              f"({result.images_per_second:.0f} images/s); {best}; run {result.run_id} -> {run_dir}")
    say_device(args, trainer.runtime)
    return _recording_failed(result.record_error, f"the run is complete in {run_dir}; record it with "
                                                  f"`fewshot train --resume {run_dir}` and a writable --runs")


def _config(args: argparse.Namespace):
    """The config ``train`` runs: the resumed run's, or the flags'."""
    from ..config import TrainConfig

    if args.resume:
        from ..io import read_json

        config = TrainConfig.from_dict(read_json(Path(args.resume) / "config.json"))
        # How it computes may change on resume (a GPU run continued on a CPU); what it learns may not.
        runtime = {k: getattr(args, k) for k in ("device", "precision", "tf32", "deterministic")
                   if getattr(args, k, None) is not None}
        return TrainConfig.from_dict({**config.to_dict(), **runtime})
    if not args.out:
        raise ConfigError("say where the run goes with --out DIR (or continue one with --resume DIR)")
    return config_from_args(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..data import load_source, make_sampler
    from ..errors import DataError, StoreError
    from ..evaluate import evaluate, evaluate_head, record_evaluation
    from ..features import FeatureCache
    from ..methods import METHODS, build_method
    from ..models.hub import is_hub_name
    from ..runs import Protocol, Run, features_of

    if args.domains:  # the cross-domain protocol: fewshot.crossdomain
        from .domains import cmd_evaluate_domains
        return cmd_evaluate_domains(args)
    target = args.target
    head, image_shape, recorded = None, None, {}
    if target in METHODS and not METHODS[target].needs_backbone:
        if args.head:
            raise ConfigError(f"{target} has no backbone to give a head features; name a run folder, an exported "
                              "model or hf:PATH")
        method = build_method(target, None, **parse_options(args.option))
        dataset_name, data_options, run_dir = dataset_from_args(args, "digits"), {}, None
        method_name, protocol = target, Protocol.of()
    else:
        # A head reads any trained model's features (a run, an export, hf:...); a method's own
        # adapt needs a run folder, whose missing state is the message a wrong path gets.
        opened = Run.open(target) if args.head or is_hub_name(target) else Run(target)
        head = head_from_args(args, getattr(opened, "default_head", None))
        if head is not None and (args.adapt or args.inner_steps is not None):
            raise ConfigError("--head classifies with a head on the backbone's features, in place of the method's "
                              "own adaptation: drop --adapt and --inner-steps")
        loaded = opened.load(args.weights)
        if head is not None:
            backbone, preprocessing, label, folder = features_of(loaded)
            method, method_name = None, f"{label}+{head.name}"
            recorded = {"head": head.name, "head_options": head.get_params(), "backbone": str(target)}
        config = getattr(loaded, "config", None)
        if config is None:  # a Hugging Face backbone: no data of its own, its preprocessing takes any images
            if not args.dataset:
                raise ConfigError(f"say which dataset to evaluate {target} on: --dataset D (`fewshot data list`)")
            dataset_name, data_options, run_dir = dataset_from_args(args), {}, str(folder.resolve())
            protocol = opened.protocol
        else:
            if head is None:
                method = loaded.method
                test_options = parse_options(args.option)
                if args.inner_steps is not None:
                    test_options["inner_steps"] = args.inner_steps
                method_name = config.method
                if args.adapt:
                    from ..methods.transfer import adapt_method

                    method = adapt_method(method, args.adapt, **test_options)
                    method_name = f"{config.method}+{args.adapt}"
                else:
                    method.set_test_options(**test_options)
            image_shape = list(loaded.image_shape)
            dataset_name, data_options = config.dataset, config.dataset_options
            run_dir = str(Path(target).resolve())
            protocol = Protocol.of(config)
            wanted = dataset_from_args(args, config.dataset)
            if wanted != config.dataset:
                from ..crossdomain import base_dataset

                # The run's own data restyled keeps the run's options: only the style changes.
                dataset_name = wanted
                data_options = data_options if base_dataset(wanted) == config.dataset else {}
                if dataset_name == "folder":  # new images prepared as the run's were, unless flags say otherwise
                    data_options = {"channels": image_shape[0], "image_size": image_shape[-1]}
    data_options = dataset_options(args, data_options)  # recorded as used, so suites compare
    dataset = load_source(dataset_name, args.data_root, **data_options)
    if image_shape is not None and dataset is not None and list(dataset.image_shape) != image_shape:
        channels, size = image_shape[0], image_shape[-1]
        fix = f"--image-size {size}" + (f" --channels {channels}" if dataset_name == "folder" else "")
        raise DataError(f"{target} takes {'x'.join(map(str, image_shape))} inputs, but {dataset_name} gives "
                        f"{'x'.join(map(str, dataset.image_shape))}; pass {fix}")
    # The flags given, over the model's own protocol (an untrained method's: the defaults).
    protocol = protocol.given(way=args.way, shot=args.shot, query=args.query, seed=args.seed, episodes=args.episodes)
    seed = protocol.seed
    sampler = make_sampler(dataset_name, dataset, args.eval_split, protocol.way, protocol.shot, protocol.query,
                           seed=seed, within_groups=args.within_groups)
    runtime = runtime_from_args(args, kind=sampler, what=dataset_name)
    start_cpu = time.process_time()
    if head is None:
        result = evaluate(method, sampler, protocol.episodes, progress=not args.quiet, device=runtime.device,
                          precision=runtime.precision)
    else:
        if not args.head:  # said once the evaluation is certain to start, so that an error stays one line
            note(args, f"no --head given: classifying with {head.name} "
                       f"({', '.join(f'{k}={v}' for k, v in head.get_params().items())}) on {target}'s features")
        result = evaluate_head(head, backbone, sampler, protocol.episodes, preprocessing=preprocessing,
                               cache=FeatureCache.from_env(), progress=not args.quiet, device=runtime.device,
                               precision=runtime.precision)
        if result.base_features:
            note(args, f"{head.name} centres on the {result.base_features}")
    cpu = time.process_time() - start_cpu
    record_error = None
    try:
        record_evaluation(result, method=method_name, dataset=dataset_name, split=args.eval_split,
                          seed=seed, run_dir=run_dir, cpu_seconds=cpu, runs=args.runs,
                          config={"dataset_options": data_options, "weights": args.weights, **recorded,
                                  **({"within_groups": True} if args.within_groups else {})})
    except StoreError as e:  # the result is printed all the same
        record_error = str(e)
    if args.json:
        print_json({"method": method_name, "dataset": dataset_name, "split": args.eval_split,
                    **({"within_groups": True} if args.within_groups else {}),
                    **result.to_dict(per_episode=args.per_episode)})
    else:
        print(result.summary() + ("; each episode within one group" if args.within_groups else ""))
    say_device(args, runtime)
    return _recording_failed(record_error, "run the same `fewshot evaluate` with a writable --runs to record it")


def note(args: argparse.Namespace, message: str) -> None:
    """A line on stderr saying what a command chose or used, unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(one_line(f"fewshot: {message}"), file=sys.stderr)


def _recording_failed(error: str | None, how: str) -> int:
    """0, or (after the work was reported) one line saying it was not recorded, and 2."""
    if error is None:
        return 0
    print(one_line(f"fewshot: error: {error}; the result above is not recorded: {how}"), file=sys.stderr)
    return 2


def cmd_data_list(args: argparse.Namespace) -> int:
    from ..data import DATASETS, TASK_FAMILIES

    rows = [{"name": name, "kind": "dataset" if name in DATASETS else "task family",
             "summary": (inspect.getdoc(sys.modules[loader.__module__]) or "").splitlines()[0]}
            for name, loader in sorted({**DATASETS, **TASK_FAMILIES}.items())]
    if args.json:
        print_json(rows)
        return 0
    for row in rows:
        print(f"{row['name']:14s} {row['summary']}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from ..data import load_dataset

    from ..data.styles import with_style

    summary = load_dataset(with_style(args.name, args.style), args.data_root, **dataset_options(args)).summary()
    if args.json:
        print_json(summary, indent=2)
        return 0
    print(f"{summary['name']}: images {'x'.join(map(str, summary['image_shape']))}")
    print(f"{'split':10s} {'classes':>8s} {'images':>8s} {'per class':>10s}")
    for split, row in summary["splits"].items():
        per_class = (str(row["min_per_class"]) if row["min_per_class"] == row["max_per_class"]
                     else f"{row['min_per_class']}-{row['max_per_class']}")
        print(f"{split:10s} {row['classes']:8d} {row['images']:8d} {per_class:>10s}")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from ..store import RunStore

    print_json(RunStore(args.runs).get(args.id), indent=2)  # JSON with or without --json: a record is one
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from ..store import RunStore

    rows = RunStore(args.runs).list(kind=args.kind, method=args.method)
    if args.json:
        print_json(rows)
        return 0
    print(f"{'id':>4s}  {'kind':10s} {'created':19s} {'method':10s} {'dataset':9s} {'result':24s} run")
    transductive = False
    for r in rows:
        m = r["metrics"]
        if r["kind"] == "evaluate" and m.get("metric") == "return":
            result = f"return {m['return']:.4g} ± {m['ci95']:.2g}"
        elif r["kind"] == "evaluate" and m.get("metric") == "mse":
            result = f"mse {m['mse']:.3g} ± {m['ci95']:.2g} {m['shot']}s"
        elif r["kind"] == "evaluate":
            result = f"{m['accuracy']:.1f} ± {m['ci95']:.1f} % {m['way']}w{m['shot']}s"
            if m.get("transductive"):  # its number depends on the queries per class: say how many
                result += f" T{m['query']}q"
                transductive = True
        elif m.get("val_mse") is not None:
            result = f"val mse {m['val_mse']:.3g} ({m['steps']} st)"
        elif m.get("val_accuracy") is not None:
            result = f"val {m['val_accuracy']:.1f} % ({m['steps']} st)"
        else:
            result = (f"{m['steps']} steps" if "steps" in m else  # other kinds: their first numbers
                      " ".join(f"{k}={v:.3g}" for k, v in m.items() if isinstance(v, (int, float)))[:24])
        print(f"{r['id']:4d}  {r['kind']:10s} {r['created'][:19]:19s} {r['method'] or '':10s} "
              f"{r['dataset'] or '':9s} {result:24s} {r['run_dir'] or ''}")
    if transductive:
        print("T<N>q: a transductive result: each episode's queries, N per class, were predicted together; "
              "it is not comparable as it stands with an inductive one")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    runtime = runtime_from_args(args)
    result = run_demo(args.dataset, data_root=args.data_root, runs=args.runs, out=args.out, episodes=args.episodes,
                      quick=args.quick, device=str(runtime.device), precision=runtime.precision)
    if args.json:
        print_json({"dataset": args.dataset, "device": str(runtime.device), **result})
    say_device(args, runtime)
    return 0


# -- parsers -----------------------------------------------------------------------------

def _train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", nargs="?", choices=trainable_methods(), help="method to train (omit with --resume)")
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")
    p.add_argument("--config", help="JSON file of settings (keys of TrainConfig)")
    add_data_flags(p, default_dataset=None)
    add_episode_flags(p, train=True)
    g = p.add_argument_group("training")
    g.add_argument("--backbone", help="conv4 (default), resnet12 or mlp")
    g.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE", help="backbone option, e.g. width=32")
    g.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. distance=cosine (`fewshot methods` lists them)")
    g.add_argument("--distance", choices=["euclidean", "cosine"], help="protonet, taskcond: distance to prototypes")
    g.add_argument("--inner-steps", type=int, metavar="K", help="MAML family: inner-loop steps")
    g.add_argument("--inner-lr", type=float, help="MAML family: inner-loop learning rate")
    g.add_argument("--rollouts", type=int, help="maml-rl: rollouts per adaptation step and for the outer objective "
                   "(sets --shot and --query)")
    g.add_argument("--first-order", action="store_true", help="MAML: first-order meta-gradient (FOMAML)")
    g.add_argument("--episodes", type=int, help="meta-training steps (default 2000)")
    g.add_argument("--meta-batch", type=int, help="episodes per step (default 1)")
    g.add_argument("--augment", choices=["none", "shift", "affine"],
                   help="change training episodes' images at random: whole-pixel shifts, or small affine "
                        "distortions (default none; never validation or test)")
    g.add_argument("--optimizer", choices=["adam", "sgd", "rmsprop"], help="outer-loop optimiser (default adam)")
    g.add_argument("--momentum", type=float, help="momentum of --optimizer sgd or rmsprop (default 0.9; 0 for plain SGD)")
    g.add_argument("--lr", type=float, help="outer learning rate (default 1e-3)")
    g.add_argument("--lr-step", type=int, help="halve the learning rate every this many steps (default: never)")
    g.add_argument("--cpu-minutes", type=float, help="stop (validated, checkpointed) after this much CPU time")
    g.add_argument("--val-every", type=int, help="validate every this many steps (default 500)")
    g.add_argument("--val-episodes", type=int, help="validation episodes (default 200)")
    g.add_argument("--checkpoint-every", type=int, help="checkpoint every this many steps (default 100)")
    g.add_argument("--train-split", help="split to train on (default train)")
    g.add_argument("--val-split", help="split to validate on (default val; 'none': no validation)")
    p.add_argument("--runs", help="runs folder holding the run store (default $FEWSHOT_RUNS, else ~/.local/share/fewshot)")
    p.add_argument("--nproc", type=int, help="split each meta-batch over this many processes (torch.distributed); "
                   "on GPUs one process per GPU")
    add_max_steps_flag(p)
    add_device_flags(p, train=True)
    add_json_flag(p)
    add_quiet_flag(p)
    p.set_defaults(func=cmd_train)


def _evaluate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="run folder, or the name of an untrained method (pixel-ncm); with --head also "
                   "an exported model or a Hugging Face backbone hf:<folder or hub id> (its default head: "
                   "simpleshot)")
    add_data_flags(p, default_dataset=None)
    add_episode_flags(p, train=False)
    p.add_argument("--episodes", type=int, help="test episodes (default 600)")
    p.add_argument("--eval-split", default="test", help="split to test on (default test)")
    p.add_argument("--within-groups", action="store_true",
                   help="draw each episode's classes from one group of the dataset (omniglot: one alphabet, "
                        "Lake et al.'s within-alphabet episodes)")
    p.add_argument("--weights", choices=["best", "last"], default="best", help="which checkpoint (default best)")
    p.add_argument("--inner-steps", type=int, metavar="K", help="MAML family: test-time inner steps")
    p.add_argument("--adapt-steps", dest="inner_steps", type=int, metavar="K",
                   help="maml-rl: report the return after 0..K policy-gradient steps (the same as --inner-steps)")
    p.add_argument("--adapt", metavar="STRATEGY",
                   help="adapt the run's backbone with a transfer strategy: linear-probe, finetune, freeze-k, "
                        "discriminative, gradual-unfreeze, lp-ft, surgical (options with -o, e.g. -o cv=true)")
    add_head_flag(p, "the run's backbone (or the Hugging Face model's)", default="simpleshot for an exported model "
                  "or hf:...")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="test-time option of the method (e.g. inner_steps=10) or of its --adapt strategy; with "
                        "--head, a head option (e.g. norm=L2N)")
    p.add_argument("--domains", nargs="+", metavar="DOMAIN", help="also test on each of these domains (a dataset or "
                   "DATASET:STYLE, e.g. digits omniglot:blur): one table, in-domain first, the same seeded suites")
    add_max_steps_flag(p)
    add_json_flag(p)
    p.add_argument("--per-episode", action="store_true", help="with --json: include per-episode accuracies")
    p.add_argument("--runs", help="runs folder holding the run store")
    add_device_flags(p)
    add_quiet_flag(p)
    p.set_defaults(func=cmd_evaluate)


def _data_flags(p: argparse.ArgumentParser) -> None:
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(p))
    dsub.required = True
    q = dsub.add_parser("list", help="the datasets fewshot knows")
    add_json_flag(q)
    q.set_defaults(func=cmd_data_list)
    q = dsub.add_parser("info", help="classes and images per split")
    q.add_argument("name", help="dataset name")
    add_data_flags(q, default_dataset=None)
    q.set_defaults(dataset=None)
    add_json_flag(q)
    add_quiet_flag(q)
    q.set_defaults(func=cmd_data_info)


def _runs_list_flags(p: argparse.ArgumentParser, nested: bool = False) -> None:
    # `fewshot runs` lists as `fewshot runs list` does; the nested copies set nothing unless given.
    keep = argparse.SUPPRESS if nested else None
    p.add_argument("--kind", default=keep, help="only runs of this kind (train, evaluate, tune-trial, ...)")
    p.add_argument("--method", default=keep, help="only runs of this method")
    p.add_argument("--runs", default=keep, help="runs folder holding the run store")
    add_json_flag(p, nested=nested)
    p.set_defaults(func=cmd_runs)


def _runs_flags(p: argparse.ArgumentParser) -> None:
    _runs_list_flags(p)
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION", parser_class=type(p))
    _runs_list_flags(rsub.add_parser("list", help="the recorded runs, one a line (the default)"), nested=True)
    q = rsub.add_parser("show", help="one recorded run, as JSON")
    q.add_argument("id", type=int, help="run id (the first column of `fewshot runs`)")
    q.add_argument("--runs", default=argparse.SUPPRESS, help="runs folder holding the run store")
    add_json_flag(q, nested=True)
    q.set_defaults(func=cmd_runs_show)


def _demo_flags(p: argparse.ArgumentParser) -> None:
    # Not argparse choices: --dataset names a dataset everywhere; the demo refuses others in one line.
    p.add_argument("--dataset", default="digits", help="digits (offline default) or omniglot")
    p.add_argument("--data-root", help="data root for omniglot")
    p.add_argument("--episodes", type=int, help="meta-training steps (default: the dataset's preset)")
    p.add_argument("--quick", action="store_true", help="a tiny run, to check the set-up")
    p.add_argument("--out", help="folder for the demo's runs, report and model (default: demo-DATASET in the "
                   "runs folder); replaced by the next demo")
    p.add_argument("--runs", help="runs folder (default $FEWSHOT_RUNS, else ~/.local/share/fewshot)")
    add_device_flags(p)
    add_json_flag(p)
    add_quiet_flag(p)
    p.set_defaults(func=cmd_demo)


def register(sub) -> None:
    """Add ``train``, ``evaluate``, ``methods``, ``heads``, ``data``, ``runs`` and ``demo`` to the sub-command parsers ``sub``."""
    sub.add_parser("train", help="meta-train a method on episodes", build=_train_flags,
                   description="Meta-train METHOD on episodes of a dataset, validating on its val split "
                   "and keeping the best checkpoint. Settings: defaults < --config < flags.")
    sub.add_parser("evaluate", help="accuracy ± 95%% CI on a fixed suite of test episodes", build=_evaluate_flags,
                   description="Evaluate a trained run (or a method that needs no training, e.g. pixel-ncm) "
                   "on a fixed, seeded suite of test episodes; with --head, a test-time head on the features of a "
                   "run, an exported model or a Hugging Face backbone (hf:PATH), each image embedded once.")
    catalog.register(sub)  # methods, heads
    sub.add_parser("data", help="datasets: list them, describe one", build=_data_flags)
    sub.add_parser("runs", help="list recorded runs, or show one", build=_runs_flags)
    sub.add_parser("demo", help="the main job: ProtoNet against a pixel baseline on the same episodes",
                   build=_demo_flags, description="Meta-train Prototypical Networks, then compare them with a "
                   "nearest class mean on raw pixels on identical test episodes.")

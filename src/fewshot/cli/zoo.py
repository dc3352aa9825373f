"""``fewshot zoo ...`` and ``fewshot select ...``: the model zoo and model selection on the command line.

::

    fewshot zoo build [--preset default|tiny] [--cpu-minutes 1]   # the diverse zoo, resumable
    fewshot zoo add NAME SOURCE [--metadata FILE.json]            # a run folder or a .safetensors file
    fewshot zoo list [--check] [--json]
    fewshot select build [--tasks 200] [--workers 2]              # the meta-dataset, resumable
    fewshot select evaluate [--target finetune] [--json]          # meta-learner against every baseline
    fewshot select --support FOLDER [--verify K] [--json]         # rank the zoo for your task
    fewshot select monitor                                        # the meta-learner's error over time

Every command takes ``--zoo DIR`` (default ``$FEWSHOT_ZOO``, else ``zoo`` in the runs folder,
``$FEWSHOT_RUNS`` or ``~/.local/share/fewshot``, where the run store is: no command makes a
folder in the current one). The work is done by the library (:mod:`fewshot.select`); this
module parses and prints.
"""

from __future__ import annotations

import argparse
import os
import time

from ..errors import ConfigError
from .output import print_json
from .flags import Parser, add_device_flags, add_json_flag, add_max_steps_flag, add_quiet_flag, deprecated, \
    parse_options, resolve_device, say_device


def _zoo_default() -> str:
    """``$FEWSHOT_ZOO``, else ``zoo`` in the runs folder. A zoo in ``./zoo`` (the old default)
    is still found there while the new place holds none, with a warning."""
    import warnings

    from ..select.index import INDEX
    from ..store import runs_folder

    if os.environ.get("FEWSHOT_ZOO"):
        return os.environ["FEWSHOT_ZOO"]
    default = runs_folder() / "zoo"
    if not default.exists() and os.path.isfile(os.path.join("zoo", INDEX)):
        warnings.warn(f"./zoo is no longer the default zoo, use --zoo zoo (or move it to {default})", FutureWarning,
                      stacklevel=2)
        return "zoo"
    return str(default)


def _zoo(args: argparse.Namespace) -> str:
    """The zoo folder of ``--zoo``, else the default; decided once per command."""
    if args.zoo is None:
        args.zoo = _zoo_default()
    return args.zoo


def _add_zoo_flag(p: argparse.ArgumentParser, nested: bool = False) -> None:
    # Under `fewshot select ACTION` the flag exists twice (before and after ACTION); the
    # nested copy sets nothing unless given, so `select --zoo Z build` keeps Z. The default
    # is decided when the command runs (_zoo_default), not when its parser is built.
    p.add_argument("--zoo", default=argparse.SUPPRESS if nested else None,
                   help="the zoo folder (default: $FEWSHOT_ZOO, else zoo in the runs folder: $FEWSHOT_RUNS/zoo, "
                        "else ~/.local/share/fewshot/zoo)")


def _fmt_int(value) -> str:
    return f"{int(value):,}" if value is not None else "?"


# -- fewshot zoo -------------------------------------------------------------------------------

def cmd_zoo_list(args: argparse.Namespace) -> int:
    from ..select.index import Zoo

    zoo = Zoo(_zoo(args))
    if args.check:
        for name in zoo.names():
            zoo.check(name)
    entries = zoo.entries()
    if args.json:
        print_json(entries)
        return 0
    print(f"{'model':32s} {'architecture':12s} {'parameters':>11s} {'features':>8s} {'input':>8s} "
          f"{'objective':12s} source")
    for e in entries:
        shape = "x".join(map(str, e.get("image_shape") or [])) or "?"
        print(f"{e['name']:32s} {str(e.get('architecture'))[:12]:12s} {_fmt_int(e.get('parameters')):>11s} "
              f"{_fmt_int(e.get('feature_dim')):>8s} {shape:>8s} {str(e.get('objective'))[:12]:12s} {e.get('source')}")
    print(f"{len(entries)} model(s) in {zoo.root}" + (", every one checked against its metadata" if args.check else ""))
    return 0


def cmd_zoo_add(args: argparse.Namespace) -> int:
    from ..select.index import Zoo

    metadata = parse_options(args.metadata_option)
    if args.bn:
        metadata["bn"] = args.bn
    zoo = Zoo(_zoo(args), create=True)
    entry = zoo.add(args.name, args.source, metadata=metadata, metadata_file=args.metadata,
                    image_shape=args.image_shape, overwrite=args.overwrite)
    if args.json:
        print_json({"zoo": str(zoo.root), **entry})
        return 0
    print(f"added {entry['name']} to {zoo.root}: {entry['architecture']}, {_fmt_int(entry['parameters'])} parameters, "
          f"{_fmt_int(entry['feature_dim'])} features, objective {entry['objective']}, source {entry['source']}")
    return 0


def cmd_zoo_build(args: argparse.Namespace) -> int:
    from ..select.recipes import PRESETS, build_zoo

    specs = PRESETS.get(args.preset, [])
    start = time.process_time()
    print(f"building the '{args.preset}' zoo in {_zoo(args)}: {len(specs)} models, at most "
          f"{args.cpu_minutes:g} CPU-minute(s) each" + (f" and {args.episodes} steps" if args.episodes else ""),
          flush=True)
    device = resolve_device(args)
    zoo = build_zoo(_zoo(args), args.preset, cpu_minutes=args.cpu_minutes, max_steps=args.episodes, only=args.only,
                    data_root=args.data_root, runs=args.runs, seed=args.seed, progress=not args.quiet,
                    device=str(device), precision=args.precision)
    say_device(args, device)
    if args.json:
        print_json({"zoo": str(zoo.root), "preset": args.preset, "models": zoo.names(),
                    "cpu_seconds": time.process_time() - start})
        return 0
    print(f"the zoo {zoo.root} holds {len(zoo)} model(s); this build took {time.process_time() - start:.0f} CPU-s "
          f"(`fewshot zoo list --zoo {zoo.root}` describes them)")
    return 0


# -- fewshot select build / evaluate -------------------------------------------------------------------

def cmd_select_build(args: argparse.Namespace) -> int:
    from ..select.pool import build_meta_dataset

    finetune = parse_options(args.option)
    result = build_meta_dataset(_zoo(args), args.tasks, path=args.meta, sources=args.sources, seed=args.seed,
                                workers=args.workers, finetune=finetune, data_root=args.data_root,
                                progress=not args.quiet)
    if args.json:
        print_json(result.to_dict())
        return 0
    print(f"meta-dataset {result.path}: {result.total} rows ({result.tasks} tasks × {result.models} models), "
          f"{result.added} added now by {result.workers} process(es) in {result.seconds:.0f} s "
          f"({result.cpu_seconds:.0f} CPU-s)")
    return 0


def _rows(args: argparse.Namespace):
    """The zoo, its meta-dataset store, the complete rows for ``args.target`` and the raw records."""
    from ..select.index import Zoo
    from ..select.metastore import complete, open_meta

    zoo = Zoo(_zoo(args))
    store = open_meta(zoo, args.meta)
    models = zoo.names()
    rows = complete(store.rows(args.target), models)
    if not rows:
        raise ConfigError(f"the meta-dataset {store.path} has no task with a row for every model of the zoo; "
                          f"run `fewshot select build --zoo {zoo.root}` (again) to finish it")
    return zoo, store, models, rows


def cmd_select_evaluate(args: argparse.Namespace) -> int:
    from ..select.evaluation import evaluate_meta_dataset, evaluation_table

    zoo, store, models, rows = _rows(args)
    result = evaluate_meta_dataset(rows, store.records(models), seed=args.seed, resamples=args.resamples)
    result.update(target=args.target, meta=str(store.path), zoo=str(zoo.root))
    if args.json:
        print_json(result)
        return 0
    c = result["cost"]
    print(f"model selection on {result['tasks']} tasks × {result['models']} models, leave-one-group-out over "
          f"{len(result['groups'])} groups ({', '.join(result['groups'])}); truth: query accuracy after {args.target}; "
          f"mean over tasks [95% bootstrap CI]:")
    print("\n".join(evaluation_table(result["report"])))
    print(f"cost per task: selecting {c['select_with_prediction_cpu_seconds']:.2f} CPU-s (features and scores of "
          f"every model, and the prediction) against {c['finetune_all_cpu_seconds']:.2f} CPU-s to fine-tune every "
          f"model: {c['speedup_over_finetuning_all']:.0f}x cheaper")
    return 0


# -- fewshot select --support: rank the zoo for a user's task --------------------------------------------

def cmd_select(args: argparse.Namespace) -> int:
    from ..progress import status
    from ..select.selection import select_models

    if not args.support:
        raise ConfigError("say which task: `fewshot select --support FOLDER` (one sub-folder of images per class), "
                          "or use `fewshot select build|evaluate|monitor`")
    status(f"ranking the zoo for {args.support}: embedding its images with each model"
           + (f", then adapting the top {args.verify}" if args.verify else ""))
    out = select_models(_zoo(args), args.support, target=args.target, meta=args.meta, verify=args.verify,
                        query=args.queries, runs=args.runs, data_root=args.data_root)
    model_count, learner, _ = out.pop("models"), out["meta_learner"], out.pop("meta")
    shipped = learner["source"] == "shipped"
    ranking, way, target = out["ranking"], out["way"], out["target"]
    verified = [e for e in ranking if "measured_accuracy" in e]
    if args.json:
        print_json(out)
        return 0
    shots = out["shots"]
    shot_text = f"{min(shots)}" if min(shots) == max(shots) else f"{min(shots)}-{max(shots)}"
    print(f"{way}-way task, {shot_text} images per class, from {args.support}: {model_count} models ranked by "
          f"{learner['description']}; predicted query accuracy after {target}, ± its held-out RMSE "
          f"{'for models it never saw' if shipped else 'for that model'}, and a calibrated interval")
    if shipped:
        print(f"(no meta-dataset of this zoo: `fewshot select build --zoo {args.zoo}` fits a meta-learner on "
              f"your own models)")
    coverage = next((e["coverage"] for e in ranking if e.get("interval")), None)
    interval_head = f"{coverage:.0%} interval" if coverage is not None else "interval"
    print(f"{'rank':>4s}  {'model':32s} {'predicted':>10s} {'±':>6s} {interval_head:>15s}"
          + (f" {'measured':>9s}" if verified else ""))
    for e in ranking:
        measured = (f" {e['measured_accuracy']:8.1f}%" if "measured_accuracy" in e
                    else " " * 10 if verified else "")
        unc = f"{e['uncertainty']:.1f}" if e["uncertainty"] is not None else "?"
        interval = f"{e['interval'][0]:.1f}-{e['interval'][1]:.1f}%" if e.get("interval") else "?"
        print(f"{e['rank']:4d}  {e['model']:32s} {e['predicted_accuracy']:9.1f}% {unc:>6s} {interval:>15s}{measured}")
    outside = [f"{e['model']} ({', '.join(e['outside_training'])})" for e in ranking if e.get("outside_training")]
    if outside:
        print("beyond what the shipped meta-learner was trained on (its predictions extrapolate there): "
              + "; ".join(outside))
    print(f"selection took {out['selection_cpu_seconds']:.1f} CPU-s"
          + ("" if shipped else f" (meta-learner fit included); fine-tuning every model on a task of the "
             f"meta-dataset took {out['finetune_all_cpu_seconds_estimate']:.1f} CPU-s on average"))
    if verified:
        m = out["monitor"]
        print(f"verified the top {len(verified)} by {verified[0]['protocol']}; the meta-learner's error so far "
              f"(predicted − measured, {m['verifications']} verification(s) recorded in the run store): "
              f"RMSE {m['rmse']:.1f} points, mean {m['mean_error']:+.1f}, last 10 RMSE {m['rmse_last_10']:.1f} "
              f"(`fewshot select monitor` lists them)")
    return 0


def cmd_select_monitor(args: argparse.Namespace) -> int:
    from ..select.index import Zoo
    from ..select.selection import running_error, verification_history
    from ..store import RunStore

    zoo_root = str(Zoo(_zoo(args)).root.resolve()) if not args.all_zoos else None
    history = verification_history(RunStore(args.runs), zoo_root)
    table = []
    for i, r in enumerate(history):
        m = r["metrics"]
        table.append({"id": r["id"], "created": r["created"], "model": r["method"], "predicted": m["predicted"],
                      "measured": m["measured"], "error": m["error"],
                      "running_rmse": running_error(history[: i + 1])["rmse"]})
    summary = running_error(history)
    if args.json:
        print_json({"verifications": table, "summary": summary})
        return 0
    if not table:
        print("no verification recorded yet: `fewshot select --support FOLDER --verify K` records some")
        return 0
    print(f"{'id':>5s}  {'created':19s} {'model':32s} {'predicted':>9s} {'measured':>9s} {'error':>7s} "
          f"{'running RMSE':>12s}")
    for t in table:
        print(f"{t['id']:5d}  {t['created'][:19]:19s} {t['model']:32s} {t['predicted']:8.1f}% {t['measured']:8.1f}% "
              f"{t['error']:+7.1f} {t['running_rmse']:12.1f}")
    print(f"{summary['verifications']} verification(s): RMSE {summary['rmse']:.1f} points, mean error "
          f"{summary['mean_error']:+.1f}, last 10 RMSE {summary['rmse_last_10']:.1f}")
    return 0


# -- parsers -------------------------------------------------------------------------------------

def _zoo_flags(p: argparse.ArgumentParser) -> None:
    from ..select.recipes import PRESETS

    zsub = p.add_subparsers(dest="zoo_command", metavar="ACTION", parser_class=Parser)
    zsub.required = True

    q = zsub.add_parser("list", help="the zoo's models and their metadata")
    _add_zoo_flag(q)
    q.add_argument("--check", action="store_true", help="load every model and check it against its metadata")
    add_json_flag(q)
    q.set_defaults(func=cmd_zoo_list)

    q = zsub.add_parser("add", help="add a model: a run folder or a .safetensors file",
                        description="Add a model to the zoo: a `fewshot train` run folder, a pre-trained file "
                        "(.safetensors with its .json), or a safetensors file of a built-in backbone plus "
                        "--metadata. The weights are checked against the metadata.")
    _add_zoo_flag(q)
    q.add_argument("name", help="the model's name in the zoo")
    q.add_argument("source", help="a run folder, an export, a .safetensors file or a Hugging Face folder (hf:FOLDER_OR_ID)")
    q.add_argument("--metadata", help="JSON file of metadata (architecture, architecture_options, image_shape, "
                                      "objective, source ...), for a safetensors file without it")
    q.add_argument("--image-shape", type=int, nargs=3, metavar=("C", "H", "W"), help="input images the model takes")
    q.add_argument("--bn", choices=["eval", "batch"],
                   help="BatchNorm on new tasks: running statistics (eval) or each batch's own (batch)")
    q.add_argument("--metadata-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a metadata field, over --metadata's, e.g. objective=supervised")
    deprecated(q, "-m", "--meta-option", use="--metadata-option", dest="metadata_option", action="append",
               metavar="KEY=VALUE")
    q.add_argument("--overwrite", action="store_true", help="replace a model of the same name")
    add_json_flag(q)
    add_quiet_flag(q)
    q.set_defaults(func=cmd_zoo_add)

    q = zsub.add_parser("build", help="train the deliberately diverse zoo (resumable)",
                        description="Train a zoo of models that differ in backbone, width, source data and "
                        "objective with fewshot's own trainer, each within a CPU budget. Models already in the "
                        "zoo are skipped; an interrupted model resumes from its checkpoint.")
    _add_zoo_flag(q)
    q.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="default: 13 models on Omniglot alphabet groups and digits; tiny: 4 models on 8x8 digits")
    q.add_argument("--cpu-minutes", type=float, default=1.0, help="CPU budget of each model (default 1)")
    q.add_argument("--episodes", type=int, help="at most this many meta-training steps per model")
    deprecated(q, "--steps", use="--episodes", dest="episodes", type=int)
    q.add_argument("--only", nargs="+", metavar="NAME", help="build only these models of the preset")
    q.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    q.add_argument("--data-root", help="data root (default: $FEWSHOT_DATA, else ~/.cache/fewshot)")
    q.add_argument("--runs", help="runs folder holding the run store")
    add_device_flags(q)
    add_json_flag(q)
    add_quiet_flag(q)
    q.set_defaults(func=cmd_zoo_build)


def _select_flags(p: argparse.ArgumentParser) -> None:
    from ..select.measure import TARGETS
    from ..select.tasks import SOURCES

    SUPPRESS = argparse.SUPPRESS
    _add_zoo_flag(p)
    p.add_argument("--support", metavar="FOLDER", help="your task's labelled images: one sub-folder per class")
    p.add_argument("--verify", type=int, metavar="K", help="adapt the top K models for real and report their accuracy")
    p.add_argument("--queries", metavar="FOLDER", help="with --verify: labelled test images, one sub-folder per "
                                                       "class (default: cross-validation on the support set)")
    deprecated(p, "--query", use="--queries", dest="queries", metavar="FOLDER")
    p.add_argument("--target", choices=TARGETS, default="finetune", help="what accuracy to predict: after "
                                                                         "fine-tuning (default) or a linear probe")
    p.add_argument("--meta", help="the meta-dataset file (default: ZOO/meta.sqlite; without one, the meta-learner "
                                  "shipped with fewshot ranks)")
    p.add_argument("--runs", help="runs folder holding the run store (verifications are recorded there)")
    p.add_argument("--data-root", help="data root (for the image cache)")
    add_max_steps_flag(p)
    add_json_flag(p)
    add_quiet_flag(p)
    p.set_defaults(func=cmd_select)
    ssub = p.add_subparsers(dest="select_command", metavar="ACTION", parser_class=Parser)

    q = ssub.add_parser("build", help="the meta-dataset: tasks × zoo models, resumable, parallel",
                        description="For tasks from held-out classes and every zoo model, record task and model "
                        "meta-features, transferability scores and the query accuracy after a linear probe and "
                        "after fine-tuning, in SQLite. Resumes where it stopped; never duplicates a row.")
    _add_zoo_flag(q, nested=True)
    q.add_argument("--meta", default=SUPPRESS, help="the meta-dataset file (default: ZOO/meta.sqlite)")
    q.add_argument("--tasks", type=int, default=100, help="number of tasks (default 100)")
    q.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES),
                   help="where tasks come from (default: all)")
    q.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    q.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    q.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="fine-tuning option of the ground truth, e.g. steps=50")
    q.add_argument("--data-root", default=SUPPRESS, help="data root (default: $FEWSHOT_DATA, else ~/.cache/fewshot)")
    add_max_steps_flag(q, nested=True)
    add_json_flag(q, nested=True)
    add_quiet_flag(q, nested=True)
    q.set_defaults(func=cmd_select_build)

    q = ssub.add_parser("evaluate", help="the meta-learner against every baseline, leave-one-group-out, with CIs")
    _add_zoo_flag(q, nested=True)
    q.add_argument("--meta", default=SUPPRESS, help="the meta-dataset file (default: ZOO/meta.sqlite)")
    q.add_argument("--target", choices=TARGETS, default=SUPPRESS, help="ground truth (default finetune)")
    q.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    q.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    add_json_flag(q, nested=True)
    add_quiet_flag(q, nested=True)
    q.set_defaults(func=cmd_select_evaluate)

    q = ssub.add_parser("monitor", help="the meta-learner's error over the recorded verifications")
    _add_zoo_flag(q, nested=True)
    q.add_argument("--all-zoos", action="store_true", help="verifications of every zoo, not only --zoo's")
    q.add_argument("--runs", default=SUPPRESS, help="runs folder holding the run store")
    add_json_flag(q, nested=True)
    add_quiet_flag(q, nested=True)
    q.set_defaults(func=cmd_select_monitor)


def register(sub) -> None:
    """Add ``zoo`` and ``select`` to the sub-command parsers ``sub``."""
    sub.add_parser("zoo", help="the model zoo: list, add or build pre-trained feature extractors", build=_zoo_flags,
                   description="A folder of pre-trained models (weights in safetensors, metadata in JSON) that "
                   "`fewshot select` ranks for a new task.")
    sub.add_parser("select", help="model selection: rank the zoo for a task; build and evaluate the meta-learner",
                   build=_select_flags, description="Rank the zoo's models for your task (--support FOLDER), or "
                   "build the meta-dataset (select build), judge the meta-learner against the baselines (select "
                   "evaluate), follow its error (select monitor).")


__all__ = ["register"]

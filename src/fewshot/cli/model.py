"""``fewshot export`` and ``predict``: a trained model for your own task."""

from __future__ import annotations

import argparse

from .flags import add_device_flags, add_head_flag, add_json_flag, add_max_steps_flag, add_quiet_flag, deprecated
from .output import print_json


def _learner(args: argparse.Namespace):
    from ..learner import load
    from .flags import parse_options, runtime_from_args

    options = parse_options(args.option)
    head_options = parse_options(args.head_option) if args.head_option else None
    runtime_from_args(args)  # a device or precision this machine lacks: one line, before anything loads
    return load(args.model, which=args.weights, strategy=args.adapt, data_root=args.data_root, head=args.head,
                head_options=head_options, device=args.device, precision=args.precision,
                verbose=0 if getattr(args, "quiet", False) else 1, **options)


def _fit(learner, folder):
    """Fit ``learner`` on a support folder (one sub-folder of images per class)."""
    import sys
    import time

    from ..images import image_folder

    support, labels = image_folder(folder)
    start = time.monotonic()
    learner.fit(support, labels)
    if time.monotonic() - start > 2:
        print(f"fitted {learner.description_name} on {len(support)} support images "
              f"({time.monotonic() - start:.1f} s)", file=sys.stderr)
    return learner


def cmd_export(args: argparse.Namespace) -> int:
    learner = _learner(args)
    if args.support:
        _fit(learner, args.support)
    card = None
    if args.format == "hf":
        from ..runs import Run
        from ..runs.hfexport import model_card

        state = Run(args.model).read_state() if Run.is_run(args.model) else None
        card = model_card(learner.description(), state)
    out = learner.save(args.out, card=card)
    calibration = learner.calibration
    how = (f"temperature {learner.temperature:.3g} fitted on {calibration.get('episodes')} {calibration.get('split')} "
           "episodes" if calibration.get("fitted") else "probabilities not calibrated")
    shape = getattr(learner.preprocessing, "image_shape", None) or [getattr(learner.preprocessing, "channels", 3),
                                                                     *learner.preprocessing.size]
    fitted = (f", fitted on {len(learner.classes_)} classes: predicts without --support"
              if getattr(learner, "classes_", None) is not None else "")
    if args.json:
        print_json({"model": learner.description_name, "out": str(out), "format": args.format,
                    "image_shape": list(shape), "calibration": {"fitted": bool(calibration.get("fitted")),
                                                                "temperature": learner.temperature,
                                                                "episodes": calibration.get("episodes"),
                                                                "split": calibration.get("split")},
                    "classes": ([str(c) for c in learner.classes_.tolist()]
                                if getattr(learner, "classes_", None) is not None else None)})
        return 0
    use = (f"`fewshot predict {out} --queries ...`" if fitted
           else f"`fewshot predict {out} --support ... --queries ...`")
    print(f"exported {learner.description_name} ({'x'.join(map(str, shape))} inputs, {how}{fitted}) "
          f"-> {out}; use it with fewshot.load({str(out)!r}) or {use}"
          + (f"; with huggingface_hub: fewshot.runs.hfexport.FewShotHubModel.from_pretrained({str(out)!r})"
             if card is not None else ""))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..images import image_files

    if not args.queries:
        raise ConfigError("say which images to classify: --queries FOLDER_OR_FILE ... (files, or folders searched "
                          "recursively)")
    queries = image_files(args.queries)
    learner = _learner(args)
    if args.support:
        _fit(learner, args.support)
    elif getattr(learner, "classes_", None) is None:
        raise ConfigError(f"{args.model} is not a fitted model: give --support FOLDER (one sub-folder of images per "
                          "class), or export a fitted one with `fewshot export MODEL --support FOLDER --out ...`")
    proba = learner.predict_proba(queries)
    best = proba.argmax(1)
    classes = learner.classes_.tolist()
    rows = [{"path": str(path), "label": classes[b], "probability": round(float(p[b]), 6),
             "probabilities": {str(c): round(float(q), 6) for c, q in zip(classes, p)}}
            for path, p, b in zip(queries, proba, best)]
    if args.json:
        print_json(rows, indent=2)
        return 0
    width = max(len(r["path"]) for r in rows)
    for r in rows:
        print(f"{r['path']:{width}s}  {r['label']}  {r['probability']:.3f}")
    return 0


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", choices=["best", "last"], default="best", help="a run's best or last weights")
    p.add_argument("--adapt", metavar="STRATEGY", help="adapt with a transfer strategy (e.g. lp-ft) instead of the "
                   "method's own way; options with -o")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE", help="a strategy option")
    p.add_argument("--data-root", help="data root, to calibrate a run that has no stored temperature")
    add_head_flag(p, "the backbone's frozen", default="a run's own method; logistic for hf:...; a saved model's "
                  "own head")
    add_max_steps_flag(p)
    add_device_flags(p)
    add_json_flag(p)
    add_quiet_flag(p)


def _export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a run folder, an exported model (to re-export) or hf:FOLDER_OR_ID")
    p.add_argument("--support", metavar="FOLDER", help="fit on this folder (one sub-folder of images per class) "
                   "and export the fitted model: it predicts without support images")
    p.add_argument("--out", required=True, help="FILE.safetensors (one file), or a folder (config.json + "
                   "model.safetensors); an existing one is replaced only if it is a fewshot export of the same form "
                   "(or an empty folder)")
    p.add_argument("--format", choices=["fewshot", "hf"], default="fewshot",
                   help="hf: the folder form plus a model card (README.md), loadable with huggingface_hub "
                   "(fewshot.runs.hfexport.FewShotHubModel.from_pretrained)")
    _model_flags(p)
    p.set_defaults(func=cmd_export)


def _predict_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a run folder, an exported model, or hf:FOLDER_OR_ID (a Hugging "
                   "Face vision backbone)")
    p.add_argument("--support", metavar="FOLDER", help="labelled examples: one sub-folder of images per class (its "
                   "name is the label); optional for a fitted exported model")
    p.add_argument("--queries", nargs="+", metavar="FOLDER_OR_FILE",
                   help="images to classify: files, or folders (searched recursively)")
    deprecated(p, "--query", use="--queries", dest="queries", nargs="+", metavar="FOLDER_OR_FILE")
    _model_flags(p)
    p.set_defaults(func=cmd_predict)


def register(sub) -> None:
    """Add ``export`` and ``predict`` to the sub-command parsers ``sub``."""
    sub.add_parser("export", help="save a run as a model file you can ship", build=_export_flags,
                   description="Write a trained run's weights, method options, input preprocessing and "
                   "probability calibration to one .safetensors file (or a config.json + model.safetensors "
                   "folder), loadable by fewshot.load without the run folder. Nothing is pickled.")
    sub.add_parser("predict", help="classify images into the classes of a support folder", build=_predict_flags,
                   description="Fit a run, exported model or hf: backbone (with --head) on a support folder (one sub-folder of images per "
                   "class) and print each query image's predicted class and its calibrated probability.")


__all__ = ["register"]

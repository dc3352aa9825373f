"""``fewshot export`` and ``predict``: a trained model for your own task."""

from __future__ import annotations

import argparse

from .output import print_json


def _learner(args: argparse.Namespace):
    from ..learner import load
    from .flags import parse_options

    options = parse_options(args.option)
    return load(args.model, which=args.weights, strategy=args.adapt, data_root=args.data_root, **options)


def cmd_export(args: argparse.Namespace) -> int:
    learner = _learner(args)
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
    print(f"exported {learner.method.name} ({'x'.join(map(str, learner.preprocessing.image_shape))} inputs, {how}) "
          f"-> {out}; use it with fewshot.load({str(out)!r}) or `fewshot predict {out} --support ... --query ...`"
          + (f"; with huggingface_hub: fewshot.runs.hfexport.FewShotHubModel.from_pretrained({str(out)!r})"
             if card is not None else ""))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..images import image_files, image_folder

    support, labels = image_folder(args.support)
    queries = image_files(args.query)
    learner = _learner(args).fit(support, labels)
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


def _export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="RUN", help="a run folder (or an exported model, to re-export)")
    p.add_argument("--out", required=True, help="FILE.safetensors (one file), or a folder (config.json + "
                   "model.safetensors); an existing one is replaced only if it is a fewshot export of the same form "
                   "(or an empty folder)")
    p.add_argument("--format", choices=["fewshot", "hf"], default="fewshot",
                   help="hf: the folder form plus a model card (README.md), loadable with huggingface_hub "
                   "(fewshot.runs.hfexport.FewShotHubModel.from_pretrained)")
    _model_flags(p)
    p.set_defaults(func=cmd_export)


def _predict_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder or an exported model")
    p.add_argument("--support", required=True, metavar="FOLDER",
                   help="labelled examples: one sub-folder of images per class (its name is the label)")
    p.add_argument("--query", required=True, nargs="+", metavar="FOLDER_OR_FILE",
                   help="images to classify: files, or folders (searched recursively)")
    p.add_argument("--json", action="store_true", help="a JSON list of {path, label, probability, probabilities}")
    _model_flags(p)
    p.set_defaults(func=cmd_predict)


def register(sub) -> None:
    """Add ``export`` and ``predict`` to the sub-command parsers ``sub``."""
    sub.add_parser("export", help="save a run as a model file you can ship", build=_export_flags,
                   description="Write a trained run's weights, method options, input preprocessing and "
                   "probability calibration to one .safetensors file (or a config.json + model.safetensors "
                   "folder), loadable by fewshot.load without the run folder. Nothing is pickled.")
    sub.add_parser("predict", help="classify images into the classes of a support folder", build=_predict_flags,
                   description="Fit a run or exported model on a support folder (one sub-folder of images per "
                   "class) and print each query image's predicted class and its calibrated probability.")


__all__ = ["register"]

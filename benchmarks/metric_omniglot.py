"""Matching Networks, Relation Networks, MANN, the task-conditioned network and normalised
Prototypical Networks on Omniglot (Vinyals split, 28×28, rotations), beside the papers.

Every model is trained by the one trainer within a CPU budget (``--minutes`` of CPU
time per model, counted by the trainer across resumes), keeps its best validation
checkpoint, and is tested by the one evaluation path on the same fixed suites: 600
episodes of ``EpisodeSampler(omniglot, "test", way, shot, 15, seed=0)``, 95% CI.

Models (Conv-4 backbone, except MANN; Adam 1e-3 halved every 2,000 steps):

* matchingnet, taskcond, protonet (``normalize=True``): one model per shot. The 1-shot
  model trains on 20-way episodes and is tested at 5 and 20 ways; the 5-shot model
  trains on 5-way episodes. Matching Networks without FCE, as the paper's Omniglot rows.
* relationnet: the paper's shapes: 5-way 1-shot and 5-shot with 15 queries; the 1-shot
  model is tested at 20 ways too (the paper trains a separate 20-way model).
* mann: one model for both shots, as the paper: raw pixels averaged down to 20×20,
  sequences of 5 classes × 10 instances (5-way, 1 + 9), 16 sequences a step; tested as
  an episode classifier at 1 and 5 shots and, as the paper's Table 1, by instance
  number on 600 sequences of 5 classes × 11 instances.

    FEWSHOT_DATA=../shared/data python benchmarks/metric_omniglot.py --minutes 20

``--minutes 0.2 --episodes 50 --results /tmp/check --runs /tmp/check/runs`` checks the
script end to end in a few minutes.

Recipes: ``--config configs/relationnet-omniglot-5w1s.json --test 5x1 5x5 20x1`` trains
the training recipe in that file instead (exactly what ``fewshot train --config FILE``
runs, with its own CPU budget, ``--cpu-minutes`` to override it), keeps its best
validation checkpoint, and tests it on the listed ``WAYxSHOT`` suites (MANN also by
instance number). The data are the recipe's own (its ``dataset_options``: split scheme,
image size, rotations, held-out alphabets). ``WAYxSHOT@alphabet`` draws every test
episode within one alphabet (Lake et al.'s within-alphabet 20-way one-shot task, e.g.
``--test 20x1@alphabet 20x1`` for the background -> evaluation recipe), and
``--test-views 1 5`` tests a Prototypical Network with each number of test-time views.
Rows go to ``metric_recipes.{json,md}``, one per (config, test
setting), replacing that config's earlier rows and keeping the others'; each row has
the learning curves (training loss and accuracy every 50 steps, validation accuracy)
and the CPU time. Writes benchmarks/results/metric_omniglot.{json,md}
(or under ``--results``). Finished runs are reused: run again with the same settings to
re-test them, or after an interruption to resume training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from fewshot.config import TrainConfig
from fewshot.data import EpisodeSampler, load_dataset
from fewshot.evaluate import evaluate
from fewshot.methods.mann import instance_accuracy
from fewshot.runs import load_run
from fewshot.train import Trainer

RESULTS = Path(__file__).parent / "results"

# Published Omniglot accuracies (%): (way, shot) -> figure.
PUBLISHED = {
    # Vinyals et al. 2016, Table 1, "Matching Nets (Ours)", cosine, no fine-tuning.
    "matchingnet": {(5, 1): 98.1, (5, 5): 98.9, (20, 1): 93.8},
    # Sung et al. 2018, Table 1.
    "relationnet": {(5, 1): 99.6, (5, 5): 99.8, (20, 1): 97.6, (20, 5): 99.1},
    # Santoro et al. 2016, Table 1 (MANN, one-hot labels), by instance: the 2nd presentation
    # (after one example of the class) and the 5th (after four).
    "mann": {(5, 1): 82.8, (5, 5): 94.9},
    # Snell et al. 2017, Table 1: the plain Prototypical Network, for reference (the normalised
    # variant has no published Omniglot figures).
    "protonet-normalize": {(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0},
    # Snell et al. 2017 (arXiv:1703.05175), Table 1, Vinyals split, rotations as classes.
    "protonet": {(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0, (20, 5): 98.9},
    # No published Omniglot figures (TADAM reports mini-ImageNet and FC100; CNAPs Meta-Dataset).
    "taskcond": {},
}
MANN_BY_INSTANCE = {1: 36.4, 2: 82.8, 5: 94.9, 10: 98.1}  # Santoro et al. 2016, Table 1
# Lake et al.'s background -> evaluation division, 20-way 1-shot episodes within one alphabet,
# no rotations: published accuracies (%) to compare with; not the same episodes (theirs:
# 20 runs of 20 queries each), so they are comparisons, not intervals to fall in.
WITHIN_ALPHABET_20W1S = {
    # Lake, Salakhutdinov and Tenenbaum, Science 2015: 4.5 % (people) and 3.3 % (BPL) errors.
    "people (Lake et al. 2015)": 95.5, "BPL (Lake et al. 2015)": 96.7,
    # Koch, Zemel and Salakhutdinov, ICML Deep Learning Workshop 2015, Table 2 (same task).
    "convolutional siamese net (Koch et al. 2015)": 92.0,
}

# name -> method, method options, and per model: (test shot, train shape, meta-batch, test ways)
SETUPS = {
    "matchingnet": ("matchingnet", {}, [(1, (20, 1, 5), 1, (5, 20)), (5, (5, 5, 15), 1, (5,))]),
    "relationnet": ("relationnet", {}, [(1, (5, 1, 15), 1, (5, 20)), (5, (5, 5, 15), 1, (5,))]),
    "taskcond": ("taskcond", {}, [(1, (20, 1, 5), 1, (5, 20)), (5, (5, 5, 15), 1, (5,))]),
    "protonet-normalize": ("protonet", {"normalize": True}, [(1, (20, 1, 5), 1, (5, 20)), (5, (5, 5, 15), 1, (5,))]),
    "mann": ("mann", {}, [((1, 5), (5, 1, 9), 16, (5,))]),
}


def train(data, label: str, method: str, options: dict, shot: int, shape: tuple, meta_batch: int, steps: int,
          minutes: float, val_episodes: int, runs: Path):
    way, train_shot, query = shape
    config = TrainConfig(method=method, method_options=options, dataset="omniglot",
                         dataset_options={"split_scheme": "vinyals"}, way=5, shot=shot, query=15, train_way=way,
                         train_shot=train_shot, train_query=query, episodes=steps, meta_batch=meta_batch, lr=1e-3,
                         lr_step=2000, val_every=250, val_episodes=val_episodes, checkpoint_every=250, seed=0,
                         cpu_minutes=minutes)
    run_dir = runs / f"{label}-omniglot-{shot}shot"
    trainer = Trainer(config, run_dir, dataset=data, runs=runs)
    trainer.run(resume=(run_dir / "state.json").exists())
    _, model, state = load_run(run_dir, "best")
    return model, state


def run_setup(data, label: str, steps: int, minutes: float, episodes: int, val_episodes: int, runs: Path) -> list[dict]:
    method, options, models = SETUPS[label]
    rows = []
    for shots, shape, meta_batch, ways in models:
        shots = shots if isinstance(shots, tuple) else (shots,)
        model, state = train(data, label, method, options, shots[0], shape, meta_batch, steps, minutes,
                             val_episodes, runs)
        training = {"train_shape": list(shape), "meta_batch": meta_batch, "steps_trained": state["step"],
                    "cpu_seconds": state["cpu_seconds"], "wall_seconds": state["seconds"],
                    "best_step": state["best"]["step"], "val_accuracy": state["best"]["accuracy"],
                    "val_curve": state["history"]["val"]}
        for way in ways:
            for shot in shots:
                start = time.process_time()
                r = evaluate(model, EpisodeSampler(data, "test", way, shot, 15, seed=0), episodes,
                             desc=f"{label} {way}-way {shot}-shot")
                rows.append({"method": label, "options": options, "setting": f"{way}-way {shot}-shot", "way": way,
                             "shot": shot, "accuracy": r.accuracy, "ci95": r.ci95, "episodes": r.episodes,
                             "published": PUBLISHED[label].get((way, shot)), "eval_cpu_seconds":
                             time.process_time() - start, "training": training})
        if method == "mann":
            start = time.process_time()
            sampler = EpisodeSampler(data, "test", 5, 1, 10, seed=0)  # 5 classes x 11 instances
            by_instance = instance_accuracy(model, sampler, episodes)
            rows[-1]["by_instance"] = {str(k): v for k, v in by_instance.items()}
            rows[-1]["by_instance_published"] = {str(k): v for k, v in MANN_BY_INSTANCE.items()}
            rows[-1]["by_instance_cpu_seconds"] = time.process_time() - start
    return rows


def published_for(method: str, options: dict, way: int, shot: int, scheme: str = "vinyals") -> float | None:
    """The paper's figure on the Vinyals split; ``None`` on the background split, whose
    published figures are comparisons (:data:`WITHIN_ALPHABET_20W1S`), not the method's own."""
    if scheme != "vinyals":
        return None
    return PUBLISHED.get("protonet-normalize" if method == "protonet" and options.get("normalize") else method,
                         {}).get((way, shot))


def parse_test(text: str) -> tuple[int, int, bool]:
    """``WAYxSHOT`` or ``WAYxSHOT@alphabet`` (episodes within one alphabet) as ``(way, shot, within)``."""
    suite, _, within = text.lower().partition("@")
    if within not in ("", "alphabet"):
        raise SystemExit(f"--test {text}: the only suffix is @alphabet (episodes within one alphabet)")
    way, shot = (int(v) for v in suite.split("x"))
    return way, shot, within == "alphabet"


def run_recipe(data, config_file: Path, tests: list[tuple[int, int, bool]], cpu_minutes: float | None, episodes: int,
               runs: Path, aggregates: tuple[str, ...] = (), views: tuple[int, ...] = ()) -> list[dict]:
    """Train the recipe ``config_file`` (resuming a stopped run) and test its best checkpoint;
    a Relation Network also with each K-shot ``aggregates`` ("sum": the paper's) at more than one shot,
    a Prototypical Network with each number of test-time ``views``."""
    overrides = {"cpu_minutes": cpu_minutes} if cpu_minutes is not None else {}
    config = TrainConfig.layered(config_file, **overrides)
    scheme = config.dataset_options.get("split_scheme", "vinyals")
    run_dir = runs / config_file.stem
    Trainer(config, run_dir, dataset=data, runs=runs).run(resume=(run_dir / "state.json").exists())
    _, model, state = load_run(run_dir, "best")
    training = {"config": config_file.as_posix(), "dataset_options": config.dataset_options,
                "backbone": config.backbone, "backbone_options": config.backbone_options, "augment": config.augment,
                "train_shape": list(config.train_shape),
                "meta_batch": config.meta_batch, "optimizer": config.optimizer, "lr": config.lr,
                "lr_step": config.lr_step, "cpu_minutes_budget": config.cpu_minutes, "steps_trained": state["step"],
                "cpu_seconds": state["cpu_seconds"], "wall_seconds": state["seconds"],
                "best_step": state["best"]["step"], "val_accuracy": state["best"]["accuracy"],
                "val_curve": state["history"]["val"], "train_curve": state["history"]["train"]}
    rows = []
    own = getattr(model, "aggregate", None)
    own_views = getattr(model, "test_views", None)
    variants = [(way, shot, within, None, None) for way, shot, within in tests]
    if config.method == "relationnet":
        variants += [(way, shot, within, a, None) for way, shot, within in tests for a in aggregates
                     if shot > 1 and a != own]
    if config.method == "protonet":
        variants += [(way, shot, within, None, v) for way, shot, within in tests for v in views if v != own_views]
    for way, shot, within, aggregate, n_views in variants:
        start = time.process_time()
        if aggregate is not None:
            model.aggregate = aggregate  # the same weights, class features aggregated the other way
        if n_views is not None:
            model.set_test_options(test_views=n_views)  # the same weights, embedded over n_views shifted views
        r = evaluate(model, EpisodeSampler(data, "test", way, shot, 15, seed=0, within_groups=within), episodes,
                     desc=f"{config_file.stem} {way}-way {shot}-shot{' within alphabets' if within else ''}")
        if aggregate is not None:
            model.aggregate = own
        if n_views is not None:
            model.set_test_options(test_views=own_views)
        setting = (f"{way}-way {shot}-shot" + (", within one alphabet" if within else "")
                   + (f", {aggregate} of K-shot features" if aggregate else "")
                   + (f", {n_views} test views" if n_views is not None else
                      f", {own_views} test views" if own_views not in (None, 1) else ""))
        published = None if aggregate else published_for(config.method, config.method_options, way, shot, scheme)
        row = {"method": config.method, "config": config_file.stem, "options": config.method_options,
               "setting": setting, "way": way, "shot": shot, "within_alphabet": within, "split_scheme": scheme,
               "accuracy": r.accuracy, "ci95": r.ci95, "episodes": r.episodes, "published": published,
               "eval_cpu_seconds": time.process_time() - start, "training": training}
        if within and scheme == "background" and (way, shot) == (20, 1):
            row["comparisons"] = dict(WITHIN_ALPHABET_20W1S)
        rows.append(row)
    if config.method == "mann":
        start = time.process_time()
        by_instance = instance_accuracy(model, EpisodeSampler(data, "test", 5, 1, 10, seed=0), episodes)
        rows[-1]["by_instance"] = {str(k): v for k, v in by_instance.items()}
        rows[-1]["by_instance_published"] = {str(k): v for k, v in MANN_BY_INSTANCE.items()}
        rows[-1]["by_instance_cpu_seconds"] = time.process_time() - start
    return rows


def recipes_markdown(rows: list[dict]) -> str:
    lines = ["Omniglot, training recipes from `configs/` (Vinyals split, 28×28, rotations as classes, unless "
             "the recipe's data below say otherwise); test split; 600 test episodes unless stated, 15 queries per "
             "class, mean ± 95% CI; best validation checkpoint (val split). CPU time is the training process's "
             "own, one thread, on 2 cores shared with other jobs.",
             "", "| config | method | setting | fewshot | published | in interval? | episodes | steps (best) | "
             "training CPU |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["training"]
        published = f"{r['published']} %" if r["published"] is not None else "—"
        if r.get("comparisons"):
            published = " / ".join(f"{name} {value} %" for name, value in r["comparisons"].items())
        inside = "—" if r["published"] is None else (
            "yes" if abs(r["accuracy"] - r["published"]) <= r["ci95"] else f"no ({r['accuracy'] - r['published']:+.1f})")
        lines.append(f"| `{t['config']}` | {r['method']} | {r['setting']} | {r['accuracy']:.1f} ± {r['ci95']:.1f} % | "
                     f"{published} | {inside} | {r['episodes']} | {t['steps_trained']} ({t['best_step']}) | "
                     f"{t['cpu_seconds'] / 60:.1f} min |")
    for r in rows:
        if "by_instance" in r:
            lines += ["", f"MANN (`{r['training']['config']}`) by instance number, 5 classes × 11 instances per "
                      "sequence:", "", "| instance | fewshot | Santoro et al. 2016 |", "|---|---|---|"]
            for k, published in MANN_BY_INSTANCE.items():
                mine = r["by_instance"].get(str(k))
                if mine:
                    lines.append(f"| {k} | {mine['accuracy']:.1f} ± {mine['ci95']:.1f} % | {published} % |")
            seq = r["by_instance"]["sequence"]
            lines.append(f"| all steps | {seq['accuracy']:.1f} ± {seq['ci95']:.1f} % | — |")
    other_data = {r["training"]["config"]: r["training"] for r in rows if r["training"].get("dataset_options")}
    if other_data:
        lines += ["", "Recipes with their own data, backbone or augmentation:", ""]
        lines += [f"- `{name}`: data {json.dumps(t['dataset_options'])}, {t['backbone']} "
                  f"{json.dumps(t['backbone_options'])}, augment {t['augment']}" for name, t in other_data.items()]
    lines += ["", "Learning curves (validation accuracy, %, on the fixed val suite, by training step):", ""]
    seen = set()
    for r in rows:
        t = r["training"]
        if t["config"] in seen:
            continue
        seen.add(t["config"])
        curve = t["val_curve"]
        shown = curve if len(curve) <= 12 else [curve[round(i * (len(curve) - 1) / 11)] for i in range(12)]
        lines.append(f"- `{t['config']}`: " + ", ".join(f"{step}: {acc:.1f}" for step, acc, _ in shown))
    return "\n".join(lines) + "\n"


def recipes_main(args: argparse.Namespace) -> None:
    config_file = Path(args.config)
    tests = [parse_test(t) for t in args.test]
    recipe = TrainConfig.layered(config_file)
    data = load_dataset(recipe.dataset, **recipe.dataset_options)  # the recipe's own data (size, split, ...)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    path = results / "metric_recipes.json"
    old = json.loads(path.read_text()) if path.exists() else {"results": []}
    rows = run_recipe(data, config_file, tests, args.cpu_minutes, args.episodes, Path(args.runs),
                      tuple(args.aggregate or ()), tuple(args.test_views or ()))
    # Rows of other configs, and of this config's settings not tested now, are kept.
    new = {(r["config"], r["setting"]) for r in rows}
    everything = [r for r in old["results"] if (r["config"], r["setting"]) not in new] + rows
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "shared": True}
    command = " ".join(["python", *sys.argv])
    commands = {**old.get("commands", {}), **{f"{r['config']}: {r['setting']}": command for r in rows}}
    out = {"benchmark": "metric_recipes", "machine": machine, "commands": commands, "results": everything}
    (results / "metric_recipes.json").write_text(json.dumps(out, indent=2) + "\n")
    text = recipes_markdown(everything)
    (results / "metric_recipes.md").write_text(text)
    print(text)


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    # Every model's training once, plus every evaluation (rows may come from several runs).
    training = {(r["method"], tuple(r["training"]["train_shape"])): r["training"]["cpu_seconds"] for r in rows}
    total_cpu = sum(training.values()) + sum(r["eval_cpu_seconds"] + r.get("by_instance_cpu_seconds", 0) for r in rows)
    lines = [f"Omniglot (Vinyals split, 28×28, rotations); {args.episodes} test episodes, 15 queries per class, "
             f"95% CI. Budget: {args.minutes:g} CPU-minutes of training per model (at most {args.steps} steps); "
             f"{total_cpu / 60:.1f} CPU-minutes in all, evaluation included. Conv-4 backbone; MANN on 20×20 pixels.",
             "", "| method | setting | fewshot | published | trained on (way, shot + query) | steps | training CPU |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["training"]
        way, shot, query = t["train_shape"]
        shape = f"{way}-way, {shot} + {query}" + (f", {t['meta_batch']} a step" if t["meta_batch"] > 1 else "")
        published = f"{r['published']} %" if r["published"] is not None else "—"
        lines.append(f"| {r['method']} | {r['setting']} | {r['accuracy']:.1f} ± {r['ci95']:.1f} % | {published} | "
                     f"{shape} | {t['steps_trained']} | {t['cpu_seconds'] / 60:.1f} min |")
    for r in rows:
        if "by_instance" in r:
            lines += ["", "MANN accuracy by instance number (5 classes × 11 instances per sequence):", "",
                      "| instance | fewshot | Santoro et al. 2016 |", "|---|---|---|"]
            for k, published in MANN_BY_INSTANCE.items():
                mine = r["by_instance"].get(str(k))
                if mine:
                    lines.append(f"| {k} | {mine['accuracy']:.1f} ± {mine['ci95']:.1f} % | {published} % |")
            seq = r["by_instance"]["sequence"]
            lines.append(f"| all steps | {seq['accuracy']:.1f} ± {seq['ci95']:.1f} % | — |")
    lines += ["", "MANN's published figures are by instance (2nd and 5th presentation), not N-shot episodes; "
              "the protonet-normalize row shows the plain Prototypical Network's figures for reference."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="CPU minutes of training per model")
    parser.add_argument("--steps", type=int, default=20000, help="at most this many training steps per model")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes per setting")
    parser.add_argument("--val-episodes", type=int, default=100, help="validation episodes")
    parser.add_argument("--methods", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--runs", default="runs/bench")
    parser.add_argument("--results", default=str(RESULTS), help="folder for metric_omniglot.{json,md}")
    parser.add_argument("--config", help="a training recipe (JSON, keys of TrainConfig) to train and test instead")
    parser.add_argument("--test", nargs="+", default=["5x1"],
                        help="with --config: WAYxSHOT test suites; WAYxSHOT@alphabet: each episode within one alphabet")
    parser.add_argument("--test-views", nargs="+", type=int,
                        help="with --config of a Prototypical Network: also test the same weights with these numbers "
                             "of test-time views (1: none)")
    parser.add_argument("--cpu-minutes", type=float, help="with --config: override the recipe's CPU budget")
    parser.add_argument("--aggregate", nargs="+", choices=["sum", "mean"],
                        help="with --config of a Relation Network: also test the same weights with these K-shot "
                             "aggregations at more than one shot")
    args = parser.parse_args()
    if args.config:
        recipes_main(args)
        return
    runs = Path(args.runs)
    cpu0 = time.process_time()
    data = load_dataset("omniglot", split_scheme="vinyals")
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    # Rows of methods not run now are kept from an earlier run at the same settings, so one
    # method can be re-run (``--methods matchingnet``) without losing the others.
    earlier = results / "metric_omniglot.json"
    kept = []
    if earlier.exists():
        old = json.loads(earlier.read_text())
        if old.get("cpu_minutes_per_model") == args.minutes:
            kept = [r for r in old["results"] if r["method"] not in args.methods and r["episodes"] == args.episodes]
    rows = []
    for label in args.methods:
        rows += run_setup(data, label, args.steps, args.minutes, args.episodes, args.val_episodes, runs)
        # Written after every method, so a long run that is stopped keeps what it measured.
        total_cpu = time.process_time() - cpu0
        everything = sorted(kept + rows, key=lambda r: list(SETUPS).index(r["method"]))
        out = {"benchmark": "metric_omniglot", "command": " ".join(["python", *sys.argv]), "machine": machine,
               "cpu_minutes_per_model": args.minutes, "episodes": args.episodes, "total_cpu_seconds": total_cpu,
               "results": everything, "complete": label == args.methods[-1]}
        (results / "metric_omniglot.json").write_text(json.dumps(out, indent=2) + "\n")
        text = markdown(everything, args)
        (results / "metric_omniglot.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""MAML, FOMAML, Meta-SGD and ANIL on Omniglot; MAML, Meta-SGD and a pretrained baseline on sinusoids.

Omniglot (Vinyals split, 28x28, rotations): each method is meta-trained by the one
trainer (:class:`fewshot.train.Trainer`) within a CPU budget, keeps its best
validation checkpoint, and is tested on 600 fixed 1-shot episodes of the test split
(15 queries per class) with a 95 % confidence interval, beside the published number.
Settings follow Finn et al. (2017, appendix A.1): 5-way: meta-batch 32, one inner step
of 0.4 in training and three at test; 20-way: meta-batch 16, five inner steps of 0.1;
one query per class in meta-training, as in their code; Adam 1e-3. Meta-SGD adapts
in one step from learned rates initialised at the same inner learning rate.

MAML++ (``--methods mamlpp``, Antoniou et al. 2019, arXiv:1810.09502) trains as the
paper does on Omniglot (:func:`mamlpp_config`), its cosine, multi-step-loss and
derivative-order schedules sized to the iterations the CPU budget affords (measured on
a few iterations first, :func:`calibrate`). Rows of models not re-run are kept.

Sinusoid regression (Finn et al., section 5.1): an MLP with two hidden layers of 40
ReLU units, MSE; K = 5 and 10 support points, meta-batch 25, inner step 0.01, Adam
1e-3, meta-trained by the same trainer (dataset ``sinusoid``, no validation: the last
weights) and tested by the same ``evaluate``. The pretrained baseline is joint training
on all tasks (``maml`` with ``inner_steps=0``) fine-tuned at test time with step 0.02
(the step of Finn et al.'s figure 2). Reported: the query MSE (100 points over [-5, 5])
on 600 tasks of the test stream after 1 and 10 inner steps, with a 95 % confidence
interval.

    FEWSHOT_DATA=../shared/data python benchmarks/maml_accuracy.py --minutes 60 --sinusoid-minutes 10
    python benchmarks/maml_accuracy.py --only sinusoid --sinusoid-minutes 10
    FEWSHOT_DATA=../shared/data python benchmarks/maml_accuracy.py --tiny --out /tmp/maml_accuracy.json

``--minutes`` is the CPU budget of each Omniglot model (training stops, validated
and checkpointed, when the process has used that much CPU time; Finn et al. trained
60,000 meta-iterations); ``--steps`` caps the iterations. ``--only`` runs one part
and keeps the other part of an existing results file. Writes
benchmarks/results/maml_accuracy.{json,md}; a run folder that exists is resumed
(``--tiny`` trains in a temporary folder unless ``--runs`` is given).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from fewshot.config import TrainConfig
from fewshot.data import EpisodeSampler, load_dataset, make_sampler
from fewshot.evaluate import evaluate
from fewshot.runs import load_run
from fewshot.train import Trainer

RESULTS = Path(__file__).parent / "results"

# Published Omniglot 1-shot test accuracies (%): MAML and FOMAML from Finn et al. (2017)
# Table 1, Meta-SGD from Li et al. (2017) Table 2, ANIL from Raghu et al. (2020) Table 2.
PUBLISHED = {("maml", 5): 98.7, ("maml", 20): 95.8, ("fomaml", 5): 98.3, ("fomaml", 20): 89.4,
             ("metasgd", 5): 99.53, ("metasgd", 20): 95.93, ("anil", 20): 96.2,
             # MAML++: Antoniou et al. (2019, arXiv:1810.09502) Table 1.
             ("mamlpp", 5): 99.47, ("mamlpp", 20): 97.65}
# Sinusoid MSE after one step, Li et al. (2017) Table 1 (their own MAML run and Meta-SGD).
PUBLISHED_SINUSOID = {("maml", 5): 1.13, ("maml", 10): 0.77, ("metasgd", 5): 0.90, ("metasgd", 10): 0.53}


def mamlpp_config(way: int, horizon: int, minutes: float, query: int, val_every: int,
                  val_episodes: int) -> TrainConfig:
    """MAML++ as Antoniou et al. train it on Omniglot (5 inner steps train and test, learned
    per-step rates from 0.1, meta-batch 8 for 5-way and 16 for 20-way, Adam 1e-3
    cosine-annealed to 1e-5), with the schedules scaled to ``horizon`` meta-iterations:
    the paper anneals the multi-step loss over its first 10 % of training and switches
    to second order after its first third (15 and 50 of 150 epochs)."""
    options = {"inner_steps": 5, "inner_lr": 0.1, "test_inner_steps": 5, "msl_iterations": max(1, horizon // 10),
               "first_order_iterations": horizon // 3}
    return TrainConfig(method="mamlpp", method_options=options, dataset="omniglot",
                       dataset_options={"split_scheme": "vinyals"}, backbone="conv4", way=way, shot=1, query=15,
                       train_query=query, episodes=horizon, meta_batch=8 if way <= 5 else 16, lr=1e-3,
                       lr_schedule="cosine", lr_min=1e-5, val_every=val_every, val_episodes=val_episodes,
                       checkpoint_every=val_every, seed=0, cpu_minutes=minutes)


def calibrate(config: TrainConfig, data, iterations: int = 4) -> float:
    """CPU seconds per meta-iteration of ``config`` here and now (after one warm-up
    iteration), to size MAML++'s schedules to the CPU budget."""
    from fewshot.data.tasks import input_shape
    from fewshot.runs import build_model

    method = build_model(config, input_shape("omniglot", data))
    sampler = EpisodeSampler(data, "train", config.way, 1, config.train_query or config.query, seed=config.seed)
    times = []
    for step in range(iterations + 1):
        start = time.process_time()
        method.zero_grad()
        method.loss(sampler.batch(step, config.meta_batch))[0].backward()
        times.append(time.process_time() - start)
    return sum(times[1:]) / iterations


def omniglot_config(method: str, way: int, steps: int, minutes: float, query: int, val_every: int,
                    val_episodes: int) -> TrainConfig:
    five = way <= 5
    options = {"inner_steps": 1 if five or method == "metasgd" else 5, "inner_lr": 0.4 if five else 0.1,
               "test_inner_steps": 3 if five else 5}
    if method == "metasgd":
        options["test_inner_steps"] = 1  # Meta-SGD adapts in the one step its rates were learned for
    return TrainConfig(method=method, method_options=options, dataset="omniglot",
                       dataset_options={"split_scheme": "vinyals"}, backbone="conv4", way=way, shot=1, query=15,
                       train_query=query, episodes=steps, meta_batch=32 if five else 16, lr=1e-3,
                       val_every=val_every, val_episodes=val_episodes, checkpoint_every=val_every, seed=0,
                       cpu_minutes=minutes)


def run_omniglot(data, method: str, way: int, args, runs: Path) -> dict:
    config = omniglot_config(method, way, args.steps, args.minutes, args.train_query, args.val_every,
                             args.val_episodes)
    calibration = None
    run_dir = runs / f"{method}-omniglot-{way}way1shot"
    if method == "mamlpp":
        config = mamlpp_config(way, 60000, args.minutes, args.train_query, args.val_every, args.val_episodes)
        if (run_dir / "config.json").exists():  # resumed: the schedules it was sized with
            config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
        else:
            calibration = calibrate(config, data)
            # The cosine and annealing horizon: the iterations the budget affords, less
            # 15 % for validation and the slower second-order iterations.
            horizon = max(10, min(args.steps, int(0.85 * 60 * args.minutes / calibration)))
            config = mamlpp_config(way, horizon, args.minutes, args.train_query, args.val_every, args.val_episodes)
    trainer = Trainer(config, run_dir, dataset=data, runs=runs)
    result = trainer.run(resume=(run_dir / "state.json").exists(), progress=not args.quiet)
    state = trainer.state
    _, model, _ = load_run(run_dir, "best")
    sampler = EpisodeSampler(data, "test", way, 1, 15, seed=0)
    report = evaluate(model, sampler, args.test_episodes, progress=not args.quiet, desc=f"{method} {way}-way")
    row = {"method": method, "way": way, "shot": 1, "options": config.method_options, "meta_batch": config.meta_batch,
           "train_query": config.train_query, "steps_trained": state["step"], "cpu_seconds": state["cpu_seconds"],
           "wall_seconds": state["seconds"], "best_step": (state.get("best") or {}).get("step"),
           "val_accuracy": (state.get("best") or {}).get("accuracy"), "val_curve": state["history"]["val"],
           "test_accuracy": report.accuracy, "test_ci95": report.ci95, "test_episodes": report.episodes,
           "test_inner_steps": model.test_inner_steps, "published": PUBLISHED.get((method, way)),
           "images_per_second": result.images_per_second, "episodes_cap": config.episodes,
           "cpu_minutes_budget": config.cpu_minutes,
           "lr_schedule": config.lr_schedule, "calibrated_cpu_s_per_iteration": calibration,
           # Validation points are at steps; CPU time per step maps them to CPU minutes.
           "cpu_seconds_per_step": state["cpu_seconds"] / max(1, state["step"])}
    print(f"{method} {way}-way 1-shot: {report.accuracy:.2f} ± {report.ci95:.2f} % after {state['step']} steps "
          f"({state['cpu_seconds'] / 60:.1f} CPU min); published {PUBLISHED.get((method, way))}", flush=True)
    return row


def sinusoid_config(name: str, k: int, args) -> TrainConfig:
    """``name`` (or the pretrained baseline: ``maml`` without inner steps) on K-shot sinusoids."""
    method, inner_steps = ("maml", 0) if name == "pretrained" else (name, 1)
    return TrainConfig(method=method, method_options={"inner_steps": inner_steps, "inner_lr": 0.01},
                       dataset="sinusoid", backbone="mlp", backbone_options={"hidden": [40, 40], "out_features": 1},
                       shot=k, query=k, episodes=args.sinusoid_steps, meta_batch=25, lr=1e-3, val_split=None,
                       checkpoint_every=1000, seed=args.seed, cpu_minutes=args.sinusoid_minutes)


def run_sinusoid(name: str, k: int, args, runs: Path) -> dict:
    config = sinusoid_config(name, k, args)
    run_dir = runs / f"sinusoid-{name}-k{k}"
    Trainer(config, run_dir, runs=runs).run(resume=(run_dir / "state.json").exists(), progress=not args.quiet)
    _, model, state = load_run(run_dir, "last")
    if name == "pretrained":
        model.set_test_options(inner_lr=0.02)
    sampler = make_sampler("sinusoid", None, "test", 1, k, 100, seed=args.seed)
    step, cpu = state["step"], state["cpu_seconds"]
    # The trainer logs the mean MSE of every 50 steps; the curve keeps one point per 1,000.
    curve = [[s, mse] for s, _, mse in state["history"]["train"] if s % 1000 == 0]
    row = {"method": name, "k": k, "steps_trained": step, "cpu_seconds": cpu, "train_curve": curve,
           "published_1_step": PUBLISHED_SINUSOID.get((name, k))}
    for steps in (1, 10):
        model.set_test_options(inner_steps=steps)
        report = evaluate(model, sampler, args.test_episodes, progress=not args.quiet,
                          desc=f"sinusoid {name} K={k}, {steps} step(s)")
        row[f"mse_{steps}_step"], row[f"ci95_{steps}_step"] = report.mse, report.ci95
    print(f"sinusoid {name} K={k}: MSE {row['mse_1_step']:.3f} (1 step), {row['mse_10_step']:.3f} (10 steps) "
          f"after {step} steps ({cpu / 60:.1f} CPU min)", flush=True)
    return row


def read_previous(out: Path) -> dict:
    """The results file as it stands, so that running one part keeps the other."""
    if not out.exists():
        return {}
    try:
        previous = json.loads(out.read_text())
    except (ValueError, UnicodeDecodeError):
        sys.exit(f"{out} is not valid JSON; move it away or choose another --out")
    return previous if isinstance(previous, dict) else {}


def markdown(results: dict) -> str:
    lines = ["# MAML family: accuracy", "", f"CPU budget: {'; '.join(results['budgets'].values())}; "
             f"{results['threads']} thread(s). Machine: {results['machine']}.", "",
             "## Omniglot, 1-shot (600 test episodes, 15 queries per class, 95 % CI)", "",
             "| method | way | test accuracy % | published % | steps | CPU min | best step | inner steps (train/test) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results.get("omniglot", []):
        pub = "-" if r["published"] is None else f"{r['published']}"
        lines.append(f"| {r['method']} | {r['way']} | {r['test_accuracy']:.2f} ± {r['test_ci95']:.2f} | {pub} | "
                     f"{r['steps_trained']} | {r['cpu_seconds'] / 60:.1f} | {r['best_step']} | "
                     f"{r['options']['inner_steps']}/{r['test_inner_steps']} |")
    lines += ["", "## Sinusoid regression (600 test tasks, query MSE, 95 % CI)", "",
              "| method | K | MSE, 1 step | MSE, 10 steps | published (1 step) | steps | CPU min |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results.get("sinusoid", []):
        pub = "-" if r["published_1_step"] is None else f"{r['published_1_step']}"
        lines.append(f"| {r['method']} | {r['k']} | {r['mse_1_step']:.3f} ± {r['ci95_1_step']:.3f} | "
                     f"{r['mse_10_step']:.3f} ± {r['ci95_10_step']:.3f} | {pub} | {r['steps_trained']} | "
                     f"{r['cpu_seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["maml", "fomaml", "metasgd", "anil"])
    parser.add_argument("--ways", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--minutes", type=float, default=60.0, help="CPU minutes of meta-training per Omniglot model")
    parser.add_argument("--steps", type=int, default=60000, help="at most this many meta-iterations per model")
    parser.add_argument("--train-query", type=int, default=1, help="queries per class in meta-training (Finn: 1)")
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--val-episodes", type=int, default=200)
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--sinusoid", nargs="+", default=["maml", "metasgd", "pretrained"])
    parser.add_argument("--sinusoid-k", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--sinusoid-minutes", type=float, default=10.0, help="CPU minutes per sinusoid model")
    parser.add_argument("--sinusoid-steps", type=int, default=70000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", help="run folders and store (default runs/bench-maml; --tiny: a temporary folder)")
    parser.add_argument("--only", choices=["sinusoid", "omniglot"], help="run one part; the file keeps the other")
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"  # the Makefile's default data root
    parser.add_argument("--data-root", default=os.environ.get("FEWSHOT_DATA") or (str(shared) if shared.is_dir() else None))
    parser.add_argument("--tiny", action="store_true", help="a smoke run: a few steps, 20 test episodes")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "maml_accuracy.json"))
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.val_every, args.val_episodes, args.test_episodes = 4, 2, 10, 20
        args.sinusoid_steps = 30
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    parts = [part for part in ("omniglot", "sinusoid") if args.only in (None, part)]
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    budgets = {"omniglot": f"{args.minutes:g} CPU minutes (at most {args.steps} meta-iterations) per Omniglot model",
               "sinusoid": f"{args.sinusoid_minutes:g} CPU minutes (at most {args.sinusoid_steps} iterations) "
                           "per sinusoid model"}
    command = " ".join(["python", *sys.argv])
    results = {"omniglot": [], "sinusoid": [], **read_previous(out)}
    results.update(benchmark="maml_accuracy", command=command, machine=machine, threads=args.threads)
    results.pop("budget", None)  # one per part now
    results["budgets"] = {**results.get("budgets", {}), **{part: budgets[part] for part in parts}}
    # Which command produced each part, since a merged file holds the output of several.
    results["commands"] = {**results.get("commands", {}), **{part: command for part in parts}}
    with tempfile.TemporaryDirectory(prefix="maml-accuracy-") as tmp:
        runs = Path(args.runs or (tmp if args.tiny else "runs/bench-maml"))
        if "omniglot" in parts:
            rows = []
            if args.methods and args.ways:
                data = load_dataset("omniglot", args.data_root, split_scheme="vinyals")
                for way in args.ways:
                    for method in args.methods:
                        rows.append(run_omniglot(data, method, way, args, runs))
            # Rows of models not re-run now stay (each row states its own budget).
            done = {(r["method"], r["way"]) for r in rows}
            rows = [r for r in results.get("omniglot", []) if (r["method"], r["way"]) not in done] + rows
            results["omniglot"] = rows
        if "sinusoid" in parts:
            results["sinusoid"] = [run_sinusoid(name, k, args, runs) for k in args.sinusoid_k for name in args.sinusoid]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=lambda o: None if isinstance(o, float) and math.isnan(o) else o)
                   + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()

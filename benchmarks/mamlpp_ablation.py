"""What each part of MAML++ contributes: Omniglot 5-way 1-shot, one part off at a time.

Antoniou et al. (2019, arXiv:1810.09502, Table 1) measure their fixes by adding them to
MAML one by one at 150 epochs of training; a CPU cannot afford that, so this benchmark
removes one fix at a time from the full method, every variant trained by the one trainer
for the same CPU budget (``--minutes`` each), from the same seed, with its schedules
sized to that budget as ``maml_accuracy.py`` sizes them (:func:`calibrate`, measured once
on the full method so every variant gets the same horizon), and tested on the same 600
fixed test episodes (15 queries per class, 95 % CI) from its best validation checkpoint.

Variants: ``full``; ``no-msl`` (only the last step's loss); ``no-per-step-bn`` (one set
of BatchNorm weights and statistics); ``no-lslr`` (a fixed inner rate of 0.1 instead of
learned per-layer per-step rates); ``no-da`` (second order from the first iteration);
``no-ca`` (a constant outer rate instead of the cosine schedule); and ``maml`` (all five
off: MAML with MAML++'s 5 inner steps, meta-batch 8 and budget). One seed: differences
inside the confidence intervals are not evidence either way.

    OMP_NUM_THREADS=1 FEWSHOT_DATA=../shared/data python benchmarks/mamlpp_ablation.py

Writes benchmarks/results/mamlpp_ablation.{json,md}. A run folder that exists is resumed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import replace
from pathlib import Path

import torch

from maml_accuracy import RESULTS, calibrate, mamlpp_config  # noqa: E402  (the benchmark's own recipe)

from fewshot.config import TrainConfig
from fewshot.data import EpisodeSampler, load_dataset
from fewshot.evaluate import evaluate
from fewshot.runs import load_run
from fewshot.train import Trainer


def variants(config) -> dict:
    """Each variant's config: the full method with one part switched off."""
    options = config.method_options

    def off(**changes):
        return replace(config, method_options={**options, **changes})

    return {"full": config,
            "no-msl": off(multi_step_loss=False),
            "no-per-step-bn": off(per_step_bn=False),
            "no-lslr": off(learn_inner_lr=False),
            "no-da": off(first_order_iterations=0),
            "no-ca": replace(config, lr_schedule="step"),  # "step" without lr_step: constant
            "maml": replace(config, method_options={"multi_step_loss": False, "per_step_bn": False,
                                                    "learn_inner_lr": False, "first_order_iterations": 0,
                                                    **{k: options[k] for k in ("inner_steps", "inner_lr",
                                                                               "test_inner_steps")}},
                            lr_schedule="step")}


def markdown(results: dict) -> str:
    lines = ["# MAML++ ablation: Omniglot 5-way 1-shot", "",
             f"Command: `{results['command']}`. {results['minutes']:g} CPU minutes per variant, one thread, "
             f"horizon {results['horizon']} meta-iterations (calibrated {results['calibrated_cpu_s_per_iteration']:.3f} "
             f"CPU s per iteration of the full method); machine: {results['machine']['cores']} cores ({results['machine']['cpu']}), "
             f"torch {results['machine']['torch']}.", "",
             f"| variant | test accuracy % ({results['test_episodes']} episodes, 95 % CI) | vs full (points) | meta-iterations | CPU min | "
             "best validation % (step) |", "|---|---:|---:|---:|---:|---:|"]
    full = next((r["test_accuracy"] for r in results["rows"] if r["variant"] == "full"), None)
    for r in results["rows"]:
        delta = "-" if full is None or r["variant"] == "full" else f"{r['test_accuracy'] - full:+.2f}"
        lines.append(f"| {r['variant']} | {r['test_accuracy']:.2f} ± {r['test_ci95']:.2f} | {delta} | "
                     f"{r['steps_trained']} | {r['cpu_seconds'] / 60:.1f} | "
                     f"{(r['val_accuracy'] or 0):.1f} ({r['best_step']}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="CPU minutes of meta-training per variant")
    parser.add_argument("--variants", nargs="+", help="run only these (default: all)")
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--val-episodes", type=int, default=100)
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--runs", default="runs/bench-mamlpp-ablation")
    parser.add_argument("--data-root", default=os.environ.get("FEWSHOT_DATA"))
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "mamlpp_ablation.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("omniglot", args.data_root, split_scheme="vinyals")
    runs = Path(args.runs)
    probe = mamlpp_config(5, 60000, args.minutes, 1, args.val_every, args.val_episodes)
    seconds = calibrate(probe, data)
    horizon = max(10, int(0.85 * 60 * args.minutes / seconds))  # as maml_accuracy.py sizes it
    configs = variants(mamlpp_config(5, horizon, args.minutes, 1, args.val_every, args.val_episodes))
    unknown = set(args.variants or ()) - set(configs)
    if unknown:
        sys.exit(f"unknown variant(s) {sorted(unknown)}; choose from {sorted(configs)}")
    test = EpisodeSampler(data, "test", 5, 1, 15, seed=0)
    rows = []
    for name, config in configs.items():
        if args.variants and name not in args.variants:
            continue
        run_dir = runs / f"mamlpp-ablation-{name}"
        if (run_dir / "config.json").exists():  # resumed: the schedules it was sized with, not a new calibration's
            config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
        trainer = Trainer(config, run_dir, dataset=data, runs=runs)
        trainer.run(resume=(run_dir / "state.json").exists(), progress=not args.quiet)
        state = trainer.state
        _, model, _ = load_run(run_dir, "best")
        report = evaluate(model, test, args.test_episodes, progress=not args.quiet, desc=name)
        rows.append({"variant": name, "method_options": config.method_options, "lr_schedule": config.lr_schedule,
                     "steps_trained": state["step"], "cpu_seconds": state["cpu_seconds"],
                     "best_step": (state.get("best") or {}).get("step"),
                     "val_accuracy": (state.get("best") or {}).get("accuracy"), "val_curve": state["history"]["val"],
                     "test_accuracy": report.accuracy, "test_ci95": report.ci95, "test_episodes": report.episodes})
        print(f"{name}: {report.accuracy:.2f} ± {report.ci95:.2f} % after {state['step']} steps "
              f"({state['cpu_seconds'] / 60:.1f} CPU min)", flush=True)
        write(args, horizon, seconds, rows)  # after every variant: a stopped run keeps what it finished


def write(args, horizon: int, seconds: float, rows: list) -> None:
    results = {"benchmark": "mamlpp_ablation", "command": " ".join(["python", *sys.argv]), "minutes": args.minutes,
               "test_episodes": args.test_episodes,
               "horizon": horizon, "calibrated_cpu_s_per_iteration": seconds,
               "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "torch_threads": 1, "torch": torch.__version__}, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {out} and {out.with_suffix('.md')}", flush=True)


if __name__ == "__main__":
    main()

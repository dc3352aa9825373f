"""2D navigation (Finn et al., 2017, arXiv:1703.03400, section 5.3): MAML-RL against a pretrained and a random policy.

Every policy is the same Gaussian MLP (two hidden layers of 100 ReLU units, a learned
state-independent log standard deviation starting at 0). Three are trained by the one
trainer (:class:`fewshot.train.Trainer`) under the same CPU budget, validated every
``--val-every`` steps on 20 fixed tasks of the val stream (return after one
adaptation step), keeping the best:

* ``maml-rl``: one inner step of vanilla policy gradient (REINFORCE with the linear
  feature baseline, normalised advantages, discount 0.99) of size 0.1 on 20 rollouts,
  outer objective the same surrogate on 20 fresh rollouts of the adapted policy,
  second-order meta-gradient, meta-batch 20 tasks; outer optimiser Adam (``--lr``) on
  that policy-gradient objective (Finn et al. use TRPO);
* ``fomaml-rl``: the same with the first-order meta-gradient;
* ``pretrained``: one policy trained jointly on all tasks (``inner_steps=0``: the
  plain policy gradient on the meta-batch's rollouts), as Finn et al.'s baseline;

and ``random``, the untrained initialisation. Each is then adapted with the same
policy-gradient steps (size 0.1, 20 rollouts per step) on 100 fixed tasks of the test
stream, and the mean return of the 20 rollouts after 0, 1, 2 and 3 steps is reported
with its 95 % confidence interval (a paired difference for step 1 against step 0).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/rl_navigation.py --minutes 4

Writes benchmarks/results/rl_navigation.{json,md} and rl_navigation.png (learning
curves, return against adaptation steps, and five rollouts before and after one step
on test tasks 0-2, as Finn et al.'s figure 4). A run folder that exists under
``--runs`` is resumed (a finished one is only evaluated again).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from fewshot.config import TrainConfig
from fewshot.data import make_sampler
from fewshot.data.tasks import input_shape
from fewshot.evaluate import evaluate
from fewshot.metrics import confidence_interval
from fewshot.runs import build_model, load_run
from fewshot.train import Trainer

RESULTS = Path(__file__).parent / "results"
ENV = "navigation-2d"
MODELS = {"maml-rl": {}, "fomaml-rl": {"first_order": True}, "pretrained": {"inner_steps": 0}}


def config_for(name: str, args) -> TrainConfig:
    return TrainConfig(method="maml-rl", dataset=ENV, backbone="mlp", shot=args.rollouts, query=args.rollouts,
                       meta_batch=args.meta_batch, episodes=args.steps, lr=args.lr, val_every=args.val_every,
                       val_episodes=20, checkpoint_every=args.val_every, cpu_minutes=args.minutes, seed=args.seed,
                       method_options={"inner_lr": args.inner_lr, **MODELS[name]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="CPU minutes of training per model")
    parser.add_argument("--steps", type=int, default=100000, help="cap on meta-iterations")
    parser.add_argument("--meta-batch", type=int, default=20)
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--inner-lr", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (outer)")
    parser.add_argument("--val-every", type=int, default=25)
    parser.add_argument("--tasks", type=int, default=100, help="test tasks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="runs/rl_navigation", help="folder of the run folders")
    parser.add_argument("--out", default=str(RESULTS / "rl_navigation.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = Path(args.runs)
    results: dict = {"command": "python benchmarks/rl_navigation.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("runs", "out"))
        + ("" if args.out == str(RESULTS / "rl_navigation.json") else f" --out benchmarks/results/{Path(args.out).name}"),
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread, a shared 2-core machine",
        "settings": {k: v for k, v in vars(args).items() if k not in ("runs", "out")}, "models": {}}
    test = make_sampler(ENV, None, "test", 1, args.rollouts, args.rollouts, seed=0)
    methods = {}
    for name in MODELS:
        config = config_for(name, args)
        run_dir = runs / name
        trainer = Trainer(config, run_dir, runs=runs)
        started = time.process_time()
        train = trainer.run(resume=(run_dir / "state.json").exists(), progress=False)
        _, method, state = load_run(run_dir)
        methods[name] = method
        results["models"][name] = {"steps": train.steps, "train_cpu_seconds": round(train.cpu_seconds, 1),
                                   "best_step": state["best"]["step"], "val_curve": state["history"]["val"],
                                   "train_curve": state["history"]["train"]}
        print(f"{name}: {train.steps} steps, {train.cpu_seconds:.0f} CPU-s "
              f"(this process: {time.process_time() - started:.0f}), best val return {train.best_return:.2f}", flush=True)
    torch.manual_seed(args.seed)
    methods["random"] = build_model(config_for("maml-rl", args), input_shape(ENV, None))
    results["models"]["random"] = {"steps": 0, "train_cpu_seconds": 0.0}
    for name, method in methods.items():
        method.set_test_options(inner_steps=3)
        started = time.process_time()
        out = evaluate(method, test, args.tasks, progress=False)
        gain = out.per_step[:, 1] - out.per_step[:, 0]
        entry = results["models"][name]
        entry.update(by_step=[{"steps": k, "return": m, "ci95": c} for k, (m, c) in enumerate(out.by_step())],
                     gain_step1=dict(zip(("mean", "ci95"), confidence_interval(gain))),
                     eval_cpu_seconds=round(time.process_time() - started, 1))
        print(name, out.summary(), flush=True)
    results["tasks"] = args.tasks
    # Test tasks 0, 1 and 2 (the first three, not chosen): 5 rollouts before and after one step.
    results["trajectories"] = {"goals": [test.episode(i).params.tolist() for i in range(3)]}
    for name in ("maml-rl", "pretrained"):
        results["trajectories"][name] = []
        for i in range(3):
            _, kept = methods[name].adapt_returns(test.episode(i), steps=1, keep=True)
            results["trajectories"][name].append([batch.obs[:, :5].tolist() for batch in kept])
    Path(args.out).write_text(json.dumps(results, indent=1))
    write_markdown(results, Path(args.out).with_suffix(".md"))
    figure(results, Path(args.out).with_suffix(".png"))


def write_markdown(results: dict, path: Path) -> None:
    lines = [f"# 2D navigation: return after 0-3 policy-gradient steps ({results['tasks']} test tasks, 95 % CI)", "",
             f"`{results['command']}`", "", f"Machine: {results['machine']}. CPU time is the training process's own.",
             "", "| policy | 0 steps | 1 step | 2 steps | 3 steps | gain at step 1 (paired) | meta-iterations | training CPU |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in results["models"].items():
        cells = [f"{s['return']:.1f} ± {s['ci95']:.1f}" for s in m["by_step"]]
        gain = m["gain_step1"]
        lines.append(f"| {name} | {' | '.join(cells)} | {gain['mean']:+.1f} ± {gain['ci95']:.1f} | {m['steps']} | "
                     f"{m['train_cpu_seconds'] / 60:.1f} min |")
    path.write_text("\n".join(lines) + "\n")


def figure(results: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no figure")
        return
    fig, axes = plt.subplots(2, 4, figsize=(17, 8.5))
    for name, m in results["models"].items():
        if m.get("val_curve"):
            steps, values, cis = zip(*m["val_curve"])
            axes[0, 0].errorbar(steps, values, yerr=cis, label=name, capsize=2)
    axes[0, 0].set(xlabel="meta-iteration", ylabel="val return after 1 step", title="learning curves (20 val tasks)",
                   ylim=(-120, 0))
    axes[0, 0].legend(fontsize=8)
    for name, m in results["models"].items():
        ks = [s["steps"] for s in m["by_step"]]
        axes[1, 0].errorbar(ks, [s["return"] for s in m["by_step"]], yerr=[s["ci95"] for s in m["by_step"]],
                            marker="o", capsize=3, label=name)
    axes[1, 0].set(xlabel="policy-gradient steps at test time", ylabel="return (mean ± 95% CI)",
                   title=f"adaptation ({results['tasks']} test tasks)", xticks=[0, 1, 2, 3])
    axes[1, 0].legend(fontsize=8)
    goals = results["trajectories"]["goals"]
    for row, name in enumerate(("maml-rl", "pretrained")):
        for i, (ax, per_step) in enumerate(zip(axes[row, 1:], results["trajectories"][name])):
            for k, (batch, style) in enumerate(zip(per_step, ("--", "-"))):
                positions = np.asarray(batch)  # (T, 5, 2)
                for r in range(positions.shape[1]):
                    ax.plot(positions[:, r, 0], positions[:, r, 1], style, color=f"C{k}", alpha=0.6,
                            label=f"{k} step{'s' if k != 1 else ''}" if r == 0 else None)
            ax.plot(*goals[i], "k*", markersize=14, label="goal")
            ax.set(xlim=(-0.6, 0.6), ylim=(-0.6, 0.6), aspect="equal", title=f"{name}, test task {i}")
            ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()

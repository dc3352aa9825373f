"""Meta-learned model selection on held-out groups: the meta-learner against every baseline.

1. Builds the diverse zoo (``fewshot zoo build``, preset ``default``: 13 models, 12 of
   them trained for ``--cpu-minutes`` each by the one trainer, and a random control).
2. Builds the meta-dataset (``fewshot select build``): ``--tasks`` tasks from held-out
   classes (Omniglot evaluation alphabets in three script groups, upright digits 5-9,
   rotated digits 5-9) × every zoo model: meta-features, transferability scores and
   the query accuracy after a linear probe and after fine-tuning.
3. Compares, leave-one-group-out (no task of a test group, nor its group, in training),
   the meta-learner with random pick, best-on-average, the biggest model, every single
   score's argmax, the meta-learner without the scores, and the oracle: top-1 regret,
   relative top-1 accuracy, best-in-top-3, Kendall τ and weighted τ per task, MSE/RMSE
   of predicted accuracy, with 95% bootstrap CIs over tasks (``fewshot select evaluate``);
   for both ground truths (fine-tuning, linear probe).
4. Cost: CPU seconds per task to select (support features and scores of every model,
   plus the meta-learner's prediction) against fine-tuning every model.
5. The builder's parallel speed-up: the first ``--speedup-tasks`` tasks built from
   scratch with 1 and with 2 processes (wall-clock), and a check that both give the
   same rows.

Budget, on this project's 2-core machine (one thread per process): about 40 CPU-minutes
in all: the zoo 12 × 1 CPU-minute plus about 1 of overhead; the meta-dataset 13-16
CPU-seconds per task (13 models; fine-tuning the 2M-parameter ResNet-12 is 40% of it),
so 90 tasks (18 per group) ≈ 22 CPU-minutes; the speed-up runs 2 × 6 tasks ≈ 3
CPU-minutes; the comparisons about 1.

    OMP_NUM_THREADS=1 FEWSHOT_DATA=../shared/data python benchmarks/model_selection.py

Writes benchmarks/results/model_selection.{json,md}. The zoo and the meta-dataset are
kept (``--zoo``, default runs/bench/model_selection/zoo) and both builds resume, so an
interrupted run continues where it stopped. ``--quick`` checks the script end to end
in about a minute: the 'tiny' zoo on 8×8 digits, 10 digit tasks, under
/tmp/model-selection-check.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

from fewshot.io import write_json
from fewshot.select.builder import MetaStore, build_meta_dataset, complete, sample_tasks
from fewshot.select.evaluation import evaluate_meta_dataset, evaluation_table
from fewshot.select.zoo import build_zoo

RESULTS = Path(__file__).parent / "results"


def cpu_now() -> float:
    """CPU seconds of this process and of its finished children (the builder's workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def speedup(zoo, tasks: int, sources: list[str], folder: Path, finetune: dict) -> dict:
    """Wall-clock of building ``tasks`` tasks from scratch with 1 and 2 processes."""
    runs = {}
    for workers in (1, 2):
        path = folder / f"speedup-{workers}.sqlite"
        for stale in folder.glob(f"speedup-{workers}.sqlite*"):
            stale.unlink()
        result = build_meta_dataset(zoo, tasks, path=path, sources=sources, workers=workers, finetune=finetune,
                                    progress=False)
        runs[workers] = {"seconds": result.seconds, "cpu_seconds": result.cpu_seconds, "rows": result.total}
        print(f"speed-up run: {tasks} tasks × {result.models} models with {workers} process(es): "
              f"{result.seconds:.0f} s wall, {result.cpu_seconds:.0f} CPU-s", flush=True)
    one, two = (MetaStore(folder / f"speedup-{w}.sqlite").records() for w in (1, 2))
    same = ([(r["task"], r["model"], r["accuracy_lp"], r["accuracy_ft"]) for r in one]
            == [(r["task"], r["model"], r["accuracy_lp"], r["accuracy_ft"]) for r in two])
    return {"tasks": tasks, "one_process": runs[1], "two_processes": runs[2],
            "speedup": runs[1]["seconds"] / runs[2]["seconds"], "same_rows": same}


def verdicts(report: dict) -> dict:
    """Does the meta-learner beat best-on-average and every single score (lower regret, higher τ)?"""
    ml = report["meta-learner"]
    rivals = ["best-on-average"] + [name for name in report if name.startswith("score.")]
    out = {}
    for metric, better in (("top1_regret", lambda a, b: a < b), ("kendall_tau", lambda a, b: a > b),
                           ("weighted_tau", lambda a, b: a > b)):
        beaten = [r for r in rivals if better(ml[metric]["mean"], report[r][metric]["mean"])]
        out[metric] = {"beats_all": len(beaten) == len(rivals), "beaten": beaten,
                       "not_beaten": [r for r in rivals if r not in beaten]}
    return out


def verdict(v: dict) -> str:
    return "yes" if v["beats_all"] else f"no (not beaten: {', '.join(v['not_beaten'])})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="runs/bench/model_selection/zoo", help="zoo folder (kept, resumable)")
    parser.add_argument("--cpu-minutes", type=float, default=1.0, help="CPU budget of each zoo model")
    parser.add_argument("--tasks", type=int, default=90, help="tasks of the meta-dataset")
    parser.add_argument("--workers", type=int, default=2, help="processes building the meta-dataset")
    parser.add_argument("--speedup-tasks", type=int, default=6, help="tasks of the 1-vs-2-process speed-up runs")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--quick", action="store_true", help="tiny zoo and tasks: check the script end to end")
    args = parser.parse_args()
    preset, sources, finetune, max_steps = "default", ["digits", "omniglot"], {}, None
    if args.quick:
        preset, sources, finetune, max_steps = "tiny", ["digits"], {"steps": 10}, 30
        args.tasks, args.speedup_tasks, args.resamples = 10, 4, 200
        args.zoo = args.zoo if args.zoo != "runs/bench/model_selection/zoo" else "/tmp/model-selection-check/zoo"
        args.results = args.results if args.results != str(RESULTS) else "/tmp/model-selection-check"
    torch.set_num_threads(1)
    results_dir, zoo_dir = Path(args.results), Path(args.zoo)
    results_dir.mkdir(parents=True, exist_ok=True)
    start, cpu0 = time.perf_counter(), cpu_now()

    # -- 1. the zoo ------------------------------------------------------------------------
    zoo = build_zoo(zoo_dir, preset, cpu_minutes=args.cpu_minutes, max_steps=max_steps,
                    runs=zoo_dir.parent / "runs", progress=True)
    cpu_zoo = cpu_now() - cpu0
    models = []
    for entry in zoo.entries():
        meta = zoo.metadata(entry["name"])
        models.append({**entry, "steps": (meta.get("source") or {}).get("steps"),
                       "train_cpu_seconds": meta.get("train_cpu_seconds")})

    # -- 2. the meta-dataset -------------------------------------------------------------
    build = build_meta_dataset(zoo, args.tasks, sources=sources, workers=args.workers, finetune=finetune)
    cpu_meta = cpu_now() - cpu0 - cpu_zoo
    store = MetaStore(build.path)
    names = zoo.names()
    specs = sample_tasks(args.tasks, sources)
    wanted = {t.task for t in specs}
    groups: dict[str, int] = {}
    for t in specs:
        groups[t.group] = groups.get(t.group, 0) + 1

    # -- 3, 4. comparisons and costs --------------------------------------------------------------
    evaluations = {}
    records = [r for r in store.records(names) if r["task"] in wanted]
    for target in ("finetune", "linear-probe"):
        rows = [r for r in complete(store.rows(target, names), names) if r["task"] in wanted]
        result = evaluate_meta_dataset(rows, records, resamples=args.resamples)
        result["verdicts"] = verdicts(result["report"])
        evaluations[target] = result
        print(f"\n{target}: {result['tasks']} tasks × {result['models']} models\n"
              + "\n".join(evaluation_table(result["report"])), flush=True)
    cpu_compare = cpu_now() - cpu0 - cpu_zoo - cpu_meta

    # -- 5. parallel speed-up ----------------------------------------------------------------
    parallel = speedup(zoo, args.speedup_tasks, sources, results_dir / "model_selection_speedup", finetune)
    shutil.rmtree(results_dir / "model_selection_speedup", ignore_errors=True)
    cpu_total = cpu_now() - cpu0

    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch_threads": 1,
               "torch": torch.__version__, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    out = {"benchmark": "model_selection", "command": " ".join(["python", *sys.argv]), "machine": machine,
           "wall_seconds": time.perf_counter() - start,
           "cpu_seconds": {"zoo": cpu_zoo, "meta_dataset": cpu_meta, "comparisons": cpu_compare,
                           "speedup_runs": cpu_total - cpu_zoo - cpu_meta - cpu_compare, "total": cpu_total},
           "zoo": {"folder": str(zoo.root), "preset": preset, "cpu_minutes_per_model": args.cpu_minutes,
                   "models": models},
           "meta_dataset": {**build.to_dict(), "sources": sources, "finetune": finetune, "tasks_per_group": groups},
           "evaluations": evaluations, "parallel": parallel}
    write_json(results_dir / "model_selection.json", out)

    ft = evaluations["finetune"]
    per_group = ", ".join(f"{g} {n}" for g, n in groups.items())
    lines = [f"Model selection on held-out groups: {ft['tasks']} tasks ({per_group}) × {ft['models']} zoo models, "
             f"leave-one-group-out; mean over tasks [95% bootstrap CI, {args.resamples} resamples]. "
             f"`{out['command']}`", ""]
    for target, result in evaluations.items():
        c, v = result["cost"], result["verdicts"]
        lines += [f"### Ground truth: query accuracy after {target}", ""] + evaluation_table(result["report"]) + [""]
        lines.append(f"- meta-learner against best-on-average and every single score: lower top-1 regret: "
                     f"{verdict(v['top1_regret'])}; higher Kendall τ: {verdict(v['kendall_tau'])}; "
                     f"higher weighted τ: {verdict(v['weighted_tau'])}")
        lines.append(f"- cost per task: selecting {c['select_with_prediction_cpu_seconds']:.2f} CPU-s against "
                     f"{c['finetune_all_cpu_seconds']:.1f} CPU-s to fine-tune every model "
                     f"(**{c['speedup_over_finetuning_all']:.0f}×** cheaper) and {c['probe_all_cpu_seconds']:.1f} "
                     f"CPU-s to probe every model")
        lines.append("")
    p = parallel
    lines += [f"Builder, {p['tasks']} tasks × {ft['models']} models from scratch: 1 process "
              f"{p['one_process']['seconds']:.0f} s, 2 processes {p['two_processes']['seconds']:.0f} s wall: "
              f"**{p['speedup']:.2f}×** speed-up; identical rows: {'yes' if p['same_rows'] else 'NO'}.", "",
              "Zoo: " + "; ".join(f"{m['name']} ({m['parameters']:,} parameters, "
                                  f"{m['steps'] if m['steps'] is not None else 0} steps)" for m in models) + ".", "",
              f"CPU time: zoo {cpu_zoo / 60:.1f} min, meta-dataset {cpu_meta / 60:.1f} min, comparisons "
              f"{cpu_compare / 60:.1f} min, speed-up runs {out['cpu_seconds']['speedup_runs'] / 60:.1f} min; total "
              f"{cpu_total / 60:.1f} CPU-minutes ({out['wall_seconds'] / 60:.0f} min wall)."]
    (results_dir / "model_selection.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()

"""Model selection judged with groups as the unit, on the committed meta-dataset (issue #29, part 3).

Re-reads a committed meta-dataset (default ``benchmarks/results/model_selection_meta.csv.gz``,
built by ``benchmarks/model_selection_sweep.py``, which runs this same judgement itself; the
previous one, on the fixed 20-step fine-tune, is ``model_selection_meta_fixed20.csv.gz``) and judges every selector under leave-one-group-out with
**related groups held out together** (:data:`fewshot.select.folds.RELATED_GROUPS`: the rotated
Omniglot characters with the three upright evaluation groups, rotated digits with digits),
adds the **meta-learner whose variant is chosen by nested validation** on the training groups
only (ranking / regression / ranking without scores), and reports every metric with 95 %
bootstrap intervals over **groups** (primary) and over tasks (secondary), the anchors'
weighted τ's (scipy's default and Model Spider's), paired regret differences of the nested
meta-learner against each rival, per-group regrets, and the same two headline selectors under
plain leave-one-group-out for comparison. Nothing is trained but meta-learners.

    OMP_NUM_THREADS=1 python benchmarks/model_selection_groups.py

Writes benchmarks/results/model_selection_groups.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from model_selection import finite, load_meta_csv  # noqa: E402

from fewshot.io import write_json  # noqa: E402
from fewshot.select.comparison import default_predictors, held_out, leave_one_group_out, paired_differences  # noqa: E402
from fewshot.select.evaluation import evaluation_table  # noqa: E402
from fewshot.select.folds import RELATED_GROUPS, relation  # noqa: E402
from fewshot.select.metalearner import MetaLearner  # noqa: E402
from fewshot.select.nested import NestedChoice, meta_learner_variants  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NESTED = "meta-learner (nested choice)"


def fmt(d: dict, digits: int = 2) -> str:
    if d.get("mean") is None or d["mean"] != d["mean"]:
        return "-"
    return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def per_group_regret(held) -> dict[str, float]:
    regret = held.per_task()["top1_regret"]
    groups = np.array(held.groups, dtype=object)
    return {g: float(np.nanmean(regret[groups == g])) for g in sorted(set(held.groups))}


def evaluate(rows, args) -> dict:
    related = RELATED_GROUPS
    predictors = default_predictors(rows, args.seed)
    fitted: list[NestedChoice] = []  # each outer fold's nested choice, in fold (sorted group) order

    def nested() -> NestedChoice:
        fitted.append(NestedChoice(meta_learner_variants(args.seed), related, args.seed))
        return fitted[-1]

    predictors[NESTED] = nested
    held = held_out(rows, predictors, seed=args.seed, related=related)
    choices = {group: {"chosen": c.chosen_, "inner_regret": c.inner_regret_,
                       "inner_folds_respect_relations": c.inner_related_}
               for group, c in zip(sorted(set(held[NESTED].groups)), fitted)}
    reports = {unit: {name: h.report(unit, resamples=args.resamples, seed=args.seed) for name, h in held.items()}
               for unit in ("group", "task")}
    paired = {unit: paired_differences(held, NESTED, resamples=args.resamples, seed=args.seed, unit=unit)
              for unit in ("group", "task")}
    plain = {name: leave_one_group_out(rows, make) for name, make in
             (("best-on-average", predictors["best-on-average"]),
              ("meta-learner (ranking)", lambda: MetaLearner("ranking", seed=args.seed)))}
    true = held["oracle"].true
    ties = int(((true == true.max(1, keepdims=True)).sum(1) > 1).sum())
    return {"tasks": len(true), "models": true.shape[1], "groups": sorted(set(held["oracle"].groups)),
            "tasks_with_tied_best": ties, "report_by_group": reports["group"], "report_by_task": reports["task"],
            "paired_by_group": paired["group"], "paired_by_task": paired["task"],
            "per_group_regret": {name: per_group_regret(h) for name, h in held.items()},
            "plain_logo_per_group_regret": {name: per_group_regret(h) for name, h in plain.items()},
            "plain_logo_regret": {name: float(np.nanmean(h.per_task()["top1_regret"])) for name, h in plain.items()},
            "nested_choices": choices}


def markdown(result: dict, target: str, resamples: int) -> list[str]:
    lines = [f"### Ground truth: query accuracy after {target}", "",
             f"{result['tasks']} tasks × {result['models']} models; {result['tasks_with_tied_best']} tasks have "
             f"several truly best models. Related groups held out together. 95 % intervals resample the "
             f"{len(result['groups'])} **groups** ({resamples} resamples):", ""]
    lines += evaluation_table(result["report_by_group"]) + ["", "Secondary view, intervals over tasks:", ""]
    lines += evaluation_table(result["report_by_task"]) + [""]
    lines += [f"Paired differences ({NESTED} minus the other; regret below zero = better), intervals over "
              f"groups | over tasks:", "", "| other | regret, by group | regret, by task | Kendall τ, by group |",
              "|---|---|---|---|"]
    for name, d in result["paired_by_group"].items():
        if name != "oracle":
            t = result["paired_by_task"][name]
            lines.append(f"| {name} | {fmt(d['top1_regret'])} | {fmt(t['top1_regret'])} | {fmt(d['kendall_tau'])} |")
    groups = result["groups"]
    lines += ["", "Mean top-1 regret (points) per held-out group:", "",
              "| selector | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for name in ("best-on-average", "best-on-average in domain", "meta-learner (ranking)", NESTED, "score.logme",
                 "score.nleep", "score.parc"):
        if name in result["per_group_regret"]:
            r = result["per_group_regret"][name]
            lines.append(f"| {name} | " + " | ".join(f"{r[g]:.2f}" for g in groups) + " |")
    for name, r in result["plain_logo_per_group_regret"].items():
        lines.append(f"| {name}, plain leave-one-group-out (related groups in training) | "
                     + " | ".join(f"{r[g]:.2f}" for g in groups) + " |")
    lines += ["", "Nested choice per held-out group (variant chosen on the training groups only): "
              + "; ".join(f"{g}: {c['chosen']}" + ("" if c["inner_folds_respect_relations"] else
                                                    " (inner folds could not respect the relations)")
                          for g, c in result["nested_choices"].items()), ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta", default=str(RESULTS / "model_selection_meta.csv.gz"))
    parser.add_argument("--targets", nargs="+", default=["linear-probe", "finetune"],
                        choices=["linear-probe", "finetune"])
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--limit", type=int, default=None,
                        help="keep the first N tasks of each group (a quick check of the script, not a result)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start, cpu0 = time.perf_counter(), time.process_time()
    evaluations = {}
    for target in args.targets:
        rows = load_meta_csv(Path(args.meta), target)
        if args.limit:
            kept = {}
            for r in rows:
                kept.setdefault(r["group"], [])
                if r["task"] not in kept[r["group"]] and len(kept[r["group"]]) < args.limit:
                    kept[r["group"]].append(r["task"])
            rows = [r for r in rows if r["task"] in kept[r["group"]]]
        evaluations[target] = evaluate(rows, args)
        print(f"{target}: done after {(time.process_time() - cpu0) / 60:.1f} CPU-min", flush=True)
        write(evaluations, args, start, cpu0)  # after each ground truth: an interrupted run keeps what is done


def write(evaluations: dict, args, start: float, cpu0: float) -> None:
    cpu = time.process_time() - cpu0
    load = os.getloadavg()
    out = {"benchmark": "model_selection_groups", "command": " ".join(["python", *sys.argv]),
           "meta_dataset": Path(args.meta).name, "related_groups": {g: sorted(o) for g, o in
                                                                     relation(RELATED_GROUPS).items()},
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "torch_threads": 1, "load_average_at_end": load},
           "cpu_seconds": cpu, "wall_seconds": time.perf_counter() - start, "evaluations": evaluations}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / "model_selection_groups.json", finite(out))
    lines = [f"Model selection with groups as the unit, on the committed meta-dataset ({out['meta_dataset']}). "
             f"`{out['command']}`: {cpu / 60:.1f} CPU-minutes, one thread, load average {load[0]:.1f} on "
             f"{os.cpu_count()} cores at the end.", ""]
    for target, result in evaluations.items():
        lines += markdown(result, target, args.resamples)
    (results / "model_selection_groups.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

if __name__ == "__main__":
    main()

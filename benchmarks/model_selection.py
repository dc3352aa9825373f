"""Meta-learned model selection on held-out groups: the ranking meta-learner against every baseline,
with paired regret differences.

1. Builds the diverse zoo (``fewshot zoo build``, preset ``default``: 13 models, 12 of
   them trained for ``--cpu-minutes`` each by the one trainer, and a random control;
   ``--skip`` leaves some out to fit the CPU budget).
2. Builds the meta-dataset (``fewshot select build``, one process): ``--tasks`` tasks from
   held-out classes in six groups (Omniglot evaluation alphabets in three script groups
   and their rotated characters, upright digits 5-9, rotated digits 5-9) × the zoo's
   models: meta-features,
   transferability scores, k-NN signals and the query accuracy after a linear probe and
   after fine-tuning (``--finetune-steps`` steps).
3. Judges every selector leave-one-group-out (no task of a test group in training):
   random, best-on-average, best-on-average within the task's input domain, the biggest
   model, every single score and k-NN signal, the ranking and regression meta-learners,
   the meta-learner without scores, the oracle: top-1 regret, relative top-1, best in
   top-3, Kendall τ and weighted τ with 95 % bootstrap intervals over tasks; and, per task,
   the **paired difference** of the ranking meta-learner's regret (and τ) minus each
   other selector's, with its bootstrap interval; for both ground truths.
4. Cost: CPU seconds per task to select against fine-tuning every model.
5. Writes the meta-dataset itself as a compact CSV (gzip) beside the results, so anyone
   can recompute every number (``load_meta_csv`` reads it back as the meta-learner's rows).

    OMP_NUM_THREADS=1 FEWSHOT_DATA=../shared/data nice -n 10 python benchmarks/model_selection.py

Writes benchmarks/results/model_selection_fixed20.{json,md} and model_selection_meta_fixed20.csv.gz
(the previous meta-dataset, on the fixed 20-step fine-tune; ``model_selection_sweep.py`` now writes
``model_selection.{json,md}`` and ``model_selection_meta.csv.gz`` on the sweep ground truth). The
zoo and the meta-dataset are kept (``--zoo``) and both builds resume, so an interrupted
run continues where it stopped; ``--analyse-only`` re-reads what is there without
building. ``--quick`` checks the script end to end in a few minutes (the 'tiny' zoo,
24 digit tasks, under /tmp/model-selection-check).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from fewshot.io import atomic_path, write_json
from fewshot.select.evaluation import evaluation_table
from fewshot.select.comparison import default_predictors, held_out, paired_differences
from fewshot.select.metastore import MetaStore, complete, selection_costs
from fewshot.select.pool import build_meta_dataset
from fewshot.select.recipes import PRESETS, build_zoo
from fewshot.select.tasks import sample_tasks

RESULTS = Path(__file__).parent / "results"
SELECTOR = "meta-learner (ranking)"


def cpu_now() -> float:
    """CPU seconds of this process and of its finished children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def write_meta_csv(path: Path, records: list[dict], extra: tuple[str, ...] = (), values=None) -> None:
    """The meta-dataset as one gzip CSV row per (task, model): ids, ground truths, costs, ``extra``
    columns (``values(record)`` gives theirs), every feature."""
    columns = sorted({k for r in records for k in r["features"]})
    head = ["task", "group", "model", "accuracy_finetune", "accuracy_linear_probe", "cpu_features", "cpu_scores",
            "cpu_linear_probe", "cpu_finetune"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(head + list(extra) + columns)
    for r in records:
        row = [r["task"], r["grp"], r["model"], r["accuracy_ft"], r["accuracy_lp"], r["cpu_features"],
               r["cpu_scores"], r["cpu_lp"], r["cpu_ft"]] + (list(values(r)) if extra else [])
        writer.writerow(row + ["" if r["features"].get(c) is None else repr(float(r["features"][c]))
                               for c in columns])
    with atomic_path(path) as tmp:
        with gzip.GzipFile(tmp, "wb", mtime=0) as f:
            f.write(text.getvalue().encode())


def load_meta_csv(path: Path, target: str = "finetune") -> list[dict]:
    """The rows :func:`fewshot.select.comparison.compare` takes, read back from :func:`write_meta_csv`'s file."""
    key = "accuracy_finetune" if target == "finetune" else "accuracy_linear_probe"
    with gzip.open(path, "rt") as f:
        rows = []
        for r in csv.DictReader(f):
            features = {k: (float(v) if v != "" else None) for k, v in r.items()
                        if k.startswith(("task.", "model.", "score."))}
            rows.append({"task": r["task"], "group": r["group"], "model": r["model"], **features,
                         "accuracy": float(r[key])})
    return rows


def finite(value):
    """``value`` with every NaN or infinity replaced by None (strict JSON)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def verdicts(report: dict, paired: dict) -> dict:
    """Is the ranking meta-learner significantly better than each rival (paired regret difference
    below zero with its interval excluding zero; paired τ difference above zero likewise)?"""
    rivals = [n for n in report if n not in (SELECTOR, "oracle", "random") and not n.startswith("meta-learner")]
    out = {}
    for metric, better in (("top1_regret", lambda d: d["high"] < 0), ("kendall_tau", lambda d: d["low"] > 0)):
        beaten = [r for r in rivals if better(paired[r][metric])]
        out[metric] = {"beats_all": len(beaten) == len(rivals), "beaten": beaten,
                       "not_beaten": [r for r in rivals if r not in beaten]}
    return out


def _fmt(d: dict, digits: int = 2) -> str:
    if d.get("mean") is None or d["mean"] != d["mean"]:
        return "-"
    return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def paired_table(paired: dict) -> list[str]:
    lines = [f"| {SELECTOR} minus ... | regret difference (points) | Kendall τ difference | tasks |", "|---|---|---|---|"]
    for name, d in paired.items():
        if name == "oracle":
            continue
        lines.append(f"| {name} | {_fmt(d['top1_regret'])} | {_fmt(d['kendall_tau'])} | {d['top1_regret']['tasks']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="runs/bench/model_selection/zoo", help="zoo folder (kept, resumable)")
    parser.add_argument("--cpu-minutes", type=float, default=0.75, help="CPU budget of each zoo model")
    parser.add_argument("--tasks", type=int, default=300, help="tasks of the meta-dataset")
    parser.add_argument("--finetune-steps", type=int, default=20, help="fine-tuning steps of the ground truth")
    parser.add_argument("--skip", nargs="*", default=["resnet12-m-protonet-asian"],
                        help="models of the preset left out of the zoo and the meta-dataset (CPU budget)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--analyse-only", action="store_true", help="use the rows already built; build nothing")
    parser.add_argument("--quick", action="store_true", help="tiny zoo and tasks: check the script end to end")
    args = parser.parse_args()
    preset, sources, max_steps = "default", ["digits", "omniglot"], None
    if args.quick:
        preset, sources, max_steps, args.skip = "tiny", ["digits"], 30, []
        args.tasks, args.resamples, args.finetune_steps = 24, 200, 5
        args.zoo = args.zoo if args.zoo != "runs/bench/model_selection/zoo" else "/tmp/model-selection-check/zoo"
        args.results = args.results if args.results != str(RESULTS) else "/tmp/model-selection-check"
    torch.set_num_threads(1)
    finetune = {"steps": args.finetune_steps}
    results_dir, zoo_dir = Path(args.results), Path(args.zoo)
    results_dir.mkdir(parents=True, exist_ok=True)
    start, cpu0 = time.perf_counter(), cpu_now()

    # -- 1. the zoo ----------------------------------------------------------------------------
    only = [spec.name for spec in PRESETS[preset] if spec.name not in set(args.skip)]
    zoo = build_zoo(zoo_dir, preset, cpu_minutes=args.cpu_minutes, max_steps=max_steps, only=only,
                    runs=zoo_dir.parent / "runs", progress=not args.analyse_only)
    cpu_zoo = cpu_now() - cpu0
    names = [n for n in zoo.names() if n not in set(args.skip)]
    models = []
    for entry in zoo.entries():
        meta = zoo.metadata(entry["name"])
        models.append({**entry, "in_meta_dataset": entry["name"] in names,
                       "steps": (meta.get("source") or {}).get("steps"),
                       "train_cpu_seconds": meta.get("train_cpu_seconds")})

    # -- 2. the meta-dataset (one process: the machine is shared) --------------------------------
    path = zoo.root / f"meta-{args.finetune_steps}steps.sqlite"
    if not args.analyse_only:
        build_meta_dataset(zoo, args.tasks, path=path, sources=sources, workers=1, finetune=finetune, models=names)
    cpu_meta = cpu_now() - cpu0 - cpu_zoo
    store = MetaStore(path)
    specs = sample_tasks(args.tasks, sources)
    wanted = {t.task for t in specs}
    records = [r for r in store.records(names) if r["task"] in wanted]
    done = {r["task"] for r in complete(records, names)}
    records = [r for r in records if r["task"] in done]
    groups: dict[str, int] = {}
    for t in specs:
        if t.task in done:
            groups[t.group] = groups.get(t.group, 0) + 1
    write_meta_csv(results_dir / "model_selection_meta_fixed20.csv.gz", records)

    # -- 3, 4. selectors, paired differences, costs ---------------------------------------------------
    evaluations = {}
    for target in ("finetune", "linear-probe"):
        rows = [r for r in complete(store.rows(target, names), names) if r["task"] in done]
        held = held_out(rows, default_predictors(rows))
        report = {name: h.report(resamples=args.resamples) for name, h in held.items()}
        paired = paired_differences(held, SELECTOR, resamples=args.resamples)
        costs = selection_costs(records)
        evaluations[target] = {"tasks": len(done), "models": len(names), "groups": sorted(groups),
                               "report": report, "paired": paired, "verdicts": verdicts(report, paired),
                               "cost": costs}
        print(f"\n{target}: {len(done)} tasks × {len(names)} models\n" + "\n".join(evaluation_table(report))
              + "\n\n" + "\n".join(paired_table(paired)), flush=True)
    cpu_total = cpu_now() - cpu0

    zoo_train = sum(float(m.get("train_cpu_seconds") or 0.0) for m in models)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch_threads": 1,
               "torch": torch.__version__, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "shared": "2 cores shared with other benchmarks and tests; CPU seconds are this process's own"}
    out = {"benchmark": "model_selection", "command": " ".join(["python", *sys.argv]), "machine": machine,
           "wall_seconds": time.perf_counter() - start,
           "cpu_seconds": {"zoo": cpu_zoo, "meta_dataset": cpu_meta,
                           "comparisons": cpu_total - cpu_zoo - cpu_meta, "total": cpu_total},
           "zoo": {"folder": str(zoo.root), "preset": preset, "cpu_minutes_per_model": args.cpu_minutes,
                   "train_cpu_seconds_total": zoo_train, "models": models},
           "meta_dataset": {"file": "model_selection_meta_fixed20.csv.gz", "tasks_requested": args.tasks,
                            "tasks_complete": len(done), "tasks_per_group": groups, "models": names,
                            "sources": sources, "finetune": finetune, "rows": len(records),
                            "build_cpu_seconds_total": sum(r["cpu_features"] + r["cpu_scores"] + r["cpu_lp"]
                                                           + r["cpu_ft"] for r in records)},
           "evaluations": evaluations}
    write_json(results_dir / "model_selection_fixed20.json", finite(out))

    per_group = ", ".join(f"{g} {n}" for g, n in sorted(groups.items()))
    lines = [f"Model selection on held-out groups: {len(done)} tasks ({per_group}) × {len(names)} zoo models, "
             f"leave-one-group-out; mean over tasks [95% bootstrap CI, {args.resamples} resamples]; fine-tuning "
             f"ground truth: {args.finetune_steps} steps. `{out['command']}`", ""]
    for target, result in evaluations.items():
        c, v = result["cost"], result["verdicts"]
        lines += [f"### Ground truth: query accuracy after {target}", ""] + evaluation_table(result["report"]) + [""]
        lines += [f"Paired differences, per task ({SELECTOR} minus the other; below zero = lower regret; 95% "
                  f"bootstrap CI):", ""] + paired_table(result["paired"]) + [""]
        for metric, label in (("top1_regret", "significantly lower regret"), ("kendall_tau", "significantly higher τ")):
            m = v[metric]
            lines.append(f"- {label} than every baseline and single score: "
                         + ("yes" if m["beats_all"] else f"no (not against: {', '.join(m['not_beaten'])})"))
        lines.append(f"- cost per task: selecting {c['select_cpu_seconds']:.2f} CPU-s (features and scores of every "
                     f"model) against {c['finetune_all_cpu_seconds']:.1f} CPU-s to fine-tune every model "
                     f"(**{c['finetune_over_select']:.0f}×**) and {c['probe_all_cpu_seconds']:.1f} CPU-s to probe "
                     f"every model")
        lines.append("")
    lines += ["Zoo: " + "; ".join(f"{m['name']} ({m['parameters']:,} parameters, "
                                  f"{m['steps'] if m['steps'] is not None else 0} steps"
                                  f"{'' if m['in_meta_dataset'] else ', not in the meta-dataset'})" for m in models)
              + ".", "",
              f"CPU time: training the zoo took {zoo_train / 60:.1f} CPU-minutes (the models' own "
              f"train_cpu_seconds), the meta-dataset's rows {out['meta_dataset']['build_cpu_seconds_total'] / 60:.1f} "
              f"CPU-minutes (their recorded costs; one process, niced, on 2 cores shared with other benchmarks and tests), "
              f"and this run {'(analysis only) ' if args.analyse_only else ''}{cpu_total / 60:.1f} CPU-minutes "
              f"({out['wall_seconds'] / 60:.0f} min wall)."]
    (results_dir / "model_selection_fixed20.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()

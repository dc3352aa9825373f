"""Accuracy against CPU-minutes of training, for every method, on identical seeded suites
(issue 32, item 1): which method to use at which budget.

Each variant is one run of the one trainer (:mod:`fewshot.train`), Conv-4, Adam 1e-3, no
validation, no learning-rate decay; the run is paused at every mark
(``Trainer.run(pause_at_cpu_minutes=...)``: checkpointed, not validated), its folder copied
to ``RUNS/DATASET/VARIANT/cpu-MARK``, and resumed for the next: the copies are the
checkpoints of one uninterrupted run at those CPU-time marks (so a later call with more
marks continues the same runs). The weights at a mark are those ``fewshot train ...
--val-split none --cpu-minutes MARK`` ships. Every copy is then evaluated with its
last weights, in fp32, on the same episodes of each suite, and paired against ProtoNet's
copy at the same mark (the difference on the same episodes, with its 95 % CI).

Variants (``--variants``; training episodes 5-way 1-shot 15-query unless said):

* ``protonet``, ``maml`` (second order, the method's defaults), ``relationnet``,
  ``matchingnet``: meta-trained;
* ``baseline``: supervised pre-training over all training classes (Chen et al. 2019,
  arXiv:1904.04232), batches of 64 classes x 2 images (20 x 4 on digits), tested by its
  fine-tuned linear head;
* ``protonet-bf16``, ``relationnet-bf16``: trained under bf16 autocast (tested in fp32);
* ``protonet-60w``: ProtoNet on 60-way 1-shot 5-query episodes (Snell et al. 2017's shape);
  ``protonet-60w-bf16``: the same under bf16 autocast;
* ``pretrain+protonet``: ``baseline``'s weights at ``--pretrain-minutes`` as ProtoNet's
  initial backbone, then ProtoNet episodes (Chen et al. 2019; P>M>F, Hu et al. 2022,
  arXiv:2204.07305, pretrain -> meta-train): at mark M it has spent the pre-training minutes
  plus M minus them episodically, so it is compared at the same total budget.

Suites (``make_sampler(dataset, "test", way, 1, 15, seed=0)``, the first ``--episodes``
episodes each): Omniglot (Vinyals split, 28 px, rotations as classes) 5-way and 20-way
1-shot, and 20-way 1-shot within one alphabet of the Vinyals test split
(``within_groups=True``: the test split is 13 whole evaluation alphabets; a rotated
character is a class of its alphabet); digits (the library's digits recipe: 8x8, rotations
as training classes) 5-way 1-shot on the upright test digits. A method that cannot test at
another way than it trained (MAML's head) is marked n/a there.

    OMP_NUM_THREADS=1 FEWSHOT_DATA=/work/shared/data PYTHONPATH=src \\
        python benchmarks/budget_curves.py --marks 0.5 1 2 4 --digits-marks 0.25 0.5 1 --jobs 2

Runs go under ``--runs`` and are reused (a finished mark is not trained again; delete the
folder to retrain). ``--jobs N`` trains N runs at once, one thread each: CPU time is each
run's own. Writes ``budget_curves.{json,md}`` and ``NAME-SUITE.png`` (NAME: ``--name``) under ``--results``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from fewshot.config import RECIPES, TrainConfig
from fewshot.data import load_dataset
from fewshot.data.tasks import make_sampler
from fewshot.errors import ConfigError
from fewshot.evaluate import evaluate
from fewshot.io import read_json, write_json
from fewshot.metrics import confidence_interval
from fewshot.plots import Series, accuracy_against
from fewshot.runs import load_run
from fewshot.train import Trainer

RESULTS = Path(__file__).parent / "results"
QUERY = 15
REFERENCE = "protonet"
#: variant -> (method, overrides of the training config). "pretrain+protonet" starts from "baseline".
VARIANTS = {
    "protonet": ("protonet", {}),
    "maml": ("maml", {}),
    "relationnet": ("relationnet", {}),
    "matchingnet": ("matchingnet", {}),
    "baseline": ("baseline", {}),
    "protonet-bf16": ("protonet", {"precision": "bf16"}),
    "protonet-60w": ("protonet", {"train_way": 60, "train_query": 5}),
    "protonet-60w-bf16": ("protonet", {"train_way": 60, "train_query": 5, "precision": "bf16"}),
    "relationnet-bf16": ("relationnet", {"precision": "bf16"}),
    "pretrain+protonet": ("protonet", {}),
}
PRETRAINED = {"pretrain+protonet": "baseline"}
#: suite name -> (dataset, way, within one alphabet)
SUITES = {
    "omniglot-5w1s": ("omniglot", 5, False),
    "omniglot-20w1s": ("omniglot", 20, False),
    "omniglot-20w1s-within-alphabet": ("omniglot", 20, True),
    "digits-5w1s": ("digits", 5, False),
}
DATA_OPTIONS = {"omniglot": {"split_scheme": "vinyals"}, "digits": RECIPES["digits"]["dataset_options"]}


def data_of(dataset: str):
    return load_dataset(dataset, **DATA_OPTIONS[dataset])


def config_for(variant: str, dataset: str) -> TrainConfig:
    """The training run of one variant: no validation (last weights), stopped by its pauses."""
    method, overrides = VARIANTS[variant]
    shape = {"train_way": 5, "train_shot": 1, "train_query": QUERY}
    if method == "baseline":  # class-balanced minibatches over the training classes
        shape = {"train_way": 64, "train_shot": 1, "train_query": 1} if dataset == "omniglot" else \
            {"train_way": 20, "train_shot": 2, "train_query": 2}
    return TrainConfig(method=method, dataset=dataset, dataset_options=DATA_OPTIONS[dataset], way=5, shot=1,
                       query=QUERY, val_split=None, episodes=10**6, lr=1e-3, checkpoint_every=500, seed=0,
                       **{**shape, **overrides})


def snapshot(runs: Path, dataset: str, variant: str, mark: float) -> Path:
    return runs / dataset / variant / f"cpu-{mark:g}"


def initial_backbone(variant: str, dataset: str, runs: Path, pretrain_minutes: float):
    """A fresh copy of the pre-trained backbone a variant starts from (None: a new one)."""
    if variant not in PRETRAINED:
        return None
    source = snapshot(runs, dataset, PRETRAINED[variant], pretrain_minutes)
    if not (source / "state.json").exists():
        raise ConfigError(f"{variant} starts from {source}, which is not trained: include "
                          f"'{PRETRAINED[variant]}' with a mark at --pretrain-minutes {pretrain_minutes:g}")
    _, model, _ = load_run(source, "last")
    return copy.deepcopy(model.backbone)


def run_variant(job: tuple) -> tuple[dict, list[dict]]:
    """Train one variant through its marks and evaluate its checkpoints on the dataset's
    suites (in a worker process when --jobs > 1): its training record and result rows."""
    dataset, variant, marks, runs, pretrain_minutes, suites, episodes = job
    torch.set_num_threads(1)
    start = time.process_time()
    trained = train_variant(dataset, variant, marks, Path(runs), pretrain_minutes)
    trained["worker_train_cpu_seconds"] = time.process_time() - start
    rows = evaluate_variant(trained, suites, episodes, Path(runs), pretrain_minutes)
    return trained, rows


def train_variant(dataset: str, variant: str, marks: list[float], runs: Path, pretrain_minutes: float) -> dict:
    """Train one variant through its marks; each mark's checkpoint is a copy of the run."""
    offset = pretrain_minutes if variant in PRETRAINED else 0.0
    own = [m - offset for m in marks if m > offset]  # episodic minutes at each total mark
    if not own:
        return {"dataset": dataset, "variant": variant, "marks": []}
    config = config_for(variant, dataset)
    run_dir = runs / dataset / variant / "run"
    data, done, wall = None, [], time.perf_counter()  # loaded only if a mark needs training
    pretrain_cpu = read_json(snapshot(runs, dataset, PRETRAINED[variant], pretrain_minutes) / "state.json")[
        "cpu_seconds"] if offset else 0.0
    for total, minutes in zip([m for m in marks if m > offset], own):
        copy_dir = snapshot(runs, dataset, variant, total)
        if not (copy_dir / "state.json").exists():
            data = data if data is not None else data_of(dataset)
            Trainer(config, run_dir, dataset=data, backbone=initial_backbone(variant, dataset, runs, pretrain_minutes),
                    runs=runs).run(resume=(run_dir / "state.json").exists(), progress=False, record=False,
                                   pause_at_cpu_minutes=minutes)
            partial = copy_dir.with_name(copy_dir.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)  # our own leftover of a killed copy
            shutil.copytree(run_dir, partial)
            partial.rename(copy_dir)
        state = read_json(copy_dir / "state.json")
        done.append({"mark": total, "steps": state["step"], "cpu_seconds": state["cpu_seconds"] + pretrain_cpu,
                     "pretrain_cpu_seconds": pretrain_cpu, "run_dir": str(copy_dir)})
        print(f"{dataset}/{variant}: mark {total:g} CPU-min, step {state['step']}, "
              f"{(state['cpu_seconds'] + pretrain_cpu) / 60:.2f} CPU-min", flush=True)
    return {"dataset": dataset, "variant": variant, "marks": done, "config": config.to_dict(),
            "wall_seconds": time.perf_counter() - wall}


def run_all(jobs: list[tuple], workers: int) -> list[tuple[dict, list[dict]]]:
    """Every job, pre-trained sources before the variants that start from them."""
    first = [j for j in jobs if j[1] not in PRETRAINED]
    then = [j for j in jobs if j[1] in PRETRAINED]
    out = []
    for phase in (first, then):
        if workers <= 1:
            out += [run_variant(j) for j in phase]
        elif phase:
            with ProcessPoolExecutor(min(workers, len(phase)), mp_context=get_context("spawn")) as pool:
                out += list(pool.map(run_variant, phase))
    return out


def evaluate_variant(trained: dict, suites: list[tuple[str, int]], episodes: dict[str, int], runs: Path,
                     pretrain_minutes: float) -> list[dict]:
    """Rows of one variant's checkpoints on ``suites`` (name, query), the first ``episodes[name]`` of each."""
    rows, dataset = [], trained["dataset"]
    if not trained["marks"]:
        return rows
    data, samplers = None, {}  # loaded only if a checkpoint needs evaluating
    for suite, query in suites:
        _, way, within = SUITES[suite]
        for m in trained["marks"]:
            saved = runs / dataset / trained["variant"] / "eval" / f"cpu-{m['mark']:g}-{suite}-q{query}-e{episodes[suite]}.json"
            if saved.exists():  # this checkpoint on this suite, evaluated by an earlier call
                rows.append({**read_json(saved), "reused": True})
                continue
            saved.parent.mkdir(exist_ok=True)
            start = time.process_time()
            data = data if data is not None else data_of(dataset)
            if suite not in samplers:
                samplers[suite] = make_sampler(dataset, data, "test", way, 1, query, seed=0, within_groups=within)
            sampler = samplers[suite]
            backbone = initial_backbone(trained["variant"], dataset, runs, pretrain_minutes)
            _, model, _ = load_run(m["run_dir"], "last", backbone=backbone)
            row = {"suite": suite, "dataset": dataset, "way": way, "query": query, "within_alphabet": within,
                   "variant": trained["variant"], "mark": m["mark"], "train_cpu_seconds": m["cpu_seconds"],
                   "steps": m["steps"], "episodes": episodes[suite]}
            try:
                scores = evaluate(model, sampler, episodes[suite], progress=False, device="cpu").scores
            except ConfigError as e:  # e.g. MAML's head tested at another way than it trained
                rows.append({**row, "accuracy": None, "not_applicable": str(e)})
                write_json(saved, rows[-1])
                continue
            seconds = time.process_time() - start
            acc, ci = confidence_interval(scores)
            rows.append({**row, "accuracy": acc, "ci95": ci, "eval_cpu_seconds": seconds,
                         "per_episode": [round(float(a), 3) for a in scores]})
            write_json(saved, rows[-1])
            print(f"{suite} {trained['variant']:18s} @ {m['mark']:g} CPU-min: {acc:5.1f} ± {ci:.1f}", flush=True)
    return rows


def paired_against_reference(rows: list[dict]) -> None:
    """Each row's paired difference against ProtoNet at the same suite and mark."""
    ref = {(r["suite"], r["mark"]): r for r in rows if r["variant"] == REFERENCE and r["accuracy"] is not None}
    for r in rows:
        other = ref.get((r["suite"], r["mark"]))
        if r["accuracy"] is None or other is None or r is other:
            continue
        r["vs_protonet"], r["vs_ci95"] = confidence_interval(np.subtract(r["per_episode"], other["per_episode"]))


def best_per_budget(rows: list[dict]) -> list[dict]:
    """The most accurate variant at each suite and mark, and its paired lead over the runner-up."""
    best = []
    for suite, mark in sorted({(r["suite"], r["mark"]) for r in rows}, key=lambda k: (list(SUITES).index(k[0]), k[1])):
        ranked = sorted((r for r in rows if (r["suite"], r["mark"]) == (suite, mark) and r["accuracy"] is not None),
                        key=lambda r: -r["accuracy"])
        if not ranked:
            continue
        top = ranked[0]
        entry = {"suite": suite, "mark": mark, "variant": top["variant"], "accuracy": top["accuracy"],
                 "ci95": top["ci95"], "candidates": len(ranked)}
        if len(ranked) > 1:
            lead, lead_ci = confidence_interval(np.subtract(top["per_episode"], ranked[1]["per_episode"]))
            entry.update(runner_up=ranked[1]["variant"], lead=lead, lead_ci95=lead_ci,
                         significant=bool(lead - lead_ci > 0))
        best.append(entry)
    return best


def figures(rows: list[dict], results: Path, stem: str) -> list[str]:
    paths = []
    for suite in dict.fromkeys(r["suite"] for r in rows):
        series = []
        for i, variant in enumerate(v for v in VARIANTS if any(r["variant"] == v and r["suite"] == suite
                                                                   and r["accuracy"] is not None for r in rows)):
            mine = [r for r in rows if r["suite"] == suite and r["variant"] == variant and r["accuracy"] is not None]
            series.append(Series(variant, [r["train_cpu_seconds"] / 60 for r in mine], [r["accuracy"] for r in mine],
                                 [r["ci95"] for r in mine], color=f"C{i % 10}"))
        if series:
            path = results / f"{stem}-{suite}.png"
            accuracy_against(series, path, xlabel="training CPU-minutes (one thread)",
                             title=f"{suite}: accuracy against training CPU time", ticks_at_values=False)
            paths.append(str(path))
    return paths


def best_figure(best: list[dict], results: Path, stem: str) -> str | None:
    """One figure: the best accuracy at each mark, a line per suite, its label naming the
    winner at each mark (the method to use at that budget)."""
    series = []
    for i, suite in enumerate(dict.fromkeys(b["suite"] for b in best)):
        mine = [b for b in best if b["suite"] == suite]
        runs = []  # consecutive marks with the same winner, as [variant, first mark, last mark]
        for b in mine:
            if runs and runs[-1][0] == b["variant"]:
                runs[-1][2] = b["mark"]
            else:
                runs.append([b["variant"], b["mark"], b["mark"]])
        winners = ", ".join(f"{v} {a:g}" + (f"-{z:g}" if z != a else "") for v, a, z in runs)
        series.append(Series(f"{suite} ({winners})", [b["mark"] for b in mine], [b["accuracy"] for b in mine],
                             [b["ci95"] for b in mine], color=f"C{i % 10}"))
    if not series:
        return None
    path = results / f"{stem}-best.png"
    accuracy_against(series, path, xlabel="training CPU-minutes (one thread)",
                     title="best method per budget (method, CPU-minutes)", ticks_at_values=False)
    return str(path)


def cell(r: dict) -> str:
    if r is None:
        return "—"
    if r["accuracy"] is None:
        return "n/a"
    out = f"{r['accuracy']:.1f} ± {r['ci95']:.1f}"
    if "vs_protonet" in r:
        d, ci = r["vs_protonet"], r["vs_ci95"]
        mark = "" if abs(d) <= ci else (" ▲" if d > 0 else " ▼")
        out += f" ({d:+.1f} ± {ci:.1f}{mark})"
    return out


def markdown(out: dict) -> str:
    m, s = out["machine"], out["settings"]
    lines = ["# Accuracy against training CPU-minutes (issue 32)", "",
             f"Command: `OMP_NUM_THREADS=1 FEWSHOT_DATA=... PYTHONPATH=src {out['command']}`  ",
             f"This call: {out['cpu_seconds'] / 60:.1f} CPU-minutes, its workers' included "
             f"({', '.join(f'{k} {v / 60:.1f}' for k, v in out['cpu_seconds_by_stage'].items())}); the runs' "
             f"training in all: {out['training_cpu_seconds'] / 60:.1f} CPU-minutes (parts trained and evaluations "
             "made by earlier calls are reused, not repeated); "
             f"{out['wall_seconds'] / 60:.1f} wall-minutes; one torch thread per run on a {m['cores']}-core machine "
             f"shared with other jobs (load average {m['loadavg_start'][0]:.1f} at the start, "
             f"{m['loadavg_end'][0]:.1f} at the end).", "",
             f"Each cell: accuracy % ± 95 % CI on the first {s['episodes']} episodes of each 5-way suite and "
             f"the first {s.get('wide_episodes') or s['episodes']} of each 20-way suite "
             f"(`make_sampler(dataset, 'test', way, 1, {s.get('query', QUERY)}, seed=0)`), last weights of the run's checkpoint at "
             "that CPU-time mark, evaluated in fp32; in brackets the paired difference against ProtoNet at "
             "the same mark on the same episodes ± 95 % CI (▲/▼: significant). The checkpoint is the first "
             "step past the mark: the real CPU-minutes of each are in the JSON (`train_cpu_seconds`).", ""]
    rows = out["rows"]
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    for suite in dict.fromkeys(r["suite"] for r in rows):
        marks = sorted({r["mark"] for r in rows if r["suite"] == suite})
        by = {(r["variant"], r["mark"]): r for r in rows if r["suite"] == suite}
        lines += [f"## {suite}", "", "| variant | " + " | ".join(f"{mk:g} CPU-min" for mk in marks) + " |",
                  "|---|" + "---|" * len(marks)]
        for v in variants:
            if any((v, mk) in by for mk in marks):
                lines.append(f"| {v} | " + " | ".join(cell(by.get((v, mk))) for mk in marks) + " |")
        steps = "; ".join(f"{v} " + "/".join(str(by[v, mk]["steps"]) for mk in marks if (v, mk) in by)
                          for v in variants if any((v, mk) in by for mk in marks))
        lines += ["", f"Training steps at the marks: {steps}.", ""]
    lines += ["## Best variant per budget", "",
              "Most accurate at the mark; lead: its paired difference against the runner-up on the same "
              "episodes ± 95 % CI (not significant: the two are tied on this evidence).", "",
              "| suite | CPU-min | best | accuracy | runner-up | lead |", "|---|---|---|---|---|---|"]
    for b in out["best"]:
        lead = (f"{b['lead']:+.1f} ± {b['lead_ci95']:.1f}" + ("" if b["significant"] else " (tied)")
                if "lead" in b else "—")
        lines.append(f"| {b['suite']} | {b['mark']:g} | {b['variant']} | {b['accuracy']:.1f} ± {b['ci95']:.1f} | "
                     f"{b.get('runner_up', '—')} | {lead} |")
    lines += ["", "Figures: " + ", ".join(f"`{Path(f).name}`" for f in out.get("figures", []) if f)
              + " (the first per suite, every variant; the last, the best per budget)."]
    na = sorted({(r["variant"], r["suite"], r["not_applicable"]) for r in rows if r["accuracy"] is None})
    if na:
        lines += ["", "n/a: " + "; ".join(f"{v} on {s} ({why})" for v, s, why in na)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["protonet", "maml", "relationnet", "matchingnet", "baseline"],
                        choices=list(VARIANTS))
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
    parser.add_argument("--marks", nargs="+", type=float, default=[1, 3, 10, 30, 60],
                        help="CPU-minutes at which each Omniglot run is checkpointed and evaluated")
    parser.add_argument("--digits-marks", nargs="+", type=float, default=None, help="the same on digits "
                        "(default: --marks)")
    parser.add_argument("--cap", nargs="+", default=[], metavar="VARIANT=MINUTES",
                        help="train these variants only to the marks up to MINUTES (a pre-training source "
                        "keeps its mark at --pretrain-minutes)")
    parser.add_argument("--pretrain-minutes", type=float, default=None,
                        help="pre-training CPU-minutes of pretrain+protonet (default: the first mark)")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes per suite")
    parser.add_argument("--wide-episodes", type=int, default=None,
                        help="test episodes of the 20-way suites (default: --episodes)")
    parser.add_argument("--query", type=int, default=QUERY, help="test queries per class")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each")
    parser.add_argument("--runs", default="runs/bench/budget")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--name", default="budget_curves", help="file stem of the results")
    parser.add_argument("--report-only", action="store_true", help="rewrite the markdown from the existing JSON")
    args = parser.parse_args()
    results = Path(args.results)
    if args.report_only:
        out = read_json(results / f"{args.name}.json")
        out["figures"] = figures(out["rows"], results, args.name) + [best_figure(out["best"], results, args.name)]
        (results / f"{args.name}.md").write_text(markdown(out))
        return
    wide = args.wide_episodes or args.episodes
    if min(args.marks + (args.digits_marks or [])) <= 0 or min(args.episodes, wide) < 2 or min(args.jobs, args.query) < 1:
        parser.error("marks must be > 0, --episodes and --wide-episodes at least 2, --jobs and --query at least 1")
    episodes = {s: args.episodes if SUITES[s][1] <= 5 else wide for s in args.suites}
    try:
        cap = {v: float(m) for v, m in (c.split("=", 1) for c in args.cap)}
    except ValueError:
        parser.error(f"--cap takes VARIANT=MINUTES, got {args.cap}")
    if set(cap) - set(VARIANTS):
        parser.error(f"--cap names unknown variants {sorted(set(cap) - set(VARIANTS))}")
    torch.set_num_threads(1)
    cpu0, wall0, load_start = time.process_time(), time.perf_counter(), os.getloadavg()
    runs = Path(args.runs)
    results.mkdir(parents=True, exist_ok=True)
    marks = {"omniglot": sorted(args.marks), "digits": sorted(args.digits_marks or args.marks)}
    datasets = list(dict.fromkeys(SUITES[s][0] for s in args.suites))
    pretrain = {d: args.pretrain_minutes or marks[d][0] for d in datasets}
    jobs = []
    for d in datasets:
        for v in args.variants:
            if d == "digits" and VARIANTS[v][1].get("train_way", 0) > 20:
                continue  # digits has 20 training classes: no 60-way episodes
            own = {m for m in marks[d] if m <= cap.get(v, float("inf"))}
            if v in PRETRAINED or v in PRETRAINED.values():  # the pre-trained source's mark, from both sides
                own.add(pretrain[d])
            jobs.append((d, v, sorted(own),
                         str(runs), pretrain[d], [(s, args.query) for s in args.suites if SUITES[s][0] == d],
                         episodes))
            if v in PRETRAINED and PRETRAINED[v] not in args.variants:
                parser.error(f"{v} starts from {PRETRAINED[v]}: include it in --variants")
    done = run_all(jobs, args.jobs)
    trained = [t for t, _ in done]
    rows = [r for _, rs in done for r in rs]
    rows.sort(key=lambda r: (list(SUITES).index(r["suite"]), list(VARIANTS).index(r["variant"]), r["mark"]))
    paired_against_reference(rows)
    cpu = {"training (workers, this call)": sum(t["worker_train_cpu_seconds"] for t in trained),
           "evaluation (workers, this call)": sum(r.get("eval_cpu_seconds", 0.0) for r in rows if not r.get("reused"))}
    out = {"benchmark": "budget_curves", "command": " ".join(["python", *sys.argv]),
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "torch_threads": 1, "torch": torch.__version__, "loadavg_start": list(load_start),
                       "loadavg_end": list(os.getloadavg())},
           "settings": vars(args), "marks": marks, "pretrain_minutes": pretrain,
           "cpu_seconds": time.process_time() - cpu0 + sum(cpu.values()), "cpu_seconds_by_stage": cpu,
           "training_cpu_seconds": sum(m["cpu_seconds"] - m["pretrain_cpu_seconds"]
                                       for t in trained for m in t["marks"][-1:]),
           "wall_seconds": time.perf_counter() - wall0, "training": trained, "rows": rows,
           "best": best_per_budget(rows)}
    out["figures"] = figures(rows, results, args.name) + [best_figure(out["best"], results, args.name)]
    write_json(results / f"{args.name}.json", out)
    (results / f"{args.name}.md").write_text(markdown(out))
    print(f"wrote {results / (args.name + '.md')}", flush=True)


if __name__ == "__main__":
    main()

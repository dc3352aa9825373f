"""Train the meta-learner that ships with fewshot, from the committed meta-dataset.

Reads ``benchmarks/results/model_selection_meta.csv.gz`` (written by
``benchmarks/model_selection.py``), fits the ranking meta-learner on its portable features
(:func:`fewshot.select.shipped.portable_columns`) for every adaptation target, computes the
90 % interval for unseen models and task groups (related groups held out together), and
writes ``src/fewshot/select/shipped_selector.safetensors`` (trees as tensors, everything else
as header JSON; no pickle) plus ``benchmarks/results/select_shipped.{json,md}``.
Re-run it whenever the meta-dataset is rebuilt (``tests/test_select_shipped.py`` checks the
shipped file names the committed meta-dataset's SHA-256):

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/ship_selector.py

``--evaluate`` adds a leave-one-group-out comparison (related groups held out together,
fine-tuning target) of the shipped learner against the full-feature one and
best-on-average, with group-level intervals (about a minute of CPU per learner).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time
from pathlib import Path

import sklearn
import torch

from fewshot.io import write_json
from fewshot.select.baselines import BestOnAverage
from fewshot.select.comparison import leave_one_group_out
from fewshot.select.folds import RELATED_GROUPS
from fewshot.select.measure import TARGETS
from fewshot.select.metalearner import MetaLearner
from fewshot.select.shipped import SHIPPED, load_shipped, portable_columns, save_shipped, train_shipped
from fewshot.select.table import feature_columns

sys.path.insert(0, str(Path(__file__).parent))
from model_selection import RESULTS, finite, load_meta_csv  # noqa: E402  (the meta-dataset's own reader)

ROOT = Path(__file__).resolve().parent.parent
META = RESULTS / "model_selection_meta.csv.gz"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def evaluate(rows: list[dict], resamples: int) -> dict:
    """Leave-one-group-out reports (group-level intervals) of the shipped learner and its rivals."""
    columns = portable_columns(feature_columns(rows))
    learners = {"shipped (portable features)": lambda: MetaLearner("ranking", features=columns, seed=0),
                "meta-learner (all features)": lambda: MetaLearner("ranking", seed=0),
                "best-on-average": BestOnAverage}
    out = {}
    for name, make in learners.items():
        held = leave_one_group_out(rows, make, RELATED_GROUPS)
        out[name] = held.report(unit="group", resamples=resamples)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta", default=str(META), help="the meta-dataset CSV (default: the committed one)")
    parser.add_argument("--out", default=str(SHIPPED), help="the shipped file (default: the package's)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--evaluate", action="store_true", help="also judge it leave-one-group-out (finetune)")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start, cpu0 = time.perf_counter(), time.process_time()
    meta = Path(args.meta).resolve()
    rows = {target: load_meta_csv(meta, target) for target in TARGETS}
    shown = str(meta.relative_to(ROOT)) if meta.is_relative_to(ROOT) else str(meta)
    trained_on = {"file": shown, "sha256": sha256(meta), "command": "python benchmarks/ship_selector.py",
                  "scikit_learn": sklearn.__version__}
    selector = train_shipped(rows, trained_on, related=RELATED_GROUPS)
    save_shipped(selector, args.out)
    loaded = load_shipped(args.out)  # what fewshot will read: check it predicts as the fitted learners
    for target, learner in selector.learners.items():
        sample = [{k: v for k, v in r.items() if k != "accuracy"} for r in rows[target][:120]]
        same = (learner.predict(sample) == loaded.learner(target).predict(sample)).all()
        same &= (learner.predict_accuracy(sample) == loaded.learner(target).predict_accuracy(sample)).all()
        if not same:
            raise SystemExit(f"the stored {target} learner does not predict as the fitted one")
    cpu_ship = time.process_time() - cpu0
    evaluation = evaluate(rows["finetune"], args.resamples) if args.evaluate else None
    out = {"benchmark": "select_shipped", "command": " ".join(["python", *sys.argv]),
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "torch_threads": 1, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                       "load_average": os.getloadavg()},
           "wall_seconds": time.perf_counter() - start,
           "cpu_seconds": {"ship": cpu_ship, "total": time.process_time() - cpu0},
           "file": {"path": str(Path(args.out).resolve().relative_to(ROOT)) if Path(args.out).resolve().is_relative_to(
               ROOT) else args.out, "bytes": Path(args.out).stat().st_size, "sha256": sha256(Path(args.out))},
           "trained_on": selector.trained_on,
           "columns": {t: l.base_columns_ for t, l in selector.learners.items()},
           "intervals": selector.intervals, "evaluation": evaluation}
    results = Path(args.results)
    write_json(results / "select_shipped.json", finite(out))
    (results / "select_shipped.md").write_text("\n".join(summary(out)) + "\n")
    print("\n".join(summary(out)))


def summary(out: dict) -> list[str]:
    t = out["trained_on"]
    lines = [f"Shipped meta-learner: `{out['command']}` ({out['cpu_seconds']['total']:.0f} CPU-s, load average "
             f"{', '.join(f'{x:.1f}' for x in out['machine']['load_average'])})", "",
             f"- trained on {t['file']} (sha256 {t['sha256'][:12]}…): {t['tasks']} tasks × {len(t['models'])} "
             f"models, groups {', '.join(t['groups'])}",
             f"- file {out['file']['path']}: {out['file']['bytes'] / 1e6:.2f} MB, "
             f"{len(out['columns']['finetune'])} portable feature columns", "",
             "90 % interval for models and task groups it never saw (residuals predicted − true, points):", "",
             "| target | RMSE | interval (true − predicted) | residuals |", "|---|---|---|---|"]
    for target, e in out["intervals"].items():
        lines.append(f"| {target} | {e['rmse']:.1f} | {-e['high']:+.1f} .. {-e['low']:+.1f} | {e['residuals']} |")
    if out["evaluation"]:
        lines += ["", "Leave-one-group-out, related groups held out together, fine-tuning target; mean over tasks "
                  "[95 % interval, groups resampled]:", "", "| selector | top-1 regret | Kendall τ |", "|---|---|---|"]
        for name, report in out["evaluation"].items():
            r, k = report["top1_regret"], report["kendall_tau"]
            lines.append(f"| {name} | {r['mean']:.2f} [{r['low']:.2f}, {r['high']:.2f}] | "
                         f"{k['mean']:.3f} [{k['low']:.3f}, {k['high']:.3f}] |")
    return lines


if __name__ == "__main__":
    main()

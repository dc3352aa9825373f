"""Does LightGBM's LambdaRank (Burges, 2010; Ke et al., 2017) beat fewshot's default ranking
meta-learner on the committed meta-dataset? An experiment, not a shipped selector.

Reads ``benchmarks/results/model_selection_meta_fixed20.csv.gz`` (written by
``benchmarks/model_selection.py``), so it needs no zoo and no training:

    OMP_NUM_THREADS=1 python benchmarks/model_selection_lambdarank.py

LambdaRank gets the same inputs as the default meta-learner (every task, model and
score column plus the per-task standardised and rank-transformed scores of
``fewshot.select.table.relative_scores``); its labels are each model's accuracy
rank within its task (graded relevance, ties shared). Every selector is judged
leave-one-group-out, as in ``model_selection.py``; paired differences are LambdaRank
minus the other, per task, with 95% bootstrap intervals. Needs ``pip install lightgbm``.
Writes ``benchmarks/results/model_selection_lambdarank.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from fewshot.io import write_json
from fewshot.select.baselines import BestOnAverage, BestOnAverageInDomain
from fewshot.select.comparison import leave_one_group_out, paired_differences
from fewshot.select.metalearner import MetaLearner
from fewshot.select.table import feature_columns, feature_matrix, relative_scores

sys.path.insert(0, str(Path(__file__).parent))
from model_selection import RESULTS, finite, load_meta_csv  # noqa: E402  (the benchmark's own CSV reader)


def task_index(rows) -> np.ndarray:
    ids = {t: i for i, t in enumerate(sorted({row["task"] for row in rows}))}
    return np.array([ids[row["task"]] for row in rows])


class LambdaRank:
    """LightGBM's LGBMRanker, lambdarank objective, on the default meta-learner's features."""

    def __init__(self, seed: int = 0, trees: int = 300, learning_rate: float = 0.05, leaves: int = 15):
        self.seed, self.trees, self.learning_rate, self.leaves = seed, trees, learning_rate, leaves

    def _features(self, rows):
        index = task_index(rows)
        x, _ = relative_scores(feature_matrix(rows, self.columns), self.columns, index)
        return x, index

    def fit(self, rows):
        import lightgbm

        self.columns = feature_columns(rows)
        x, index = self._features(rows)
        accuracy = np.array([float(row["accuracy"]) for row in rows])
        order = np.argsort(index, kind="stable")  # LightGBM wants each query's rows together
        x, index, accuracy = x[order], index[order], accuracy[order]
        label = np.zeros(len(rows), dtype=int)
        for task in np.unique(index):
            mine = index == task
            label[mine] = np.searchsorted(np.unique(accuracy[mine]), accuracy[mine])
        self.model = lightgbm.LGBMRanker(objective="lambdarank", n_estimators=self.trees,
                                         learning_rate=self.learning_rate, num_leaves=self.leaves,
                                         random_state=self.seed, n_jobs=1, verbose=-1,
                                         label_gain=list(range(int(label.max()) + 1)))
        self.model.fit(x, label, group=np.bincount(index)[np.unique(index)])
        return self

    def predict(self, rows):
        return self.model.predict(self._features(rows)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meta", default=str(RESULTS / "model_selection_meta_fixed20.csv.gz"))
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    selectors = {"lambdarank (LightGBM)": LambdaRank, "meta-learner (ranking)": lambda: MetaLearner("ranking", seed=0),
                 "best-on-average": BestOnAverage, "best-on-average in domain": BestOnAverageInDomain}
    out, lines = {"command": " ".join(["python", *sys.argv]), "targets": {}}, []
    for target in ("finetune", "linear-probe"):
        rows = load_meta_csv(Path(args.meta), target)
        cpu = time.process_time()
        held = {name: leave_one_group_out(rows, make) for name, make in selectors.items()}
        report = {name: h.report(resamples=args.resamples) for name, h in held.items()}
        paired = paired_differences(held, "lambdarank (LightGBM)", resamples=args.resamples)
        out["targets"][target] = {"tasks": len({r["task"] for r in rows}), "report": report, "paired": paired,
                                  "cpu_seconds": time.process_time() - cpu}
        lines += [f"### Ground truth: {target}", "", "| selector | top-1 regret | Kendall τ | LambdaRank − it: regret | "
                  "LambdaRank − it: τ |", "|---|---|---|---|---|"]
        for name, r in report.items():
            p = paired.get(name)
            diff = (f"{p['top1_regret']['mean']:+.2f} [{p['top1_regret']['low']:+.2f}, {p['top1_regret']['high']:+.2f}] | "
                    f"{p['kendall_tau']['mean']:+.3f} [{p['kendall_tau']['low']:+.3f}, {p['kendall_tau']['high']:+.3f}]"
                    if p else "- | -")
            lines.append(f"| {name} | {r['top1_regret']['mean']:.2f} [{r['top1_regret']['low']:.2f}, "
                         f"{r['top1_regret']['high']:.2f}] | {r['kendall_tau']['mean']:.3f} | {diff} |")
        lines.append("")
    results = Path(args.results)
    write_json(results / "model_selection_lambdarank.json", finite(out))
    head = (f"LambdaRank against the default meta-learner, leave-one-group-out on the committed meta-dataset "
            f"({out['targets']['finetune']['tasks']} tasks); mean [95% bootstrap CI, {args.resamples} resamples]. "
            f"`{out['command']}`")
    (results / "model_selection_lambdarank.md").write_text(head + "\n\n" + "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

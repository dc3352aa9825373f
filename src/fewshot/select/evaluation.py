"""How good is the meta-learner? Every selector judged on a meta-dataset, with the costs.

:func:`evaluate_meta_dataset` is what ``fewshot select evaluate`` prints and what
``benchmarks/model_selection.py`` records; :func:`evaluation_table` is its Markdown table.
"""

from __future__ import annotations

import math
import time

from .comparison import compare
from .metalearner import MetaLearner
from .metastore import selection_costs


def evaluate_meta_dataset(rows: list[dict], records: list[dict], *, seed: int = 0, resamples: int = 2000) -> dict:
    """Every selector under leave-one-group-out (:func:`~fewshot.select.comparison.compare`),
    plus the costs: CPU seconds per task to select with the meta-learner (features and
    scores of every model, plus the prediction) against fine-tuning every model."""
    report = compare(rows, seed=seed, resamples=resamples)
    tasks = {r["task"] for r in rows}
    used = [r for r in records if r["task"] in tasks]
    costs = selection_costs(used)
    start = time.process_time()
    learner = MetaLearner(seed=seed).fit(rows)
    fit = time.process_time() - start
    start = time.process_time()
    learner.predict([{k: v for k, v in r.items() if k != "accuracy"} for r in rows])
    predict = (time.process_time() - start) / max(len(tasks), 1)
    costs.update(meta_learner_fit_cpu_seconds=fit, meta_learner_predict_cpu_seconds_per_task=predict)
    select = costs.get("select_cpu_seconds", 0.0) + predict
    costs["select_with_prediction_cpu_seconds"] = select
    costs["speedup_over_finetuning_all"] = (costs.get("finetune_all_cpu_seconds", math.nan) / select
                                            if select else math.inf)
    groups = sorted({r["group"] for r in rows})
    return {"tasks": len(tasks), "models": len({r["model"] for r in rows}), "groups": groups, "rows": len(rows),
            "report": report, "cost": costs}


def _interval(m: dict | None, scale: float = 1.0, digits: int = 2) -> str:
    if m is None or m.get("mean") is None or (isinstance(m["mean"], float) and math.isnan(m["mean"])):
        return "-"
    return f"{m['mean'] * scale:.{digits}f} [{m['low'] * scale:.{digits}f}, {m['high'] * scale:.{digits}f}]"


def evaluation_table(report: dict[str, dict]) -> list[str]:
    """Markdown table of :func:`~fewshot.select.comparison.compare`'s report (95% bootstrap CIs);
    weighted τ as scipy's default, then as Model Spider's (weighted by the true ranking)."""
    lines = ["| selector | top-1 regret (points) | relative top-1 | best in top-3 | Kendall τ | weighted τ "
             "| weighted τ (true ranking) | RMSE (points) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in report.items():
        lines.append(f"| {name} | {_interval(r.get('top1_regret'))} | {_interval(r.get('relative_top1'), digits=3)} | "
                     f"{_interval(r.get('best_in_top3'))} | {_interval(r.get('kendall_tau'))} | "
                     f"{_interval(r.get('weighted_tau'))} | {_interval(r.get('weighted_tau_true'))} | "
                     f"{_interval(r.get('rmse'))} |")
    return lines


__all__ = ["evaluate_meta_dataset", "evaluation_table"]

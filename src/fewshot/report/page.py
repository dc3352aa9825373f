"""The report's HTML page: figures with captions, and the tables behind them."""

from __future__ import annotations

import html
import time
from typing import Any, Sequence

from .. import __version__
from .content import ACCURACY_ORIGIN, FIGURES, RunInfo

CAPTIONS = {
    "learning_curves": "Learning curves: meta-training loss (mean over each {log}-step window) and, for runs with a "
                       "validation split, validation accuracy on the run's fixed validation suite, the band its 95% "
                       "confidence interval; a run without one shows its training-episode accuracy, dashed (the "
                       "panel's title says which it shows).",
    "comparison": "Methods compared on identical episodes: each panel is one seeded suite of test episodes, "
                  "so every bar was measured on the same tasks (untrained baselines included, whatever dataset "
                  "options they were evaluated with, when their episodes are the same). Error bars: 95% "
                  "confidence intervals.",
    "accuracy_vs_shots": "Accuracy against the number of labelled examples per class (K), ± 95% CI.",
    "accuracy_vs_ways": "Accuracy against the number of classes per task (N), ± 95% CI.",
    "return_vs_steps": "Reinforcement runs: mean return on the evaluated tasks after 0, 1, ... adaptation steps "
                       "(MAML-RL: policy-gradient steps; RL²: episodes of a trial after the first), ± 95% CI.",
    "embedding_map": "Query examples of one fixed test episode (coloured by class), embedded by the backbone at "
                     "each checkpoint the run keeps and projected to 2-D; a run without validation has no best "
                     "checkpoint, only its last. The silhouette (on the full embedding, -1 to 1) says how well the "
                     "classes separate.",
    "model_selection": "Model selection: predicted against true accuracy (one point per candidate and task), and "
                       "the regret of each task's selected candidate (best true accuracy minus the selected one's).",
}
TITLES = {"learning_curves": "Learning curves", "comparison": "Methods on identical episodes",
          "accuracy_vs_shots": "Accuracy against shots", "accuracy_vs_ways": "Accuracy against ways",
          "return_vs_steps": "Return against adaptation steps",
          "embedding_map": "Embedding map across checkpoints", "model_selection": "Model selection"}
AXES_NOTE = (f"Every accuracy axis starts at {ACCURACY_ORIGIN:g} % and ends at 100 %; a method keeps one colour "
             "in every figure.")

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.5em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: 0.9em; } .missing { color: #a33; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def runs_table(runs: Sequence[RunInfo]) -> str:
    head = "<tr><th>label</th><th>run folder</th><th>method</th><th>dataset</th><th>training episodes</th>" \
           "<th>steps</th><th>best validation</th><th>CPU time</th></tr>"
    rows = []
    for r in runs:
        c, s = r.config, r.state
        way, shot, query = c.train_shape
        best = s.get("best") or {}
        if best.get("accuracy") is not None:
            val = f"{best['accuracy']:.1f} ± {best['ci95']:.1f} % (step {best['step']})"
        elif best.get("mse") is not None:
            val = f"mse {best['mse']:.4g} ± {best['ci95']:.2g} (step {best['step']})"
        else:
            val = "no validation split"
        rows.append(f"<tr><td>{_e(r.label)}</td><td>{_e(r.path)}</td><td>{_e(c.method)}</td><td>{_e(c.dataset)}</td>"
                    f"<td>{way}-way {shot}-shot {query}-query × {c.meta_batch}</td><td class=num>{s['step']}</td>"
                    f"<td>{_e(val)}</td><td class=num>{s['cpu_seconds']:.1f} s</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def comparison_table(table: list[dict]) -> str:
    head = "<tr><th>suite</th><th>method</th><th>accuracy</th><th>episodes</th>" \
           "<th>paired difference to the suite's best</th></tr>"
    rows = []
    for t in table:
        diff = t["paired_difference"]
        diff_text = ("best" if t["best"] else f"{diff[0]:+.1f} ± {diff[1]:.1f} points" if diff
                     else "n/a (no per-episode accuracies)")
        if t.get("mixed"):
            diff_text += (" (transductive against inductive: not like for like)" if t.get("transductive")
                          else " (inductive against transductive: not like for like)")
        label = t["label"] + (f" (transductive, {t['query']} queries per class)" if t.get("transductive") else "")
        rows.append(f"<tr><td>{_e(t['suite'])}</td><td>{_e(label)}</td>"
                    f"<td class=num>{t['accuracy']:.1f} ± {t['ci95']:.1f} %</td><td class=num>{t['episodes']}</td>"
                    f"<td class=num>{_e(diff_text)}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def selection_table(arrays: dict) -> str:
    source = ("from the model-selection results file" if arrays["source"] == "file"
              else "selection by validation accuracy, judged by test accuracy")
    rows = "".join(f"<tr><td class=num>{i}</td><td>{_e(t)}</td><td class=num>{r:.2f}</td></tr>"
                   for i, (t, r) in enumerate(zip(arrays["tasks"], arrays["regret"]), 1))
    return (f"<p class=note>Source: {_e(source)}.</p><table><tr><th>#</th><th>task</th><th>regret (points)</th></tr>"
            f"{rows}</table>")


def page(runs: Sequence[RunInfo], figures: dict, missing: dict[str, str], tables: dict[str, str],
         notes: list[str], store_path, log_every: int) -> str:
    """The whole page; ``figures`` maps a figure's name to its PNG file."""
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>fewshot report</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>fewshot report</h1><p class=note>{len(runs)} run(s); evaluate records from {_e(store_path)}; "
             f"written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))} by fewshot {_e(__version__)}. {_e(AXES_NOTE)}</p>",
             "<h2>Runs</h2>", runs_table(runs)]
    for name in FIGURES:
        parts.append(f"<h2 id={name}>{_e(TITLES[name])}</h2>")
        if name in figures:
            caption = CAPTIONS[name].format(log=log_every)
            parts.append(f"<figure><img src=\"{_e(figures[name].name)}\" alt=\"{_e(TITLES[name])}\">"
                         f"<figcaption>{_e(caption)}</figcaption></figure>")
        else:
            parts.append(f"<p class=missing>Not drawn: no data because {_e(missing[name])}.</p>")
        parts.append(tables.get(name, ""))
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)

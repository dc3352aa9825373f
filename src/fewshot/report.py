"""``fewshot report``: a self-contained HTML page of figures about training runs.

The page (``index.html``) and its PNG figures lie side by side in one folder, linked
relatively, so the folder works offline and can be copied anywhere. The folder is
built under a temporary name beside its destination and renamed into place: a report
is never seen half-written.

What it shows, and where each part comes from:

* learning curves: each run's ``state.json`` history (training loss every
  ``LOG_EVERY`` steps; validation accuracy and its 95% interval at each validation);
* methods compared on identical episodes, accuracy against shots and against ways:
  the ``evaluate`` records of the run store that belong to the runs (and records of
  untrained baselines such as ``pixel-ncm`` on the same datasets);
* an embedding map: the query examples of one fixed test episode, embedded by the
  backbone at each checkpoint the run keeps (the initial weights, which the seed
  reproduces exactly, the best and the last), projected to 2-D;
* model selection: predicted against true accuracy and regret per task, from a results
  file (``--selection``), else from the runs themselves (selection by validation
  accuracy, judged by test accuracy).
"""

from __future__ import annotations

import copy
import html
import json
import math
import os
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import __version__, plots
from .config import TrainConfig
from .errors import CheckpointError, ConfigError, FewShotError
from .metrics import confidence_interval
from .io import read_json, write_json
from .store import RunStore

FIGURES = ("learning_curves", "comparison", "accuracy_vs_shots", "accuracy_vs_ways", "embedding_map",
           "model_selection")


@dataclass
class RunInfo:
    """A run folder, its config and state."""

    path: Path
    config: TrainConfig
    state: dict

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Report:
    """Where a report went: its page, its figures by name, and why any figure is missing."""

    path: Path
    figures: dict[str, Path] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


# -- inputs -------------------------------------------------------------------------------

def find_runs(targets: Sequence[str | Path]) -> list[RunInfo]:
    """Run folders named by ``targets``: each a run folder, or a folder holding run folders."""
    found: list[Path] = []
    for target in targets:
        target = Path(target)
        if (target / "state.json").exists():
            found.append(target)
        elif target.is_dir():
            inner = sorted(p.parent for p in target.rglob("state.json") if not any(
                part.startswith(".") for part in p.relative_to(target).parts))
            if not inner:
                raise CheckpointError(f"{target} holds no fewshot run (no state.json in it or below it)")
            found.extend(inner)
        else:
            raise CheckpointError(f"{target} is not a fewshot run folder (no state.json); "
                                  "name run folders, or folders that hold them")
    runs = []
    for path in dict.fromkeys(p.resolve() for p in found):
        state = read_json(path / "state.json")
        if not isinstance(state, dict) or not {"step", "history", "cpu_seconds"} <= set(state):
            raise CheckpointError(f"{path / 'state.json'} is not a fewshot run state; the file is damaged")
        runs.append(RunInfo(path, TrainConfig.from_dict(read_json(path / "config.json")), state))
    return runs


def _metric(run: RunInfo) -> str:
    """What the run validates by: "accuracy", "mse" (regression) or "return" (reinforcement)."""
    best = run.state.get("best") or {}
    return "mse" if "mse" in best else "return" if "return" in best else "accuracy"


def _suite(record: dict) -> tuple:
    """What makes two evaluate records share identical episodes."""
    c = record["config"]
    return (record["dataset"], record["split"], c.get("way"), c.get("shot"), c.get("query"), record["seed"],
            c.get("episodes"), json.dumps(c.get("dataset_options") or {}, sort_keys=True))


def _suite_title(suite: tuple) -> str:
    dataset, split, way, shot, query, seed, episodes, _ = suite
    return f"{dataset}/{split} {way}-way {shot}-shot, {episodes} episodes (seed {seed})"


def evaluation_records(store: RunStore, runs: Sequence[RunInfo]) -> list[dict]:
    """The store's evaluate records of ``runs``, plus untrained baselines on their datasets.

    Each record gains a ``label``: its method, with the run folder's name when several
    runs share a method. A suite evaluated twice for the same label keeps its latest
    record.
    """
    wanted = {str(r.path) for r in runs}
    datasets = {r.config.dataset for r in runs}
    rows = [r for r in store.list(kind="evaluate")
            if (r["run_dir"] in wanted or (r["run_dir"] is None and r["dataset"] in datasets))
            and r["metrics"].get("metric", "accuracy") == "accuracy"]  # regression suites have no accuracy
    dirs_per_method: dict[str, set] = defaultdict(set)
    for r in rows:
        dirs_per_method[r["method"]].add(r["run_dir"])
    latest: dict[tuple, dict] = {}
    for r in rows:  # ordered by id: later records replace earlier ones
        label = r["method"]
        if len(dirs_per_method[r["method"]]) > 1 and r["run_dir"]:
            label = f"{label} [{Path(r['run_dir']).name}]"
        latest[(label, _suite(r))] = {**r, "label": label}
    return list(latest.values())


def load_selection(path: str | Path) -> dict[str, list]:
    """Model-selection results from a JSON file, in either of two forms.

    Arrays: ``{"predicted": [...], "true": [...], "regret": [...], "tasks": [...]}``
    (``tasks`` names the regret entries and is optional). Rows: a list (or
    ``{"rows": [...]}``) of ``{"task", "candidate", "predicted", "true"}``, one per
    candidate of each task; the selected candidate of a task is the one predicted best,
    and its regret is the best true accuracy of the task minus the selected one's.
    Accuracies are in % (fractions in [0, 1] are scaled).
    """
    if not Path(path).exists():
        raise ConfigError(f"model-selection file {path} not found")
    data = read_json(path, ConfigError)  # bounded in size and depth; binary or damaged is one line
    if isinstance(data, dict) and "rows" in data:
        data = data["rows"]
    try:
        if isinstance(data, dict):
            predicted, true = [float(v) for v in data["predicted"]], [float(v) for v in data["true"]]
            regret = [float(v) for v in data["regret"]]
            tasks = [str(t) for t in data.get("tasks") or range(len(regret))]
        elif isinstance(data, list):
            return selection_from_rows(data)
        else:
            raise TypeError
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"model-selection file {path} must hold arrays 'predicted', 'true', 'regret' or rows "
                          f"of 'task', 'predicted', 'true' ({type(e).__name__}: {e})") from None
    scale = 100.0 if max(map(abs, predicted + true), default=0) <= 1.0 else 1.0
    return {"predicted": [v * scale for v in predicted], "true": [v * scale for v in true],
            "regret": [v * scale for v in regret], "tasks": tasks}


def selection_from_rows(rows: Sequence[dict]) -> dict[str, list]:
    """Arrays for :func:`fewshot.plots.model_selection` from rows of (task, predicted, true)."""
    by_task: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        by_task[str(row["task"])].append((float(row["predicted"]), float(row["true"])))
    if not by_task:
        raise ValueError("no rows")
    values = [v for pairs in by_task.values() for pair in pairs for v in pair]
    scale = 100.0 if max(map(abs, values)) <= 1.0 else 1.0
    predicted = [p * scale for pairs in by_task.values() for p, _ in pairs]
    true = [t * scale for pairs in by_task.values() for _, t in pairs]
    regret = []
    for pairs in by_task.values():
        chosen = max(pairs, key=lambda pair: pair[0])
        regret.append((max(t for _, t in pairs) - chosen[1]) * scale)
    return {"predicted": predicted, "true": true, "regret": regret, "tasks": list(by_task)}


# -- figures ------------------------------------------------------------------------------

def _learning_curves(runs: Sequence[RunInfo], folder: Path) -> Path:
    curves = [plots.Curve(r.name, r.state["history"]["train"], r.state["history"]["val"], _metric(r)) for r in runs]
    if not any(c.train or c.val for c in curves):
        raise _Missing("no run has logged a training step yet")
    return plots.learning_curves(curves, folder / "learning_curves.png")


class _Missing(Exception):
    """A figure has no data to be drawn from; the message says what would give it some."""


def _comparison(records: list[dict], folder: Path) -> tuple[Path, list[dict]]:
    """Bars per suite (the suites with the most methods first, four at most) and a table
    with paired differences to each suite's best method."""
    by_suite: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        by_suite[_suite(r)].append(r)
    if not by_suite:
        raise _Missing("no evaluate records for these runs: run `fewshot evaluate RUN` (and e.g. "
                       "`fewshot evaluate pixel-ncm --dataset D`) with the same --runs")
    suites = sorted(by_suite, key=lambda s: (-len(by_suite[s]), str(s)))[:4]
    panels, table = [], []
    for suite in suites:
        rows = sorted(by_suite[suite], key=lambda r: -r["metrics"]["accuracy"])
        panels.append(plots.Bars(_suite_title(suite), [r["label"] for r in rows],
                                 [r["metrics"]["accuracy"] for r in rows], [r["metrics"]["ci95"] for r in rows]))
        best = rows[0]["metrics"].get("per_episode")
        for r in rows:
            other = r["metrics"].get("per_episode")
            diff = (confidence_interval(np.subtract(other, best)) if r is not rows[0] and best and other
                    and len(best) == len(other) else None)
            table.append({"suite": _suite_title(suite), "label": r["label"], "accuracy": r["metrics"]["accuracy"],
                          "ci95": r["metrics"]["ci95"], "episodes": r["metrics"].get("episodes"),
                          "paired_difference": diff, "best": r is rows[0], "record": r["id"]})
    return plots.comparison(panels, folder / "comparison.png"), table


def _against(records: list[dict], folder: Path, varied: str) -> Path:
    """Accuracy against ``varied`` ("shot" or "way"), one line per method and fixed other setting."""
    fixed = "way" if varied == "shot" else "shot"
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in records:
        key = (r["label"], r["dataset"], r["split"], r["config"].get(fixed))
        groups[key][int(r["config"][varied])] = r  # later records replace earlier ones
    lines = {k: v for k, v in groups.items() if len(v) >= 2}
    if not lines:
        raise _Missing(f"no method was evaluated at two or more values of --{varied} on one dataset: "
                       f"run `fewshot evaluate RUN --{varied} N` for a few N")
    several_datasets = len({k[1] for k in lines}) > 1
    series = []
    for (label, dataset, _, value), points in sorted(lines.items(), key=lambda kv: str(kv[0]))[:10]:
        xs = sorted(points)
        name = f"{label}, {value}-{fixed}" + (f" ({dataset})" if several_datasets else "")
        series.append(plots.Series(name, xs, [points[x]["metrics"]["accuracy"] for x in xs],
                                   [points[x]["metrics"]["ci95"] for x in xs]))
    title = "accuracy against shots per class" if varied == "shot" else "accuracy against ways (classes per task)"
    xlabel = "shots per class (K)" if varied == "shot" else "ways (N)"
    return plots.accuracy_against(series, folder / f"accuracy_vs_{varied}s.png", xlabel=xlabel, title=title)


def _step_of(file_name: str) -> int | None:
    """N of ``checkpoint-N.safetensors`` or ``best-N.safetensors``."""
    digits = file_name.rsplit("-", 1)[-1].split(".", 1)[0]
    return int(digits) if digits.isdigit() else None


@torch.no_grad()
def embed(method: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """Backbone features of ``images``, flattened to ``(n, d)``, in the method's test mode.

    Train-mode methods (MAML family) normalise with the batch's own statistics, as at
    test time; they embed on a copy so no running statistic changes.
    """
    if method.backbone is None:
        raise _Missing(f"{method.name} has no backbone to embed with")
    train_mode = method.test_mode == "train"
    if train_mode:
        method = copy.deepcopy(method)
    was_training = method.training
    method.train(train_mode)
    try:
        return method.features(images).double().numpy()
    finally:
        method.train(was_training)


def _project(features: np.ndarray, projection: str) -> np.ndarray:
    if projection == "tsne":
        from sklearn.manifold import TSNE

        perplexity = max(2.0, min(30.0, (len(features) - 1) / 3))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=0).fit_transform(features)
    from sklearn.decomposition import PCA

    return PCA(2, random_state=0).fit_transform(features)


def _embedding_row(run: RunInfo, data_root, split: str, projection: str, datasets: dict) -> list[plots.EmbeddingPanel]:
    """One panel per kept checkpoint: initial weights, best, last."""
    from sklearn.metrics import silhouette_score

    from .data import EpisodeSampler, load_dataset
    from .runs import build_model, load_run

    config = run.config
    key = (config.dataset, json.dumps(config.dataset_options, sort_keys=True))
    if key not in datasets:
        datasets[key] = load_dataset(config.dataset, data_root, **config.dataset_options)
    dataset = datasets[key]
    classes = dataset.split_classes(split)
    way = min(config.way, 10, len(classes))
    query = max(1, min(15, int(dataset.class_counts[classes].min()) - config.shot))
    episode = EpisodeSampler(dataset, split, way, config.shot, query, seed=0).episode(0)
    initial = build_model(config, dataset.image_shape, dataset.split_classes(config.train_split))
    checkpoints = [("initial weights", initial)]
    best = run.state.get("best")
    if best and best.get("file") and (run.path / best["file"]).exists():
        checkpoints.append((f"best (step {best['step']})", load_run(run.path, "best")[1]))
    last = run.state.get("checkpoint")
    # best-N and checkpoint-N hold the same weights: the best is kept at a validation
    # and the checkpoint that follows it is written at the same step.
    if last and (not best or _step_of(best.get("file") or "") != _step_of(last)):
        checkpoints.append((f"last (step {_step_of(last)})", load_run(run.path, "last")[1]))
    panels = []
    for title, method in checkpoints:
        features = embed(method, episode.query_x)
        labels = episode.query_y.numpy()
        separation = silhouette_score(features, labels) if way > 1 else math.nan
        panels.append(plots.EmbeddingPanel(f"{title}\nsilhouette {separation:.2f}", _project(features, projection),
                                           labels, [dataset.class_names[c] for c in episode.classes]))
    return panels


def _embedding_map(runs: Sequence[RunInfo], folder: Path, data_root, split: str, projection: str,
                   notes: list[str]) -> Path:
    rows, datasets = [], {}
    for run in runs[:6]:
        try:
            rows.append((run.name, _embedding_row(run, data_root, split, projection, datasets)))
        except (FewShotError, _Missing) as e:
            notes.append(f"{run.name}: no embedding map ({e})")
    if not rows:
        raise _Missing("; ".join(notes) or "no run to embed")
    return plots.embedding_map(rows, folder / "embedding_map.png", projection=projection.upper()
                               if projection == "pca" else "t-SNE")


def _selection_from_runs(runs: Sequence[RunInfo], records: list[dict]) -> dict[str, list]:
    """Selection by validation: each run's best validation accuracy predicts its test
    accuracy; a task is a suite on which two or more such runs were evaluated."""
    val = {str(r.path): r.state["best"]["accuracy"] for r in runs
           if r.state.get("best") and r.state["best"].get("accuracy") is not None}
    rows = [{"task": _suite_title(_suite(r)), "predicted": val[r["run_dir"]], "true": r["metrics"]["accuracy"]}
            for r in records if r["run_dir"] in val and "+" not in r["method"]]
    counts = defaultdict(int)
    for row in rows:
        counts[row["task"]] += 1
    rows = [row for row in rows if counts[row["task"]] >= 2]
    if not rows:
        raise _Missing("no model-selection results: pass --selection FILE, or report two or more runs with a "
                       "validation split that were evaluated on the same test suite")
    return selection_from_rows(rows)


# -- the page -----------------------------------------------------------------------------

CAPTIONS = {
    "learning_curves": "Learning curves: meta-training loss (mean over each {log}-step window) and validation "
                       "accuracy on the run's fixed validation suite, the band its 95% confidence interval.",
    "comparison": "Methods compared on identical episodes: each panel is one seeded suite of test episodes, "
                  "so every bar was measured on the same tasks. Error bars: 95% confidence intervals.",
    "accuracy_vs_shots": "Accuracy against the number of labelled examples per class (K), ± 95% CI.",
    "accuracy_vs_ways": "Accuracy against the number of classes per task (N), ± 95% CI.",
    "embedding_map": "Query examples of one fixed test episode (coloured by class), embedded by the backbone at "
                     "each checkpoint the run keeps and projected to 2-D. The silhouette (on the full embedding, "
                     "-1 to 1) says how well the classes separate.",
    "model_selection": "Model selection: predicted against true accuracy (one point per candidate and task), and "
                       "the regret of each task's selected candidate (best true accuracy minus the selected one's).",
}
TITLES = {"learning_curves": "Learning curves", "comparison": "Methods on identical episodes",
          "accuracy_vs_shots": "Accuracy against shots", "accuracy_vs_ways": "Accuracy against ways",
          "embedding_map": "Embedding map across checkpoints", "model_selection": "Model selection"}

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


def _runs_table(runs: Sequence[RunInfo]) -> str:
    head = "<tr><th>run</th><th>method</th><th>dataset</th><th>training episodes</th><th>steps</th>" \
           "<th>best validation</th><th>CPU time</th></tr>"
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
        rows.append(f"<tr><td>{_e(r.path)}</td><td>{_e(c.method)}</td><td>{_e(c.dataset)}</td>"
                    f"<td>{way}-way {shot}-shot {query}-query × {c.meta_batch}</td><td class=num>{s['step']}</td>"
                    f"<td>{_e(val)}</td><td class=num>{s['cpu_seconds']:.1f} s</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _comparison_table(table: list[dict]) -> str:
    head = "<tr><th>suite</th><th>method</th><th>accuracy</th><th>episodes</th>" \
           "<th>paired difference to the suite's best</th></tr>"
    rows = []
    for t in table:
        diff = t["paired_difference"]
        diff_text = ("best" if t["best"] else f"{diff[0]:+.1f} ± {diff[1]:.1f} points" if diff
                     else "n/a (no per-episode accuracies)")
        rows.append(f"<tr><td>{_e(t['suite'])}</td><td>{_e(t['label'])}</td>"
                    f"<td class=num>{t['accuracy']:.1f} ± {t['ci95']:.1f} %</td><td class=num>{t['episodes']}</td>"
                    f"<td class=num>{_e(diff_text)}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _selection_table(arrays: dict) -> str:
    source = ("from the model-selection results file" if arrays["source"] == "file"
              else "selection by validation accuracy, judged by test accuracy")
    rows = "".join(f"<tr><td class=num>{i}</td><td>{_e(t)}</td><td class=num>{r:.2f}</td></tr>"
                   for i, (t, r) in enumerate(zip(arrays["tasks"], arrays["regret"]), 1))
    return (f"<p class=note>Source: {_e(source)}.</p><table><tr><th>#</th><th>task</th><th>regret (points)</th></tr>"
            f"{rows}</table>")


def _page(runs: Sequence[RunInfo], report: Report, tables: dict[str, str], notes: list[str], store: RunStore) -> str:
    from .train import LOG_EVERY

    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>fewshot report</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>fewshot report</h1><p class=note>{len(runs)} run(s); evaluate records from {_e(store.path)}; "
             f"written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))} by fewshot {_e(__version__)}.</p>",
             "<h2>Runs</h2>", _runs_table(runs)]
    for name in FIGURES:
        parts.append(f"<h2 id={name}>{_e(TITLES[name])}</h2>")
        if name in report.figures:
            caption = CAPTIONS[name].format(log=LOG_EVERY)
            parts.append(f"<figure><img src=\"{_e(report.figures[name].name)}\" alt=\"{_e(TITLES[name])}\">"
                         f"<figcaption>{_e(caption)}</figcaption></figure>")
        else:
            parts.append(f"<p class=missing>Not drawn: {_e(report.missing[name])}.</p>")
        parts.append(tables.get(name, ""))
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _check_destination(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "index.html").exists())):
        raise ConfigError(f"{out} exists and is not a fewshot report; choose another --out")


def _publish(built: Path, out: Path) -> None:
    """Put the finished folder at ``out`` by renames, replacing an earlier report there."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(built, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, out)


def build_report(targets: Sequence[str | Path], out: str | Path, *, runs: str | Path | None = None,
                 selection: str | Path | None = None, data_root: str | Path | None = None,
                 embed_split: str = "test", projection: str = "pca") -> Report:
    """Write the report on the runs named by ``targets`` to the folder ``out``.

    Figures without data are left out, and the page says what would give them data.
    ``runs`` is the runs folder holding the store of evaluate records.
    """
    if projection not in ("pca", "tsne"):
        raise ConfigError(f"projection must be 'pca' or 'tsne', got '{projection}'")
    out = Path(out)
    _check_destination(out)
    infos = find_runs(targets)
    store = RunStore(runs)
    records = evaluation_records(store, infos)
    chosen = load_selection(selection) if selection else None
    out.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        report, tables, notes = Report(built / "index.html"), {}, []
        steps = {
            "learning_curves": lambda: _learning_curves(infos, built),
            "comparison": lambda: _comparison(records, built),
            "accuracy_vs_shots": lambda: _against(records, built, "shot"),
            "accuracy_vs_ways": lambda: _against(records, built, "way"),
            "embedding_map": lambda: _embedding_map(infos, built, data_root, embed_split, projection, notes),
            "model_selection": lambda: _model_selection(chosen, infos, records, built),
        }
        data: dict[str, Any] = {}
        for name, draw in steps.items():
            try:
                result = draw()
            except _Missing as e:
                report.missing[name] = str(e)
                continue
            if isinstance(result, tuple):
                result, data[name] = result
            report.figures[name] = result
        if "comparison" in data:
            tables["comparison"] = _comparison_table(data["comparison"])
        if "model_selection" in data:
            tables["model_selection"] = _selection_table(data["model_selection"])
        built.joinpath("index.html").write_text(_page(infos, report, tables, notes, store), encoding="utf-8")
        write_json(built / "report.json", {
            "runs": [str(r.path) for r in infos], "figures": {k: v.name for k, v in report.figures.items()},
            "missing": report.missing, "notes": notes, "comparison": data.get("comparison", []),
            "model_selection": data.get("model_selection"), "version": __version__})
        # mkdtemp and the atomic writes make owner-only files; a report is for sharing.
        built.chmod(0o755)
        for path in built.iterdir():
            path.chmod(0o644)
        _publish(built, out)
    finally:
        shutil.rmtree(built, ignore_errors=True)
    return Report(out / "index.html", {k: out / v.name for k, v in report.figures.items()}, report.missing)


def _model_selection(chosen: dict | None, runs: Sequence[RunInfo], records: list[dict],
                     folder: Path) -> tuple[Path, dict]:
    source = "file" if chosen else "validation"
    arrays = chosen or _selection_from_runs(runs, records)
    label = "predicted accuracy (%)" if chosen else "validation accuracy (%), the predictor"
    path = plots.model_selection(arrays["predicted"], arrays["true"], arrays["regret"], folder / "model_selection.png",
                                 tasks=arrays["tasks"], predicted_label=label)
    return path, {**arrays, "source": source}

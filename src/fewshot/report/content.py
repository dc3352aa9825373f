"""What a report shows: the numbers behind each figure and table, with no drawing.

Every function here reads runs and the store and returns plain data (the dataclasses
of :mod:`fewshot.plots`, lists and dicts), so what the report claims can be tested
without looking at a picture. Two rules hold across figures:

* one label and one colour per method: a run is labelled by its method, with its folder
  name added when several runs share the method (:func:`label_runs`), and that label
  keeps its colour in every figure (:func:`palette`);
* every accuracy axis starts at :data:`ACCURACY_ORIGIN` (0 %), so lengths compare
  across panels and figures.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import plots
from ..config import TrainConfig
from ..data.tasks import task_kind
from ..errors import ConfigError, FewShotError
from ..metrics import confidence_interval
from ..io import read_json
from ..taskkind import CLASSIFICATION, KINDS

FIGURES = ("learning_curves", "comparison", "accuracy_vs_shots", "accuracy_vs_ways", "return_vs_steps",
           "embedding_map", "model_selection")
ACCURACY_ORIGIN = plots.ACCURACY_ORIGIN
#: The metrics of the task kinds the comparison panels show (regression and reinforcement suites are left out).
COMPARED = {k.metric for k in KINDS.values() if "comparison" in k.panels}


class Missing(Exception):
    """A figure has no data to be drawn from; the message says what would give it some."""


@dataclass
class RunInfo:
    """A run folder, its config and state, and its label in the report."""

    path: Path
    config: TrainConfig
    state: dict
    label: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def metric(self) -> str:
        """What the run validates by: its dataset's task kind's metric ("accuracy", "mse", "return")."""
        return task_kind(self.config.dataset).metric

    @property
    def validated(self) -> bool:
        """Whether the run's kept "best" weights were chosen by a validation score."""
        best = self.state.get("best") or {}
        return best.get(self.metric) is not None


# -- inputs -------------------------------------------------------------------------------

def find_runs(targets: Sequence[str | Path]) -> list[RunInfo]:
    """Run folders named by ``targets``: each a run folder, or a folder holding run folders.
    Each gains its report label (:func:`label_runs`)."""
    from ..runs import Run

    found = [path for target in targets for path in Run.find(target)]
    runs = []
    for path in dict.fromkeys(p.resolve() for p in found):
        run = Run(path)
        runs.append(RunInfo(path, run.config, run.state))
    label_runs(runs)
    return runs


def label_runs(runs: Sequence[RunInfo]) -> None:
    """Label each run by its method, adding ``[folder]`` when several runs share the method
    (the folder's last two parts when even the folder names repeat)."""
    by_method: dict[str, list[RunInfo]] = defaultdict(list)
    for run in runs:
        by_method[run.config.method].append(run)
    for method, group in by_method.items():
        if len(group) == 1:
            group[0].label = method
            continue
        names = [r.name for r in group]
        for run in group:
            folder = run.name if names.count(run.name) == 1 else "/".join(run.path.parts[-2:])
            run.label = f"{method} [{folder}]"


def _suffix(run: RunInfo) -> str:
    """What a run's label adds to its method's name ("" or " [folder]")."""
    return run.label[len(run.config.method):]


def palette(runs: Sequence[RunInfo], records: Sequence[dict]) -> dict[str, str]:
    """One colour per label, the same in every figure: runs first, then the other labels."""
    labels = list(dict.fromkeys([r.label for r in runs] + sorted({r["label"] for r in records})))
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}


# -- evaluate records and their suites ------------------------------------------------------

def _coarse_suite(record: dict) -> tuple:
    c = record["config"]
    return (record["dataset"], record["split"], c.get("way"), c.get("shot"), c.get("query"), record["seed"],
            c.get("episodes"))


def _options_key(record: dict) -> str:
    return json.dumps(record["config"].get("dataset_options") or {}, sort_keys=True)


def suite_fingerprint(dataset, split: str, way: int, shot: int, query: int, seed: int, episodes: int) -> str:
    """A hash of the images of every episode of a suite, in order: two suites with one
    fingerprint are the same episodes, whatever options named their classes."""
    import torch

    from ..data import EpisodeSampler

    sampler = EpisodeSampler(dataset, split, way, shot, query, seed=seed)
    digest = hashlib.sha256(repr(tuple(dataset.image_shape)).encode())
    for i in range(episodes):
        _, index = sampler.indices(i)
        digest.update(torch.index_select(dataset.images, 0, torch.from_numpy(index.ravel())).numpy().tobytes())
    return digest.hexdigest()


def assign_suites(records: list[dict], data_root=None, datasets: dict | None = None) -> None:
    """Give each record a ``suite`` (an id) and ``suite_title``: records share a suite when
    they were evaluated on identical episodes.

    Records of one dataset, split, shape, seed and episode count share a suite when they
    used the same dataset options; when the options differ (a run trained with rotations,
    a baseline evaluated without) the episodes are rebuilt and compared by
    :func:`suite_fingerprint`. Suites that stay apart get titles that say how they differ.
    """
    from ..data import load_dataset

    datasets = {} if datasets is None else datasets
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        groups[_coarse_suite(r)][_options_key(r)].append(r)
    for coarse, by_options in groups.items():
        dataset_name, split, way, shot, query, seed, episodes = coarse
        identity: dict[str, str] = {}
        for key in by_options:
            identity[key] = key
            if len(by_options) == 1:
                continue
            try:
                cache = (dataset_name, key)
                if cache not in datasets:
                    datasets[cache] = load_dataset(dataset_name, data_root, **json.loads(key))
                identity[key] = "episodes:" + suite_fingerprint(datasets[cache], split, int(way), int(shot),
                                                                int(query), int(seed), int(episodes))
            except (FewShotError, TypeError, ValueError, OSError):
                pass  # cannot rebuild the episodes: keep the suite apart, its title says why
        merged: dict[str, list[str]] = defaultdict(list)  # identity -> its option sets
        for key, ident in identity.items():
            merged[ident].append(key)
        base = f"{dataset_name}/{split} {way}-way {shot}-shot, {episodes} episodes (seed {seed})"
        for ident, keys in merged.items():
            title = base
            if len(merged) > 1:  # never two panels with one title: say how their episodes differ
                title += "; " + " or ".join(_describe_options(json.loads(k)) for k in sorted(keys))
            for key in keys:
                for r in by_options[key]:
                    r["suite"] = json.dumps([*coarse, ident], default=str)
                    r["suite_title"] = title


def _describe_options(options: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(options.items())) or "no dataset options"


def evaluation_records(store, runs: Sequence[RunInfo], *, data_root=None, datasets: dict | None = None) -> list[dict]:
    """The store's evaluate records of ``runs``, plus untrained baselines on their datasets.

    Each record gains a ``label`` (its method, with the run's ``[folder]`` when the run's
    label has one) and a suite (:func:`assign_suites`). A suite evaluated twice for the
    same label keeps its latest record.
    """
    by_dir = {str(r.path): r for r in runs}
    dataset_names = {r.config.dataset for r in runs}
    rows = [r for r in store.list(kind="evaluate")
            if (r["run_dir"] in by_dir or (r["run_dir"] is None and r["dataset"] in dataset_names))
            and r["metrics"].get("metric", CLASSIFICATION.metric) in COMPARED]
    for r in rows:
        run = by_dir.get(r["run_dir"])
        r["label"] = r["method"] + (_suffix(run) if run else "")
    assign_suites(rows, data_root, datasets)
    latest: dict[tuple, dict] = {}
    for r in rows:  # ordered by id: later records replace earlier ones
        latest[(r["label"], r["suite"])] = r
    return list(latest.values())


# -- figures' data --------------------------------------------------------------------------

@dataclass
class LearningCurves:
    curves: list[plots.Curve]
    title: str  # of the score panel: says whether it shows validation or training accuracy
    validated: list[str]
    unvalidated: list[str]


def learning_curves(runs: Sequence[RunInfo], colors: dict[str, str]) -> LearningCurves:
    curves = [plots.Curve(r.label, r.state["history"]["train"], r.state["history"]["val"], r.metric,
                          color=colors.get(r.label)) for r in runs]
    if not any(c.train or c.val for c in curves):
        raise Missing("no run has logged a training step yet")
    validated = [c.label for c in curves if len(c.val)]
    unvalidated = [c.label for c in curves if not len(c.val) and len(c.train)]
    score = "accuracy" if all(c.metric == "accuracy" for c in curves) else "score"
    if not unvalidated:
        title = f"validation {score} (band: 95% CI)"
    elif not validated:
        title = f"training-episode {score} (no validation split)"
    else:
        title = f"validation {score} (solid, band: 95% CI); training-episode {score} (dashed): no validation split"
    return LearningCurves(curves, title, validated, unvalidated)


def comparison(records: list[dict], colors: dict[str, str]) -> tuple[list[plots.Bars], list[dict]]:
    """Bars per suite (the suites with the most methods first, four at most) and a table
    with paired differences to each suite's best method. Each row says whether its result
    is transductive (:mod:`fewshot.evaluate`), and ``mixed`` when it is compared with a
    best result of the other kind."""
    by_suite: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_suite[r["suite"]].append(r)
    if not by_suite:
        raise Missing("no evaluate records for these runs: run `fewshot evaluate RUN` (and e.g. "
                      "`fewshot evaluate pixel-ncm --dataset D`) with the same --runs")
    suites = sorted(by_suite, key=lambda s: (-len(by_suite[s]), by_suite[s][0]["suite_title"], s))[:4]
    panels, table = [], []
    for suite in suites:
        rows = sorted(by_suite[suite], key=lambda r: -r["metrics"]["accuracy"])
        title = rows[0]["suite_title"]
        shown = [r["label"] + (" (transductive)" if r["metrics"].get("transductive") else "") for r in rows]
        panels.append(plots.Bars(title, shown, [r["metrics"]["accuracy"] for r in rows],
                                 [r["metrics"]["ci95"] for r in rows], colors=[colors[r["label"]] for r in rows]))
        best = rows[0]["metrics"].get("per_episode")
        for r in rows:
            other = r["metrics"].get("per_episode")
            diff = (confidence_interval(np.subtract(other, best)) if r is not rows[0] and best and other
                    and len(best) == len(other) else None)
            transductive = bool(r["metrics"].get("transductive"))
            table.append({"suite": title, "label": r["label"], "accuracy": r["metrics"]["accuracy"],
                          "ci95": r["metrics"]["ci95"], "episodes": r["metrics"].get("episodes"),
                          "paired_difference": diff, "best": r is rows[0], "record": r["id"],
                          "color": colors[r["label"]], "transductive": transductive,
                          "query": r["metrics"].get("query"),
                          # a transductive result against an inductive one is not like for like: say so
                          "mixed": transductive != bool(rows[0]["metrics"].get("transductive"))})
    return panels, table


LINESTYLES = ("-", "--", ":", "-.")


def against(records: list[dict], varied: str, colors: dict[str, str]) -> list[plots.Series]:
    """Accuracy against ``varied`` ("shot" or "way"), one line per method and fixed other
    setting: the method's colour, a line style per fixed setting."""
    fixed = "way" if varied == "shot" else "shot"
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in records:
        key = (r["label"], r["dataset"], r["split"], r["config"].get(fixed))
        groups[key][int(r["config"][varied])] = r  # later records replace earlier ones
    lines = {k: v for k, v in groups.items() if len(v) >= 2}
    if not lines:
        raise Missing(f"no method was evaluated at two or more values of --{varied} on one dataset: "
                      f"run `fewshot evaluate RUN --{varied} N` for a few N")
    several_datasets = len({k[1] for k in lines}) > 1
    styles: dict[tuple, str] = {}
    series = []
    for (label, dataset, _, value), points in sorted(lines.items(), key=lambda kv: str(kv[0]))[:10]:
        xs = sorted(points)
        name = f"{label}, {value}-{fixed}" + (f" ({dataset})" if several_datasets else "")
        style = styles.setdefault((dataset, value), LINESTYLES[len(styles) % len(LINESTYLES)])
        series.append(plots.Series(name, xs, [points[x]["metrics"]["accuracy"] for x in xs],
                                   [points[x]["metrics"]["ci95"] for x in xs], color=colors[label],
                                   linestyle=style))
    return series


# -- embeddings -------------------------------------------------------------------------------

def _step_of(file_name: str) -> int | None:
    """N of ``checkpoint-N.safetensors`` or ``best-N.safetensors``."""
    digits = file_name.rsplit("-", 1)[-1].split(".", 1)[0]
    return int(digits) if digits.isdigit() else None


def embed(method, images, device=None) -> np.ndarray:
    """Backbone features of ``images``, flattened to ``(n, d)``, in the method's test mode,
    computed on ``device`` (default: where the method is) and returned on the host.

    Train-mode methods (MAML family) normalise with the batch's own statistics, as at
    test time; they embed on a copy so no running statistic changes (so does a method
    that lives on another device).
    """
    import torch

    from ..devices import module_device

    if method.backbone is None:
        raise Missing(f"{method.name} has no backbone to embed with")
    device = module_device(method) if device is None else device
    train_mode = method.test_mode == "train"
    if train_mode or module_device(method) != device:
        method = copy.deepcopy(method).to(device)
    was_training = method.training
    method.train(train_mode)
    try:
        with torch.no_grad():
            return method.features(images.to(device)).to("cpu", torch.float64).numpy()
    finally:
        method.train(was_training)


def _project(features: np.ndarray, projection: str) -> np.ndarray:
    if projection == "tsne":
        from sklearn.manifold import TSNE

        perplexity = max(2.0, min(30.0, (len(features) - 1) / 3))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=0).fit_transform(features)
    from sklearn.decomposition import PCA

    return PCA(2, random_state=0).fit_transform(features)


def checkpoints(run: RunInfo) -> list[tuple[str, str | None]]:
    """The weights an embedding row shows, as ``(title, which)``: the initial weights
    (``which`` None), then "best" only when a validation chose it, then the last."""
    kept = []
    best = run.state.get("best") or {}
    last = run.state.get("checkpoint")
    has_best = bool(best.get("file")) and (run.path / best["file"]).exists()
    if run.validated and has_best:
        kept.append((f"best (step {best['step']})", "best"))
    # best-N and checkpoint-N hold the same weights: the best is kept at a validation
    # and the checkpoint that follows it is written at the same step.
    if last and not (run.validated and has_best and _step_of(best["file"]) == _step_of(last)):
        title = f"last (step {_step_of(last)})" if run.validated else \
            f"last (step {_step_of(last)}; no validation, so no best)"
        kept.append((title, "last"))
    elif not last and has_best and not run.validated:
        kept.append((f"step {best['step']} (no validation, so no best)", "best"))
    return [("initial weights", None), *kept]


def embedding_row(run: RunInfo, data_root, split: str, projection: str, datasets: dict,
                  device=None) -> list[plots.EmbeddingPanel]:
    """One panel per kept checkpoint (:func:`checkpoints`)."""
    from sklearn.metrics import silhouette_score

    from ..data import EpisodeSampler, load_dataset
    from ..runs import build_model, load_run

    config = run.config
    key = (config.dataset, json.dumps(config.dataset_options, sort_keys=True))
    if key not in datasets:
        datasets[key] = load_dataset(config.dataset, data_root, **config.dataset_options)
    dataset = datasets[key]
    classes = dataset.split_classes(split)
    way = min(config.way, 10, len(classes))
    query = max(1, min(15, int(dataset.class_counts[classes].min()) - config.shot))
    episode = EpisodeSampler(dataset, split, way, config.shot, query, seed=0).episode(0)
    panels = []
    for title, which in checkpoints(run):
        method = (build_model(config, dataset.image_shape, dataset.split_classes(config.train_split)) if which is None
                  else load_run(run.path, which)[1])
        features = embed(method, episode.query_x, device)
        labels = episode.query_y.numpy()
        separation = silhouette_score(features, labels) if way > 1 else math.nan
        panels.append(plots.EmbeddingPanel(f"{title}\nsilhouette {separation:.2f}", _project(features, projection),
                                           labels, [dataset.class_names[c] for c in episode.classes]))
    return panels


def embedding_rows(runs: Sequence[RunInfo], data_root, split: str, projection: str, notes: list[str],
                   datasets: dict, device=None) -> list[tuple[str, list[plots.EmbeddingPanel]]]:
    rows = []
    for run in runs[:6]:
        try:
            rows.append((run.label, embedding_row(run, data_root, split, projection, datasets, device)))
        except (FewShotError, Missing) as e:
            notes.append(f"{run.label}: no embedding map ({e})")
    if not rows:
        raise Missing("; ".join(notes) or "no run to embed")
    return rows


# -- model selection ------------------------------------------------------------------------

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


def selection_from_runs(runs: Sequence[RunInfo], records: list[dict]) -> dict[str, list]:
    """Selection by validation: each run's best validation accuracy predicts its test
    accuracy; a task is a suite on which two or more such runs were evaluated."""
    val = {str(r.path): r.state["best"]["accuracy"] for r in runs
           if r.state.get("best") and r.state["best"].get("accuracy") is not None}
    rows = [{"task": r["suite_title"], "predicted": val[r["run_dir"]], "true": r["metrics"]["accuracy"]}
            for r in records if r["run_dir"] in val and "+" not in r["method"]]
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row["task"]] += 1
    rows = [row for row in rows if counts[row["task"]] >= 2]
    if not rows:
        raise Missing("no model-selection results: pass --selection FILE, or report two or more runs with a "
                      "validation split that were evaluated on the same test suite")
    return selection_from_rows(rows)


def model_selection(chosen: dict | None, runs: Sequence[RunInfo], records: list[dict]) -> dict:
    arrays = chosen or selection_from_runs(runs, records)
    return {**arrays, "source": "file" if chosen else "validation"}


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None: report.json is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, np.generic):
        return finite(value.item())
    return value

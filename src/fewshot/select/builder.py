"""The meta-dataset of model selection: many tasks × every zoo model, with the ground truth.

For each task (an episode from held-out classes) and each model of a :class:`~fewshot.select.zoo.Zoo`
the builder records one row:

* **task meta-features** (``task.*``): way, shot, support size, channels, pixel
  statistics (mean, spread, ink), and how separable the classes already are in pixel
  space (the task's difficulty before any model);
* **model meta-features** (``model.*``): parameter count, feature width, number of
  source classes, architecture, objective and source data (one-hot), whether it was
  trained at all;
* **scores** (``score.*``): every transferability score of :mod:`fewshot.select.scores`
  on the model's features of the support set (LEEP and NCE from its source head, for
  models that have one over their source classes);
* **the ground truth**: query accuracy (%) after a linear probe (scikit-learn's
  logistic regression on frozen features, :func:`~fewshot.methods.transfer.logistic_probe`)
  and after fine-tuning (:class:`~fewshot.methods.transfer.FineTune`, its defaults: 50
  steps of SGD on the whole network);
* **costs**, in CPU seconds: support features, scores (together: what selection costs),
  linear probe (beyond the support features: the fit and the query features),
  fine-tuning (what trying every model costs).

Tasks come from classes no zoo model was trained on (:data:`GROUPS`): Omniglot's
evaluation alphabets, in three groups by script family (the zoo trains on background
alphabets), upright digits 5-9, and rotated digits 5-9 (the digits models train on 0-4).
A task's group is the unit of leave-one-group-out evaluation. Task ``i`` is fully
determined by (sources, seed, i): its group is ``i`` modulo the number of groups, its
way and shot are drawn from a generator seeded with ``(seed, i)``, and its episode is
episode ``i`` of an :class:`~fewshot.data.EpisodeSampler` of that group with the same
seed, so asking for more tasks later extends the same list.

**Storage.** One SQLite file (by default ``ZOO/meta.sqlite``), write-ahead log, one
transaction per row, ``UNIQUE(task, model)`` and ``INSERT OR IGNORE``: a build killed
at any moment (even SIGKILL) resumes with exactly the missing pairs and never
duplicates one. The build settings are stored with the rows; resuming with other
settings is refused. A model whose weights changed since its rows were computed has
them recomputed.

**Parallel.** With ``workers > 1`` the (task, model) work is spread over processes
(``ProcessPoolExecutor``, spawn, one thread each): the main process lists the pairs not
yet done, grouped by task, and each idle worker takes the next task and computes its
missing models (features, task meta-features and the episode are computed once per
task). Rows go straight from the workers to the database.
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import sqlite3
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import ConfigError, FewShotError, TrainingError
from ..store import connect, open_database
from ..models.pretrained import Pretrained
from .zoo import EVALUATION_GROUPS, Zoo, alphabet_splits, bn_mode

META_FORMAT = "fewshot-meta"
META_VERSION = 1
TARGETS = ("finetune", "linear-probe")


@dataclass(frozen=True)
class Group:
    """Where a group's tasks come from and what shapes they take."""

    dataset: str                 # "omniglot" or "digits"
    ways: tuple[int, ...]
    shots: tuple[int, ...]
    query: int


# Held-out task groups by source. Way × shot is capped (MAX_SUPPORT) to keep each
# fine-tuning in the ground truth within about a CPU-second.
GROUPS: dict[str, dict[str, Group]] = {
    "omniglot": {name: Group("omniglot", (2, 5, 10, 20), (1, 2, 5), 10) for name in EVALUATION_GROUPS},
    "digits": {"digits": Group("digits", (2, 3, 5), (1, 2, 5, 10), 15),
               "digits-rot": Group("digits", (2, 5, 10), (1, 2, 5), 15)},
}
SOURCES = tuple(GROUPS)
MAX_SUPPORT = 50
CANONICAL_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class TaskSpec:
    """Task ``index`` of a meta-dataset: its id, group and episode shape."""

    task: str
    group: str
    index: int
    way: int
    shot: int
    query: int


def task_groups(sources: Sequence[str]) -> dict[str, Group]:
    unknown = sorted(set(sources) - set(GROUPS))
    if unknown or not sources:
        raise ConfigError(f"unknown task source(s) {', '.join(unknown) or '(none given)'}; choose from: "
                          f"{', '.join(SOURCES)}")
    return {name: group for source in sorted(set(sources)) for name, group in GROUPS[source].items()}


def sample_tasks(count: int, sources: Sequence[str] = SOURCES, seed: int = 0) -> list[TaskSpec]:
    """Tasks ``0 .. count-1``: groups in turn, way and shot drawn per task (see the module docstring)."""
    groups = task_groups(sources)
    names = list(groups)
    tasks = []
    for i in range(int(count)):
        name = names[i % len(names)]
        group = groups[name]
        rng = np.random.default_rng((seed, i))
        way = int(rng.choice(group.ways))
        shots = [s for s in group.shots if way * s <= MAX_SUPPORT] or [min(group.shots)]
        shot = int(rng.choice(shots))
        tasks.append(TaskSpec(f"{name}/{i:05d}", name, i, way, shot, group.query))
    return tasks


class TaskSource:
    """Episodes of the held-out groups, datasets loaded on first use and kept."""

    def __init__(self, sources: Sequence[str], seed: int = 0, data_root: str | Path | None = None):
        self.groups, self.seed, self.data_root = task_groups(sources), int(seed), data_root
        self._datasets: dict[str, Any] = {}
        self._samplers: dict[tuple, Any] = {}

    def dataset(self, kind: str):
        from ..data import load_dataset

        if kind not in self._datasets:
            if kind == "omniglot":
                data = load_dataset("omniglot", self.data_root, image_size=28, split_scheme="background")
                data.splits.update(alphabet_splits(data, EVALUATION_GROUPS, upright_only=True))
            else:
                # Digits 5-9, which no zoo model trains on: upright, and rotated as classes of their own.
                data = load_dataset("digits", self.data_root, rotations=True)
                data.splits.update({"digits": [d * 4 for d in range(5, 10)],
                                    "digits-rot": [d * 4 + k for d in range(5, 10) for k in (1, 2, 3)]})
            self._datasets[kind] = data
        return self._datasets[kind]

    def episode(self, task: TaskSpec):
        from ..data import EpisodeSampler

        key = (task.group, task.way, task.shot, task.query)
        if key not in self._samplers:
            data = self.dataset(self.groups[task.group].dataset)
            self._samplers[key] = EpisodeSampler(data, task.group, task.way, task.shot, task.query, seed=self.seed)
        return self._samplers[key].episode(task.index)


# -- meta-features ---------------------------------------------------------------------------------

def describe_task(support_x: torch.Tensor, support_y: torch.Tensor) -> dict[str, float]:
    """Task meta-features of a support set (images in [0, 1]), before any model sees it.

    Pixel statistics are taken at one canonical size (grey, 28×28), so that they do not
    depend on the resolution a dataset or a user's folder happens to come in.
    """
    x = fit_images(support_x.detach(), CANONICAL_SHAPE).to(torch.float64).flatten(1)
    y = support_y.detach()
    way = int(y.max()) + 1 if len(y) else 0
    counts = torch.bincount(y, minlength=way)
    means = torch.zeros(way, x.shape[1], dtype=torch.float64).index_add_(0, y, x) / counts.clamp_min(1)[:, None]
    spread = (x - x.mean(0)).norm(dim=1).mean()
    between = torch.pdist(means).mean() if way > 1 else torch.tensor(0.0)
    # Between-class distance of the class means relative to the examples' spread: high when
    # the classes are told apart by their pixels alone (an easy task for any model).
    separation = float(between / spread) if spread > 0 else 0.0
    return {
        "task.way": float(way), "task.shot": float(counts.min()) if way else 0.0, "task.support": float(len(y)),
        "task.channels": float(support_x.shape[1]),
        "task.pixel_mean": float(x.mean()), "task.pixel_std": float(x.std()) if x.numel() > 1 else 0.0,
        "task.ink": float((x > 0.5).double().mean()), "task.pixel_separation": separation,
    }


_OBJECTIVES = {"baseline": "baseline", "baseline++": "baseline_pp", "protonet": "protonet", "maml": "maml",
               "fomaml": "maml", "random-init": "random"}
_ARCHITECTURES = ("conv4", "resnet12", "mlp")
_SOURCE_DATA = ("omniglot", "digits")


def describe_model(metadata: dict) -> dict[str, float]:
    """Model meta-features from a zoo model's metadata (missing facts count as 0)."""
    objective = _OBJECTIVES.get(metadata.get("objective") or "", "other")
    architecture = metadata.get("architecture") if metadata.get("architecture") in _ARCHITECTURES else "other"
    source = metadata.get("source") or {}
    dataset = source.get("dataset") if source.get("dataset") in _SOURCE_DATA else ("none" if not source else "other")
    out = {
        "model.parameters": float(metadata.get("parameters") or 0),
        "model.feature_dim": float(metadata.get("feature_dim") or 0),
        "model.source_classes": float(source.get("num_classes") or 0),
        "model.trained": 0.0 if objective == "random" else 1.0,
        "model.image_side": float((metadata.get("image_shape") or [0, 0, 0])[-1]),
        "model.batch_norm_per_task": 1.0 if bn_mode(metadata) == "batch" else 0.0,
    }
    out.update({f"model.objective.{o}": float(o == objective) for o in sorted(set(_OBJECTIVES.values())) + ["other"]})
    out.update({f"model.arch.{a}": float(a == architecture) for a in (*_ARCHITECTURES, "other")})
    out.update({f"model.source.{d}": float(d == dataset) for d in (*_SOURCE_DATA, "none", "other")})
    return out


# -- one (task, model) pair ---------------------------------------------------------------------------

def fit_images(x: torch.Tensor, image_shape: Sequence[int]) -> torch.Tensor:
    """Images resized (bilinear, antialiased when shrinking) and converted (grey <-> RGB) to ``image_shape``."""
    channels, height, width = (int(s) for s in image_shape)
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            x = x.mean(1, keepdim=True)
        else:
            raise ConfigError(f"cannot turn {x.shape[1]}-channel images into {channels}-channel ones")
    if tuple(x.shape[-2:]) != (height, width):
        shrink = height < x.shape[-2] or width < x.shape[-1]
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)
    return x.contiguous()


@torch.no_grad()
def extract(backbone: torch.nn.Module, x: torch.Tensor, bn: str) -> torch.Tensor:
    """Features of ``x``; ``bn="batch"`` normalises with the batch's own statistics on a copy
    (so the model's running statistics stay untouched)."""
    if bn == "batch":
        return copy.deepcopy(backbone).train()(x)
    backbone.eval()
    return backbone(x)


def source_probabilities(model: Pretrained, features: torch.Tensor) -> np.ndarray | None:
    """The source head's class probabilities, for models whose head covers their source
    classes (Baseline, Baseline++); None otherwise (e.g. MAML's head is per task)."""
    head, classes = model.head, (model.metadata.get("source") or {}).get("num_classes")
    spec = model.metadata.get("head") or {}
    if head is None or not classes or spec.get("out_features") != classes:
        return None
    with torch.no_grad():
        return torch.softmax(head(features).double(), dim=1).numpy()


def selection_row(model: Pretrained, support_x: torch.Tensor,
                  support_y: torch.Tensor) -> tuple[dict, dict, torch.Tensor]:
    """What selection knows about one model on one task: model meta-features and scores
    (``score.*``), their CPU costs, and the support features (reused by the probe)."""
    from .scores import compute_scores

    bn = bn_mode(model.metadata)
    start = time.process_time()
    sx = fit_images(support_x, model.metadata["image_shape"])
    features = extract(model.backbone, sx, bn)
    middle = time.process_time()
    scores = compute_scores(features.double().numpy(), support_y.numpy(), source_probabilities(model, features))
    end = time.process_time()
    row = {**describe_model(model.metadata), **{f"score.{k}": v for k, v in scores.items()}}
    return row, {"cpu_features": middle - start, "cpu_scores": end - middle}, features


def measure(model: Pretrained, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
            query_y: torch.Tensor, way: int, target: str, finetune: dict | None = None,
            support_features: torch.Tensor | None = None) -> tuple[float, float]:
    """Query accuracy (%) after adapting ``model`` to the support set, and its CPU seconds.

    ``target="linear-probe"``: logistic regression on frozen features (the defaults of
    FineTune's linear probe); ``"finetune"``: :func:`~fewshot.methods.transfer.wrap` with
    strategy ``finetune`` and ``finetune`` options (its defaults otherwise).
    """
    from ..methods.transfer import logistic_probe, wrap

    bn = bn_mode(model.metadata)
    shape = model.metadata["image_shape"]
    start = time.process_time()
    sx, qx = fit_images(support_x, shape), fit_images(query_x, shape)
    if target == "linear-probe":
        features = support_features if support_features is not None else extract(model.backbone, sx, bn)
        head = logistic_probe(features, support_y, way)
        with torch.no_grad():
            logits = head(extract(model.backbone, qx, bn))
    elif target == "finetune":
        method = wrap(model, "finetune", bn=bn, **(finetune or {}))
        predictor = method.adapt(sx, support_y, way)
        with torch.no_grad():
            logits = predictor(qx)
    else:
        raise ConfigError(f"unknown adaptation '{target}'; choose one of: {', '.join(TARGETS)}")
    accuracy = float((logits.argmax(1) == query_y).double().mean()) * 100.0
    return accuracy, time.process_time() - start


# -- the store -------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    task         TEXT NOT NULL,
    model        TEXT NOT NULL,
    grp          TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    features     TEXT NOT NULL,
    accuracy_lp  REAL NOT NULL,
    accuracy_ft  REAL NOT NULL,
    cpu_features REAL, cpu_scores REAL, cpu_lp REAL, cpu_ft REAL,
    worker       INTEGER,
    created      TEXT,
    UNIQUE (task, model)
);
"""
_ROW_COLUMNS = ("task", "model", "grp", "model_sha256", "features", "accuracy_lp", "accuracy_ft", "cpu_features",
                "cpu_scores", "cpu_lp", "cpu_ft", "worker", "created")


class MetaStore:
    """The meta-dataset's SQLite file: settings and one row per (task, model)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        open_database(self.path, SCHEMA).close()

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path)

    def settings(self) -> dict | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT value FROM settings WHERE key = 'build'").fetchone()
        return json.loads(row[0]) if row else None

    def claim_settings(self, settings: dict) -> None:
        """Store ``settings``, or check they are those the rows were built with."""
        text = json.dumps(settings, sort_keys=True)
        with closing(self._connect()) as db, db:
            db.execute("INSERT OR IGNORE INTO settings (key, value) VALUES ('build', ?)", (text,))
            stored = db.execute("SELECT value FROM settings WHERE key = 'build'").fetchone()[0]
        if json.loads(stored) != json.loads(text):
            differ = sorted(k for k in set(settings) | set(json.loads(stored))
                            if settings.get(k) != json.loads(stored).get(k))
            raise ConfigError(f"{self.path} was built with other settings ({', '.join(differ)} differ); "
                              f"resume with the same ones, or give another meta-dataset file")

    def cached(self, key: str) -> Any:
        """A value stored with :meth:`cache` (None if absent)."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT value FROM settings WHERE key = ?", (f"cache/{key}",)).fetchone()
        return json.loads(row[0]) if row else None

    def cache(self, key: str, value: Any) -> None:
        with closing(self._connect()) as db, db:
            db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                       (f"cache/{key}", json.dumps(value, sort_keys=True)))

    def insert(self, row: dict) -> bool:
        """Add one row unless its (task, model) is there already; True if added."""
        values = tuple(row.get(c) for c in _ROW_COLUMNS)
        with closing(self._connect()) as db, db:
            cursor = db.execute(f"INSERT OR IGNORE INTO rows ({', '.join(_ROW_COLUMNS)}) "
                                f"VALUES ({', '.join('?' * len(_ROW_COLUMNS))})", values)
            return cursor.rowcount == 1

    def done(self) -> dict[tuple[str, str], str]:
        """``{(task, model): model_sha256}`` of the rows present."""
        with closing(self._connect()) as db:
            return {(t, m): s for t, m, s in db.execute("SELECT task, model, model_sha256 FROM rows")}

    def delete(self, pairs: Iterable[tuple[str, str]]) -> None:
        with closing(self._connect()) as db, db:
            db.executemany("DELETE FROM rows WHERE task = ? AND model = ?", list(pairs))

    def count(self) -> int:
        with closing(self._connect()) as db:
            return int(db.execute("SELECT COUNT(*) FROM rows").fetchone()[0])

    def records(self, models: Sequence[str] | None = None) -> list[dict]:
        """Every stored row as a dict of its columns, ``features`` decoded."""
        with closing(self._connect()) as db:
            cursor = db.execute(f"SELECT {', '.join(_ROW_COLUMNS)} FROM rows ORDER BY task, model")
            out = [dict(zip(_ROW_COLUMNS, r)) for r in cursor]
        wanted = set(models) if models is not None else None
        for r in out:
            r["features"] = json.loads(r["features"])
        return [r for r in out if wanted is None or r["model"] in wanted]

    def rows(self, target: str = "finetune", models: Sequence[str] | None = None) -> list[dict]:
        """The rows the meta-learner takes: ``task``, ``group``, ``model``, ``task.*``,
        ``model.*``, ``score.*`` and ``accuracy`` (query accuracy after ``target``, in %)."""
        if target not in TARGETS:
            raise ConfigError(f"unknown adaptation '{target}'; choose one of: {', '.join(TARGETS)}")
        key = "accuracy_ft" if target == "finetune" else "accuracy_lp"
        return [{"task": r["task"], "group": r["grp"], "model": r["model"], **r["features"], "accuracy": r[key]}
                for r in self.records(models)]


def complete(rows: Sequence[dict], models: Sequence[str]) -> list[dict]:
    """The rows of ``models`` on the tasks that have a row for every one of them (a build
    that is still running, or was stopped, leaves some tasks partly done)."""
    wanted = set(models)
    have: dict[str, set] = {}
    for r in rows:
        if r["model"] in wanted:
            have.setdefault(r["task"], set()).add(r["model"])
    full = {t for t, ms in have.items() if ms == wanted}
    return [r for r in rows if r["task"] in full and r["model"] in wanted]


def selection_costs(records: Sequence[dict]) -> dict[str, float]:
    """Mean CPU seconds per task, summed over the task's models: selecting (support
    features and scores of every model) against fine-tuning, or probing, every model."""
    per_task: dict[str, np.ndarray] = {}
    for r in records:
        costs = np.array([r["cpu_features"] + r["cpu_scores"], r["cpu_ft"], r["cpu_lp"]], dtype=np.float64)
        per_task[r["task"]] = per_task.get(r["task"], 0.0) + costs
    if not per_task:
        return {"tasks": 0}
    select, finetune, probe = np.mean(list(per_task.values()), axis=0)
    return {"tasks": len(per_task), "select_cpu_seconds": float(select), "finetune_all_cpu_seconds": float(finetune),
            "probe_all_cpu_seconds": float(probe),
            "finetune_over_select": float(finetune / select) if select > 0 else math.inf}


def prediction_errors(store: MetaStore, rows: Sequence[dict], make_learner, key: str) -> dict[str, float]:
    """Each model's RMSE of held-out predicted accuracy (leave-one-group-out over ``rows``):
    the uncertainty shown beside a prediction. Cached in the store under ``key``."""
    from .metalearner import leave_one_group_out

    cached = store.cached(key)
    if cached is not None:
        return cached
    held = leave_one_group_out(list(rows), make_learner)
    rmse = np.sqrt(np.nanmean((held.predicted - held.true) ** 2, axis=0))
    errors = {model: float(e) for model, e in zip(held.models, rmse)}
    store.cache(key, errors)
    return errors


def default_meta_path(zoo: Zoo | str | Path) -> Path:
    return (zoo.root if isinstance(zoo, Zoo) else Path(zoo)) / "meta.sqlite"


def open_meta(zoo: Zoo, path: str | Path | None = None) -> MetaStore:
    """The meta-dataset of ``zoo``, which must exist (``fewshot select build`` makes it)."""
    path = Path(path) if path else default_meta_path(zoo)
    if not path.exists():
        raise ConfigError(f"no meta-dataset at {path}; build it with `fewshot select build --zoo {zoo.root}`")
    return MetaStore(path)


# -- the build ---------------------------------------------------------------------------------------

@dataclass
class BuildSettings:
    """What defines a meta-dataset's rows (stored with them; a resume must match)."""

    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    seed: int = 0
    finetune: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": META_FORMAT, "version": META_VERSION, "sources": sorted(self.sources), "seed": self.seed,
                "finetune": self.finetune, "max_support": MAX_SUPPORT}


class _Job:
    """The work of one process: episodes, models and the store, each opened once."""

    def __init__(self, zoo_root: str, meta_path: str, settings: dict, data_root: str | None, worker: int):
        self.zoo = Zoo(zoo_root)
        self.store = MetaStore(meta_path)
        self.settings = settings
        self.source = TaskSource(settings["sources"], settings["seed"], data_root)
        self.worker = worker
        self._models: dict[str, tuple[Pretrained, str]] = {}

    def model(self, name: str) -> tuple[Pretrained, str]:
        if name not in self._models:
            self._models[name] = (self.zoo.load(name), self.zoo.entry(name)["sha256"])
        return self._models[name]

    def run(self, task: TaskSpec, models: Sequence[str]) -> int:
        """Compute and store the rows of ``task`` for ``models``; returns how many were added."""
        episode = self.source.episode(task)
        described = describe_task(episode.support_x, episode.support_y)
        added = 0
        for name in models:
            model, sha = self.model(name)
            try:
                row, costs, features = selection_row(model, episode.support_x, episode.support_y)
                args = (model, episode.support_x, episode.support_y, episode.query_x, episode.query_y, episode.way)
                acc_lp, cpu_lp = measure(*args, "linear-probe", support_features=features)
                acc_ft, cpu_ft = measure(*args, "finetune", self.settings["finetune"])
            except FewShotError as e:
                raise type(e)(f"task {task.task}, model {name}: {e}") from None
            added += self.store.insert({
                "task": task.task, "model": name, "grp": task.group, "model_sha256": sha,
                "features": json.dumps({**described, **row}, sort_keys=True), "accuracy_lp": acc_lp,
                "accuracy_ft": acc_ft, **costs, "cpu_lp": cpu_lp, "cpu_ft": cpu_ft, "worker": self.worker,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return added


_WORKER: dict[str, _Job] = {}


def _init_worker(zoo_root: str, meta_path: str, settings: dict, data_root: str | None) -> None:
    # One thread per process: the processes are the parallelism, and tiny models lose
    # more to a busy thread pool than they gain from it.
    torch.set_num_threads(1)
    _WORKER["job"] = _Job(zoo_root, meta_path, settings, data_root, os.getpid())


def _run_in_worker(task: TaskSpec, models: list[str]) -> int:
    return _WORKER["job"].run(task, models)


@dataclass
class BuildResult:
    """What a build did: rows added now and in all, processes, wall and CPU seconds."""

    added: int
    total: int
    tasks: int
    models: int
    workers: int
    seconds: float
    cpu_seconds: float
    path: Path

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def build_meta_dataset(zoo: Zoo | str | Path, tasks: int = 100, *, path: str | Path | None = None,
                       sources: Sequence[str] = SOURCES, seed: int = 0, workers: int = 1,
                       finetune: dict | None = None, models: Sequence[str] | None = None,
                       data_root: str | Path | None = None, progress: bool = True) -> BuildResult:
    """Build (or resume, or extend) the meta-dataset of ``zoo``: ``tasks`` tasks × its models.

    ``workers`` processes share the work (1: this process alone). ``finetune`` options
    go to the fine-tuning of the ground truth. ``models`` restricts the build to some of
    the zoo's models. Returns a :class:`BuildResult`; CPU seconds include the workers'.
    """
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
    if int(workers) < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if int(tasks) < 1:
        raise ConfigError(f"the meta-dataset needs at least one task, got {tasks}")
    names = list(models) if models is not None else zoo.names()
    for name in names:
        zoo.check(name)  # a broken entry fails now, in one line, not in a worker
    if not names:
        raise ConfigError(f"the zoo {zoo.root} holds no models; add some with `fewshot zoo add` or `fewshot zoo build`")
    path = Path(path) if path else default_meta_path(zoo)
    settings = BuildSettings(sorted(set(sources)), int(seed), dict(finetune or {})).to_dict()
    if finetune:
        from ..methods.transfer import FineTune

        FineTune(torch.nn.Identity(), "finetune", **finetune)  # reject bad options here, not per row
    store = MetaStore(path)
    store.claim_settings(settings)
    specs = sample_tasks(tasks, settings["sources"], settings["seed"])
    shas = {name: zoo.entry(name)["sha256"] for name in names}
    done = store.done()
    stale = [pair for pair, sha in done.items() if pair[1] in shas and sha != shas[pair[1]]]
    store.delete(stale)  # rows of a model whose weights changed are recomputed
    done = {pair for pair in done if pair not in set(stale)}
    todo = [(t, [m for m in names if (t.task, m) not in done]) for t in specs]
    todo = [(t, ms) for t, ms in todo if ms]
    pairs = sum(len(ms) for _, ms in todo)

    start, cpu0, children0 = time.perf_counter(), time.process_time(), _children_cpu()
    added = 0
    with tqdm(total=len(specs) * len(names), initial=len(specs) * len(names) - pairs, unit="pair",
              desc=f"meta-dataset ({workers} process{'es' if workers > 1 else ''})", disable=not progress,
              dynamic_ncols=True) as bar:
        if workers == 1:
            # One thread, as each worker of a parallel build: the same work, comparable times.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                job = _Job(str(zoo.root), str(path), settings, str(data_root) if data_root else None, os.getpid())
                for task, ms in todo:
                    added += job.run(task, ms)
                    bar.update(len(ms))
            finally:
                torch.set_num_threads(threads)
        elif todo:
            import multiprocessing
            from concurrent.futures.process import BrokenProcessPool

            context = multiprocessing.get_context("spawn")
            try:
                with ProcessPoolExecutor(int(workers), mp_context=context, initializer=_init_worker,
                                         initargs=(str(zoo.root), str(path), settings,
                                                   str(data_root) if data_root else None)) as pool:
                    futures = {pool.submit(_run_in_worker, task, ms): len(ms) for task, ms in todo}
                    for future in as_completed(futures):
                        added += future.result()
                        bar.update(futures[future])
            except BrokenProcessPool:
                raise TrainingError(f"a worker process of the meta-dataset build died (killed, or out of memory); "
                                    f"the rows it finished are in {path}: run the same command again to "
                                    f"resume") from None
    cpu = time.process_time() - cpu0 + _children_cpu() - children0
    return BuildResult(added, store.count(), len(specs), len(names), int(workers), time.perf_counter() - start,
                       cpu, path)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- selecting for a new task ----------------------------------------------------------------------

def describe_candidates(zoo: Zoo, support_x: torch.Tensor, support_y: torch.Tensor,
                        models: Sequence[str] | None = None, task: str = "new-task",
                        group: str = "new") -> tuple[list[dict], dict[str, float]]:
    """The rows the builder would record for a new task's support set, minus the ground
    truth: one per zoo model. Returns them and each model's selection cost (CPU seconds)."""
    described = describe_task(support_x, support_y)
    rows, costs = [], {}
    for name in models if models is not None else zoo.names():
        row, cost, _ = selection_row(zoo.load(name), support_x, support_y)
        rows.append({"task": task, "group": group, "model": name, **described, **row})
        costs[name] = cost["cpu_features"] + cost["cpu_scores"]
    return rows, costs


def cross_validated_accuracy(model: Pretrained, support_x: torch.Tensor, support_y: torch.Tensor, way: int,
                             target: str = "finetune", finetune: dict | None = None,
                             folds: int = 5) -> tuple[float, float]:
    """Accuracy (%) of adapting ``model``, measured on the support set alone by stratified
    folds (:func:`~fewshot.methods.transfer.cv_folds`; at 1 shot, leave-one-out with an
    augmented copy of the held-out example), and its CPU seconds. Slightly pessimistic:
    each fold adapts on part of the support set."""
    from ..data.augment import jitter
    from ..methods.transfer import cv_folds

    generator = torch.Generator().manual_seed(0)
    correct, total, cpu = 0.0, 0, 0.0
    for train, held in cv_folds(support_y, folds):
        real, copies = train[train >= 0], [-1 - int(i) for i in train[train < 0]]
        tx = torch.cat([support_x[real]] + [jitter(support_x[i], generator)[None] for i in copies])
        ty = torch.cat([support_y[real]] + [support_y[i:i + 1] for i in copies])
        accuracy, seconds = measure(model, tx, ty, support_x[held], support_y[held], way, target, finetune)
        correct += accuracy * len(held)
        total += len(held)
        cpu += seconds
    return correct / max(total, 1), cpu


__all__ = ["BuildResult", "BuildSettings", "GROUPS", "Group", "MetaStore", "SOURCES", "TARGETS", "TaskSource",
           "TaskSpec", "build_meta_dataset", "complete", "cross_validated_accuracy", "default_meta_path",
           "describe_candidates", "describe_model", "describe_task", "extract", "fit_images", "measure", "open_meta",
           "prediction_errors", "sample_tasks", "selection_costs", "selection_row", "source_probabilities",
           "task_groups"]

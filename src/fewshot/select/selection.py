"""Rank a zoo's models for a user's task, and verify the ranking by adapting the top models.

What ``fewshot select --support FOLDER [--verify K]`` does, as a library: the
meta-learner (fitted on the zoo's meta-dataset, else the one shipped with fewshot,
:mod:`.shipped`) predicts each model's query accuracy after adaptation from the task's
support set; verification measures the top models for
real (on a query folder, else by cross-validation on the support set) and records the
prediction's error in the run store, so the meta-learner's error can be followed over
time (:func:`verification_history`, :func:`running_error`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .index import Zoo
from .measure import cross_validated_accuracy, measure
from .metafeatures import describe_candidates
from .metalearner import MetaLearner
from .metastore import complete, default_meta_path, open_meta
from .metrics import tiebreak_keys
from .shipped import load_shipped
from .uncertainty import prediction_intervals

VERIFY_KIND = "select-verify"  # the run-store kind of a verification record


def load_task_folder(path: str | Path, zoo: Zoo, data_root: str | Path | None = None):
    """A folder of class sub-folders as ``(images in [0, 1], labels, class names)``, decoded
    at the largest input the zoo's models take (each model gets them resized)."""
    from ..data import load_dataset, to_float_images

    shapes = [e.get("image_shape") or [1, 28, 28] for e in zoo.entries()]
    channels = 3 if any(s[0] == 3 for s in shapes) else 1
    size = max(max(s[1], s[2]) for s in shapes)
    data = load_dataset("folder", data_root, path=str(path), channels=channels, image_size=max(size, 4))
    return to_float_images(data.images), data.labels, data.class_names


def verification_history(store, zoo_root: str | None = None) -> list[dict]:
    """The run store's verification records, oldest first; only ``zoo_root``'s if given."""
    runs = store.list(kind=VERIFY_KIND)
    return [r for r in runs if zoo_root is None or r["config"].get("zoo") == zoo_root]


def running_error(history: list[dict]) -> dict:
    """The meta-learner's error (predicted − measured, in points) over ``history``."""
    errors = np.array([r["metrics"]["error"] for r in history], dtype=np.float64)
    if not len(errors):
        return {"verifications": 0}
    last = errors[-10:]
    return {"verifications": int(len(errors)), "rmse": float(np.sqrt((errors ** 2).mean())),
            "mean_error": float(errors.mean()), "mean_absolute_error": float(np.abs(errors).mean()),
            "rmse_last_10": float(np.sqrt((last ** 2).mean()))}


def select_models(zoo: Zoo | str | Path, support: str | Path, *, target: str = "finetune",
                  meta: str | Path | None = None, verify: int = 0, query: str | Path | None = None,
                  runs: str | Path | None = None, data_root: str | Path | None = None) -> dict:
    """Rank ``zoo``'s models for the task whose labelled images are the folder ``support``.

    The ranking meta-learner orders the models (ties broken at random, seeded); beside each
    stands its predicted accuracy and a calibrated 90 % interval from the held-out errors
    of that prediction on the meta-dataset (:mod:`.uncertainty`). The meta-learner is fitted
    on the zoo's own meta-dataset (``meta``, default ``ZOO/meta.sqlite``, which ``fewshot
    select build`` makes); when there is none and none is named, the shipped one ranks
    (:mod:`.shipped`): one interval for every model (its errors on models and task groups
    it never saw), and each entry's ``outside_training`` names the meta-features outside
    the ranges it was trained on. ``meta_learner`` says which learner ranked.

    Returns a dict: the task (``way``, ``images``, ``shots``), ``ranking`` (rank, model,
    ``rank_score`` (its mean chance of beating each other model), predicted accuracy, its
    held-out RMSE as ``uncertainty``, ``interval`` (low, high) with its ``coverage``,
    selection CPU seconds), the
    selection's cost against fine-tuning every model, and with ``verify`` = K > 0 the
    top K measured for real (``measured_accuracy``, ``protocol``) plus ``monitor``, the
    meta-learner's running error over every verification recorded in the run store
    ``runs`` for this zoo.
    """
    from ..store import RunStore

    if verify is not None and verify < 0:
        raise ConfigError(f"--verify takes a number of models, at least 0; got {verify}")
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
    models = zoo.names()
    if not models:
        raise ConfigError(f"the zoo {zoo.root} holds no model yet; add some with `fewshot zoo add NAME SOURCE` "
                          f"(a run, an export or a Hugging Face folder) or `fewshot zoo build --zoo {zoo.root}`")
    # No meta-dataset of this zoo (and none named): the shipped meta-learner ranks it.
    shipped = load_shipped() if meta is None and not default_meta_path(zoo).exists() else None
    if shipped is not None:
        learner, rows, store = shipped.learner(target), [], None
    else:
        store = open_meta(zoo, meta)
        rows = complete(store.rows(target), models)
        if not rows:
            raise ConfigError(f"the meta-dataset {store.path} has no complete task yet; run `fewshot select build "
                              f"--zoo {zoo.root}` first")
    x, y, classes = load_task_folder(support, zoo, data_root)
    way = len(classes)
    shots = np.bincount(y.numpy(), minlength=way)

    start = time.process_time()
    candidates, costs = describe_candidates(zoo, x, y, models, task="user-task", group="user")
    if shipped is None:
        learner = MetaLearner("ranking", seed=0).fit(rows)
    score = learner.predict(candidates)
    predicted = learner.predict_accuracy(candidates)
    select_cpu = time.process_time() - start
    if shipped is not None:
        # One interval for every model: the shipped learner's errors on models it never saw.
        errors = {m: shipped.intervals[target] for m in models}
        outside = dict(zip(models, shipped.outside(candidates, target)))
        finetune_all = None
        learner_info = {"source": "shipped", "description": shipped.describe(), "file": str(shipped.path),
                        "trained_on": shipped.trained_on}
    else:
        # The ranking learner's accuracies are those of the regression learner (the same trees),
        # so that learner's held-out errors calibrate them.
        key = f"{target}/{len(rows)}/{','.join(models)}"
        errors = prediction_intervals(store, rows, lambda: MetaLearner("regression", seed=0), key)
        outside = {}
        finetune_all = sum(r["cpu_ft"] for r in store.records(models)) / max(len({r["task"] for r in rows}), 1)
        learner_info = {"source": "built", "description": f"the meta-learner fitted on {len(rows)} rows of "
                        f"{store.path.name}", "file": str(store.path)}
    order = np.lexsort((tiebreak_keys(score.shape), -score))
    ranking = []
    for i, j in enumerate(order):
        e, acc = errors.get(models[j]), float(predicted[j])
        interval = ([float(np.clip(acc - e["high"], 0, 100)), float(np.clip(acc - e["low"], 0, 100))]
                    if e else None)
        ranking.append({"rank": i + 1, "model": models[j], "rank_score": float(score[j]), "predicted_accuracy": acc,
                        "uncertainty": e["rmse"] if e else None, "interval": interval,
                        "coverage": e["coverage"] if e else None, "selection_cpu_seconds": costs[models[j]],
                        **({"outside_training": outside[models[j]]} if shipped is not None else {})})
    out = {"support": str(support), "way": way, "images": int(len(y)), "shots": [int(s) for s in shots],
           "target": target, "meta_rows": len(rows) if shipped is None else shipped.trained_on["rows"],
           "meta": learner_info["file"], "meta_learner": learner_info, "models": len(models),
           "selection_cpu_seconds": select_cpu, "finetune_all_cpu_seconds_estimate": finetune_all,
           "ranking": ranking}
    if verify:
        _verify(zoo, ranking[:verify], x, y, classes, target=target, query=query, support=support,
                meta_rows=out["meta_rows"], runs=runs, data_root=data_root)
        out["monitor"] = running_error(verification_history(RunStore(runs), str(zoo.root.resolve())))
    return out


def _verify(zoo: Zoo, entries: list[dict], x, y, classes, *, target: str, query, support, meta_rows: int,
            runs, data_root) -> None:
    """Measure each of ``entries`` for real and record the prediction's error in the run store."""
    from ..store import record_run

    way = len(classes)
    query_data = load_task_folder(query, zoo, data_root) if query else None
    if query_data is not None and list(query_data[2]) != list(classes):
        raise ConfigError(f"the query folder's classes ({', '.join(query_data[2])}) differ from the support "
                          f"folder's ({', '.join(classes)})")
    for entry in entries:
        model = zoo.load(entry["model"])
        if query_data is not None:
            measured, cpu = measure(model, x, y, query_data[0], query_data[1], way, target)
            protocol = "query folder"
        else:
            measured, cpu = cross_validated_accuracy(model, x, y, way, target)
            protocol = "cross-validation on the support set"
        entry.update(measured_accuracy=measured, verify_cpu_seconds=cpu, protocol=protocol)
        record_run(VERIFY_KIND, runs=runs, method=entry["model"], dataset="folder",
                   run_dir=str(Path(support).resolve()), cpu_seconds=cpu,
                   config={"zoo": str(zoo.root.resolve()), "support": str(Path(support).resolve()),
                           "query": str(Path(query).resolve()) if query else None,
                           "target": target, "way": way, "images": int(len(y)), "protocol": protocol,
                           "meta_rows": meta_rows},
                   metrics={"predicted": entry["predicted_accuracy"], "measured": measured,
                            "error": entry["predicted_accuracy"] - measured, "uncertainty": entry["uncertainty"],
                            "rank": entry["rank"]})


__all__ = ["VERIFY_KIND", "load_task_folder", "running_error", "select_models", "verification_history"]

"""``fewshot tune``: hyper-parameter search on the validation split, with Optuna.

Each trial is a short run of the one trainer (:class:`fewshot.train.Trainer`) in its
own folder, scored by its best validation accuracy on the fixed validation suite, and
recorded in the run store as a ``tune-trial``. The study itself lives in the runs
folder (``tune.sqlite``, Optuna's own schema), so a stopped search continues where it
was when the same command is run again. The best trial's settings are written as a
config file that ``fewshot train --config`` reads.

A search space is a list of specs ``NAME=RANGE``:

* ``lr=1e-4:1e-2:log``   a float, log-uniform (``:log`` also works for integers);
* ``inner_steps=1:5``    an integer from 1 to 5 (both ends integers);
* ``momentum=0.5:0.95``  a float, uniform;
* ``inner_lr=0.01,0.4``  one of a list of values (numbers, ``true``/``false``, words).

``NAME`` is a :class:`~fewshot.config.TrainConfig` key (``lr``, ``meta_batch``,
``train_way``, ...), ``backbone.KEY`` for a backbone option, or otherwise a method
option (``inner_lr``, ``inner_steps``, ``distance``; ``method.KEY`` says so explicitly).
A space whose every point can be tried within ``--trials`` is searched exhaustively
(Optuna's grid sampler); any other by the seeded TPE sampler.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import TrainConfig
from .data import load_dataset
from .errors import ConfigError, FewShotError, StoreError, TrainingError
from .io import FolderLock, json_or_text, parse_json, read_json, write_json
from .runs import remove_unfinished_run
from .store import record_run, runs_folder

CONFIG_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}
# Keys a search may not change: they define the problem, not how to solve it.
FIXED_KEYS = {"method", "dataset", "dataset_options", "val_split", "val_episodes", "way", "shot", "query", "seed"}


@dataclass
class Param:
    """One dimension of a search space."""

    name: str
    section: str  # "config", "method_options" or "backbone_options"
    key: str
    kind: str  # "float", "int" or "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list = field(default_factory=list)

    def suggest(self, trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.name, self.choices)

    def first(self) -> Any:
        """One value of the dimension (its first choice, or its low end), of the right type."""
        if self.kind == "choice":
            return self.choices[0]
        return int(self.low) if self.kind == "int" else self.low

    def grid(self) -> list | None:
        """Every value, for a discrete dimension; None for a continuous one."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            return list(range(int(self.low), int(self.high) + 1))
        return None


def _value(text: str) -> Any:
    return json_or_text(text, f"search-space value {text[:20]!r}")


def _is_int(text: str) -> bool:
    return text.strip().lstrip("+-").isdigit()


def parse_space(specs: Sequence[str]) -> list[Param]:
    """Parse ``NAME=RANGE`` specs (see the module docstring) into a search space."""
    space: dict[str, Param] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name or not text:
            raise ConfigError(f"search space '{spec}' must look like NAME=LOW:HIGH[:log] or NAME=A,B,...")
        if name.startswith("backbone."):
            section, key = "backbone_options", name.split(".", 1)[1]
        elif name.startswith("method."):
            section, key = "method_options", name.split(".", 1)[1]
        elif name in CONFIG_KEYS:
            section, key = "config", name
        else:
            section, key = "method_options", name
        if section == "config" and key in FIXED_KEYS | {"method_options", "backbone_options"}:
            raise ConfigError(f"'{key}' defines the problem and cannot be searched; give it as a flag")
        if name in space:
            raise ConfigError(f"'{name}' appears twice in the search space")
        if "," in text:
            choices = [_value(v.strip()) for v in text.split(",") if v.strip()]
            if len(choices) < 2:
                raise ConfigError(f"search space '{spec}': give two or more choices")
            space[name] = Param(name, section, key, "choice", choices=choices)
            continue
        parts = text.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise ConfigError(f"search space '{spec}' must look like NAME=LOW:HIGH[:log] or NAME=A,B,...")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ConfigError(f"search space '{spec}': {parts[0]} and {parts[1]} must be numbers") from None
        log = len(parts) == 3
        if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
            raise ConfigError(f"search space '{spec}': LOW must be below HIGH")
        if log and low <= 0:
            raise ConfigError(f"search space '{spec}': a log scale needs LOW > 0")
        kind = "int" if _is_int(parts[0]) and _is_int(parts[1]) else "float"
        space[name] = Param(name, section, key, kind, low, high, log)
    if not space:
        raise ConfigError("give a search space: --space NAME=LOW:HIGH[:log] or NAME=A,B,... (at least one)")
    return list(space.values())


def apply(base: TrainConfig, space: Sequence[Param], values: dict[str, Any]) -> TrainConfig:
    """``base`` with the values of one point of ``space``."""
    settings = base.to_dict()
    settings["method_options"], settings["backbone_options"] = dict(base.method_options), dict(base.backbone_options)
    for p in space:
        if p.section == "config":
            settings[p.key] = values[p.name]
        else:
            settings[p.section][p.key] = values[p.name]
    return TrainConfig.from_dict(settings)


@dataclass
class TuneResult:
    """A finished search: every trial, the best one, and the config file written for it."""

    study: str
    trials: list[dict]
    best: dict
    config_path: Path
    summary_path: Path


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("tuning needs optuna: pip install 'fewshot[tune]'") from None
    return optuna


def _sampler(optuna, space: Sequence[Param], trials: int, seed: int):
    grids = [p.grid() for p in space]
    if all(g is not None for g in grids) and math.prod(len(g) for g in grids) <= trials:
        return optuna.samplers.GridSampler({p.name: g for p, g in zip(space, grids)}, seed=seed)
    # TPE models the good and the bad trials once it has a few; short searches would
    # otherwise spend all their trials in Optuna's default of 10 random ones.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, trials // 2)))


def tune(base: TrainConfig, space: Sequence[Param], out: str | Path, *, trials: int = 20,
         runs: str | Path | None = None, data_root: str | Path | None = None, sampler_seed: int = 0,
         log: Callable[[str], None] | None = None) -> TuneResult:
    """Search ``space`` around ``base`` for the best validation accuracy, ``trials`` runs.

    Trial runs go to ``out/trials/trial-NNN``; ``out/best.json`` gets the best trial's
    config and ``out/tune.json`` a summary. Running again with the same ``out``
    continues the same study with ``trials`` more trials (with the same settings only).
    """
    from .runs import build_model

    optuna = _optuna()
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    out = Path(out)
    spec = {"base": base.to_dict(), "space": [dataclasses.asdict(p) for p in space], "sampler_seed": sampler_seed}
    spec = parse_json(json.dumps(spec), "the search space", ConfigError)  # as it reads back from tune-spec.json
    dataset = load_dataset(base.dataset, data_root, **base.dataset_options)
    val_split = base.val_split or "none"
    if val_split not in dataset.splits:
        raise ConfigError(f"tuning scores validation accuracy, but {dataset.name} has no split '{val_split}'; "
                          f"name one with --val-split (splits: {', '.join(dataset.splits)})")
    # A misspelt option should fail now, in one line, not after a study has begun.
    first = apply(base, space, {p.name: p.first() for p in space})
    build_model(first, dataset.image_shape, dataset.split_classes(first.train_split))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {out} ({e.strerror}); choose a writable --out") from None
    lock = FolderLock(out, "search folder")  # one search writes a folder at a time
    try:
        return _search(optuna, base, space, out, spec, dataset, trials, runs, sampler_seed, log)
    finally:
        lock.release()


def _search(optuna, base: TrainConfig, space: Sequence[Param], out: Path, spec: dict, dataset, trials: int,
            runs: str | Path | None, sampler_seed: int, log: Callable[[str], None] | None) -> TuneResult:
    from .train import Trainer

    saved = read_json(out / "tune-spec.json") if (out / "tune-spec.json").exists() else None
    if saved is not None and (not isinstance(saved, dict) or {k: v for k, v in saved.items() if k != "study"} != spec):
        raise ConfigError(f"{out} holds a search with other settings; choose another --out")
    if saved is None or not isinstance(saved.get("study"), str):
        # A new folder is a new study, even where a deleted folder of the same name had one:
        # its trials (and their best.json) went with that folder.
        spec["study"] = f"{out.resolve()}#{uuid.uuid4().hex[:12]}"
        write_json(out / "tune-spec.json", spec)
    else:
        spec["study"] = saved["study"]
    study_name = spec["study"]

    # One line per trial is ours to print: Optuna's own report of a failed trial is a
    # warning with the whole traceback, so only its errors are let through.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = f"sqlite:///{(runs_folder(runs) / 'tune.sqlite').resolve()}"
    from sqlalchemy.exc import SQLAlchemyError  # Optuna's storage layer

    try:
        runs_folder(runs).mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize",
                                    load_if_exists=True)
    except (SQLAlchemyError, optuna.exceptions.OptunaError, OSError) as e:  # a study that cannot be opened
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise StoreError(f"cannot open the tuning study in {storage.removeprefix('sqlite:///')} ({first}); "
                         "check that the runs folder is writable, or choose another --runs") from None
    _abandon_killed(optuna, study, out, log)
    # Seeded past the trials already drawn, so a continued search does not repeat its points.
    study.sampler = _sampler(optuna, space, trials, sampler_seed + len(study.trials))

    def objective(trial) -> float:
        values = {p.name: p.suggest(trial) for p in space}
        config = apply(base, space, values)
        run_dir = out / "trials" / f"trial-{trial.number:03d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trainer = Trainer(config, run_dir, dataset=dataset, runs=runs)
        metrics: dict[str, Any] = {"study": study_name, "trial": trial.number, "params": values}
        try:
            result = trainer.run(progress=False, record=False)
        except TrainingError as e:  # e.g. a learning rate that diverges: a bad point, not a broken search
            _record(log, trial.number, config=config.to_dict(), method=config.method, dataset=config.dataset,
                    split=config.val_split, seed=config.seed, run_dir=str(run_dir.resolve()), runs=runs,
                    metrics={**metrics, "error": str(e)})
            if log:
                log(f"trial {trial.number}: {_format(values)} -> failed: {e}")
            raise
        except FewShotError as e:  # a point the search cannot run at all ends it, in one line naming the trial
            raise type(e)(f"trial {trial.number} ({_format(values)}): {e}") from None
        if result.best_accuracy is None:
            raise ConfigError(f"trial {trial.number} has no validation accuracy to score (tune searches "
                              "classification methods)")
        metrics.update(val_accuracy=result.best_accuracy, val_ci95=result.best_ci95, steps=result.steps,
                       best_step=(trainer.state["best"] or {}).get("step"))
        _record(log, trial.number, config=config.to_dict(), method=config.method, dataset=config.dataset,
                split=config.val_split, seed=config.seed, run_dir=str(run_dir.resolve()), runs=runs,
                seconds=result.seconds, cpu_seconds=result.cpu_seconds, metrics=metrics)
        trial.set_user_attr("val_ci95", result.best_ci95)
        if log:
            log(f"trial {trial.number}: {_format(values)} -> validation {result.best_accuracy:.1f} ± "
                f"{result.best_ci95:.1f} % ({result.steps} steps, {result.cpu_seconds:.1f} CPU-s)")
        return float(result.best_accuracy)

    study.optimize(objective, n_trials=trials, catch=(TrainingError,))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise TrainingError("no trial finished: every one failed (see the lines above); narrow the search space")
    best = study.best_trial
    best_config = apply(base, space, best.params)
    # The trial's budget is a tuning choice, not a setting to keep: a full run of the
    # best config should not stop where the short trials did.
    best_config = dataclasses.replace(best_config, cpu_minutes=None)
    write_json(out / "best.json", best_config.to_dict())
    rows = [{"number": t.number, "state": t.state.name, "params": t.params, "val_accuracy": t.value,
             "val_ci95": t.user_attrs.get("val_ci95"), "run_dir": t.user_attrs.get("run_dir")} for t in study.trials]
    summary = {"study": study_name, "storage": storage, "space": spec["space"], "trials": rows,
               "best": {"number": best.number, "params": best.params, "val_accuracy": best.value,
                        "val_ci95": best.user_attrs.get("val_ci95"), "config": str(out / "best.json")}}
    write_json(out / "tune.json", summary)
    return TuneResult(study_name, rows, summary["best"], out / "best.json", out / "tune.json")


def _record(log: Callable[[str], None] | None, number: int, **fields: Any) -> None:
    """Record a trial in the run store; a store that fails loses the record, not the search
    (the study holds every trial's score)."""
    try:
        record_run("tune-trial", **fields)
    except StoreError as e:
        if log:
            log(f"trial {number}: not recorded in the run store ({e})")


def _abandon_killed(optuna, study, out: Path, log: Callable[[str], None] | None) -> None:
    """Trials a killed search left RUNNING (none is: this process holds the folder's lock)
    are marked failed, and the files of their half-trained runs removed."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        remove_unfinished_run(out / "trials" / f"trial-{trial.number:03d}")
        if log:
            log(f"trial {trial.number}: stopped by an interrupted search; marked failed")


def _format(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())

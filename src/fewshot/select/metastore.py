"""The meta-dataset's store: one SQLite file of settings and one row per (task, model).

Write-ahead log, one transaction per row, ``UNIQUE(task, model)`` and ``INSERT OR
IGNORE``: a build killed at any moment (even SIGKILL) resumes with exactly the missing
pairs and never duplicates one. The build settings are stored with the rows; resuming
with other settings is refused.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..io import parse_json
from ..store import connect, database_errors, open_database
from .index import Zoo
from .measure import TARGETS

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
#: What to do when the meta-dataset's file cannot be used: its rows are a cache of work
#: that a build recomputes, so a damaged file is safe to remove.
_REMEDY = ("check that its folder is writable and has space; if the file is damaged, remove it and run "
           "`fewshot select build` again (it recomputes every row)")
_ROW_COLUMNS = ("task", "model", "grp", "model_sha256", "features", "accuracy_lp", "accuracy_ft", "cpu_features",
                "cpu_scores", "cpu_lp", "cpu_ft", "worker", "created")


class MetaStore:
    """The meta-dataset's SQLite file: settings and one row per (task, model)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with database_errors(f"open the meta-dataset {self.path}", _REMEDY):
            open_database(self.path, SCHEMA).close()

    @contextmanager
    def _connect(self, transaction: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection (in one transaction if asked); any SQLite failure is a one-line StoreError."""
        with database_errors(f"use the meta-dataset {self.path}", _REMEDY), closing(connect(self.path)) as db:
            if transaction:
                with db:
                    yield db
            else:
                yield db

    def settings(self) -> dict | None:
        with self._connect() as db:
            row = db.execute("SELECT value FROM settings WHERE key = 'build'").fetchone()
        return self._parse(row[0], "its build settings") if row else None

    def _parse(self, text: Any, what: str) -> Any:
        """A JSON value stored in the file, read within bounds (the file may have been edited)."""
        return parse_json(text if isinstance(text, (str, bytes)) else "?", f"{self.path}: {what}", DataError)

    def claim_settings(self, settings: dict) -> None:
        """Store ``settings``, or check they are those the rows were built with."""
        text = json.dumps(settings, sort_keys=True)
        with self._connect(transaction=True) as db:
            db.execute("INSERT OR IGNORE INTO settings (key, value) VALUES ('build', ?)", (text,))
            stored = db.execute("SELECT value FROM settings WHERE key = 'build'").fetchone()[0]
        stored = self._parse(stored, "its build settings")
        if not isinstance(stored, dict) or stored != json.loads(text):
            stored = stored if isinstance(stored, dict) else {}
            differ = sorted(k for k in set(settings) | set(stored) if settings.get(k) != stored.get(k))
            raise ConfigError(f"{self.path} was built with other settings ({', '.join(differ)} differ); "
                              f"resume with the same ones, or give another meta-dataset file")

    def cached(self, key: str) -> Any:
        """A value stored with :meth:`cache` (None if absent)."""
        with self._connect() as db:
            row = db.execute("SELECT value FROM settings WHERE key = ?", (f"cache/{key}",)).fetchone()
        return self._parse(row[0], f"its cached {key}") if row else None

    def cache(self, key: str, value: Any) -> None:
        with self._connect(transaction=True) as db:
            db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                       (f"cache/{key}", json.dumps(value, sort_keys=True)))

    def insert(self, row: dict) -> bool:
        """Add one row unless its (task, model) is there already; True if added."""
        values = tuple(row.get(c) for c in _ROW_COLUMNS)
        with self._connect(transaction=True) as db:
            cursor = db.execute(f"INSERT OR IGNORE INTO rows ({', '.join(_ROW_COLUMNS)}) "
                                f"VALUES ({', '.join('?' * len(_ROW_COLUMNS))})", values)
            return cursor.rowcount == 1

    def done(self) -> dict[tuple[str, str], str]:
        """``{(task, model): model_sha256}`` of the rows present."""
        with self._connect() as db:
            return {(t, m): s for t, m, s in db.execute("SELECT task, model, model_sha256 FROM rows")}

    def delete(self, pairs: Iterable[tuple[str, str]]) -> None:
        with self._connect(transaction=True) as db:
            db.executemany("DELETE FROM rows WHERE task = ? AND model = ?", list(pairs))

    def count(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM rows").fetchone()[0])

    def records(self, models: Sequence[str] | None = None) -> list[dict]:
        """Every stored row as a dict of its columns, ``features`` decoded."""
        with self._connect() as db:
            cursor = db.execute(f"SELECT {', '.join(_ROW_COLUMNS)} FROM rows ORDER BY task, model")
            out = [dict(zip(_ROW_COLUMNS, r)) for r in cursor]
        wanted = set(models) if models is not None else None
        for r in out:
            try:
                r["features"] = self._parse(r["features"], "a row's features")
            except DataError:
                r["features"] = None
            if not isinstance(r["features"], dict):
                raise DataError(f"{self.path}: the row of task {r['task']!r}, model {r['model']!r} is damaged "
                                f"(its features are not a JSON object); delete the file and build it again")
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


def default_meta_path(zoo: Zoo | str | Path) -> Path:
    return (zoo.root if isinstance(zoo, Zoo) else Path(zoo)) / "meta.sqlite"


def open_meta(zoo: Zoo, path: str | Path | None = None) -> MetaStore:
    """The meta-dataset of ``zoo``, which must exist (``fewshot select build`` makes it)."""
    path = Path(path) if path else default_meta_path(zoo)
    if not path.exists():
        raise ConfigError(f"no meta-dataset at {path}; build it with `fewshot select build --zoo {zoo.root}`")
    return MetaStore(path)


__all__ = ["MetaStore", "SCHEMA", "complete", "default_meta_path", "open_meta", "selection_costs"]

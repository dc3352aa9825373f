"""The run store: every train and evaluate run, in one embedded SQLite database.

The database lives in the runs folder as ``fewshot.sqlite``: ``--runs``, else
``$FEWSHOT_RUNS``, else one user-level place, ``$XDG_DATA_HOME/fewshot`` (by default
``~/.local/share/fewshot``), so every command finds the same records wherever it is
run from, and none creates a folder in the current one. It uses write-ahead logging and a busy timeout, and
each record is one transaction, so processes recording at once lose nothing.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ConfigError, FewShotError, StoreError
from .io import parse_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    created     TEXT NOT NULL,
    method      TEXT,
    dataset     TEXT,
    split       TEXT,
    seed        INTEGER,
    run_dir     TEXT,
    config      TEXT NOT NULL,
    metrics     TEXT NOT NULL,
    seconds     REAL,
    cpu_seconds REAL,
    version     TEXT NOT NULL,
    host        TEXT
)
"""
COLUMNS = ("id", "kind", "created", "method", "dataset", "split", "seed", "run_dir", "config", "metrics",
           "seconds", "cpu_seconds", "version", "host")


def connect(path: Path) -> sqlite3.Connection:
    """A connection that waits (up to a minute) for other writers rather than failing."""
    db = sqlite3.connect(path, timeout=60.0)
    db.execute("PRAGMA busy_timeout=60000")
    return db


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """Create ``path`` (and its folder) if needed, in write-ahead-log mode, with ``schema``;
    WAL lets readers and one writer proceed at once, across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(schema)
    return db


@contextmanager
def database_errors(action: str, remedy: str) -> Iterator[None]:
    """Any failure of an SQLite file inside this block (read-only, damaged, locked too
    long, a full disk, a damaged JSON column) as one :class:`~fewshot.errors.StoreError`:
    "cannot ACTION (what went wrong); REMEDY", never a traceback. Used by the run store
    and the meta-dataset's store (the tuning study's file is Optuna's, guarded in
    :mod:`fewshot.tune`). fewshot's own errors pass through unchanged."""
    try:
        yield
    except FewShotError:
        raise
    except (sqlite3.Error, OSError, ValueError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise StoreError(f"cannot {action} ({first}); {remedy}") from None


def runs_folder(runs: str | os.PathLike | None = None) -> Path:
    """The runs folder: ``runs``, else ``$FEWSHOT_RUNS``, else the user-level one (see the module docstring)."""
    if runs or os.environ.get("FEWSHOT_RUNS"):
        return Path(runs or os.environ["FEWSHOT_RUNS"]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "fewshot"


def record_run(kind: str, *, runs: str | os.PathLike | None = None, config: dict, metrics: dict,
               **fields: Any) -> int:
    """The one way a run enters the store (train, evaluate, tune trials, model selection).

    Returns the new record's id. Any failure of the store (a read-only folder, a
    damaged database, a lock held too long) is a :class:`~fewshot.errors.StoreError`,
    raised only after the caller's work is done, so the caller can keep that work and
    say that recording failed.
    """
    path = runs_folder(runs) / "fewshot.sqlite"
    try:
        return RunStore(runs).record(kind, config=config, metrics=metrics, **fields)
    except (sqlite3.Error, OSError) as e:
        raise StoreError(f"could not record this {kind} run in {path} ({e})") from None


class RunStore:
    """Append-only record of runs. ``RunStore(folder).record(...)`` returns the new id."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.path = runs_folder(folder) / "fewshot.sqlite"
        with self._failures("open"):
            open_database(self.path, SCHEMA).close()

    def _failures(self, what: str) -> AbstractContextManager[None]:
        return database_errors(f"{what} the run store {self.path}",
                               "check that the folder is writable and the file undamaged, or choose another --runs")

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path)

    def record(self, kind: str, *, config: dict, metrics: dict, method: str | None = None,
               dataset: str | None = None, split: str | None = None, seed: int | None = None,
               run_dir: str | None = None, seconds: float | None = None, cpu_seconds: float | None = None) -> int:
        row = (kind, time.strftime("%Y-%m-%dT%H:%M:%S%z"), method, dataset, split, seed,
               str(run_dir) if run_dir else None, json.dumps(config, sort_keys=True, default=str),
               json.dumps(metrics, sort_keys=True, default=float), seconds, cpu_seconds, __version__, platform.node())
        with closing(self._connect()) as db, db:
            cursor = db.execute(
                f"INSERT INTO runs ({', '.join(COLUMNS[1:])}) VALUES ({', '.join('?' * (len(COLUMNS) - 1))})", row)
            return int(cursor.lastrowid)

    def list(self, kind: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM runs", []
        filters = [(c, v) for c, v in (("kind", kind), ("method", method)) if v]
        if filters:
            query += " WHERE " + " AND ".join(f"{c} = ?" for c, _ in filters)
            args = [v for _, v in filters]
        with self._failures("read"), closing(self._connect()) as db:
            return [self._row(r) for r in db.execute(query + " ORDER BY id", args)]

    def get(self, run_id: int) -> dict[str, Any]:
        if isinstance(run_id, bool) or not isinstance(run_id, int) or not 1 <= run_id < 2**63:
            raise ConfigError(f"no run {run_id} in {self.path}: run ids are whole numbers from 1; "
                              "`fewshot runs` lists the recorded ones")
        with self._failures("read"), closing(self._connect()) as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise ConfigError(f"no run {run_id} in {self.path}; `fewshot runs` lists the recorded ones")
        with self._failures("read"):
            return self._row(row)

    @staticmethod
    def _row(row: tuple) -> dict[str, Any]:
        out = dict(zip(COLUMNS, row))
        for column in ("config", "metrics"):  # bounded: a store file may have been edited by hand
            out[column] = parse_json(out[column] if isinstance(out[column], (str, bytes)) else "?",
                                     f"the {column} of run {out.get('id')} in the run store", StoreError)
        return out

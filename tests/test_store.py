"""The SQLite run store: records, lists, and loses nothing under concurrent writers."""

import subprocess
import sys

import pytest

from fewshot.errors import ConfigError
from fewshot.store import RunStore

WRITER = """
import sys
from fewshot.store import RunStore
store = RunStore(sys.argv[1])
for i in range(int(sys.argv[3])):
    store.record("evaluate", config={"writer": sys.argv[2], "i": i}, metrics={"accuracy": float(i)},
                 method="m" + sys.argv[2])
"""


def test_record_list_get(tmp_path):
    store = RunStore(tmp_path)
    a = store.record("train", config={"lr": 0.1}, metrics={"val_accuracy": 90.0}, method="protonet", seed=3)
    b = store.record("evaluate", config={}, metrics={"accuracy": 80.0, "ci95": 1.0}, method="pixel-ncm")
    assert [r["id"] for r in store.list()] == [a, b]
    assert [r["id"] for r in store.list(kind="train")] == [a]
    row = store.get(a)
    assert row["config"] == {"lr": 0.1} and row["metrics"]["val_accuracy"] == 90.0 and row["seed"] == 3
    assert row["version"]
    with pytest.raises(ConfigError, match="no run 99"):
        store.get(99)


def test_two_processes_recording_at_once_lose_nothing(tmp_path):
    RunStore(tmp_path)  # create the schema first, as any command would
    per_writer = 150
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(w), str(per_writer)])
             for w in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    rows = RunStore(tmp_path).list()
    assert len(rows) == 2 * per_writer
    assert len({r["id"] for r in rows}) == len(rows)
    for writer in ("0", "1"):
        assert sorted(r["config"]["i"] for r in rows if r["config"]["writer"] == writer) == list(range(per_writer))

"""Hyper-parameter search: finds the better setting, records every trial, writes a usable config."""

import json
import sys

import pytest

from fewshot.cli import main
from fewshot.config import TrainConfig
from fewshot.errors import ConfigError
from fewshot.store import RunStore
from fewshot.tune import parse_space, tune

pytest.importorskip("optuna")

# Tiny models on 8x8 digits, validated on the test classes (digits has no val split).
TINY = dict(dataset="digits", backbone="conv4", backbone_options={"width": 16, "depth": 2}, way=5, shot=1, query=5,
            val_split="test", val_episodes=30, episodes=20, lr=3e-3)
TINY_FLAGS = ["--dataset", "digits", "--backbone-option", "width=16", "--backbone-option", "depth=2", "--way", "5",
              "--shot", "1", "--query", "5", "--val-split", "test", "--val-episodes", "30", "--episodes", "20",
              "--quiet"]


def test_tune_finds_the_clearly_better_inner_learning_rate(tmp_path):
    # An inner learning rate of 1e-4 cannot adapt in one step (chance: 20%); 0.5 can.
    space = parse_space(["inner_lr=0.0001,0.5"])
    result = tune(TrainConfig(method="maml", **TINY), space, tmp_path / "tune", trials=2, runs=tmp_path)
    assert result.best["params"] == {"inner_lr": 0.5}
    scores = {t["params"]["inner_lr"]: t["val_accuracy"] for t in result.trials}
    assert scores[0.5] > scores[0.0001] + 8
    records = RunStore(tmp_path).list(kind="tune-trial")
    assert len(records) == 2 and {r["metrics"]["params"]["inner_lr"] for r in records} == {0.0001, 0.5}
    best = TrainConfig.layered(result.config_path)
    assert best.method_options == {"inner_lr": 0.5} and best.cpu_minutes is None
    assert (tmp_path / "tune.sqlite").exists()  # the study lives in the runs folder


def test_cli_search_continues_and_its_best_config_trains(tmp_path, capsys):
    out, runs = tmp_path / "tune", tmp_path
    args = ["tune", "protonet", *TINY_FLAGS, "--space", "lr=1e-4:1e-2:log", "--out", str(out), "--runs", str(runs)]
    assert main([*args, "--trials", "2"]) == 0
    assert "fewshot train --config" in capsys.readouterr().out
    assert main([*args, "--trials", "1"]) == 0  # the same --out: the same study, one more trial
    summary = json.loads((out / "tune.json").read_text())
    assert [t["number"] for t in summary["trials"]] == [0, 1, 2]
    lrs = [t["params"]["lr"] for t in summary["trials"]]
    assert len(set(lrs)) == 3 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    assert summary["best"]["val_accuracy"] == max(t["val_accuracy"] for t in summary["trials"])
    assert main(["train", "--config", str(out / "best.json"), "--episodes", "2", "--out", str(tmp_path / "final"),
                 "--runs", str(runs), "--quiet"]) == 0
    trained = json.loads((tmp_path / "final" / "config.json").read_text())
    assert trained["lr"] == summary["best"]["params"]["lr"]
    capsys.readouterr()
    assert main(["tune", "protonet", *TINY_FLAGS, "--space", "lr=1e-3:1e-1:log", "--out", str(out),
                 "--runs", str(runs)]) == 2
    assert "other settings" in capsys.readouterr().err


def test_search_space_specs():
    lr, steps, inner, width, momentum = parse_space(
        ["lr=1e-4:1e-2:log", "inner_steps=1:5", "inner_lr=0.01,0.4", "backbone.width=16,32", "momentum=0.5:0.9"])
    assert (lr.section, lr.kind, lr.log) == ("config", "float", True)
    assert (steps.section, steps.kind, steps.grid()) == ("method_options", "int", [1, 2, 3, 4, 5])
    assert (inner.kind, inner.choices) == ("choice", [0.01, 0.4])
    assert (width.section, width.key, width.choices) == ("backbone_options", "width", [16, 32])
    assert (momentum.kind, momentum.grid()) == ("float", None)
    for bad, message in [("lr", "must look like"), ("lr=1:1", "below"), ("lr=0:1:log", "log scale"),
                         ("way=2,5", "defines the problem"), ("lr=a:b", "must be numbers"), ("lr=0.1,", "two or more")]:
        with pytest.raises(ConfigError, match=message):
            parse_space([bad])


def test_errors_are_one_line(tmp_path, monkeypatch, capsys):
    cases = [
        (["tune", "protonet", "--dataset", "digits", "--no-rotations", "--space", "lr=1e-3:1e-2", "--out",
          str(tmp_path / "t"), "--runs", str(tmp_path)], "no split 'val'"),  # digits' val needs its rotations
        (["tune", "protonet", *TINY_FLAGS, "--space", "nosuch=1,2", "--out", str(tmp_path / "t2"),
          "--runs", str(tmp_path)], "nosuch"),
    ]
    for args, fragment in cases:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now fails
    assert main(cases[0][0]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'fewshot[tune]'" in err[0]
